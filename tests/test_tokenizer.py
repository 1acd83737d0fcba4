"""``litgpt_clone.tokenizer.Tokenizer`` against ``transformers.AutoTokenizer`` on tokenizers trained here.

Two tokenizers are trained once per session on the inline ``CORPUS`` (no hub access):

- ``hf``: byte-level BPE from the ``tokenizers`` library, saved as tokenizer.json, with a post-processor that puts
  ``<s>`` in front (as Llama 3's does) and tokenizer_config.json / generation_config.json around it.
- ``sp``: a SentencePiece BPE saved as tokenizer.model, Llama style: byte fallback, identity normalization, no
  whitespace collapsing, dummy prefix; tokenizer_config.json says ``"tokenizer_class": "LlamaTokenizer"``.

Variants of these (copies with one file changed) cover the rules for BOS, the fallbacks for special tokens and
what a SentencePiece normalizer does. ``sp_turns`` is the ``sp`` model trained with Gemma's and Mistral's turn
markers as control symbols, and tokenizer_config.json adding two tokens past the model (with lstrip/rstrip): the
special-token strings in a text, and the "▁" next to them, against transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from litgpt_clone.tokenizer import TOKENIZER_FILES, Tokenizer

CORPUS = """\
The quick brown fox jumps over the lazy dog. A tokenizer turns text into numbers, and numbers back into text.
Language models read tokens, not characters: "hello" may be one token while "tokenization" is three.
It's 2024; prices rose 3.5% to $1,299.99 (about 1.2k EUR). Email: someone@example.com, see https://example.org/a?b=c.
Rain, snow, sun. She said: 'Well... maybe tomorrow?' He answered -- no; not today!
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 1e-5 0x1F.

def fibonacci(n: int) -> int:
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Counter:
\tdef __init__(self, start=0):
\t\tself.count = start  # tabs, not spaces

\tdef increment(self, by=1):
\t\tself.count += by
\t\treturn self.count

for i in range(10):
    if i % 2 == 0:
        print(f"{i} is even")
    else:
        print(f"{i} is odd")

import torch
x = torch.zeros(4, 8, dtype=torch.float32)
y = x.view(-1).sum().item()  # -> 0.0
data = {"key": [1, 2, 3], "other": None, 'nested': {'a': True}}

