"""``litgpt_clone.generate`` and ``litgpt-clone generate`` against ``transformers``' own ``generate``.

Tiny random models of several families are built with transformers (``parity.build_hf``), converted, and given a
byte-level BPE tokenizer trained here, so that the real CLI can run on them. Greedy decoding must give
transformers' greedy tokens (``model.generate(do_sample=False)``) token for token, alone and in a left-padded
batch; the sampling filters must give transformers' warpers' distributions.

The helpers at the top (``checkpoints``, ``hf_greedy``, ...) are shared with test_api.py and test_chat.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from transformers import (
    Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, MixtralConfig,
    MixtralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
)

from litgpt_clone.__main__ import main
from litgpt_clone.checkpoints.convert import convert_hf_checkpoint
from litgpt_clone.generate import (
    GenerationError, TextStream, accept_proposals, generate, logits_to_probs, sample, stream,
)
from litgpt_clone.model import GPT
from litgpt_clone.tokenizer import Tokenizer
from parity import build_hf

CORPUS = """\
The quick brown fox jumps over the lazy dog. Language models read tokens and write them back as text.
Once upon a time there was a small model that wanted to generate stories about llamas and their food.
def add(a, b):
    return a + b
for i in range(10):
    print(i, "is", "even" if i % 2 == 0 else "odd")
Café, naïve, déjà vu. 日本語のテキスト。中文文本。Emoji: 😀 👍 🚀
"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog and", "def add"]


def write_tokenizer(path: Path, chat_template: str | None = None) -> list[int]:
    """A byte-level BPE trained on CORPUS, saved as a checkpoint's tokenizer files (EOS <|endoftext|>).
    Returns its vocabulary size and the ids of <|endoftext|> and <|im_end|>, the stop ids."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": None}
    if chat_template:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size(), [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")]


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
FAMILIES = {
    "llama": (LlamaForCausalLM, lambda v: LlamaConfig(**TINY, vocab_size=v), "sdpa"),
    # a window shorter than every prompt + new tokens here
    "mistral-sliding": (MistralForCausalLM, lambda v: MistralConfig(**TINY, vocab_size=v, sliding_window=6), "sdpa"),
    "mixtral": (MixtralForCausalLM, lambda v: MixtralConfig(**TINY, vocab_size=v, num_local_experts=4, num_experts_per_tok=2), "sdpa"),
    # soft-capping makes transformers run Gemma 2 in eager attention; window 6 on every other layer
    "gemma2": (
        Gemma2ForCausalLM,
        lambda v: Gemma2Config(**TINY, vocab_size=v, head_dim=16, sliding_window=6, query_pre_attn_scalar=16,
                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
        "eager",
    ),
    "qwen3": (Qwen3ForCausalLM, lambda v: Qwen3Config(**TINY, vocab_size=v, head_dim=32), "sdpa"),
}
LONGROPE = dict(rope_type="longrope", original_max_position_embeddings=32, short_factor=[1.0 + 0.1 * i for i in range(8)],
                long_factor=[1.5 + 0.7 * i for i in range(8)])
MORE_FAMILIES = {  # checkpoint() builds these too; the family-wide parity tests leave them out
    # longrope switching to its long factors past position 32; weights large enough that the factors decide tokens
    # (batched generation takes one table for the batch, as transformers' does, so it is not one-at-a-time's here)
    "llama-longrope": (
        LlamaForCausalLM,
        lambda v: LlamaConfig(**TINY, vocab_size=v, max_position_embeddings=128, initializer_range=0.1, rope_scaling=LONGROPE),
        "sdpa",
    ),
    # the same with Phi-3, whose generation recomputes every key with the long factors at the switch
    "phi3-longrope": (
        Phi3ForCausalLM,
        lambda v: Phi3Config(**TINY, vocab_size=v, max_position_embeddings=128, original_max_position_embeddings=32,
                             initializer_range=0.1, rope_scaling=LONGROPE),
        "sdpa",
    ),
}


@functools.lru_cache(maxsize=None)
def checkpoint(root: Path, family: str, chat_template: str | None = None, max_positions: int | None = None, seed: int = 0):
    """(transformers model, native checkpoint folder) of a tiny random ``family`` model with the CORPUS tokenizer."""
    # (one folder per template: two tests with different templates shared one, and the later one's template won)
    name = f"{family}-{seed}" + (f"-chat{zlib.crc32(chat_template.encode()):08x}" if chat_template else "") + (f"-{max_positions}" if max_positions else "")
    hf_dir, native_dir = root / name / "hf", root / name / "native"
    vocab, stop_ids = write_tokenizer(hf_dir, chat_template)
    model_cls, make_config, attn = {**FAMILIES, **MORE_FAMILIES}[family]
    config = make_config(vocab)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, stop_ids[0], None
    if max_positions:
        config.max_position_embeddings = max_positions
    hf_model = build_hf(model_cls, config, hf_dir, seed=seed, attn_implementation=attn)
    # like many instruct checkpoints: generation_config.json stops on more ids than the tokenizer's EOS
    (hf_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": stop_ids}))
    convert_hf_checkpoint(hf_dir, native_dir)
    return hf_model, native_dir


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "generate_models"


@pytest.fixture
def llama(models_root):
    """The tiny Llama: (transformers model, checkpoint folder, Tokenizer, our GPT)."""
    hf_model, native = checkpoint(models_root, "llama")
    return hf_model, native, Tokenizer(native), GPT.from_checkpoint(native).eval()


def hf_greedy(hf_model, ids, max_new_tokens: int, stop_ids=()) -> list[int]:
    """transformers' greedy continuation of ``ids``, without the stop id that ended it."""
    ids = torch.as_tensor(ids)[None]
    with torch.no_grad():
        out = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=sorted(stop_ids) or None, pad_token_id=0,
        )[0, ids.size(1):].tolist()
    ends = next((i for i, t in enumerate(out) if t in stop_ids), len(out))
    return out[:ends]


