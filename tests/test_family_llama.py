"""Llama-layout architectures: Llama (incl. llama3 RoPE scaling), Mistral (sliding window), Mixtral and
Qwen3-MoE (MoE), Qwen2 (q/k/v bias, YaRN), Qwen3 (QK norm)."""

import pytest
from transformers import (
    LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM,
    Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM,
)

from parity import TINY, check_parity

CASES = {
    "llama": (LlamaForCausalLM, LlamaConfig(**TINY, num_key_value_heads=2, rms_norm_eps=1e-5)),
    "llama3-rope-scaling": (
        LlamaForCausalLM,
        LlamaConfig(
            **TINY, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8),
        ),
    ),
    "llama-linear-rope": (LlamaForCausalLM, LlamaConfig(**TINY, rope_scaling=dict(rope_type="linear", factor=2.0))),
    "llama-bias": (LlamaForCausalLM, LlamaConfig(**TINY, attention_bias=True, mlp_bias=True)),
    # transformers' Llama rotates whole heads whatever partial_rotary_factor says: so do we
    "llama-partial-rotary-ignored": (LlamaForCausalLM, LlamaConfig(**TINY, partial_rotary_factor=0.5)),
    "mistral-sliding": (MistralForCausalLM, MistralConfig(**TINY, num_key_value_heads=2, sliding_window=6)),
    "mixtral": (MixtralForCausalLM, MixtralConfig(**TINY, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**TINY, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2-yarn": (
        Qwen2ForCausalLM,
        Qwen2Config(**TINY, num_key_value_heads=2, max_position_embeddings=128, rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32)),
    ),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**TINY, num_key_value_heads=2, head_dim=32)),
    "qwen3-moe": (
        Qwen3MoeForCausalLM,
        Qwen3MoeConfig(**TINY, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=False),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity(case, tmp_path):
    model_cls, config = CASES[case]
    check_parity(model_cls, config, tmp_path)


@pytest.mark.parametrize("case", ["mistral-sliding", "mixtral"])
def test_a_sliding_window_export_stays_its_class(case, tmp_path):
    """A Mistral export wrote ``layer_types`` (and Qwen2's ``use_sliding_window``/``max_window_layers``); transformers
    reads a Mistral config.json with ``layer_types`` as Ministral's, so the export loaded as MinistralForCausalLM and
    a copy saved by transformers no longer converted back. The exported config.json has only ``sliding_window``."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint
    from parity import build_hf

    model_cls, config = CASES[case]
    config = type(config)(**{**config.to_dict(), "sliding_window": 6})
    original = build_hf(model_cls, config, tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    convert_to_hf_checkpoint(tmp_path / "native", tmp_path / "export")
    written = json.loads((tmp_path / "export" / "config.json").read_text())
    assert written["sliding_window"] == 6 and not {"layer_types", "use_sliding_window", "max_window_layers"} & set(written)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(exported) is model_cls and exported.config.sliding_window == 6
    exported.save_pretrained(tmp_path / "resaved")  # what a user publishes after finetuning it with transformers
    convert_hf_checkpoint(tmp_path / "resaved", tmp_path / "again")
    idx = torch.randint(0, config.vocab_size, (1, 20))
    with torch.no_grad():
        assert torch.allclose(exported(idx).logits, original(idx).logits, atol=1e-5)


def test_weights_stored_in_two_dtypes_convert_to_one(tmp_path):
    """Hub checkpoints with bf16 weights and fp32 norms: the conversion kept both, so GPT.from_checkpoint failed in its
    forward ("expected m1 and m2 to have the same dtype"), and to_hf wrote the first tensor's dtype (float32) as the
    model's. They take config.json's dtype, as transformers loads them; the export names the dtype most bytes have.
    --max_shard_size also takes a number of bytes, as save_pretrained does."""
    import json

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint
    from litgpt_clone.model import GPT
    from parity import build_hf

    model_cls, config = CASES["llama"]
    build_hf(model_cls, config, tmp_path / "hf").to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    save_file({k: t.float() if t.dim() == 1 else t for k, t in weights.items()}, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    assert {t.dtype for t in load_file(tmp_path / "native" / "lit_model.safetensors").values()} == {torch.bfloat16}
    ours = GPT.from_checkpoint(tmp_path / "native").eval()
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, config.vocab_size, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).float(), reference(idx).logits.float(), atol=0.05, rtol=0)  # (bf16 rounding)
    convert_to_hf_checkpoint(tmp_path / "native", tmp_path / "export", max_shard_size="20000")
    written = json.loads((tmp_path / "export" / "config.json").read_text())
    assert written["torch_dtype"] == "bfloat16" and (tmp_path / "export" / "model.safetensors.index.json").is_file()
