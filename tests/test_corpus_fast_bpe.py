"""`prepare code` encodes token shards with tiktoken where a tokenizer.json is a plain byte-level BPE: the ids must be
exactly those of `tokenizers` (the reference), and every other kind of tokenizer.json must fall back to it."""

import json
import sysconfig
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from litgpt_clone.corpus.fast_bpe import tiktoken_encoding
from litgpt_clone.corpus.pipeline import token_ids
from litgpt_clone.tokenizer import Tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
EDGE_CASES = [
    "", " ", "  \n\n\t  x", "a<|endoftext|>b <|endoftext|>", "<|endoftext|><|endoftext|>",
    "don't it's we're I'll they've I'm he'd 'S", "x = 1_000_000 + 3.14e-10  # 42",
    "naïve café — Ünïcödé ∑∫ 日本語のテキスト 🙂👍🏽 e\u0301 \u200b", "\r\n\r\n  \r\n", "tab\tsep\u00a0nbsp",
    "    def f(self):\n        return {'k': [1, 2]}\n\n\n", "\x00\x01\x7f bytes \ufffd",
]


def train(tmp_path: Path, name: str, pre_tokenizer, vocab_size: int = 1500, **model_args) -> Path:
    tok = HFTokenizer(models.BPE(**model_args))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(p) for p in sorted(STDLIB.glob("*.py"))[:80]], trainer)
    out = tmp_path / name
    out.mkdir()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}')
    return out


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("tok"), "byte_level", pre_tokenizers.ByteLevel(add_prefix_space=False))


def test_tiktoken_ids_equal_tokenizers_on_the_stdlib_and_edge_cases(byte_level):
    encoding = tiktoken_encoding(byte_level / "tokenizer.json")
    assert encoding is not None
    reference = HFTokenizer.from_file(str(byte_level / "tokenizer.json"))
    files = sorted(STDLIB.glob("[b-z]*.py")) + [p for p in sorted(STDLIB.glob("*/*.py")) if "site-packages" not in p.parts][:200]
    texts = EDGE_CASES + [p.read_text(encoding="utf-8", errors="replace") for p in files]
    mismatches = [i for i, text in enumerate(texts)
                  if encoding.encode(text, allowed_special="all") != reference.encode(text, add_special_tokens=False).ids]
    assert mismatches == [] and len(texts) > 250
    # the added token inside a text is its id, as in tokenizers
    assert encoding.encode("a<|endoftext|>b", allowed_special="all")[1] == reference.token_to_id("<|endoftext|>")


def test_token_ids_are_tokenizer_encode_with_its_bos(byte_level, tmp_path):
    text = (STDLIB / "json" / "decoder.py").read_text()
    tokenizer = Tokenizer(byte_level)
    assert token_ids(tokenizer, text).tolist() == tokenizer.encode(text).tolist()
    with_bos = tmp_path / "with_bos"
    with_bos.mkdir()
    spec = json.loads((byte_level / "tokenizer.json").read_text())
    spec["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                              "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}}
    (with_bos / "tokenizer.json").write_text(json.dumps(spec))
    (with_bos / "tokenizer_config.json").write_text((byte_level / "tokenizer_config.json").read_text())
    tokenizer = Tokenizer(with_bos)
    assert tokenizer.add_bos and token_ids(tokenizer, text).tolist() == tokenizer.encode(text).tolist()
    assert token_ids(tokenizer, text)[0] == 0


def edit(byte_level: Path, tmp_path: Path, name: str, change) -> Path:
    spec = json.loads((byte_level / "tokenizer.json").read_text())
    change(spec)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("name, change", [
    ("prefix_space", lambda s: s["pre_tokenizer"].update(add_prefix_space=True)),
    ("normalizer", lambda s: s.update(normalizer={"type": "NFC"})),
    ("ignore_merges", lambda s: s["model"].update(ignore_merges=True)),
    ("dropout", lambda s: s["model"].update(dropout=0.1)),
    ("split_pre_tokenizer", lambda s: s.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]})),
    ("merges_out_of_id_order", lambda s: s["model"].update(merges=s["model"]["merges"][1:] + s["model"]["merges"][:1])),
    ("token_without_merge", lambda s: s["model"].update(merges=s["model"]["merges"][:-1])),
    ("lstrip_added_token", lambda s: s["added_tokens"][0].update(lstrip=True)),
])
def test_other_tokenizers_fall_back_to_tokenizers(byte_level, tmp_path, name, change):
    assert tiktoken_encoding(edit(byte_level, tmp_path, name, change)) is None
