"""``from litgpt_clone import LLM``: load, generate (alone and batched), stream, chat, benchmark, quantize, errors,
against transformers' greedy ``generate`` on the tiny checkpoints of test_generate.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from litgpt_clone import LLM
from litgpt_clone.generate import GenerationError, generate
from test_generate import CHATML, FAMILIES, PROMPTS, checkpoint, hf_greedy, models_root  # noqa: F401  (fixture)


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

    with pytest.raises(CheckpointError, match="no checkpoint at ../no-such-model: pass a folder"):  # a path, not a repo id
        LLM.load("../no-such-model")
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
