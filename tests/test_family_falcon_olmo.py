"""Falcon (7B multi-query layout, 40B/180B grouped layout, Falcon2-11B grouped layout with one shared norm),
OLMo-1 (weightless LayerNorm, clip_qkv) and OLMo-2 (output norms, QK norm over all heads)."""

import json

import pytest
from safetensors.torch import load_file
from transformers import FalconConfig, FalconForCausalLM, Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM

from litgpt_clone.config import Config, ConfigError
from parity import TINY, check_parity

FALCON_TINY = {k: v for k, v in TINY.items() if k != "intermediate_size"}  # Falcon calls it ffn_hidden_size
CASES = {
    "falcon-7b-layout": (
        FalconForCausalLM,
        FalconConfig(**FALCON_TINY, multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False),
    ),
    "falcon-40b-layout-gqa": (
        FalconForCausalLM,
        FalconConfig(
            **FALCON_TINY, new_decoder_architecture=True, num_kv_heads=2, ffn_hidden_size=96, bias=True,
            tie_word_embeddings=False, rope_theta=500.0,
        ),
    ),
    "falcon2-11b-layout": (
        FalconForCausalLM,
        FalconConfig(**FALCON_TINY, new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1),
    ),
    # Random weights give q/k/v entries of about 0.15: 0.1 clips a good share of them
    "olmo-clip-qkv": (OlmoForCausalLM, OlmoConfig(**TINY, clip_qkv=0.1)),
    "olmo2": (Olmo2ForCausalLM, Olmo2Config(**TINY, num_key_value_heads=2, rms_norm_eps=1e-6)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity(case, tmp_path):
    model_cls, config = CASES[case]
    ours = check_parity(model_cls, config, tmp_path)
    c = ours.config
    if case.startswith("falcon"):
        assert c.parallel_residual and c.n_query_groups == (1 if case == "falcon-7b-layout" else 2)
        assert c.shared_attention_norm == (case != "falcon-40b-layout-gqa")
        exported = json.loads((tmp_path / "back" / "config.json").read_text())
        assert exported["new_decoder_architecture"] == (case != "falcon-7b-layout")
        # the export holds exactly the tensors transformers saved: no stray norm copies
        assert set(load_file(tmp_path / "back" / "model.safetensors")) == set(load_file(tmp_path / "hf" / "model.safetensors"))
    if case == "olmo-clip-qkv":
        assert not c.norm_affine and c.clip_qkv == 0.1
    if case == "olmo2":
        assert not c.pre_norm and c.post_attention_norm and c.post_mlp_norm and c.norm_qk and not c.norm_qk_per_head


def test_falcon_alibi_is_rejected():
    hf = dict(architectures=["FalconForCausalLM"], alibi=True, hidden_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=96)
    with pytest.raises(ConfigError, match="alibi"):
        Config.from_hf_config(hf)


def test_falcon_7b_config_json():
    """tiiuae/falcon-7b's config.json: no num_kv_heads, tie_word_embeddings or max_position_embeddings."""
    hf = dict(
        architectures=["FalconForCausalLM"], model_type="falcon", alibi=False, bias=False, hidden_size=4544,
        layer_norm_epsilon=1e-5, multi_query=True, new_decoder_architecture=False, num_attention_heads=71,
        num_hidden_layers=32, parallel_attn=True, vocab_size=65024,
    )
    c = Config.from_hf_config(hf)
    assert (c.n_query_groups, c.head_size, c.intermediate_size, c.block_size) == (1, 64, 4 * 4544, 2048)
    assert c.tie_embeddings and c.shared_attention_norm and c.mlp_activation == "gelu"