def run_main(capsys, *args) -> str:
    """``litgpt-clone <args>`` in this process (fast: no interpreter start); its stdout."""
    capsys.readouterr()
    main([*map(str, args)])
    return capsys.readouterr().out


def cli(*args, check=True, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "litgpt_clone", *map(str, args)], capture_output=True, text=True, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# ----------------------------------------------------------------------------- greedy == transformers
@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_matches_transformers_alone_and_batched(family, models_root):
    hf_model, native = checkpoint(models_root, family)
    tokenizer = Tokenizer(native)
    model = GPT.from_checkpoint(native).eval()
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 3  # different lengths: the batch is left-padded
    expected = [hf_greedy(hf_model, p, 12, tokenizer.stop_ids) for p in prompts]
    assert sum(map(len, expected)) > 12
    alone = [generate(model, [p], 12, stop_ids=tokenizer.stop_ids)[0].tolist() for p in prompts]
    assert alone == expected
    batched = generate(model, prompts, 12, stop_ids=tokenizer.stop_ids)
    assert [b.tolist() for b in batched] == expected


def test_cli_greedy_matches_transformers(llama):
    hf_model, native, tokenizer, _ = llama
    expected = tokenizer.decode(hf_greedy(hf_model, tokenizer.encode(PROMPTS[1]), 16, tokenizer.stop_ids))
    proc = cli("generate", native, "--prompt", PROMPTS[1], "--max_new_tokens", 16, "--temperature", 0)
    assert proc.stdout == expected + "\n"
    assert "Time to first token" in proc.stderr and "tokens/s" in proc.stderr and "peak RSS" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_cli_greedy_matches_transformers_families(family, models_root):
    hf_model, native = checkpoint(models_root, family)
    tokenizer = Tokenizer(native)
    expected = tokenizer.decode(hf_greedy(hf_model, tokenizer.encode(PROMPTS[0]), 16, tokenizer.stop_ids))
    assert cli("generate", native, "--prompt", PROMPTS[0], "--max_new_tokens", 16, "--temperature", 0).stdout == expected + "\n"