日本語のテキストです。東京は日本の首都です。今日はいい天気ですね。
中文文本也在这里。我们正在测试分词器。机器学习和自然语言处理。
한국어 텍스트도 있습니다. 안녕하세요, 세계!
Emoji: 😀 😂 🙂 👍 👍🏽 👋🏻 ❤️ 🔥 ✨ 🎉 🚀 🇯🇵 🇺🇸 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈
Mixed: the model 模型 reads 読む tokens 🙂 and writes 書く code 💻.
"""

SAMPLE = (
    "Tokenizers split text: English first, then code.\n"
    "def greet(name):\n"
    "    if name:\n"
    "\t\treturn f'Hello, {name}!'  # tab-indented\r\n"
    "    return None\n\n\n"
    "  two leading spaces, trailing spaces   \n"
    "Emoji: 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇯🇵 ❤️ 🦩 (a flamingo the corpus never saw)\n"
    "CJK: 日本語のテキスト、中文分词，한국어 텍스트 and an unseen 龘."
)
"""What every test encodes: English, Python with spaces/tabs/CRLF/blank lines, ZWJ emoji and CJK, some of it unseen."""

TEXTS = [
    SAMPLE,
    "Hello world",
    "\tindented\n    code\n",
    "👨‍👩‍👧‍👦",
    "日本語",
    "",
    " leading space",
    " ",
    "  two leading spaces",
    "trailing   ",
    "\n\nnewlines first",
    "\u2581fox starts with the SentencePiece space mark",  # (Metaspace adds no second one; sentencepiece did)
]


def _train_bpe(out: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<s>", "</s>", "<unk>", "<|eot|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(out / "tokenizer.json"))


def _train_sentencepiece(out: Path, **options) -> None:
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        num_threads=2,
        minloglevel=2,
        **options,
    )
    (out / "tokenizer.vocab").unlink()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def _variant(src: Path, dst: Path, **files) -> Path:
    """A copy of checkpoint folder ``src`` with some files replaced (a dict, written as JSON) or deleted (None)."""
    shutil.copytree(src, dst)
    for name, content in files.items():
        name = name.replace("__", ".")
        if content is None:
            (dst / name).unlink()
        else:
            _write_json(dst / name, content)
    return dst


@pytest.fixture(scope="session")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    d = {name: root / name for name in ("hf", "sp", "sp_nfkc")}
    for path in d.values():
        path.mkdir()

    _train_bpe(d["hf"])
    _write_json(
        d["hf"] / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "rstrip": False, "special": True},
            "add_bos_token": True,
            "chat_template": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|eot|>{% endfor %}",
        },
    )
    _write_json(d["hf"] / "generation_config.json", {"bos_token_id": 0, "eos_token_id": [1, 3]})

    _train_sentencepiece(d["sp"], normalization_rule_name="identity", remove_extra_whitespaces=False)
    _write_json(
        d["sp"] / "tokenizer_config.json",
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True},
    )
    _write_json(d["sp"] / "generation_config.json", {"eos_token_id": 2})
    template = "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }}{% endfor %}"
    (d["sp"] / "chat_template.jinja").write_text(template)

    # Gemma's and Mistral's turn markers as control symbols of the model, and two more tokens past its 600 pieces
    d["sp_turns"] = root / "sp_turns"
    d["sp_turns"].mkdir()
    _train_sentencepiece(
        d["sp_turns"], normalization_rule_name="identity", remove_extra_whitespaces=False,
        control_symbols=["<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]"],
    )
    added = {"content": "", "lstrip": False, "rstrip": False, "normalized": False, "single_word": False, "special": True}
    _write_json(
        d["sp_turns"] / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "add_bos_token": True,
            "added_tokens_decoder": {  # [INST] and [/INST] only in the model
                "3": {**added, "content": "<start_of_turn>"},
                "4": {**added, "content": "<end_of_turn>"},
                "600": {**added, "content": "<tool>", "lstrip": True, "rstrip": True, "special": False},
                "601": {**added, "content": "</tool>", "lstrip": True},
            },
        },
    )

    # sentencepiece's defaults: NFKC and whitespace collapsing, which transformers 5 does not apply
    _train_sentencepiece(d["sp_nfkc"])
    _write_json(
        d["sp_nfkc"] / "tokenizer_config.json",
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True},
    )

    # tokenizer.json without a post-processor, config still saying add_bos_token: true
    from tokenizers import Tokenizer as HFTokenizer

    d["hf_no_post"] = _variant(d["hf"], root / "hf_no_post")
    tok = HFTokenizer.from_file(str(d["hf"] / "tokenizer.json"))
    tok.post_processor = None
    tok.save(str(d["hf_no_post"] / "tokenizer.json"))
    # no add_bos_token in tokenizer_config.json
    d["sp_no_add_bos"] = _variant(
        d["sp"],
        root / "sp_no_add_bos",
        tokenizer_config__json={"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"},
    )
    # "legacy": true gives a "▁" to the text after a special token too
    d["sp_legacy"] = _variant(
        d["sp"],
        root / "sp_legacy",
        tokenizer_config__json={"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "legacy": True},
    )
    # no tokenizer_class: transformers' generic conversion of tokenizer.model (legacy unless it says otherwise)
    config = json.loads((d["sp_turns"] / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    d["sp_turns_generic"] = _variant(d["sp_turns"], root / "sp_turns_generic", tokenizer_config__json=config)
    d["sp_turns_generic_first"] = _variant(d["sp_turns"], root / "sp_turns_generic_first", tokenizer_config__json={**config, "legacy": False})
    # special tokens from config.json, then special_tokens_map.json
    d["hf_config_ids"] = _variant(
        d["hf"],
        root / "hf_config_ids",
        tokenizer_config__json={"tokenizer_class": "PreTrainedTokenizerFast"},
        config__json={"bos_token_id": 0, "eos_token_id": [3, 1]},
        generation_config__json=None,
    )
    d["hf_special_map"] = _variant(
        d["hf"],
        root / "hf_special_map",
        tokenizer_config__json={"tokenizer_class": "PreTrainedTokenizerFast"},
        special_tokens_map__json={"bos_token": {"content": "<s>"}, "eos_token": "<|eot|>"},
        generation_config__json=None,
    )
    # Qwen's way: no BOS in tokenizer_config.json (an explicit null), a bos_token_id in config.json all the same
    d["hf_null_bos"] = _variant(
        d["hf"],
        root / "hf_null_bos",
        tokenizer_config__json={"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "</s>"},
        config__json={"bos_token_id": 0, "eos_token_id": 1},
    )
    return d


@pytest.fixture(scope="session")
def auto(dirs):
    """``AutoTokenizer.from_pretrained`` of a folder in ``dirs``, by name."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = transformers.AutoTokenizer.from_pretrained(str(dirs[name]))
        return cache[name]

    return load


SP_NAMES = ["sp", "sp_no_add_bos", "sp_legacy", "sp_turns", "sp_turns_generic", "sp_turns_generic_first"]
"""The SentencePiece folders that transformers tokenizes as we do (all but sp_nfkc)."""


@pytest.mark.parametrize("name", ["hf", "hf_no_post", *SP_NAMES])
def test_ids_equal_autotokenizer(dirs, auto, name):
    tokenizer, reference = Tokenizer(dirs[name]), auto(name)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids.dtype == torch.long and ids.ndim == 1
        assert ids.tolist() == reference(text)["input_ids"], repr(text)
    assert tokenizer.vocab_size == len(reference)
    assert tokenizer.bos_id == reference.bos_token_id and tokenizer.eos_id == reference.eos_token_id


