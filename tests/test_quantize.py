"""``litgpt_clone.quantize`` on CPU: every bitsandbytes mode keeps a model's logits close, shrinks its memory by the
factor the format promises and keeps KV-cache decoding exact.

Models: a random GPT (2 layers, n_embd 128, GQA, biases), its MoE and tied-embedding variants, and a tiny
``transformers`` Llama converted with our converter. Errors are measured on random token ids against the same
model in full precision: ``rel_rms`` = RMS(logits - reference) / std(reference), ``rel_max`` = max |diff| /
std(reference), ``top1`` = share of positions whose argmax is unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from litgpt_clone.config import Config
from litgpt_clone.model import GPT
from litgpt_clone.quantize import QUANTIZE_MODES, model_memory, quantize

bnb = pytest.importorskip("bitsandbytes")

SIZES = dict(
    name="tiny", block_size=64, vocab_size=256, n_layer=2, n_embd=128, n_head=4, n_query_groups=2,
    norm_class_name="RMSNorm", mlp_class_name="GatedMLP", mlp_activation="silu", intermediate_size=256,
)

# Measured on this machine (bitsandbytes 0.50.2, torch 2.13 CPU), random GPT / converted Llama:
#   mode        rel_rms        rel_max        top1
#   nf4         0.080 / 0.096  0.38 / 0.53   0.79 / 0.88
#   nf4-dq      0.080 / 0.096  0.38 / 0.53   0.81 / 0.88
#   fp4         0.089 / 0.148  0.39 / 0.81   0.81 / 0.87
#   fp4-dq      0.089 / 0.148  0.39 / 0.81   0.81 / 0.87
#   int8        0.006 / 0.008  0.03 / 0.04   1.00 / 0.99
# (random weights give near-flat logits, so a top-1 flips easily; a trained model has larger margins.)
BOUNDS = {  # mode: (rel_rms below, rel_max below, top1 at least)
    "bnb.nf4": (0.13, 0.75, 0.72),
    "bnb.nf4-dq": (0.13, 0.75, 0.72),
    "bnb.fp4": (0.20, 1.00, 0.72),
    "bnb.fp4-dq": (0.20, 1.00, 0.72),
    "bnb.int8": (0.015, 0.08, 0.97),
}


def random_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(Config(**{**SIZES, **overrides}))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):  # init_weights zeroes them; random values show they are kept
                p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def gpt() -> GPT:
    return random_gpt(bias=True)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> GPT:
    from parity import TINY, build_hf
    from transformers import LlamaConfig, LlamaForCausalLM

    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("quantize_llama")
    build_hf(LlamaForCausalLM, LlamaConfig(**TINY, num_key_value_heads=2), root / "hf")
    convert_hf_checkpoint(root / "hf", root / "native")
    return GPT.from_checkpoint(root / "native").eval()


def logit_error(model: GPT, reference: GPT, shape: tuple[int, int] = (4, 32), seed: int = 1) -> tuple[float, float, float]:
    """(rel_rms, rel_max, top1) of ``model``'s logits against ``reference``'s on random token ids."""
    torch.manual_seed(seed)
    idx = torch.randint(0, reference.config.vocab_size, shape)
    with torch.no_grad():
        expected, got = reference(idx), model(idx)
    diff, std = (got.float() - expected.float()), expected.float().std()
    top1 = (got.argmax(-1) == expected.argmax(-1)).float().mean()
    return (diff.pow(2).mean().sqrt() / std).item(), (diff.abs().max() / std).item(), top1.item()


def quantized_linear_bytes(model: nn.Module) -> int:
    """Bytes of the weights ``quantize`` replaces by default: every Linear but lm_head."""
    return sum(m.weight.nbytes for name, m in model.named_modules() if type(m) is nn.Linear and name != "lm_head")


@pytest.fixture(scope="module")
def runs(gpt, llama) -> dict:
    """For each model and mode: the quantized model, its memory before its first forward, its logit errors."""
    out = {}
    for which, reference in (("gpt", gpt), ("llama", llama)):
        for mode in QUANTIZE_MODES:
            model = quantize(copy.deepcopy(reference), mode)
            memory = model_memory(model)
            out[which, mode] = dict(model=model, memory=memory, errors=logit_error(model, reference))
    return out


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
@pytest.mark.parametrize("which", ["gpt", "llama"])
def test_logits_stay_close(mode, which, runs):
    rel_rms, rel_max, top1 = runs[which, mode]["errors"]
    max_rms, max_max, min_top1 = BOUNDS[mode]
    assert rel_rms < max_rms and rel_max < max_max and top1 >= min_top1, (rel_rms, rel_max, top1)
    assert rel_rms > (0.04 if mode != "bnb.int8" else 0.002)  # the weights really are quantized


@pytest.mark.parametrize("which", ["gpt", "llama"])
def test_int8_beats_nf4_and_nf4_is_no_worse_than_fp4(which, runs):
    """NF4's levels follow a normal distribution, as trained (and random) weights do; int8 has 16x the levels."""
    rms = {mode: runs[which, mode]["errors"][0] for mode in ("bnb.nf4", "bnb.fp4", "bnb.int8")}
    assert rms["bnb.int8"] * 5 < rms["bnb.nf4"] < rms["bnb.fp4"]


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_layers_swapped_weights_quantized_biases_kept(mode, gpt):
    model = copy.deepcopy(gpt)
    qkv_bias = model.transformer.h[0].attn.qkv.bias
    quantize(model, mode)
    expected = bnb.nn.Linear8bitLt if mode == "bnb.int8" else bnb.nn.Linear4bit
    linears = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears.pop("lm_head") is nn.Linear  # skipped by default
    assert len(linears) == 2 * 5 and set(linears.values()) == {expected}  # qkv, proj, fc_1, fc_2, mlp.proj per layer
    qkv = model.transformer.h[0].attn.qkv
    assert qkv.bias is qkv_bias and qkv.weight.dtype == (torch.int8 if mode == "bnb.int8" else torch.uint8)
    if mode != "bnb.int8":
        assert qkv.weight.quant_type == mode.split(".")[1].removesuffix("-dq")
        assert qkv.weight.quant_state.nested is mode.endswith("-dq")


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_parameter_count_is_the_models_before_quantizing(mode, gpt):
    """finetune's "N trainable of M parameters": a 4-bit weight stores two values a byte, and counting its numel()
    made a QLoRA model look a third smaller (86,848 of 123,712)."""
    from litgpt_clone.quantize import parameter_count

    model = copy.deepcopy(gpt)
    before = sum(p.numel() for p in model.parameters())
    quantize(model, mode)
    assert parameter_count(model) == before == parameter_count(gpt)


