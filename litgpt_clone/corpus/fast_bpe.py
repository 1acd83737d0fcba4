"""Byte-level BPE encoding through ``tiktoken``, for the token shards of ``prepare code``.

Interface::

    tiktoken_encoding(tokenizer_json: Path) -> Optional[tiktoken.Encoding]
        The same encoding as the file's ``tokenizers`` pipeline, or None when the file is not a plain GPT-2-style
        byte-level BPE (then the caller uses ``tokenizers``).

``tiktoken`` encodes byte-level BPE ~3.8x faster than ``tokenizers`` on one core (the Python standard library, 31.5
MB of code: 14.4 vs 3.8 MB/s, same ids for all 1,790 files; benchmarks/RESULTS.md). It is used only where the two
give the same ids by construction:

- no normalizer; the pre-tokenizer is ``ByteLevel(add_prefix_space=False, use_regex=True)``: GPT-2's split regex
  (``PATTERN``, the one ``tokenizers`` compiles) over the text, each piece mapped to bytes;
- the model is a ``BPE`` without dropout, unknown token, subword prefix/suffix, byte fallback or ``ignore_merges``;
  every one of the 256 bytes is a token, and every longer token is made by exactly one merge, with ids increasing
  in merge order. ``tokenizers`` applies the merge of lowest index among adjacent pairs; ``tiktoken`` merges the
  adjacent pair whose concatenation has the lowest id; with those ids the two pick the same pair as long as a
  token is only ever formed from its own merge's two halves, which is how BPE training creates merges (a pair is
  learned from segmentations that the earlier merges produced);
- added tokens match anywhere in the text, as in ``tokenizers``: they become ``tiktoken``'s special tokens, allowed
  in the text (so an added token needs no ``lstrip``/``rstrip``/``single_word``).

Tokenizers trained by ``tokenizers``' ``BpeTrainer`` with a ByteLevel pre-tokenizer (the demo's, GPT-2's) qualify;
Llama 3's (a Split pre-tokenizer and ``ignore_merges``) and SentencePiece-style ones do not.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenizer regex, as ``tokenizers``' ByteLevel(use_regex=True) compiles it."""


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The character that GPT-2's byte-level alphabet uses for each byte, inverted (character -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
    return {c: b for b, c in chars.items()}


def _plain_byte_level(spec: dict) -> bool:
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel" and pre.get("add_prefix_space") is False and pre.get("use_regex", True) is True
        and model.get("type") == "BPE"
        and not model.get("dropout") and model.get("unk_token") is None
        and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
        and not model.get("byte_fallback") and not model.get("ignore_merges")
        and all(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word")) for t in spec.get("added_tokens", []))
    )


def _ranks(model: dict, added: set[str]) -> Optional[dict[bytes, int]]:
    """Token bytes -> id, when every multi-byte token comes from one merge and ids grow in merge order."""
    decode = byte_decoder()
    vocab = {token: i for token, i in model["vocab"].items() if token not in added}
    if any(ch not in decode for token in vocab for ch in token):
        return None
    ranks = {bytes(decode[ch] for ch in token): i for token, i in vocab.items()}
    if len(ranks) != len(vocab) or not all(bytes([b]) in ranks for b in range(256)):
        return None
    merged, last = set(), -1
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = vocab.get(left + right)
        if token is None or token <= last or left not in vocab or right not in vocab:
            return None
        merged.add(left + right)
        last = token
    if any(len(t) > 1 and t not in merged for t in vocab) or len(merged) != len(model["merges"]):
        return None  # a longer token without its merge, or a token made by two merges
    return ranks


def tiktoken_encoding(tokenizer_json: Path):
    """A ``tiktoken.Encoding`` that encodes like ``tokenizer_json`` (without post-processor tokens), or None."""
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    if not _plain_byte_level(spec):
        return None
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    ranks = _ranks(spec["model"], set(added))
    if ranks is None:
        return None
    import tiktoken

    return tiktoken.Encoding(Path(tokenizer_json).parent.name or "bpe", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens=added)