@pytest.mark.parametrize("name", ["hf", "sp_nfkc", "hf_no_post", *SP_NAMES])
def test_encode_batch_equals_encode_and_autotokenizer(dirs, auto, name):
    tokenizer = Tokenizer(dirs[name])
    texts = [*TEXTS, "", " ", SAMPLE]
    for bos in (None, False, True):
        assert tokenizer.encode_batch(texts, bos=bos) == [tokenizer.encode(t, bos=bos).tolist() for t in texts]
    if name != "sp_nfkc":  # transformers 5 skips that model's normalizer (see below)
        reference = auto(name)
        assert tokenizer.encode_batch(texts) == [reference(t)["input_ids"] for t in texts]
        assert tokenizer.encode_batch(texts, bos=False) == [reference(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_sample_token_counts(dirs):
    """The numbers behind the equality above: BOS first, then well under one id per byte (the BPE merged something),
    and the unseen flamingo falls back to its 4 UTF-8 bytes in SentencePiece."""
    hf, sp = Tokenizer(dirs["hf"]), Tokenizer(dirs["sp"])
    n_bytes = len(SAMPLE.encode("utf-8"))
    for tokenizer in (hf, sp):
        ids = tokenizer.encode(SAMPLE).tolist()
        assert ids[0] == tokenizer.bos_id == {"hf": 0, "sp": 1}["hf" if tokenizer is hf else "sp"]
        assert tokenizer.bos_id not in ids[1:]
        assert 30 < len(ids) < 0.8 * n_bytes
    flamingo = sp.encode("🦩", bos=False).tolist()
    assert [sp._sp.id_to_piece(i) for i in flamingo] == ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0xA9>"]
    assert flamingo[1:] == [3 + b for b in "🦩".encode("utf-8")]  # byte pieces follow <unk>, <s>, </s>


@pytest.mark.parametrize("name", ["hf", "sp"])
def test_decode_round_trip(dirs, auto, name):
    tokenizer, reference = Tokenizer(dirs[name]), auto(name)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        for skip in (True, False):
            expected = reference.decode(ids.tolist(), skip_special_tokens=skip)
            assert tokenizer.decode(ids, skip_special_tokens=skip) == expected
        if name == "sp" and text.startswith((" ", "\u2581")):
            # one leading space (or "▁", which is the space mark) is dropped by the encoding, in transformers too: " x"
            # and "x" give the same ids
            assert tokenizer.decode(ids) == text[1:]
        else:
            assert tokenizer.decode(ids) == text, repr(text)
    assert tokenizer.decode(tokenizer.encode("Hello world", bos=True, eos=True), skip_special_tokens=False) == {
        "hf": "<s>Hello world</s>",
        "sp": "<s> Hello world</s>",
    }[name]
    assert tokenizer.decode([]) == ""
    assert tokenizer.decode(torch.tensor(tokenizer.eos_id)) == ""  # a 0-d tensor
    assert tokenizer.decode(tokenizer.eos_id, skip_special_tokens=False) == tokenizer.decode([tokenizer.eos_id], skip_special_tokens=False) != ""  # one id


def test_sentencepiece_leading_space(dirs, auto):
    """sentencepiece's dummy prefix makes " Hello" "▁▁Hello"; transformers 5 (and so we) make it "▁Hello"."""
    import sentencepiece

    tokenizer = Tokenizer(dirs["sp"])
    processor = sentencepiece.SentencePieceProcessor(model_file=str(dirs["sp"] / "tokenizer.model"))
    space = processor.piece_to_id("▁")
    assert tokenizer.encode(" Hello", bos=False).tolist() == tokenizer.encode("Hello", bos=False).tolist()
    assert processor.encode(" Hello") == [space, *processor.encode("Hello")]
    assert tokenizer.encode("  Hello", bos=False).tolist() == [space, *processor.encode("Hello")]
    assert tokenizer.encode(" ", bos=False).tolist() == [space]
    assert auto("sp")(" ", add_special_tokens=False)["input_ids"] == [space]
    assert tokenizer.encode("Hello").tolist() == [1, *processor.encode("Hello")]


SPECIAL_TEXTS = [
    "<s>",
    "</s>",
    "<unk>",
    "<s>Hello world",
    "Hello world</s>",
    "Hello</s> world",
    "the <s> quick",
    "the<s>quick",
    " <s> fox",
    "<s></s>",
    "</s><s>",
    "<s> Hello",
    "<s>  Hello",
    "<s> ",
    "fox</s><s>dog",
    "  </s>  ",
    "\n<s>\n",
    "<s>日本語</s>🦩",
    "<<s>>",
    "<s",
    "</s >",
    "Hello <unk> world",
    "<s>[INST] Hello world [/INST] Hi </s><s>[INST] Bye [/INST]",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "a <start_of_turn> b <end_of_turn> c",
    "x <tool> y </tool> z",
    "x<tool>y </tool>\n\tz",
    "  <tool>  ",
    "\u3000</tool>",
    "<tool></tool><start_of_turn></s>",
]
"""Special-token strings at the start, middle and end of a text, next to spaces, to each other and to unseen text;
sp_turns' markers and added tokens (plain text in the other folders)."""


@pytest.mark.parametrize("name", SP_NAMES)
def test_special_token_strings_are_their_ids(dirs, auto, name):
    """A SentencePiece checkpoint's special-token strings (``<s>``, ``</s>``, ``<unk>``, its control symbols, the
    tokens of added_tokens_decoder) are split out of the text as their ids, as transformers 5 does, with BOS added
    or not; decode gives transformers' text back, with or without the special tokens."""
    tokenizer, reference = Tokenizer(dirs[name]), auto(name)
    for text in SPECIAL_TEXTS:
        ids = tokenizer.encode(text).tolist()
        assert ids == reference(text)["input_ids"], repr(text)
        assert tokenizer.encode(text, bos=False).tolist() == reference(text, add_special_tokens=False)["input_ids"], repr(text)
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), repr(text)
    assert tokenizer.encode_batch(SPECIAL_TEXTS) == [reference(t)["input_ids"] for t in SPECIAL_TEXTS]
    assert tokenizer.encode("<s>", bos=False).tolist() == [tokenizer.bos_id] == [1]
    assert tokenizer.encode("Hello</s>", bos=False).tolist()[-1] == tokenizer.eos_id == 2
    assert tokenizer.encode("<unk>", bos=False).tolist() == [0]
    if name.startswith("sp_turns"):
        assert tokenizer.encode("<start_of_turn><end_of_turn>[INST][/INST]<tool></tool>", bos=False).tolist() == [3, 4, 5, 6, 600, 601]
        assert tokenizer.vocab_size == len(reference) == 602
        assert tokenizer.token_to_id("<tool>") == reference.convert_tokens_to_ids("<tool>") == 600
        # special ones are left out, <tool> (special: false) is not; legacy gives "b" its "▁"
        text = tokenizer.decode(tokenizer.encode("<s>a<tool>b</tool>", bos=False))
        assert text == {"sp_turns": "a<tool>b", "sp_turns_generic": "a<tool> b", "sp_turns_generic_first": "a<tool>b"}[name]


def test_the_dummy_prefix_next_to_special_tokens(dirs):
    """What transformers does with the "▁" of a text split by special tokens (found by trying it, see the module's
    docstring): only the start of the text gets it ("first"), the part after a special token not, unless that part
    starts with a space, which becomes the "▁"; with ``"legacy": true`` every part gets one ("always"); a checkpoint
    without tokenizer_class is converted generically, legacy by default, and each part is then sentencepiece's own."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(dirs["sp"] / "tokenizer.model"))
    first, legacy = Tokenizer(dirs["sp"]), Tokenizer(dirs["sp_legacy"])
    fox, space = processor.encode("fox"), processor.piece_to_id("▁")  # "▁fox"-ish
    assert processor.id_to_piece(fox[0]).startswith("▁")
    after = first.encode("<s>fox", bos=False).tolist()
    assert after[0] == 1 and not processor.id_to_piece(after[1]).startswith("▁") and processor.decode(after[1:]) == "fox"
    assert first.encode("<s> fox", bos=False).tolist() == legacy.encode("<s>fox", bos=False).tolist() == [1, *fox]
    assert legacy.encode("<s> fox", bos=False).tolist() == [1, *fox]
    assert first.encode("fox<s>", bos=False).tolist() == legacy.encode("fox<s>", bos=False).tolist() == [*fox, 1]

    turns = sentencepiece.SentencePieceProcessor(model_file=str(dirs["sp_turns"] / "tokenizer.model"))
    generic = Tokenizer(dirs["sp_turns_generic"])
    assert generic.encode("<s> fox", bos=False).tolist() == [1, *turns.encode(" fox")] == [1, space, *turns.encode("fox")]
    assert generic.encode(" fox", bos=False).tolist() == turns.encode(" fox")


LEGACY_NORMALIZER = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
"""The normalizer of the tokenizer.json that Llama 2, TinyLlama, Mistral 7B and Phi-3 ship (no pre-tokenizer)."""


@pytest.fixture(scope="session")
def sp_json(dirs, tmp_path_factory) -> Path:
    """The ``sp_turns`` model as transformers 5 saves it: a tokenizer.json with byte fallback (ByteFallback in its
    decoder, as in Llama 2's, Mistral's and Gemma's files) and its turn markers as special added tokens."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    folder = tmp_path_factory.mktemp("sp_json")
    transformers.AutoTokenizer.from_pretrained(str(dirs["sp_turns"])).save_pretrained(str(folder))
    (folder / "tokenizer.model").unlink(missing_ok=True)
    return folder


def test_a_llama_tokenizer_json_is_run_as_transformers_rebuilds_it(sp_json, tmp_path):
    """transformers 5 does not run the SentencePiece-style tokenizer.json of a Llama checkpoint as written: it builds
    LlamaTokenizer's pipeline around its vocabulary. Run as written, "[INST] What" of Llama 2's chat template came out
    as [INST], "▁", "▁What" (transformers: [INST], "▁What"), in every user turn. For other model types with the same
    class (Mistral, Phi-3) transformers runs the file as it is, lone "▁" included, and so must we."""
    import transformers

    base = shutil.copytree(sp_json, tmp_path / "saved")
    spec = json.loads((base / "tokenizer.json").read_text())
    spec.update(normalizer=LEGACY_NORMALIZER, pre_tokenizer=None)
    _write_json(base / "tokenizer.json", spec)
    config = json.loads((base / "tokenizer_config.json").read_text())
    texts = [*TEXTS, "[INST] What is  2+2?[/INST]", "[INST]What", "<s> fox</s> [INST]\n x", "\u2581fox"]
    lone = {}
    cases = [(None, "LlamaTokenizer", {}), ("llama", "LlamaTokenizerFast", {}), ("llama", "LlamaTokenizer", {"legacy": True}),
             ("llama", "LlamaTokenizer", {"add_prefix_space": False}), ("llama", "CodeLlamaTokenizer", {"add_prefix_space": False}),
             ("mistral", "LlamaTokenizer", {}), ("phi3", "LlamaTokenizer", {}), ("llama", None, {}),
             ("gemma", "LlamaTokenizer", {}), ("olmo2", "LlamaTokenizer", {})]  # (rebuilt for gemma, as written for olmo2)
    for i, (model_type, tokenizer_class, extra) in enumerate(cases):
        folder = _variant(base, tmp_path / str(i), tokenizer_config__json={**config, "tokenizer_class": tokenizer_class, **extra})
        if model_type:
            _write_json(folder / "config.json", {"model_type": model_type})
        ours, reference = Tokenizer(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
        for text in texts:
            ids = ours.encode(text).tolist()
            assert ids == reference(text)["input_ids"], (model_type, tokenizer_class, extra, text)
            assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), (model_type, tokenizer_class, extra, text)
        lone[model_type, tokenizer_class] = reference.convert_ids_to_tokens(ours.encode("[INST] fox", bos=False).tolist())
    assert lone[("mistral", "LlamaTokenizer")] == [lone[("llama", "LlamaTokenizerFast")][0], "\u2581", *lone[("llama", "LlamaTokenizerFast")][1:]]
    assert lone[("llama", "LlamaTokenizerFast")][:2] == ["[INST]", "\u2581f"]


def test_sentencepiece_normalization_is_applied(dirs, auto):
    """With sentencepiece's default rule (NFKC, collapsed whitespace) decode(encode(x)) is the normalized x, not x,
    and the ids are sentencepiece's own. transformers 5 skips the model's normalizer, so here it disagrees."""
    import sentencepiece

    tokenizer = Tokenizer(dirs["sp_nfkc"])
    processor = sentencepiece.SentencePieceProcessor(model_file=str(dirs["sp_nfkc"] / "tokenizer.model"))
    text = "Ｆｕｌｌ-width ﬁ ①  spaces\tand\ttabs\n日本語 👨‍👩‍👧‍👦"
    assert tokenizer.encode(text).tolist() == [1, *processor.encode(text)]
    assert tokenizer.decode(tokenizer.encode(text)) == "Full-width fi 1 spaces and tabs 日本語 👨‍👩‍👧‍👦"
    assert tokenizer.encode(text).tolist() != auto("sp_nfkc")(text)["input_ids"]


@pytest.mark.parametrize("name", ["hf", "sp"])
def test_bos_and_eos_flags(dirs, name):
    tokenizer = Tokenizer(dirs[name])
    assert tokenizer.add_bos is True
    default = tokenizer.encode(SAMPLE)
    without = tokenizer.encode(SAMPLE, bos=False)
    assert default[0] == tokenizer.bos_id and torch.equal(default[1:], without)
    assert without[0] != tokenizer.bos_id
    with_eos = tokenizer.encode(SAMPLE, eos=True)
    assert torch.equal(with_eos[:-1], default) and with_eos[-1] == tokenizer.eos_id
    assert torch.equal(tokenizer.encode(SAMPLE, max_length=5), default[:5])
    assert tokenizer.encode("", bos=True).tolist() == [tokenizer.bos_id]


def test_bos_rules_follow_transformers(dirs):
    """tokenizer.json: the post-processor decides, add_bos_token in tokenizer_config.json is ignored.
    tokenizer.model: add_bos_token decides, and its absence means no BOS (even for LlamaTokenizer)."""
    no_post = Tokenizer(dirs["hf_no_post"])
    assert no_post.add_bos is False and no_post.bos_id == 0
    assert no_post.encode("Hello").tolist() == Tokenizer(dirs["hf"]).encode("Hello", bos=False).tolist()
    assert no_post.encode("Hello", bos=True)[0] == 0

    no_add_bos = Tokenizer(dirs["sp_no_add_bos"])
    assert no_add_bos.add_bos is False and no_add_bos.bos_id == 1
    assert no_add_bos.encode("Hello").tolist() == Tokenizer(dirs["sp"]).encode("Hello")[1:].tolist()


def test_stop_ids(dirs):
    hf = Tokenizer(dirs["hf"])
    eos, eot = hf.token_to_id("</s>"), hf.token_to_id("<|eot|>")
    assert (eos, eot) == (1, 3)
    assert hf.eos_id == eos
    assert hf.stop_ids == {eos} | {1, 3} == {1, 3}  # generation_config.json: [1, 3]
    assert Tokenizer(dirs["sp"]).stop_ids == {2}  # eos 2, generation_config.json: 2
    assert Tokenizer(dirs["sp_nfkc"]).stop_ids == {2}  # no generation_config.json


def test_special_token_fallbacks(dirs):
    from_config = Tokenizer(dirs["hf_config_ids"])  # config.json: bos 0, eos [3, 1]
    # no generation_config.json: generate stops on every eos id of config.json, as transformers' generate does
    assert (from_config.bos_id, from_config.eos_id, from_config.stop_ids) == (0, 3, {1, 3})
    from_map = Tokenizer(dirs["hf_special_map"])  # special_tokens_map.json: <s>, <|eot|>
    assert (from_map.bos_id, from_map.eos_id, from_map.stop_ids) == (0, 3, {3})
    from transformers import AutoTokenizer

    null_bos = Tokenizer(dirs["hf_null_bos"])  # tokenizer_config.json says none: config.json's id does not count
    reference = AutoTokenizer.from_pretrained(dirs["hf_null_bos"])
    assert (null_bos.bos_id, null_bos.eos_id) == (reference.bos_token_id, reference.eos_token_id) == (None, 1)


@pytest.mark.parametrize("name", ["hf", "sp"])
def test_token_to_id_and_backend(dirs, auto, name):
    tokenizer, reference = Tokenizer(dirs[name]), auto(name)
    assert tokenizer.backend == {"hf": "huggingface", "sp": "sentencepiece"}[name]
    for token in ("<s>", "</s>", "<unk>"):
        assert tokenizer.token_to_id(token) == reference.convert_tokens_to_ids(token)
    assert tokenizer.token_to_id("definitely not a token") is None


def test_chat_template(dirs, auto):
    assert Tokenizer(dirs["hf"]).chat_template == auto("hf").chat_template
    assert "<|{{ m.role }}|>" in Tokenizer(dirs["hf"]).chat_template
    template = (dirs["sp"] / "chat_template.jinja").read_text()
    assert Tokenizer(dirs["sp"]).chat_template == template == auto("sp").chat_template
    assert Tokenizer(dirs["sp_nfkc"]).chat_template is None


def test_missing_tokenizer(tmp_path):
    for folder in (tmp_path, tmp_path / "does-not-exist"):
        with pytest.raises(FileNotFoundError) as error:
            Tokenizer(folder)
        message = str(error.value)
        assert str(folder) in message and "tokenizer.json" in message and "tokenizer.model" in message
        assert "\n" not in message


def test_tokenizer_files():
    needed = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json"}
    assert needed <= set(TOKENIZER_FILES)
    assert len(set(TOKENIZER_FILES)) == len(TOKENIZER_FILES)


@pytest.mark.parametrize("kind", ["hf", "sp", "sp_nfkc", "sp_turns", "sp_json"])
def test_text_stream_pieces_add_up_to_the_whole_decode_at_a_constant_cost(dirs, kind, request):
    """Streamed text (one token at a time, or a few) is exactly ``decode`` of all the ids, for byte-level BPE and
    SentencePiece (leading spaces, byte fallback), real text and random ids alike; and each step decodes a short
    window, not the whole sequence (a 2,000-token stream decodes about 4 ids per token, not 1,000). sp_json: a
    skipped special token between characters written as byte tokens ("<0xE3>"...) once widened the window into the
    middle of a character, where tokenizers' ByteFallback makes the whole byte run U+FFFD: all later text came out so."""
    import random

    from litgpt_clone.generate import TextStream

    tokenizer = Tokenizer(request.getfixturevalue("sp_json") if kind == "sp_json" else dirs[kind])
    rng = random.Random(0)
    texts = [CORPUS, "Café 日本語 😀👍 déjà vu\n\n  two  spaces, then a tab\tend."]
    sequences = [tokenizer.encode(t, bos=False).tolist() for t in texts]
    if kind == "sp_json":
        unseen = tokenizer.encode("龘鱻", bos=False).tolist()  # characters the model has no piece for: 3 byte tokens each
        assert len(unseen) == 7  # ("▁" first)
        sequences.append(unseen + [tokenizer.token_to_id("<end_of_turn>")] + unseen[1:])  # bytes on both sides of it
        stream_ = TextStream(tokenizer)
        streamed = "".join(stream_.add([i]) for i in sequences[-1]) + stream_.flush()
        assert streamed == tokenizer.decode(sequences[-1]) == "龘鱻龘鱻"
    if kind != "sp_json":  # (tokenizers' ByteFallback turns a whole run of byte tokens into U+FFFD when any of it is
        # not UTF-8, so in random ids a stray byte token changes characters decoded long before it: no stream can match)
        sequences += [[rng.randrange(tokenizer.vocab_size) for _ in range(300)] for _ in range(3)]  # special, partial bytes
    for ids in sequences:
        for chunk in (1, 3):
            stream_ = TextStream(tokenizer)
            pieces = [stream_.add(ids[i : i + chunk]) for i in range(0, len(ids), chunk)] + [stream_.flush()]
            assert "".join(pieces) == tokenizer.decode(ids)

    class Counting:  # the same tokenizer, counting the ids each decode call is given
        decoded = 0

        def decode(self, ids):
            Counting.decoded += len(ids)
            return tokenizer.decode(ids)

    ids = (tokenizer.encode(CORPUS, bos=False).tolist() * 40)[:2000]
    stream_ = TextStream(Counting())
    text = "".join(stream_.add([i]) for i in ids) + stream_.flush()
    assert text == tokenizer.decode(ids)
    assert Counting.decoded < 8 * len(ids), Counting.decoded


def test_stop_ids_from_config_json_without_a_generation_config(tmp_path):
    """transformers' generate takes eos_token_id from config.json when there is no generation_config.json (an instruct
    model listing its end-of-turn id there stopped only on the tokenizer's EOS here)."""
    import json
    import shutil

    from litgpt_clone.tokenizer import Tokenizer
    from test_generate import write_tokenizer

    write_tokenizer(tmp_path / "a")
    base = Tokenizer(tmp_path / "a")
    extra = next(i for i in range(5, 50) if i != base.eos_id)
    (tmp_path / "a" / "generation_config.json").unlink(missing_ok=True)
    (tmp_path / "a" / "config.json").write_text(json.dumps({"eos_token_id": [base.eos_id, extra]}))
    assert Tokenizer(tmp_path / "a").stop_ids == {base.eos_id, extra}
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "generation_config.json").write_text(json.dumps({"eos_token_id": base.eos_id}))  # it wins
    assert Tokenizer(tmp_path / "b").stop_ids == {base.eos_id}


def test_text_stream_keeps_the_space_after_unknown_tokens(tmp_path):
    """WordPiece (and Unigram) decoders skip an unknown token and put a space before each word that follows: streamed
    one token at a time, the word after an unknown token lost that space ("emojifamily end")."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    from litgpt_clone.generate import TextStream

    tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([CORPUS], trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"], show_progress=False))
    tmp_path.mkdir(exist_ok=True)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"unk_token": "[UNK]", "eos_token": "[SEP]"}')
    tokenizer = Tokenizer(tmp_path)
    ids = tokenizer.encode("emoji ☃ family ☃ ☃ end", bos=False).tolist()  # (☃ is not in the vocabulary)
    assert tokenizer.token_to_id("[UNK]") in ids
    assert tokenizer.decode(ids) == "emoji family end"
    stream_ = TextStream(tokenizer)
    assert "".join(stream_.add([i]) for i in ids) + stream_.flush() == tokenizer.decode(ids)


def test_a_named_special_token_is_left_out_of_decoded_text(dirs, tmp_path):
    """A finetune that adds a token as plain text (tokenizer.json: special false) and names it eos_token: transformers
    makes every named special token special, so decode(skip_special_tokens=True) leaves it out; we kept it."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer

    folder = shutil.copytree(dirs["hf"], tmp_path / "named_eos")
    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens(["</think>", "<think>"])  # plain added tokens
    tok.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    _write_json(folder / "tokenizer_config.json", {**config, "eos_token": "</think>"})
    ours, reference = Tokenizer(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = ours.encode("a<think>b</think>c", bos=False).tolist()
    assert ids == reference("a<think>b</think>c", add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True) == "a<think>bc"
    assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids) == "a<think>b</think>c"
    assert ours.eos_id == reference.eos_token_id


@pytest.mark.parametrize("name,special", [("hf", "<|eot|>"), ("sp_turns", "[INST]")])
def test_stop_strings_holding_special_tokens_end_where_transformers_stops(dirs, auto, name, special):
    """A stop string with a special token's text and more ("<|eot|>\n", "\n<s>") never matched: special tokens are
    left out of the text it was looked for in, so generation ran on to max_new_tokens. It now stops at the token
    where transformers' StopStringCriteria stops, and the text ends where the stop string starts (nothing of it shown),
    also where a SentencePiece decoder drops the space of a slice's first token (a character was lost, or a space added)."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    from litgpt_clone.generate import TextStream

    tokenizer, reference = Tokenizer(dirs[name]), auto(name)
    ids = tokenizer.encode(f"Sure the quick fox{special}\nuser said{special} hello\nmore", bos=False).tolist()
    with_special = tokenizer.decode(ids, skip_special_tokens=False)
    for stop in [f"{special}\n", f"fox{special}", f"ox{special}", f"{special} hello", f"\nuser said{special}", f" said{special}"]:
        for chunk in (1, 3):
            stream_, pieces, fed = TextStream(tokenizer, [stop]), [], 0
            for k in range(0, len(ids), chunk):
                pieces.append(stream_.add(ids[k : k + chunk]))
                fed = min(k + chunk, len(ids))
                if stream_.stopped:
                    break
            criteria = StopStringCriteria(reference, [stop])
            stops_at = next(k for k in range(1, len(ids) + 1) if criteria(torch.tensor([ids[:k]]), None)[0])
            expected = with_special[: with_special.find(stop)].replace(special, "")
            assert stream_.stopped and "".join(pieces) + stream_.flush() == stream_.text == expected, (stop, chunk)
            assert fed == stops_at if chunk == 1 else stops_at <= fed < stops_at + chunk, (stop, fed, stops_at)


def test_the_fingerprint_of_tokenized_data_follows_what_encode_depends_on(dirs, tmp_path, monkeypatch):
    """Tokenized data caches (pretrain text, SFT samples) are keyed by ``Tokenizer.fingerprint``: it changes with the
    files encode reads (config.json's model_type decides a Llama tokenizer.json's pipeline) and with
    ENCODING_VERSION (a fix to encode would otherwise leave caches of the old ids in use); not otherwise."""
    import litgpt_clone.tokenizer as tokenizer_module

    folder = shutil.copytree(dirs["sp"], tmp_path / "sp")
    first = Tokenizer(folder).fingerprint()
    assert Tokenizer(folder).fingerprint() == first
    _write_json(folder / "config.json", {"model_type": "mistral"})
    assert Tokenizer(folder).fingerprint() != first
    second = Tokenizer(folder).fingerprint()
    monkeypatch.setattr(tokenizer_module, "ENCODING_VERSION", tokenizer_module.ENCODING_VERSION + 1)
    assert Tokenizer(folder).fingerprint() not in (first, second)


def test_named_chat_template_files_are_read_and_copied_as_transformers_saves_them(tmp_path):
    """transformers 5 saves several named templates as chat_template.jinja (the default) and
    additional_chat_templates/<name>.jinja, not in tokenizer_config.json: they were not read (no template at all, so
    the prompt went in alone), nor copied by convert or into checkpoints, nor downloaded."""
    from transformers import AutoTokenizer

    from litgpt_clone.chat_template import render_for_tokenizer
    from litgpt_clone.checkpoints.convert import copy_aux_files
    from litgpt_clone.checkpoints.download import select_files
    from test_chat_template import _tokenizer_folder

    reference = AutoTokenizer.from_pretrained(_tokenizer_folder(tmp_path / "src", "", "<s>", "</s>"))
    reference.chat_template = {"default": "D:{{ messages[0].content }}", "tool_use": "T{{ tools | length }}:{{ messages[0].content }}"}
    reference.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved" / "additional_chat_templates").iterdir()) == ["tool_use.jinja"]
    reference = AutoTokenizer.from_pretrained(tmp_path / "saved")
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "user", "content": "hello"}]
    copy_aux_files(tmp_path / "saved", tmp_path / "copy")  # (what convert from_hf / to_hf do with them)
    for folder in ("saved", "copy"):
        ours = Tokenizer(tmp_path / folder)
        for kwargs in ({}, {"tools": tools}):
            expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
            assert render_for_tokenizer(ours, messages, **kwargs) == expected
    assert render_for_tokenizer(Tokenizer(tmp_path / "copy"), messages, tools=tools) == "T1:hello"
    files = ["config.json", "model.safetensors", "chat_template.jinja", "additional_chat_templates/tool_use.jinja", "additional_chat_templates/x/y.jinja"]
    assert select_files(files) == sorted(files[:4])