def test_int8_codes_are_the_ones_bitsandbytes_makes_itself(gpt):
    """Int8Params quantizes a weight from fp16 (as transformers' int8 models are made); quantizing from fp32 rounded
    about 1 code in 130 the other way."""
    model = copy.deepcopy(gpt)
    weight = model.transformer.h[0].mlp.fc_1.weight.detach().clone()
    quantize(model, "bnb.int8")
    theirs = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
    assert torch.equal(model.transformer.h[0].mlp.fc_1.weight.data, theirs.data)
    assert torch.equal(model.transformer.h[0].mlp.fc_1.weight.SCB, theirs.SCB)


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_memory_shrinks(mode, gpt, runs):
    """4-bit stores 0.5 byte per weight plus an fp32 absmax per 64 weights (nested: 8-bit absmax, plus a 1 KB code
    table per layer), so fp32 Linear weights shrink about 7x; int8 stores 1 byte plus an fp32 scale per row of 128,
    about 3.9x. Measured (factor of the Linear weights, before / after the first forward, where bitsandbytes
    repacks 4-bit weights for CPU inference): nf4 and fp4 7.08 / 7.50, -dq 7.23 / 7.50, int8 3.89 / 3.89; the
    whole model (embedding and lm_head stay fp32) goes to 0.31 (4-bit) and 0.40 (int8) of its 1.47 MB."""
    factor = 3.85 if mode == "bnb.int8" else 7.0
    full, linear = model_memory(gpt), quantized_linear_bytes(gpt)
    run = runs["gpt", mode]
    assert run["memory"] <= full - linear + linear / factor
    assert model_memory(run["model"]) <= full - linear + linear / factor


