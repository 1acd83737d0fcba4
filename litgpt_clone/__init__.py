"""litgpt_clone: pretrain, finetune, run, serve and evaluate open LLMs."""

from litgpt_clone.config import Config
from litgpt_clone.model import GPT

__all__ = ["Config", "GPT"]
