"""``from litgpt_clone import LLM``: load, generate (alone and batched), stream, chat, benchmark, quantize, errors,
against transformers' greedy ``generate`` on the tiny checkpoints of test_generate.py."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import AutoTokenizer

from litgpt_clone import LLM
from litgpt_clone.generate import GenerationError, generate
from test_generate import CHATML, FAMILIES, PROMPTS, checkpoint, hf_greedy, models_root, write_tokenizer  # noqa: F401  (fixture)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_matches_transformers(family, models_root):
    hf_model, native = checkpoint(models_root, family)
    llm = LLM.load(native, device="cpu")
    tok = llm.tokenizer
    expected = [tok.decode(hf_greedy(hf_model, tok.encode(p), 12, tok.stop_ids)) for p in PROMPTS]
    assert llm.generate(PROMPTS[1], max_new_tokens=12) == expected[1]
    assert llm.generate(PROMPTS, max_new_tokens=12) == expected  # one left-padded batch


def test_stream_stop_and_seed(models_root):
    llm = LLM.load(checkpoint(models_root, "llama")[1], device="cpu")
    full = llm.generate(PROMPTS[0], max_new_tokens=16)
    pieces = list(llm.stream(PROMPTS[0], max_new_tokens=16))
    assert len(pieces) > 3 and all(pieces) and "".join(pieces) == full
    assert llm.last_stats["new_tokens"] == 16 and llm.last_stats["tokens_per_s"] > 0
    stop = full[len(full) // 2 :][:2]
    assert llm.generate(PROMPTS[0], max_new_tokens=16, stop=stop) == full[: full.index(stop)]
    assert "".join(llm.stream(PROMPTS[0], max_new_tokens=16, stop=[stop, "zzz"])) == full[: full.index(stop)]
    sampled = [llm.generate(PROMPTS[0], max_new_tokens=16, temperature=1.0, top_p=0.9, seed=11) for _ in range(2)]
    assert sampled[0] == sampled[1] != full
    assert llm.generate(PROMPTS[0], max_new_tokens=16, temperature=1.0, top_p=0.9, seed=12) != sampled[0]


def test_chat_uses_the_checkpoint_template(models_root):
    hf_model, native = checkpoint(models_root, "llama", chat_template=CHATML)
    llm = LLM.load(native, device="cpu")
    hf_tok = AutoTokenizer.from_pretrained(native)
    messages = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time"}, {"role": "user", "content": "More"}]
    ids = hf_tok(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    expected = llm.tokenizer.decode(hf_greedy(hf_model, ids, 10, llm.tokenizer.stop_ids))
    assert llm.chat(messages, max_new_tokens=10) == expected
    assert "".join(llm.chat(messages, stream=True, max_new_tokens=10)) == expected
    # a fallback style overrides the template
    alpaca = llm.tokenizer.encode("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nMore\n\n### Response:\n")
    assert llm.chat(messages[2:], style="alpaca", max_new_tokens=10) == llm.tokenizer.decode(hf_greedy(hf_model, alpaca, 10, llm.tokenizer.stop_ids))


def test_benchmark_reports_speed_and_memory(models_root):
    llm = LLM.load(checkpoint(models_root, "llama")[1], device="cpu")
    stats = llm.benchmark(max_new_tokens=16, num_iterations=2)
    assert 0 < stats["time_to_first_token_s"] < stats["total_s"]
    assert stats["tokens_per_s"] > 0 and stats["peak_memory_bytes"] > 10 * 2**20
    assert stats["new_tokens"] == 16 and stats["text"] == llm.generate("A long time ago, in a galaxy far, far away,", 16)


def test_quantized_generation(models_root):
    """bnb.nf4 on CPU: the model's linear layers are 4-bit, and greedy decoding gives the tokens of the same model
    with bitsandbytes' own dequantization of those weights."""
    import bitsandbytes as bnb

    native = checkpoint(models_root, "llama")[1]
    llm = LLM.load(native, device="cpu", quantize="bnb.nf4")
    layers = [m for m in llm.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 2 + 2 * 3  # qkv, proj and three MLP layers per block; the head is kept
    reference = LLM.load(native, device="cpu").model
    with torch.no_grad():
        for name, module in llm.model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                dequantized = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                reference.get_submodule(name).weight.copy_(dequantized)
    prompt = llm.tokenizer.encode(PROMPTS[1])
    expected = llm.tokenizer.decode(generate(reference, [prompt], 10, stop_ids=llm.tokenizer.stop_ids)[0])
    assert llm.generate(PROMPTS[1], max_new_tokens=10) == expected
    half = LLM.load(native, device="cpu", precision="bf16-true", quantize="bnb.nf4")  # 4-bit matmuls in the model's dtype
    assert {m.compute_dtype for m in half.model.modules() if isinstance(m, bnb.nn.Linear4bit)} == {torch.bfloat16}


def medium_checkpoint(root):
    """A random Llama of 135M parameters (hidden 1024, 8 layers, 270 MB in bf16) with the CORPUS tokenizer, whose
    Linear layers hold almost all of it (the vocabulary has 360 tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint
    from parity import build_hf

    vocab, stop_ids = write_tokenizer(root / "hf")
    config = LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16, vocab_size=vocab)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, stop_ids[0], None
    build_hf(LlamaForCausalLM, config, root / "hf")
    return convert_hf_checkpoint(root / "hf", root / "native")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantized_load_never_holds_the_full_precision_model_on_the_gpu(tmp_path):
    """LLM.load(quantize=...) put the whole bf16 model on the GPU and quantized it there: an 8B nf4 load peaked at the
    16 GB of bf16, not the 5 GB of nf4. Now each Linear is quantized as it moves to the GPU: the peak stays under 0.6x
    the bf16 size (nf4 is about 0.28x of it, plus one bf16 weight at a time), and the logits are those of the model
    quantized on the GPU."""
    from litgpt_clone import GPT
    from litgpt_clone.quantize import parameter_count, quantize

    native = medium_checkpoint(tmp_path)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    llm = LLM.load(native, device="cuda", precision="bf16-true", quantize="bnb.nf4")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    bf16 = 2 * parameter_count(llm.model)
    assert bf16 > 250e6 and peak < 0.6 * bf16, (peak / 2**20, bf16 / 2**20)
    assert {t.device.type for t in [*llm.model.parameters(), *llm.model.buffers()]} == {"cuda"}
    on_gpu = quantize(GPT.from_checkpoint(native, device="cuda", dtype=torch.bfloat16).eval(), "bnb.nf4", compute_dtype=torch.bfloat16)
    idx = torch.randint(0, llm.model.config.vocab_size, (2, 16), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    with torch.no_grad():
        assert torch.equal(llm.model(idx), on_gpu(idx))
    assert llm.generate(PROMPTS[0], max_new_tokens=8) == LLM(on_gpu, llm.tokenizer).generate(PROMPTS[0], max_new_tokens=8)


def test_bad_input(models_root):
    native = checkpoint(models_root, "llama")[1]
    with pytest.raises(GenerationError, match="unknown quantize mode 'nf4'.*bnb.nf4"):
        LLM.load(native, device="cpu", quantize="nf4")
    with pytest.raises(GenerationError, match="precision"):
        LLM.load(native, device="cpu", precision="bf16")
    for device, message in (("tpu", "unknown device 'tpu': use auto, cpu, cuda or cuda:N"), ("cpu:abc", "unknown device 'cpu:abc'")):
        with pytest.raises(GenerationError, match=re.escape(message)):
            LLM.load(native, device=device)
    llm = LLM.load(native, device="cpu")
    with pytest.raises(GenerationError, match="prompt is empty"):
        llm.generate("")
    for messages in ("Hi", ["Hi"]):
        with pytest.raises(GenerationError, match="messages must be a list of"):
            llm.chat(messages)
    with pytest.raises(GenerationError, match="num_iterations is 0: time at least 1 run"):
        llm.benchmark(num_iterations=0)
    with pytest.raises(GenerationError, match=r"stream takes one prompt \(a string\), not a list: generate\(\) takes a list"):
        next(llm.stream(["Hi", "Ho"]))
    from litgpt_clone.checkpoints.io import CheckpointError
    from litgpt_clone.config import ConfigError

    with pytest.raises(CheckpointError, match="no checkpoint at ../no-such-model: pass a folder"):  # a path, not a repo id
        LLM.load("../no-such-model")
    with pytest.raises(ConfigError, match=r"^unknown model 'acme/\.\.'\."):  # not a repo id: `download` failed to create
        LLM.load("acme/..")  # checkpoints/acme/.. ("File exists")
    with pytest.raises(ConfigError, match=r"^unknown model 'out_fnal'\..* \(nor is there a folder 'out_fnal' in "):  # a typo
        LLM.load("out_fnal")
    with pytest.raises(CheckpointError, match="no checkpoint at no_such_folder"):  # (a trailing / is a folder)
        LLM.load("no_such_folder/")
    (native.parent / "peft").mkdir(exist_ok=True)
    (native.parent / "peft" / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"peft is a PEFT adapter, not a model: merge it into its base \(litgpt-clone merge_lora"):
        LLM.load(native.parent / "peft")
    with pytest.raises(GenerationError, match=f"context of {llm.model.max_seq_length} tokens"):
        llm.generate(PROMPTS[0], max_new_tokens=llm.model.max_seq_length)
    # wrong types are one line naming the argument (they were torch or Python tracebacks)
    for kwargs, message in ((dict(temperature=float("nan")), "temperature is nan: use a finite number"),
                            (dict(top_k=5.0), "top_k is 5.0: use a whole number"), (dict(max_new_tokens=5.0), "max_new_tokens is 5.0: use a whole number")):
        with pytest.raises(GenerationError, match=re.escape(message)):
            llm.generate(PROMPTS[0], **{"max_new_tokens": 4, **kwargs})
    for prompt in (None, 5):
        with pytest.raises(GenerationError, match="give a string, or a list of strings"):
            llm.generate(prompt)
    with pytest.raises(GenerationError, match="a prompt is a string, not NoneType"):
        llm.generate(["Hi", None])
    assert LLM.load(native, device=torch.device("cpu")).generate(PROMPTS[0], max_new_tokens=4) == llm.generate(PROMPTS[0], max_new_tokens=4)
    from litgpt_clone import GPT

    assert GPT.from_checkpoint(native, dtype="bfloat16").transformer.wte.weight.dtype == torch.bfloat16


def test_litgpt_generate_arguments_name_the_method_and_their_replacement(models_root):
    """LitGPT's LLM.generate(stream=True | sys_prompt=... | return_as_token_ids=True), or a misspelt argument, was a
    TypeError naming the internal LLM.stream_ids; now the method called and what does the work here, which works."""
    llm = LLM.load(checkpoint(models_root, "llama")[1], device="cpu")
    takes = "it takes max_new_tokens, temperature, top_k, top_p, min_p, stop, seed, speculative_k"
    cases = [
        ("generate", dict(stream=True), "LLM.generate() got an unexpected keyword argument 'stream': use llm.stream(prompt), which yields "
         "the text piece by piece"),
        ("generate", dict(sys_prompt="Be terse."), "LLM.generate() got an unexpected keyword argument 'sys_prompt': use "
         'llm.chat([{"role": "system", "content": ...}, {"role": "user", "content": prompt}])'),
        ("generate", dict(return_as_token_ids=True), "LLM.generate() got an unexpected keyword argument 'return_as_token_ids': it "
         "returns text; litgpt_clone.generate.generate(llm.model, [llm.encode(prompt)], max_new_tokens, stop_ids=llm.tokenizer.stop_ids) "
         "returns the new ids"),
        ("generate", dict(temprature=0.5), f"LLM.generate() got an unexpected keyword argument 'temprature': {takes}"),
        ("stream", dict(top_kk=5), f"LLM.stream() got an unexpected keyword argument 'top_kk': {takes}"),
        ("chat", dict(sys_prompt="Be terse."), "LLM.chat() got an unexpected keyword argument 'sys_prompt': use "
         'llm.chat([{"role": "system", "content": ...}, {"role": "user", "content": prompt}])'),
        ("benchmark", dict(stream=True), "LLM.benchmark() got an unexpected keyword argument 'stream': use llm.stream(prompt), which "
         "yields the text piece by piece"),
    ]
    for method, kwargs, message in cases:
        prompt = [{"role": "user", "content": "Hi"}] if method == "chat" else PROMPTS[0]
        with pytest.raises(TypeError) as err:
            result = getattr(llm, method)(prompt, **kwargs)
            next(iter(result))  # (stream is a generator)
        assert str(err.value) == message
    # the replacements do what LitGPT's arguments did
    ids = generate(llm.model, [llm.encode(PROMPTS[0])], 8, stop_ids=llm.tokenizer.stop_ids)[0]
    assert llm.tokenizer.decode(ids) == llm.generate(PROMPTS[0], max_new_tokens=8) == "".join(llm.stream(PROMPTS[0], max_new_tokens=8))


def test_litgpt_positional_arguments_and_load_arguments(models_root):
    """LitGPT's ``generate(prompt, max_new_tokens, temperature, top_k, top_p)`` works positionally (it was a TypeError
    after max_new_tokens); LitGPT's ``LLM.load(distribute=, init=, tokenizer_dir=)`` are one-line TypeErrors saying what
    to do instead, and the suggested random-weights call works."""
    from litgpt_clone import GPT, Tokenizer

    native = checkpoint(models_root, "llama")[1]
    llm = LLM.load(native, device="cpu")
    sampled = llm.generate(PROMPTS[0], 12, 0.8, 20, 0.9, seed=4)
    assert sampled == llm.generate(PROMPTS[0], max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=4)
    assert sampled != llm.generate(PROMPTS[0], 12)  # it sampled
    cases = {
        "distribute": "LLM.load puts the model on one device itself (device=, precision=, quantize=); there is no llm.distribute()",
        "init": "LLM.load always loads the checkpoint's weights (LitGPT's init='pretrained'); for random ones use "
                "LLM(GPT.from_name(name), Tokenizer(checkpoint_dir))",
        "tokenizer_dir": "the tokenizer is read from the checkpoint folder: copy the tokenizer files (tokenizer.json, "
                         "tokenizer_config.json, ...) into it",
        "devices": "it takes model, device, precision, quantize, compile, draft_model",
    }
    for name, fix in cases.items():
        with pytest.raises(TypeError) as err:
            LLM.load(native, device="cpu", **{name: None})
        assert str(err.value) == f"LLM.load() got an unexpected keyword argument {name!r}: {fix}"
    vocab = llm.model.config.vocab_size
    random = LLM(GPT.from_name("pythia-14m", vocab_size=vocab).eval(), Tokenizer(native))
    assert len(random.tokenizer.encode(random.generate(PROMPTS[0], max_new_tokens=8))) > 0


def test_chat_without_a_template_warns_when_messages_are_left_out(models_root):
    """A checkpoint without a chat template chats in the "plain" style, which keeps the last user message only: the
    system message and the history were dropped silently (transformers raises an error). Now a warning says so."""
    llm = LLM.load(checkpoint(models_root, "llama")[1], device="cpu")
    assert llm.tokenizer.chat_template is None
    conversation = [
        {"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": "Arr, once"}, {"role": "user", "content": "More"},
    ]
    with pytest.warns(UserWarning) as record:
        reply = llm.chat(conversation, max_new_tokens=8)
    assert [str(w.message) for w in record if "chat template" in str(w.message)] == [
        "this checkpoint has no chat template: the messages go in as plain text (the 'plain' style), which keeps the last "
        "user message only (3 other message(s) left out): pass style= (chatml, llama3, alpaca, ...) to keep them"
    ]
    assert reply == llm.generate("More", max_new_tokens=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out, or a style was chosen: no warning
        llm.chat(conversation[-1:], max_new_tokens=2)
        llm.chat(conversation, style="plain", max_new_tokens=2)
        assert llm.chat(conversation, style="chatml", max_new_tokens=8) != reply


def test_sampling_settings_at_temperature_0_warn(models_root):
    """top_k, top_p, min_p and seed do nothing at temperature 0 (greedy, the default here; LitGPT samples by default):
    they were ignored silently. Now one warning per call names them."""
    llm = LLM.load(checkpoint(models_root, "llama")[1], device="cpu")
    greedy = llm.generate(PROMPTS[0], max_new_tokens=8)
    expected = "top_k=50, top_p=0.9, seed=3 ignored: temperature 0 (the default) is greedy; pass temperature > 0 to sample"
    calls = {
        "generate": lambda: llm.generate(PROMPTS[0], max_new_tokens=8, top_k=50, top_p=0.9, seed=3),
        "stream": lambda: "".join(llm.stream(PROMPTS[0], max_new_tokens=8, top_k=50, top_p=0.9, seed=3)),
        "chat": lambda: llm.chat([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=8, top_k=50, top_p=0.9, seed=3),
        "benchmark": lambda: llm.benchmark(PROMPTS[0], max_new_tokens=8, num_iterations=2, top_k=50, top_p=0.9, seed=3)["text"],
    }
    for method, call in calls.items():
        with pytest.warns(UserWarning) as record:
            text = call()
        assert [str(w.message) for w in record if "ignored" in str(w.message)] == [expected], method
        assert text == greedy, method
    with pytest.warns(UserWarning, match=r"^min_p=0\.1 ignored: temperature 0"):
        llm.generate(PROMPTS[0], max_new_tokens=2, temperature=0, min_p=0.1, top_p=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sampling, or greedy without sampling settings: no warning
        llm.generate(PROMPTS[0], max_new_tokens=2, temperature=0.8, top_k=50, top_p=0.9, seed=3)
        llm.generate(PROMPTS[0], max_new_tokens=2, temperature=0.0, top_k=None, top_p=1.0)
    with pytest.raises(GenerationError, match=r"top_k is 5\.0: use a whole number"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a setting that cannot work is an error, not first a warning
        llm.generate(PROMPTS[0], max_new_tokens=2, top_k=5.0)


def test_seed_stop_and_speculative_k_errors_are_one_line_and_numpy_integers_work(models_root):
    """seed, stop and speculative_k were not checked (torch and Python errors: "manual_seed expected a long", "'int'
    object is not iterable"); numpy integers were refused as "not a whole number"."""
    import numpy as np

    native = checkpoint(models_root, "llama")[1]
    llm = LLM.load(native, device="cpu")
    draft = LLM.load(native, device="cpu", draft_model=native)
    cases = [
        (llm, dict(seed="abc"), "seed is 'abc': use a whole number (or leave it unset)"),
        (llm, dict(seed=1.5), "seed is 1.5: use a whole number (or leave it unset)"),
        (llm, dict(seed=2**70), f"seed is {2**70}: use a whole number that fits in 64 bits"),
        (llm, dict(stop=5), "stop is 5: give a string or a list of strings"),
        (llm, dict(stop=["a", None]), "stop is ['a', None]: give a string or a list of strings"),
        (llm, dict(max_new_tokens=np.float64(4)), "max_new_tokens is np.float64(4.0): use a whole number of tokens"),
        (draft, dict(speculative_k=2.5), "speculative_k is 2.5: use a whole number of tokens"),
        (draft, dict(speculative_k="3"), "speculative_k is '3': use a whole number of tokens"),
    ]
    for model, kwargs, message in cases:
        with pytest.raises(GenerationError) as err:
            model.generate(PROMPTS[0], **{"max_new_tokens": 4, "temperature": 1.0, **kwargs})
        assert str(err.value) == message
    numpy = llm.generate(PROMPTS[0], np.int64(10), temperature=np.float32(0.5), top_k=np.int64(20), seed=np.int64(3))
    assert numpy == llm.generate(PROMPTS[0], 10, temperature=0.5, top_k=20, seed=3)
    assert draft.generate(PROMPTS[0], 10, speculative_k=np.int32(3)) == llm.generate(PROMPTS[0], 10)


def test_one_generation_at_a_time(models_root):
    """The model has one KV cache: two streams of one LLM interleaved in one thread both gave wrong text, and
    threads sharing an LLM got each other's tokens (19 wrong texts of 20), silently. Now the second stream in the
    same thread is an error, and threads take turns."""
    from concurrent.futures import ThreadPoolExecutor

    llm = LLM.load(checkpoint(models_root, "llama")[1], device="cpu")
    expected = [llm.generate(p, max_new_tokens=12) for p in PROMPTS]
    first = llm.stream(PROMPTS[0], max_new_tokens=12)
    text = next(first)
    with pytest.raises(GenerationError, match="already generating in this thread"):
        llm.generate(PROMPTS[1], max_new_tokens=12)
    assert text + "".join(first) == expected[0]  # the first stream was not disturbed, and ends normally
    assert llm.generate(PROMPTS[1], max_new_tokens=12) == expected[1]  # the LLM is free again
    abandoned = llm.stream(PROMPTS[2], max_new_tokens=12)
    next(abandoned)
    abandoned.close()  # closing a stream frees the LLM too
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(llm.generate, PROMPTS[i % 3], max_new_tokens=12) for i in range(12)]
        assert [j.result() for j in jobs] == [expected[i % 3] for i in range(12)]


def test_chat_passes_template_variables(models_root, tmp_path):
    import json
    import shutil

    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if enable_thinking is defined and not enable_thinking %}<no-think>{% endif %}"
    native = shutil.copytree(checkpoint(models_root, "llama")[1], tmp_path / "native")  # (a copy: other tests share the folder)
    config = json.loads((native / "tokenizer_config.json").read_text())
    (native / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    llm = LLM.load(native, device="cpu")
    messages = [{"role": "user", "content": "Hi"}]
    assert llm.tokenizer.decode(llm.encode_chat(messages, template_kwargs={"enable_thinking": False})) == "Hi<no-think>"
    assert llm.chat(messages, template_kwargs={"enable_thinking": False}, max_new_tokens=5) == llm.generate("Hi<no-think>", max_new_tokens=5)


def test_import_stays_cheap():
    code = (
        "import sys, litgpt_clone\n"
        "assert not {'litgpt_clone.api', 'litgpt_clone.generate', 'transformers'} & set(sys.modules), sorted(sys.modules)\n"
        "from litgpt_clone import LLM\n"
        "print(LLM.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "litgpt_clone.api", out.stderr