@pytest.mark.parametrize("mode", ["bnb.nf4", "bnb.nf4-dq", "bnb.int8"])
def test_memory_counts_quantization_statistics(mode):
    """One Linear(128 -> 256) with bias, byte by byte."""
    layer = quantize(nn.Sequential(nn.Linear(128, 256)), mode)
    weights, bias = 256 * 128, 256 * 4
    expected = {
        # 4-bit codes, fp32 absmax per 64 weights, the 16-entry fp32 code table
        "bnb.nf4": weights // 2 + weights // 64 * 4 + 16 * 4,
        # ... absmax as uint8, with its own fp32 absmax per 256, a 256-entry code table and an fp32 offset
        "bnb.nf4-dq": weights // 2 + weights // 64 + 2 * 4 + 256 * 4 + 16 * 4 + 4,
        # int8 weights, an fp32 scale per output row
        "bnb.int8": weights + 256 * 4,
    }[mode]
    assert model_memory(layer) == expected + bias


def test_memory_counts_shared_tensors_once():
    tied = random_gpt(tie_embeddings=True)
    untied = random_gpt(tie_embeddings=False)
    embedding = tied.transformer.wte.weight
    assert model_memory(untied) - model_memory(tied) == embedding.numel() * embedding.element_size()


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_kv_cache_decode_matches_full_forward(mode, runs):
    from parity import check_kv_cache

    model = runs["llama", mode]["model"]
    torch.manual_seed(2)
    check_kv_cache(model, torch.randint(0, model.config.vocab_size, (2, 8)))  # prefill 5, then 3 single-token steps


@pytest.mark.parametrize("mode", ["bnb.nf4", "bnb.int8"])
def test_moe_experts_quantized_router_kept(mode):
    """Every expert is quantized, the router (n_expert x n_embd) kept, as vLLM and transformers keep it. The experts'
    width 48 is no multiple of bitsandbytes' 4-bit block (64): on a CPU with AVX512-BF16 their first forward failed
    (bitsandbytes' repack: "shape '[64, 0]' is invalid")."""
    reference = random_gpt(mlp_class_name="MoE", n_expert=4, n_expert_per_token=2, moe_intermediate_size=48)
    model = quantize(copy.deepcopy(reference), mode)
    moe = model.transformer.h[1].mlp
    assert type(moe.gate) is nn.Linear and all(type(m) is not nn.Linear for m in moe.experts.modules() if hasattr(m, "weight"))
    assert type(quantize(copy.deepcopy(reference), mode, skip=()).transformer.h[1].mlp.gate) is not nn.Linear
    rel_rms, _, top1 = logit_error(model, reference, shape=(2, 16))
    # measured rel_rms / top1: nf4 0.105 / 0.84, int8 0.009 / 0.97
    assert rel_rms < BOUNDS[mode][0] and top1 >= BOUNDS[mode][2] - 0.05
    with torch.no_grad():
        model.set_kv_cache(1, 8)
        assert model(torch.tensor([[1, 2, 3]]), input_pos=torch.arange(3)).shape == (1, 3, 256)


def test_tied_embeddings_stay_tied():
    reference = random_gpt(tie_embeddings=True)
    for skip in (("lm_head",), ()):  # a weight shared with the embedding is kept even when not skipped
        model = quantize(copy.deepcopy(reference), "bnb.nf4", skip=skip)
        assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.transformer.wte.weight
        assert logit_error(model, reference)[0] < BOUNDS["bnb.nf4"][0]


def test_skip_patterns():
    model = quantize(random_gpt(), "bnb.nf4", skip=("lm_head", "transformer.h.0", "fc_2"))
    plain = sorted(name for name, m in model.named_modules() if type(m) is nn.Linear)
    assert plain == [
        "lm_head", "transformer.h.0.attn.proj", "transformer.h.0.attn.qkv", "transformer.h.0.mlp.fc_1",
        "transformer.h.0.mlp.fc_2", "transformer.h.0.mlp.proj", "transformer.h.1.mlp.fc_2",
    ]
    everything = quantize(random_gpt(), "bnb.int8", skip=())
    assert type(everything.lm_head) is bnb.nn.Linear8bitLt
    assert logit_error(everything, random_gpt())[0] < BOUNDS["bnb.int8"][0]


