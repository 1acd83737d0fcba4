"""litgpt_clone: pretrain, finetune, run, serve and evaluate open LLMs."""

from litgpt_clone.config import Config
from litgpt_clone.model import GPT
from litgpt_clone.tokenizer import Tokenizer

__all__ = ["Config", "GPT", "LLM", "Tokenizer"]


def __getattr__(name: str):
    if name == "LLM":  # imported on first use: `import litgpt_clone` stays cheap
        from litgpt_clone.api import LLM

        return LLM
    raise AttributeError(f"module 'litgpt_clone' has no attribute {name!r}")