def test_cli_applies_chat_template_of_instruct_checkpoints(models_root, capsys, tmp_path):
    """A tokenizer with a chat_template gets it (the ids of transformers' apply_chat_template); false turns it off."""
    from transformers import AutoTokenizer

    hf_model, native = checkpoint(models_root, "llama", chat_template=CHATML)
    tokenizer = Tokenizer(native)
    hf_tok = AutoTokenizer.from_pretrained(native)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon"}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    expected = tokenizer.decode(hf_greedy(hf_model, ids, 10, tokenizer.stop_ids))
    out = run_main(capsys, "generate", native, "--prompt", "Once upon", "--system", "Be brief.", "--max_new_tokens", 10, "--temperature", 0)
    assert out == expected + "\n"
    raw = tokenizer.decode(hf_greedy(hf_model, tokenizer.encode("Once upon"), 10, tokenizer.stop_ids))
    out = run_main(capsys, "generate", native, "--prompt", "Once upon", "--max_new_tokens", 10, "--temperature", 0, "--chat_template", "false")
    assert out == raw + "\n" and raw != expected
    # a system message without a template, or a template asked of a checkpoint without one: a note says what happens
    main(["generate", str(native), "--prompt", "Once upon", "--max_new_tokens", "2", "--chat_template", "false", "--system", "Be brief."])
    assert "note: --system is not used: it goes into a chat template, and the prompt is sent as it is here" in capsys.readouterr().err
    _, base = checkpoint(models_root, "llama")
    main(["generate", str(base), "--prompt", "Once upon", "--max_new_tokens", "2", "--chat_template", "true"])
    assert "note: this checkpoint has no chat template: the prompt goes in as plain text (the 'plain' style)\n" in capsys.readouterr().err
    main(["generate", str(base), "--prompt", "Once upon", "--max_new_tokens", "2", "--chat_template", "true", "--system", "Be brief."])
    assert "(the 'plain' style), without --system (the plain style keeps the user's message only)" in capsys.readouterr().err
    # a draft model is checked for its tokenizer, not only its vocabulary size, and runs uncompiled (compile was ignored)
    import shutil

    other = shutil.copytree(checkpoint(models_root, "qwen3", seed=1)[1], tmp_path / "other-tokenizer")
    vocab = json.loads((other / "tokenizer.json").read_text())
    tokens = vocab["model"]["vocab"]
    a, b = sorted(tokens, key=tokens.get)[300:302]  # two tokens swap ids: same size, other meaning
    tokens[a], tokens[b] = tokens[b], tokens[a]
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    qwen = checkpoint(models_root, "qwen3")[1]
    capsys.readouterr()  # (what building the models printed)
    assert one_line_error(capsys, qwen, "--prompt", "Hi", "--draft_model", other).endswith(f"has another tokenizer than {qwen}: use a draft of the same family")
    assert one_line_error(capsys, qwen, "--prompt", "Hi", "--draft_model", qwen, "--compile", "true") == (
        "error: speculative decoding (draft_model) runs uncompiled: leave out compile, or the draft model")


# ----------------------------------------------------------------------------- stopping
def test_stop_ids_from_generation_config(llama, tmp_path):
    """Every eos_token_id of generation_config.json stops generation, not only the tokenizer's EOS."""
    hf_model, native, tokenizer, model = llama
    prompt = tokenizer.encode(PROMPTS[0])
    free = generate(model, [prompt], 12)[0].tolist()
    stopper = free[4]
    assert stopper not in free[:4]
    config = json.loads((native / "generation_config.json").read_text())
    config["eos_token_id"] = [*config["eos_token_id"], stopper]
    (tmp_path / "tok").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "tok" / name).write_text((native / name).read_text())
    (tmp_path / "tok" / "generation_config.json").write_text(json.dumps(config))
    stop_ids = Tokenizer(tmp_path / "tok").stop_ids
    assert stop_ids == {tokenizer.eos_id, tokenizer.token_to_id("<|im_end|>"), stopper}
    assert generate(model, [prompt], 12, stop_ids=stop_ids)[0].tolist() == free[:4]
    assert hf_greedy(hf_model, prompt, 12, stop_ids) == free[:4]
    # in a batch, only the row that met it stops
    other = tokenizer.encode(PROMPTS[2])
    other_free = generate(model, [other], 12)[0].tolist()
    rows = generate(model, [prompt, other], 12, stop_ids={stopper})
    cut = next((i for i, t in enumerate(other_free) if t == stopper), 12)
    assert [r.tolist() for r in rows] == [free[:4], other_free[:cut]]


def test_stop_strings(llama, capsys):
    _, native, tokenizer, model = llama
    prompt = tokenizer.encode(PROMPTS[0])
    free = generate(model, [prompt], 16)[0].tolist()
    text = tokenizer.decode(free)
    stop = text[len(tokenizer.decode(free[:6])):][:3]  # text that starts after token 6
    assert len(stop) == 3 and stop not in tokenizer.decode(free[:6])
    tokens = generate(model, [prompt], 16, stop_strings=[stop, "never appears"], tokenizer=tokenizer)[0].tolist()
    assert tokens == free[: len(tokens)] and len(tokens) < 16
    assert stop in tokenizer.decode(tokens) and stop not in tokenizer.decode(tokens[:-1])
    out = run_main(capsys, "generate", native, "--prompt", PROMPTS[0], "--max_new_tokens", 16, "--temperature", 0, "--stop", stop)
    assert out == text[: text.index(stop)] + "\n"
    # `--stop` given twice adds both (the earlier one in the text wins), as `[--stop "..."]*` reads
    early = text[len(tokenizer.decode(free[:3])):][:2]
    assert text.index(early) < text.index(stop)
    for order in ((stop, early), (early, stop)):
        out = run_main(capsys, "generate", native, "--prompt", PROMPTS[0], "--max_new_tokens", 16, "--temperature", 0,
                       "--stop", order[0], "--stop", order[1])
        assert out == text[: text.index(early)] + "\n"
    with pytest.raises(GenerationError, match="tokenizer"):
        generate(model, [prompt], 4, stop_strings=["x"])


