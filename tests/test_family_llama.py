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
