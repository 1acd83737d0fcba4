"""StableLM (with and without q/k/v bias, parallel residual) and StarCoder2 (sliding window shorter than the
sequence, with and without biases)."""

import pytest
from transformers import StableLmConfig, StableLmForCausalLM, Starcoder2Config, Starcoder2ForCausalLM

from litgpt_clone.config import Config, ConfigError
from parity import TINY, check_parity

CASES = {
    "stablelm-3b-4e1t": (StableLmForCausalLM, StableLmConfig(**TINY, num_key_value_heads=4)),
    "stablelm-2-qkv-bias": (StableLmForCausalLM, StableLmConfig(**TINY, num_key_value_heads=2, use_qkv_bias=True, partial_rotary_factor=0.5)),
    "stablelm-parallel": (StableLmForCausalLM, StableLmConfig(**TINY, num_key_value_heads=4, use_parallel_residual=True, tie_word_embeddings=True)),
    "starcoder2-sliding": (
        Starcoder2ForCausalLM, Starcoder2Config(**TINY, num_key_value_heads=2, sliding_window=6, rope_theta=999999.4, bos_token_id=0, eos_token_id=0),
    ),
    "starcoder2-no-bias-untied": (
        Starcoder2ForCausalLM,
        Starcoder2Config(**TINY, num_key_value_heads=1, use_bias=False, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity(case, tmp_path):
    model_cls, config = CASES[case]
    check_parity(model_cls, config, tmp_path)


def test_stablelm_qk_layernorm_is_refused():
    hf = dict(
        architectures=["StableLmForCausalLM"], vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=128, qk_layernorm=True, use_parallel_residual=True,
    )
    with pytest.raises(ConfigError, match="qk_layernorm"):
        Config.from_hf_config(hf)
