"""StableLM (stablelm-3b-4e1t, StableLM-2, Zephyr): LayerNorm with bias, partial rotary, SwiGLU, optional q/k/v
bias and parallel residual with one shared norm."""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import Arch, register, rope_from_hf, rope_to_hf, sizes_to_hf
from litgpt_clone.checkpoints.families.gpt_neox import HF_ACTIVATIONS, rotary_fraction
from litgpt_clone.checkpoints.families.llama import ATTN, IGNORE, MLP, TOP, activation_from_hf
from litgpt_clone.config import Config, ConfigError


def check_stablelm(hf: dict) -> None:
    if hf.get("qk_layernorm"):
        raise ConfigError("StableLM qk_layernorm=true (a separate LayerNorm per head, StableLM-2-12B) is not supported")


def stablelm_config_from_hf(hf: dict) -> dict:
    base, scaling = rope_from_hf(hf)
    parallel = bool(hf.get("use_parallel_residual", False))
    return dict(
        block_size=hf.get("max_position_embeddings", 4096),
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        n_query_groups=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        norm_class_name="LayerNorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        parallel_residual=parallel,
        shared_attention_norm=parallel,  # the parallel layer has input_layernorm only
        attn_bias=bool(hf.get("use_qkv_bias", False)),
        mlp_class_name="GatedMLP",
        mlp_activation=activation_from_hf(hf.get("hidden_act", "silu")),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rotary_percentage=rotary_fraction(hf, "partial_rotary_factor", 0.25),
        rope_base=base,
        rope_scaling=scaling,
    )


def stablelm_config_to_hf(c: Config) -> dict:
    if c.bias or c.lm_head_bias or c.norm_class_name != "LayerNorm" or c.mlp_class_name != "GatedMLP":
        raise ConfigError("StableLmForCausalLM has LayerNorm, a gated MLP and no bias outside q/k/v")
    if c.parallel_residual != c.shared_attention_norm or c.norm_qk or c.sliding_window is not None:
        raise ConfigError("StableLmForCausalLM's parallel residual shares one norm; it has no QK norm, no sliding window")
    if c.head_size * c.n_head != c.n_embd:
        raise ConfigError("StableLmForCausalLM needs head_size = n_embd / n_head")
    return dict(
        **sizes_to_hf(c),
        max_position_embeddings=c.block_size,
        layer_norm_eps=c.norm_eps,
        hidden_act=HF_ACTIVATIONS[c.mlp_activation],
        use_qkv_bias=c.attn_bias,
        qk_layernorm=False,
        use_parallel_residual=c.parallel_residual,
        tie_word_embeddings=c.tie_embeddings,
        partial_rotary_factor=c.rotary_percentage,
        **rope_to_hf(c),
    )


register(
    Arch(
        name="StableLmForCausalLM", model_type="stablelm", config_from_hf=stablelm_config_from_hf,
        config_to_hf=stablelm_config_to_hf, check=check_stablelm, top=TOP, layer_prefix="model.layers.{l}.",
        layer=ATTN + MLP, ignore=IGNORE, hf_defaults={"num_key_value_heads": 32},
    ),
)
