"""Gemma family: Gemma (GeGLU, unit-offset RMSNorm, scaled embeddings), Gemma 2 (post-norms, both softcaps, sliding
window on every other layer), Gemma 3 text (QK norm, 5:1 sliding pattern, local/global RoPE bases, linear scaling) and
the text half of a multimodal Gemma 3 checkpoint."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Gemma3Config, Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration, Gemma3TextConfig, GemmaConfig, GemmaForCausalLM, SiglipVisionConfig,
)

from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint
from litgpt_clone.config import Config, ConfigError
from litgpt_clone.model import GPT
from parity import TINY, build_hf, check_kv_cache, check_parity

GEMMA3_ROPE = {
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
}
CASES = {
    # head_dim 32 with 4 heads: the attention is wider than hidden_size, as in gemma-7b
    "gemma": (GemmaForCausalLM, GemmaConfig(**TINY, head_dim=32, num_key_value_heads=1), "sdpa"),
    # The random weights give attention scores ~0.05 and logits ~0.3: caps of that size make the tanh matter.
    # transformers' Gemma 2 always runs eager attention (its SDPA path cannot softcap).
    "gemma2": (
        Gemma2ForCausalLM,
        Gemma2Config(
            **TINY, head_dim=16, num_key_value_heads=2, sliding_window=6, query_pre_attn_scalar=24,
            attn_logit_softcapping=0.05, final_logit_softcapping=0.2,
        ),
        "eager",
    ),
    "gemma3": (
        Gemma3ForCausalLM,
        Gemma3TextConfig(
            **{**TINY, "num_hidden_layers": 6}, head_dim=16, num_key_value_heads=2, sliding_window=6,
            query_pre_attn_scalar=24, rope_parameters=GEMMA3_ROPE,
        ),
        "sdpa",
    ),
    # transformers' Gemma 3 stores attn_logit_softcapping and never applies it: neither do we
    "gemma3-attn-cap-ignored": (
        Gemma3ForCausalLM,
        Gemma3TextConfig(**TINY, head_dim=16, num_key_value_heads=2, sliding_window=6, attn_logit_softcapping=0.05, final_logit_softcapping=0.3),
        "eager",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity(case, tmp_path):
    model_cls, config, attn = CASES[case]
    ours = check_parity(model_cls, config, tmp_path, attn_implementation=attn)
    c = ours.config
    assert c.norm_unit_offset and c.scale_embeddings and c.tie_embeddings and c.mlp_activation == "gelu_tanh"
    if case == "gemma2":
        assert (c.sliding_window, c.sliding_window_pattern) == (6, 2)
        assert (c.attention_logit_softcapping, c.final_logit_softcapping, c.attention_scores_scalar) == (0.05, 0.2, 24)
    if case == "gemma3":
        assert (c.sliding_window, c.sliding_window_pattern, c.rope_base, c.rope_local_base) == (6, 6, 1e6, 1e4)
        assert c.norm_qk and c.norm_qk_per_head and c.attention_scores_scalar == 24
        assert c.rope_scaling == {"rope_type": "linear", "factor": 8.0}


def test_gemma2_softcaps_matter(tmp_path):
    """Guard for the test above: without the caps the logits differ, so parity really checks them."""
    model_cls, config, attn = CASES["gemma2"]
    hf = build_hf(model_cls, config, tmp_path / "hf", attn_implementation=attn)
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    ours = GPT.from_checkpoint(tmp_path / "native")
    idx = torch.randint(0, config.vocab_size, (1, 20))
    with torch.no_grad():
        expected = hf(idx).logits
        for field in ("attention_logit_softcapping", "final_logit_softcapping"):
            uncapped = GPT(Config(**{**ours.config.to_dict(), field: None}))
            uncapped.load_state_dict(ours.state_dict())
            assert not torch.allclose(uncapped(idx), expected, atol=1e-3), field


def test_gemma3_multimodal_text(tmp_path):
    """A tiny Gemma3ForConditionalGeneration: its text model converts (the vision tower is left out), is recorded
    as a Gemma3ForCausalLM and exports as one."""
    text = Gemma3TextConfig(
        **{**TINY, "num_hidden_layers": 3}, head_dim=16, num_key_value_heads=2, sliding_window=6,
        query_pre_attn_scalar=16, rope_parameters=GEMMA3_ROPE, sliding_window_pattern=3,
    )
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=93, eoi_token_index=94,
        image_token_index=95,
    )
    hf = build_hf(Gemma3ForConditionalGeneration, config, tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    ours = GPT.from_checkpoint(tmp_path / "native").eval()
    assert ours.config.architecture == "Gemma3ForCausalLM" and ours.config.sliding_window_pattern == 3

    torch.manual_seed(1)
    idx = torch.randint(0, 93, (2, 20))  # text tokens only: no image placeholders
    with torch.no_grad():
        expected = hf(input_ids=idx).logits
        torch.testing.assert_close(ours(idx), expected)
    check_kv_cache(ours, idx)

    convert_to_hf_checkpoint(tmp_path / "native", tmp_path / "back")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(reloaded).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, expected)


# --------------------------------------------------------------------------- config.json files as published
def test_gemma_legacy_hidden_act():
    hf = dict(
        architectures=["GemmaForCausalLM"], hidden_act="gelu", hidden_size=3072, intermediate_size=24576,
        num_attention_heads=16, num_key_value_heads=16, head_dim=256, num_hidden_layers=28, vocab_size=256000,
    )
    c = Config.from_hf_config(hf)
    assert c.mlp_activation == "gelu_tanh" and c.head_size == 256 and c.tie_embeddings and c.norm_eps == 1e-6


def test_gemma2_without_layer_types():
    hf = dict(
        architectures=["Gemma2ForCausalLM"], hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        num_hidden_layers=26, vocab_size=256000, sliding_window=4096, query_pre_attn_scalar=256, rope_theta=10000.0,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, cache_implementation="hybrid",
    )
    c = Config.from_hf_config(hf)
    assert (c.sliding_window, c.sliding_window_pattern) == (4096, 2)
    assert c.is_sliding(0) and not c.is_sliding(1)


def test_gemma2_sparse_config_takes_transformers_defaults():
    """A Gemma 2 config.json without num_key_value_heads: transformers' Gemma2Config gives 4 (and 8 heads, 26 layers,
    ...), where the converter assumed one K/V head per query head and refused the weights as the wrong shape."""
    transformers = pytest.importorskip("transformers")
    hf = dict(architectures=["Gemma2ForCausalLM"], hidden_size=256, num_attention_heads=8, head_dim=32, num_hidden_layers=2)
    reference = transformers.Gemma2Config(**hf)
    c = Config.from_hf_config(hf)
    assert (c.n_head, c.n_query_groups, c.n_layer, c.vocab_size, c.intermediate_size) == (
        reference.num_attention_heads, reference.num_key_value_heads, 2, reference.vocab_size, reference.intermediate_size) == (8, 4, 2, 256_000, 9216)


def test_gemma3_classic_keys():
    """gemma-3-1b's config.json: rope_theta, rope_local_base_freq and sliding_window_pattern, no layer_types."""
    hf = dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", hidden_size=1152, intermediate_size=6912,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, num_hidden_layers=26, vocab_size=262144,
        max_position_embeddings=32768, query_pre_attn_scalar=256, rope_theta=1000000, rope_local_base_freq=10000,
        rope_scaling=None, sliding_window=512, sliding_window_pattern=6, attn_logit_softcapping=None,
        final_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh",
    )
    c = Config.from_hf_config(hf)
    assert (c.rope_base, c.rope_local_base, c.rope_scaling) == (1e6, 1e4, None)
    assert (c.sliding_window, c.sliding_window_pattern, c.n_query_groups) == (512, 6, 1)
    assert c.attention_logit_softcapping is None and c.final_logit_softcapping is None


def test_gemma3_multimodal_sparse_config():
    """gemma-3-4b's config.json lists only a few text keys; the rest are Gemma3TextConfig defaults."""
    hf = dict(
        architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3",
        text_config=dict(
            hidden_size=2560, intermediate_size=10240, model_type="gemma3_text", num_hidden_layers=34,
            rope_scaling={"factor": 8.0, "rope_type": "linear"}, sliding_window=1024,
        ),
        vision_config=dict(model_type="siglip_vision_model"),
    )
    c = Config.from_hf_config(hf)
    assert (c.n_head, c.n_query_groups, c.head_size, c.vocab_size) == (8, 4, 256, 262208)
    assert (c.rope_base, c.rope_local_base, c.rope_scaling) == (1e6, 1e4, {"factor": 8.0, "rope_type": "linear"})
    assert (c.sliding_window, c.sliding_window_pattern, c.attention_scores_scalar) == (1024, 6, 256)
    assert c.final_logit_softcapping is None and c.tie_embeddings