def test_stop_string_that_is_a_special_token_matches_transformers(tmp_path):
    """A stop string that is a special token's text ("<|im_start|>" from a base model writing ChatML) never matched:
    stop strings were looked for in text decoded without special tokens. Now the text ends just before that token, as
    transformers' ``stop_strings`` ends there; plain stop strings work as before."""
    from transformers import AutoTokenizer

    from litgpt_clone import LLM

    vocab, stop_ids = write_tokenizer(tmp_path / "hf")
    config = LlamaConfig(**TINY, vocab_size=vocab)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, stop_ids[0], None
    hf_model = build_hf(LlamaForCausalLM, config, tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    special = hf_tok.convert_tokens_to_ids("<|im_start|>")
    prompt = hf_tok(PROMPTS[0])["input_ids"]
    with torch.no_grad():  # <|im_start|>'s head row: a copy of the fifth greedy token's, a little larger, so greedy writes it
        hf_model.lm_head.weight[special] = hf_model.lm_head.weight[hf_greedy(hf_model, prompt, 12)[4]] * 1.05
    hf_model.save_pretrained(tmp_path / "hf")
    llm = LLM.load(convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native"), device="cpu")
    assert llm.tokenizer.special_token_id("<|im_start|>") == special and special not in llm.tokenizer.stop_ids
    assert llm.tokenizer.special_token_id("Once") is None  # an ordinary token shows in the text: found there

    ids = torch.tensor([prompt])
    theirs = hf_model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12, stop_strings=["<|im_start|>"],
        tokenizer=hf_tok, eos_token_id=sorted(stop_ids), pad_token_id=0,
    )[0, len(prompt):].tolist()
    assert theirs[-1] == special and len(theirs) == 5  # transformers stopped at the special token
    expected = hf_tok.decode(theirs[:-1], skip_special_tokens=True)
    assert expected and llm.generate(PROMPTS[0], max_new_tokens=12, stop="<|im_start|>") == expected
    assert llm.last_stats["new_tokens"] == 5  # (without the stop string it runs to 12)
    assert "".join(llm.stream(PROMPTS[0], max_new_tokens=12, stop=["zzz", "<|im_start|>"])) == expected
    tokens = generate(llm.model, [llm.encode(PROMPTS[0])], 12, stop_strings=["<|im_start|>"], tokenizer=llm.tokenizer)[0]
    assert tokens.tolist() == theirs  # the row's tokens run up to the one that stopped it, as transformers' do
    # a plain stop string earlier in the text still wins
    plain = expected[-1]
    assert llm.generate(PROMPTS[0], max_new_tokens=12, stop=["<|im_start|>", plain]) == expected[: expected.index(plain)]
    # text after the special token does not run on into the text before it
    text = TextStream(llm.tokenizer, ["<|im_start|>"])
    ids = [*llm.tokenizer.encode("Once upon").tolist(), special, *llm.tokenizer.encode(" a time").tolist()]
    assert "".join(text.add([i]) for i in ids) + text.flush() == "Once upon" and text.stopped


def test_text_stream_keeps_characters_whole_and_holds_back_stop_prefixes(models_root):
    tokenizer = Tokenizer(checkpoint(models_root, "llama")[1])
    text = "Café 日本語 😀👍 🚀 déjà vu"
    ids = tokenizer.encode(text).tolist()
    assert any("\ufffd" in tokenizer.decode(ids[:i]) for i in range(1, len(ids)))  # some characters span tokens
    stream_ = TextStream(tokenizer)
    pieces = [stream_.add([i]) for i in ids] + [stream_.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    # a stop string split over several tokens: nothing of it is ever handed out
    stream_ = TextStream(tokenizer, stop_strings=["😀👍"])
    pieces = [stream_.add([i]) for i in ids]
    assert "".join(pieces) == "Café 日本語 " and stream_.stopped and stream_.flush() == ""


def bytecodes_run(fn, limit: int) -> int:
    """Python bytecodes ``fn()`` runs (an AssertionError once past ``limit``): work counted independently of the
    machine's speed."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        frame.f_trace_opcodes = True
        count += event == "opcode"
        if count > limit:
            raise AssertionError(f"more than {limit:,} bytecodes")
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def test_text_stream_work_per_token_does_not_grow_with_the_stop_strings(models_root):
    """64 stop strings of 1,000 characters (the server's limits) made a token cost O(length² x stop strings) Python
    steps (every tail of the text tested against every stop string), and for stop strings that hold a special token
    also decodes of ~2,000 ids: one such request slowed every other client of a server ~35x. A token now costs a few
    decodes of a short window and a bounded number of steps per stop string and character, however long the stop
    strings: counted here (bytecodes run, ids decoded) with stop strings that never match and with ones the text keeps
    being the start of (all of it held back)."""

    class Counting(Tokenizer):  # the checkpoint's tokenizer, counting the ids it decodes
        decoded = 0

        def decode(self, ids, skip_special_tokens=True):
            Counting.decoded += len(ids)
            return super().decode(ids, skip_special_tokens)

    tokenizer = Counting(checkpoint(models_root, "llama")[1])
    line = "the quick brown fox jumps over the lazy dog. "
    ids = tokenizer.encode(line * 10).tolist()[:150]  # ~2 characters per token
    n = 1000
    stop_sets = {
        "never": ["\x00" * (n - 2) + f"{i:02}" for i in range(64)],
        "held back": [(line * 30)[: n - 2] + f"{i:02}" for i in range(64)],
        "special": ["<|im_end|>" + "\x00" * (n - 12) + f"{i:02}" for i in range(64)],
        "special, held back": [(line * 30)[: n - 14] + "<|im_start|>" + f"{i:02}" for i in range(64)],
    }
    for name, stops in stop_sets.items():
        stream_ = TextStream(tokenizer, stops)
        Counting.decoded, pieces = 0, []
        bytecodes_run(lambda: pieces.extend(stream_.add([i]) for i in ids), limit=300 * len(stops) * len(ids))
        assert Counting.decoded <= 8 * len(ids), (name, Counting.decoded)
        assert "".join(pieces) + stream_.flush() == tokenizer.decode(ids) and not stream_.stopped, name
    assert "".join(pieces) == ""  # (held back: the text is the start of every stop string)


def test_stop_strings_holding_a_special_token_end_the_text_before_the_first_one(models_root):
    """When the same token completes two stop strings, the text ends before the one that starts first, as it does for
    plain stop strings; and it never ends in part of a special token's text (a stop string that starts inside one)."""
    tokenizer = Tokenizer(checkpoint(models_root, "llama")[1])
    ids = tokenizer.encode("Once upon<|im_end|>\n<|im_start|>user said", bos=False).tolist()
    for stops, text in (
        (["<|im_start|>user", "pon<|im_end|>\n<|im_start|>user"], "Once u"), (["|>\n<|im_start|>user"], "Once upon"),
        (["d|>\n<|im_start|>", "<|im_end|>\n<|im_start|>us"], "Once upon"),
        # the special token itself is a stop too: the one holding it and the text before it still starts first
        (["<|im_end|>", "n<|im_end|>"], "Once upo"), (["n<|im_end|>", "<|im_end|>"], "Once upo"),
    ):
        stream_ = TextStream(tokenizer, stops)
        streamed = "".join(stream_.add([i]) for i in ids) + stream_.flush()
        assert (streamed, stream_.text, stream_.stopped) == (text, text, True), stops


# ----------------------------------------------------------------------------- sampling
def test_sampling_filters_match_transformers_warpers():
    from transformers.generation.logits_process import (
        MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    for temperature, top_k, top_p, min_p in [(1.0, None, 1.0, 0.0), (0.7, 10, 1.0, 0.0), (1.3, None, 0.8, 0.0), (0.9, 20, 0.6, 0.0), (1.0, None, 1.0, 0.1), (0.8, 30, 0.9, 0.05)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        if min_p:
            scores = MinPLogitsWarper(min_p)(None, scores)
        expected = scores.softmax(-1)
        got = logits_to_probs(logits, temperature, top_k, top_p, min_p)
        torch.testing.assert_close(got, expected)
        if (top_k, top_p, min_p) != (None, 1.0, 0.0):
            assert (got == 0).any(1).all()  # the filters filtered
    assert torch.equal(sample(logits), logits.argmax(-1))


def test_seed_gives_the_same_text(llama):
    _, _, tokenizer, model = llama
    prompt = tokenizer.encode(PROMPTS[0])
    kwargs = dict(temperature=1.0, top_k=100, top_p=0.95)
    a, b = (generate(model, [prompt], 20, seed=7, **kwargs)[0] for _ in range(2))
    c = generate(model, [prompt], 20, seed=8, **kwargs)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, generate(model, [prompt], 20)[0])  # it really sampled


def test_queueing_the_next_step_ahead_gives_the_same_tokens(llama, monkeypatch):
    """On a GPU ``stream`` queues step i + 1 before reading step i's tokens; forced on here, the tokens (greedy with
    rows stopping at different steps, and seeded sampling) are the ones of the step-by-step loop."""
    import litgpt_clone.generate as gen

    _, _, tokenizer, model = llama
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    stops = set(tokenizer.stop_ids)

    def runs():
        greedy = [t.tolist() for t in generate(model, prompts, 12)]
        stop_at = {greedy[0][3], greedy[2][6]}  # row 0 ends after 3 tokens, row 2 after 6, row 1 runs to 12
        return (greedy, [t.tolist() for t in generate(model, prompts, 12, stop_ids=stops | stop_at)],
                [t.tolist() for t in generate(model, prompts, 12, temperature=1.0, top_k=20, seed=7)])

    step_by_step = runs()
    monkeypatch.setattr(gen, "QUEUE_AHEAD", {"cpu", "cuda"})
    ahead = runs()
    assert ahead == step_by_step
    assert [len(row) for row in ahead[1]] == [3, len(ahead[1][1]), 6] and len(ahead[0][1]) == 12


# ----------------------------------------------------------------------------- compile and speculative decoding
@pytest.mark.slow
def test_compiled_decode_equals_eager(llama):
    """torch.compile (inductor on CPU) of the decode step gives the eager tokens, alone and left-padded."""
    _, _, tokenizer, model = llama
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    eager = [generate(model, prompts, 10)] + [generate(model, [p], 10) for p in prompts[:1]]
    compiled = [generate(model, prompts, 10, compile=True)] + [generate(model, [p], 10, compile=True) for p in prompts[:1]]
    assert [[t.tolist() for t in rows] for rows in compiled] == [[t.tolist() for t in rows] for rows in eager]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decode_equals_eager(models_root):
    """Compiled with CUDA graphs (and coordinate-descent tuning): the tokens of the eager decode step, over several
    requests of different shapes, without "accessing tensor output of CUDAGraphs that has been overwritten"."""
    _, native = checkpoint(models_root, "llama")
    tokenizer = Tokenizer(native)
    model = GPT.from_checkpoint(native, device="cuda").eval()
    prompts = [tokenizer.encode(p).cuda() for p in PROMPTS]
    for batch in ([prompts[0]], prompts, [prompts[1]], prompts):
        eager = [t.tolist() for t in generate(model, batch, 24)]
        assert [t.tolist() for t in generate(model, batch, 24, compile=True)] == eager


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["phi3", "llama"])
def test_longrope_generation_past_the_original_context_matches_transformers(arch, tmp_path):
    """A longrope model (original context 32) generating from prompts within it to well past it: ``LLM.generate``'s
    greedy text and the compiled decode step's tokens (alone and batched) are transformers'. Phi-3 recomputes its cache
    at the switch (``rope_recompute_at_switch``), Llama keeps it. The compiled step used to keep the short factors past
    the switch: it picked the tables on the host, behind a graph break whose guards the steps after the first skip."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from litgpt_clone import LLM
    from parity import check_greedy_generation

    vocab, _ = write_tokenizer(tmp_path / "hf")
    factors = dict(rope_type="longrope", short_factor=[1.0 + 0.1 * i for i in range(8)], long_factor=[1.5 + 0.7 * i for i in range(8)],
                   original_max_position_embeddings=32)
    sizes = dict(TINY, vocab_size=vocab, max_position_embeddings=128, original_max_position_embeddings=32, rope_scaling=factors,
                 bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=0.1)  # (weights large enough
    # that which factors rotated the cached keys decides the argmax: at 0.02 both gave the same tokens)
    model_cls, config = (Phi3ForCausalLM, Phi3Config(**sizes)) if arch == "phi3" else (LlamaForCausalLM, LlamaConfig(**sizes))
    hf_model = build_hf(model_cls, config, tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    llm = LLM.load(tmp_path / "native", device="cpu")
    assert llm.model.config.rope_recompute_at_switch == (arch == "phi3")
    prompts = [llm.encode(p) for p in PROMPTS]
    for prompt, text in zip(prompts, PROMPTS):
        expected = hf_greedy(hf_model, prompt, 40, llm.tokenizer.stop_ids)
        assert len(prompt) < 32 < len(prompt) + len(expected)
        assert llm.generate(text, max_new_tokens=40) == llm.tokenizer.decode(expected)
    check_greedy_generation(hf_model, llm.model, prompts, 40, compile=True)


def test_speculative_decoding_equals_greedy(models_root):
    _, native = checkpoint(models_root, "llama")
    _, draft_dir = checkpoint(models_root, "qwen3", seed=1)  # another model over the same vocabulary
    tokenizer = Tokenizer(native)
    model, draft = GPT.from_checkpoint(native).eval(), GPT.from_checkpoint(draft_dir).eval()
    twin = GPT.from_checkpoint(native).eval()
    for text in PROMPTS[:2]:
        prompt = tokenizer.encode(text)
        greedy = generate(model, [prompt], 16, stop_ids=tokenizer.stop_ids)[0].tolist()
        for k in (1, 4):
            assert generate(model, [prompt], 16, stop_ids=tokenizer.stop_ids, draft_model=draft, speculative_k=k)[0].tolist() == greedy
    # a draft that is the model itself: every proposal is accepted, k + 1 tokens per step
    steps = list(stream(model, [prompt], 16, draft_model=twin, speculative_k=4))
    assert sum((s[0] for s in steps), []) == generate(model, [prompt], 16)[0].tolist() and len(steps) == 1 + 3
    sampled = [generate(model, [prompt], 12, temperature=1.0, seed=3, draft_model=draft)[0] for _ in range(2)]
    assert torch.equal(*sampled)
    # a draft whose vocabulary is padded to another size (as Qwen2.5-0.5B for Qwen2.5-7B): the ids they share
    padded = GPT(dataclasses.replace(draft.config, vocab_size=draft.config.vocab_size + 24)).eval()
    padded.init_weights()
    for k in (1, 4):
        assert generate(model, [prompt], 16, stop_ids=tokenizer.stop_ids, draft_model=padded, speculative_k=k)[0].tolist() == greedy


def test_speculative_decoding_counts_the_tokens_plain_decoding_counts_at_a_stop_string(models_root):
    """A draft that is the model itself: every step proposes 5 tokens. With a stop string inside such a chunk, the
    tokens after it were counted (15 against 11), and tokens/s with them."""
    from litgpt_clone import LLM

    _, native = checkpoint(models_root, "llama")
    plain, speculative = LLM.load(native, device="cpu"), LLM.load(native, device="cpu", draft_model=native)
    full = plain.generate(PROMPTS[0], max_new_tokens=20)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    text = plain.generate(PROMPTS[0], max_new_tokens=20, stop=stop)
    assert speculative.generate(PROMPTS[0], max_new_tokens=20, stop=stop, speculative_k=4) == text == full[: full.index(stop)]
    assert speculative.last_stats["new_tokens"] == plain.last_stats["new_tokens"] < 20


def test_ensure_kv_cache_keeps_a_longer_cache_for_a_compiled_step(models_root):
    """A compiled decode step compiles again for each cache length: a shorter request after a longer one keeps the
    longer cache (an eager one gets its own length, which reads fewer slots)."""
    from litgpt_clone.generate import compiled_decode, ensure_kv_cache

    _, native = checkpoint(models_root, "llama")
    model = GPT.from_checkpoint(native).eval()
    assert ensure_kv_cache(model, 2, 200) == 256
    assert ensure_kv_cache(model, 2, 10, reuse_longer=True) == 256 and model.transformer.h[0].attn.kv_cache.k.shape == (2, model.config.n_query_groups, 256, model.config.head_size)
    assert ensure_kv_cache(model, 2, 10) == 64 and ensure_kv_cache(model, 1, 10, reuse_longer=True) == 64  # (a new batch size: a new cache)
    compiled_decode("cpu")
    assert torch._dynamo.config.recompile_limit >= 64  # (else the ninth shape would fall back to eager)


def test_speculative_acceptance_follows_the_target_distribution():
    """The verification step's first token is distributed as the target's p[0], whatever the draft's q."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    n, counts = 8000, torch.zeros(4)
    for _ in range(n):
        proposal = int(torch.multinomial(q[0], 1, generator=gen))
        counts[accept_proposals([proposal], q, p, greedy=False, generator=gen)[0]] += 1
    torch.testing.assert_close(counts / n, p[0], atol=0.02, rtol=0)
    # greedy: one-hot distributions, the target's argmax wins
    one_hot = lambda i: torch.nn.functional.one_hot(torch.tensor(i), 4).float()  # noqa: E731
    assert accept_proposals([2, 1], torch.stack([one_hot(2), one_hot(1)]), torch.stack([one_hot(2), one_hot(3), one_hot(0)]), greedy=True) == [2, 3]
    assert accept_proposals([2], one_hot(2)[None], torch.stack([one_hot(2), one_hot(0)]), greedy=True) == [2, 0]


# ----------------------------------------------------------------------------- bad input: one line, with numbers
def cli_error(capsys, *argv) -> str:
    """The one line ``litgpt-clone *argv`` (run in this process) prints for bad input, exiting with 2."""
    with pytest.raises(SystemExit) as exit_:
        main([*map(str, argv)])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def one_line_error(capsys, *args) -> str:
    return cli_error(capsys, "generate", *args)


def test_prompts_in_the_shapes_a_python_user_has_them(llama):
    """generate() takes a (B, T) tensor (as model(ids) does), one 1-D tensor, lists of ids and arrays, not only a
    list of 1-D tensors (the others failed with "Boolean value of Tensor ... is ambiguous"); transformers' settings
    are named as generate()'s, not stream()'s."""
    _, _, tok, model = llama
    ids = tok.encode(PROMPTS[0])
    expected = [generate(model, [ids], 4)[0].tolist()]
    for prompts in (ids, ids[None], [ids.tolist()], [ids.numpy()]):
        assert [t.tolist() for t in generate(model, prompts, 4)] == expected
    assert [t.tolist() for t in generate(model, torch.stack([ids, ids]), 4)] == expected * 2
    with pytest.raises(GenerationError, match=rf"^each prompt must be 1-D token ids; one has shape \(1, {len(ids)}\)"):
        generate(model, [ids[None]], 4)
    with pytest.raises(GenerationError, match=r"^generate\(\) has no argument 'do_sample': its settings are max_new_tokens, temperature"):
        generate(model, [ids], 4, do_sample=True)
    with pytest.raises(RuntimeError, match=r"^input_pos given but no KV cache: call model.set_kv_cache\(batch_size\) first$"):
        GPT.from_checkpoint(llama[1])(ids[None], input_pos=torch.arange(len(ids)))  # (was an AttributeError)


def test_bad_input(models_root, capsys):
    _, native = checkpoint(models_root, "llama")
    capsys.readouterr()  # what writing the checkpoint printed, when this test is the first to need it
    context = GPT.from_checkpoint(native).max_seq_length  # max_position_embeddings of the transformers config
    assert "prompt is empty" in one_line_error(capsys, native, "--prompt", "")
    assert "prompt is empty" in one_line_error(capsys, native, "--prompt", "", "--chat_template", "true", "--system", "Hi")
    long = "llama " * context * 2
    n = len(Tokenizer(native).encode(long))
    line = one_line_error(capsys, native, "--prompt", long)
    assert f"{n} tokens" in line and f"context is {context}" in line
    n = len(Tokenizer(native).encode(PROMPTS[0]))
    line = one_line_error(capsys, native, "--prompt", PROMPTS[0], "--max_new_tokens", context)
    assert f"({n} tokens)" in line and f"({context})" in line and f"max_new_tokens <= {context - n}" in line
    line = one_line_error(capsys, native, "--quantize", "bnb.nf3")
    assert "bnb.nf3" in line and "bnb.nf4" in line and "bnb.int8" in line
    assert "top_p" in one_line_error(capsys, native, "--top_p", 0)
    assert "--num_samples 0: ask for at least 1 sample" in one_line_error(capsys, native, "--prompt", "Hi", "--num_samples", 0)
    missing = models_root / "no-such-run" / "final"  # a folder path, not a model name: say so, not "unknown model"
    line = one_line_error(capsys, missing, "--prompt", "Hi")
    assert line == f"error: no checkpoint at {missing}: pass a folder with model_config.yaml and lit_model.safetensors, or a hub repo id (org/name)"


def test_corrupt_checkpoint_files_are_one_line_naming_the_file(models_root, tmp_path, capsys):
    """A checkpoint whose model_config.yaml, tokenizer.json, tokenizer_config.json or generation_config.json is
    damaged: one line naming the file, as for a truncated lit_model.safetensors (these gave YAML, JSON and tokenizers
    tracebacks)."""
    import shutil

    _, native = checkpoint(models_root, "llama")
    capsys.readouterr()
    damage = {
        "model_config.yaml": ("n_layer: [oops\n", "is not valid YAML (line "),
        "tokenizer.json": ('{"broken\n', "tokenizer.json is corrupt (Exception: "),
        "tokenizer_config.json": ("[1, 2]\n", "tokenizer_config.json is corrupt (ValueError: a JSON list where an object belongs)"),
        "generation_config.json": ('{"eos_token_id": "x"}\n', "generation_config.json is corrupt (ValueError: token ids 'x' are not integers)"),
    }
    for name, (text, message) in damage.items():
        bad = tmp_path / name
        shutil.copytree(native, bad)
        with open(bad / name, "a" if name.endswith(".yaml") else "w") as f:
            f.write(text)
        line = one_line_error(capsys, bad, "--prompt", "Hi", "--max_new_tokens", 2)
        assert message in line and str(bad / name) in line, line