def test_bfloat16_model_and_compute_dtype(gpt):
    reference = copy.deepcopy(gpt).to(torch.bfloat16)
    for mode, kwargs in (("bnb.nf4", {}), ("bnb.int8", {})):
        model = quantize(copy.deepcopy(reference), mode, **kwargs)
        with torch.no_grad():
            assert model(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16
        assert logit_error(model, reference)[0] < BOUNDS[mode][0] + 0.02  # bf16 rounding on top
    model = quantize(copy.deepcopy(gpt), "bnb.nf4", compute_dtype=torch.bfloat16)
    assert model.transformer.h[0].attn.qkv.compute_dtype == torch.bfloat16
    assert logit_error(model, gpt)[0] < BOUNDS["bnb.nf4"][0] + 0.02


def test_int8_cast_notice_is_logged_once(caplog):
    model = quantize(random_gpt(), "bnb.int8")
    with caplog.at_level("WARNING", logger="bitsandbytes"), torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
        model(torch.tensor([[4, 5]]))
    notices = [r for r in caplog.records if "inputs will be cast" in r.getMessage()]
    assert len(notices) <= 1  # 20 int8 matmuls ran; bitsandbytes logs the notice on each


def test_errors():
    with pytest.raises(ValueError) as info:
        quantize(random_gpt(), "bnb.nf3")
    assert str(info.value) == (
        "unknown quantization mode 'bnb.nf3': use one of bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq, bnb.int8"
    )
    with torch.device("meta"):
        empty = GPT(Config(**SIZES))
    with pytest.raises(ValueError, match="meta device.*load the checkpoint before quantizing"):
        quantize(empty, "bnb.nf4")


@pytest.mark.parametrize("mode", ["bnb.nf4", "bnb.int8"])
def test_load_model_quantizes_each_linear_on_its_way_to_the_device(mode, tmp_path):
    """``LLM.load(quantize=...)`` loads the model on the CPU and quantizes each Linear onto the device (``quantize(...,
    device=)``), where it put the whole full-precision model on the device first (test_api.py measures the GPU peak).
    The logits are exactly those of quantizing the loaded model in place."""
    from parity import TINY, build_hf
    from transformers import LlamaConfig, LlamaForCausalLM

    from litgpt_clone.api import load_model
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint

    build_hf(LlamaForCausalLM, LlamaConfig(**TINY, num_key_value_heads=2), tmp_path / "hf")
    native = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    torch.manual_seed(1)
    idx = torch.randint(0, TINY["vocab_size"], (2, 12))
    for dtype in (torch.float32, torch.bfloat16):
        expected = quantize(GPT.from_checkpoint(native, dtype=dtype).eval(), mode, compute_dtype=dtype)
        model = load_model(native, torch.device("cpu"), dtype, mode)
        assert type(model.transformer.h[0].mlp.fc_1) is type(expected.transformer.h[0].mlp.fc_1) is not nn.Linear
        with torch.no_grad():
            assert torch.equal(model(idx), expected(idx))


def test_compiled_int8_decoding_equals_eager(tmp_path):
    """bitsandbytes' int8 layers split off outlier columns, as many as the step's activations have, so a compiled
    decode step that skipped its guard checks after the first step stopped with "Recompilation triggered with
    skip_guard_eval_unsafe stance" (on the doc test's Qwen3 stand-in, whose weights are 10x the usual scale)."""
    from doc_models import build_model

    from litgpt_clone import LLM
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint

    build_model("Qwen/Qwen3-0.6B", tmp_path / "hf")
    native = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    eager = LLM.load(native, device="cpu", quantize="bnb.int8").generate("Hello", max_new_tokens=20)
    assert LLM.load(native, device="cpu", quantize="bnb.int8", compile=True).generate("Hello", max_new_tokens=20) == eager
