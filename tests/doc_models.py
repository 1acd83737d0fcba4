"""Tiny stand-ins for the hub repos the README and tutorials name, served by tests/hub_standin.py in the doc test.

Every model is a real ``transformers`` class with tiny sizes (``save_pretrained``: config.json, model.safetensors,
generation_config.json) and a byte-level BPE tokenizer trained here on a little English and Python, with the
special tokens and BOS/EOS behaviour of its family; instruct models get a chat template in the shape of their
family's. The datasets are small files in the format (and under the file name) the data modules download.

A page that names a new repo id needs a row in ``MODELS`` (or ``DATASETS``).
"""

from __future__ import annotations

import functools
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# ------------------------------------------------------------------------------------------------ chat templates
CHATML = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3 = (  # ChatML, plus Qwen 3's empty thinking block when enable_thinking=False
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


# ------------------------------------------------------------------------------------------------ tokenizers
@dataclass(frozen=True)
class TokenizerFamily:
    specials: tuple[str, ...]
    bos: Optional[str]  # added in front of every encoding by the post-processor (Llama 3), else None
    eos: str  # the base model's EOS
    chat_eos: Optional[str] = None  # the instruct model's EOS (end of turn), when it differs


TOKENIZERS = {
    "gpt-neox": TokenizerFamily(("<|endoftext|>",), None, "<|endoftext|>"),
    "llama3": TokenizerFamily(
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
    ),
    "qwen": TokenizerFamily(("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"), None, "<|endoftext|>", "<|im_end|>"),
    "smollm": TokenizerFamily(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|endoftext|>", "<|im_end|>"),
}

ENGLISH = """\
Llamas are social animals and live with others as a herd. Their wool is soft and contains only a small amount of
lanolin. Llamas can learn simple tasks after a few repetitions. The capital of France is Paris; the capital of Italy
is Rome. Once upon a time there was a little model that wanted to write stories, answer questions and write code.
Write a haiku about the sea. Give three tips for staying healthy. What is the boiling point of water? It boils at
100 degrees Celsius at sea level. Translate the sentence into French. Summarize the text in one sentence.
"""


def tokenizer_corpus() -> list[str]:
    """A little English and Python from the standard library (the same on every machine with this Python)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [(stdlib / name).read_text(encoding="utf-8") for name in ("json/__init__.py", "json/decoder.py", "textwrap.py")]
    return [ENGLISH] * 8 + code


@functools.lru_cache(maxsize=None)
def trained_tokenizer(family: str) -> str:
    """The tokenizer.json text of ``family`` (trained once per process: every model of a family shares it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    fam = TOKENIZERS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=list(fam.specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    if fam.bos:
        bos_id = tok.token_to_id(fam.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)]
        )
    return tok.to_str(pretty=True)


def write_tokenizer(out: Path, family: str, chat_template: Optional[str]) -> tuple[int, list[int]]:
    """tokenizer.json + tokenizer_config.json of ``family`` in ``out``; returns (vocab size, stop ids)."""
    from tokenizers import Tokenizer

    fam = TOKENIZERS[family]
    text = trained_tokenizer(family)
    tok = Tokenizer.from_str(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(text)
    eos = fam.chat_eos if chat_template and fam.chat_eos else fam.eos
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": fam.bos, "eos_token": eos, "model_max_length": 2048}
    if chat_template:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    stops = [tok.token_to_id(t) for t in dict.fromkeys([eos, fam.eos])]
    return tok.get_vocab_size(), stops


# ------------------------------------------------------------------------------------------------ models
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=2048)


def _llama(vocab: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(**TINY, num_key_value_heads=2, vocab_size=vocab, rope_theta=500000.0, **kw)


def _qwen3(vocab: int, **kw):
    from transformers import Qwen3Config

    return Qwen3Config(**TINY, num_key_value_heads=2, head_dim=16, vocab_size=vocab, tie_word_embeddings=True, **kw)


def _qwen2(vocab: int, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(**TINY, num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=True, **kw)


def _phi(vocab: int, **kw):
    from transformers import PhiConfig

    return PhiConfig(**TINY, vocab_size=vocab, partial_rotary_factor=0.4, **kw)


def _neox(vocab: int, **kw):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(**TINY, vocab_size=vocab, rotary_pct=0.25, use_parallel_residual=True, **kw)


@dataclass(frozen=True)
class ModelStub:
    """One hub repo: the transformers config maker, the tokenizer family and the chat template (instruct models)."""

    config: Callable
    tokenizer: str
    chat_template: Optional[str] = None


MODELS: dict[str, ModelStub] = {
    "EleutherAI/pythia-14m": ModelStub(_neox, "gpt-neox"),
    "EleutherAI/pythia-70m": ModelStub(_neox, "gpt-neox"),
    "EleutherAI/pythia-160m": ModelStub(_neox, "gpt-neox"),
    "meta-llama/Llama-3.2-1B": ModelStub(_llama, "llama3"),
    "meta-llama/Llama-3.2-1B-Instruct": ModelStub(_llama, "llama3", LLAMA3),
    "meta-llama/Llama-3.2-3B-Instruct": ModelStub(_llama, "llama3", LLAMA3),
    "meta-llama/Llama-3.1-8B-Instruct": ModelStub(_llama, "llama3", LLAMA3),
    "Qwen/Qwen3-0.6B": ModelStub(_qwen3, "qwen", QWEN3),
    "Qwen/Qwen3-1.7B": ModelStub(_qwen3, "qwen", QWEN3),
    "Qwen/Qwen3-8B": ModelStub(_qwen3, "qwen", QWEN3),
    "Qwen/Qwen2.5-0.5B": ModelStub(_qwen2, "qwen"),
    "Qwen/Qwen2.5-0.5B-Instruct": ModelStub(_qwen2, "qwen", CHATML),
    "microsoft/phi-2": ModelStub(_phi, "gpt-neox"),
    "HuggingFaceTB/SmolLM2-135M": ModelStub(_llama, "smollm"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelStub(_llama, "smollm", CHATML),
}


def build_model(repo_id: str, out: Path, seed: int = 0) -> dict[str, bytes]:
    """Save the stand-in of ``repo_id`` in ``out`` (as ``save_pretrained`` does) and return its files."""
    import torch
    from transformers import AutoModelForCausalLM

    stub = MODELS[repo_id]
    vocab, stops = write_tokenizer(out, stub.tokenizer, stub.chat_template)
    fam = TOKENIZERS[stub.tokenizer]
    tok = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    config = stub.config(
        -(-vocab // 64) * 64,  # padded to a multiple of 64, as released checkpoints are
        bos_token_id=ids[fam.bos] if fam.bos else ids[fam.eos], eos_token_id=stops if len(stops) > 1 else stops[0],
    )
    config._name_or_path = repo_id
    config.initializer_range = 0.2  # 10x the usual: greedy text then varies instead of repeating one token
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norms and biases start at constants: randomize them too
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    (out / "README.md").write_text(f"# {repo_id}\n\nA tiny random stand-in for the doc test.\n")
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------------ datasets
def _alpaca_records() -> list[dict]:
    words = ["llama", "river", "python", "garden", "planet", "window", "orange", "silver"]
    records = []
    for i in range(48):
        a, b, w = 3 + i % 7, 11 + i % 5, words[i % len(words)]
        kind = i % 4
        if kind == 0:
            records.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."})
        elif kind == 1:
            records.append({"instruction": "Reverse the word.", "input": w, "output": w[::-1]})
        elif kind == 2:
            records.append({"instruction": "Write the word in capital letters.", "input": w, "output": w.upper()})
        else:
            records.append({"instruction": f"How many letters does the word '{w}' have?", "input": "", "output": f"It has {len(w)} letters."})
    return records


def _dolly_records() -> list[dict]:
    return [
        {"instruction": r["instruction"], "context": r["input"], "response": r["output"], "category": "open_qa"}
        for r in _alpaca_records()
    ]


def _tinystories() -> str:
    names, things = ["Lily", "Tom", "Mia", "Ben"], ["ball", "kite", "cake", "boat"]
    stories = [
        f"Once upon a time, {n} had a red {t}. {n} played with the {t} every day. One day the {t} was lost. "
        f"{n} looked everywhere and found it under a tree. {n} was very happy."
        for n in names for t in things
    ]
    return "\n<|endoftext|>\n".join(stories) + "\n"


DATASETS: dict[str, dict[str, Callable[[], bytes]]] = {
    "yahma/alpaca-cleaned": {"alpaca_data_cleaned.json": lambda: json.dumps(_alpaca_records(), indent=2).encode()},
    "databricks/databricks-dolly-15k": {
        "databricks-dolly-15k.jsonl": lambda: "".join(json.dumps(r) + "\n" for r in _dolly_records()).encode()
    },
    "roneneldan/TinyStories": {"TinyStoriesV2-GPT4-train.txt": lambda: _tinystories().encode()},
}


def build_hub(root: Path, hub) -> None:
    """Build every model of ``MODELS`` under ``root`` and add it (and every dataset of ``DATASETS``) to ``hub``."""
    for i, repo_id in enumerate(MODELS):
        hub.add_repo(repo_id, build_model(repo_id, root / repo_id, seed=i))
    for repo_id, files in DATASETS.items():
        hub.add_dataset(repo_id, {name: make() for name, make in files.items()})
