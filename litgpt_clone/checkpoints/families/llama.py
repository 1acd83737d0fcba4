"""Llama and the architectures that share its layout: Mistral, Mixtral, Qwen2, Qwen3, Qwen3-MoE."""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import (
    Arch, layer_types, register, rope_from_hf, rope_to_hf, sizes_from_hf, sizes_to_hf, sliding_from_layer_types,
)
from litgpt_clone.config import Config, ConfigError

ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def activation_from_hf(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ConfigError(f"hidden_act {name!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def llama_config_from_hf(hf: dict) -> dict:
    base, scaling = rope_from_hf(hf)
    n_layer = hf["num_hidden_layers"]
    out = dict(
        block_size=hf.get("max_position_embeddings", 4096),
        **sizes_from_hf(hf),
        norm_class_name="RMSNorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp_class_name="GatedMLP",
        mlp_activation=activation_from_hf(hf.get("hidden_act", "silu")),
        bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_base=base,
        rope_scaling=scaling,
    )  # (no rotary fraction: transformers' Llama, Mistral, Qwen and OLMo rotate whole heads, whatever partial_rotary_factor says)
    if bool(hf.get("mlp_bias", False)) != bool(hf.get("attention_bias", False)):
        raise ConfigError("checkpoints whose attention_bias differs from mlp_bias are not supported")
    window = hf.get("sliding_window")
    pattern = sliding_from_layer_types(hf, n_layer) if "layer_types" in hf else (1 if window else None)
    if window and pattern is not None and hf.get("use_sliding_window", True):
        out.update(sliding_window=window, sliding_window_pattern=pattern)
    return out


def llama_config_to_hf(c: Config) -> dict:
    if c.rotary_percentage != 1.0:
        raise ConfigError(f"rotary_percentage {c.rotary_percentage}: transformers' {c.architecture} rotates whole heads; export a model that does")
    if c.attn_bias and not c.bias:
        raise ConfigError("a bias on q/k/v alone (attn_bias) has no Llama equivalent: export as Qwen2ForCausalLM")
    out = dict(
        **sizes_to_hf(c),
        head_dim=c.head_size,
        max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps,
        hidden_act={"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[c.mlp_activation],
        attention_bias=c.bias,
        mlp_bias=c.bias,
        tie_word_embeddings=c.tie_embeddings,
        **rope_to_hf(c),
    )
    if c.sliding_window is not None:
        out.update(sliding_window=c.sliding_window, use_sliding_window=True, layer_types=layer_types(c), max_window_layers=0)
    return out


def mistral_config_to_hf(c: Config) -> dict:
    """Mistral and Mixtral apply ``sliding_window`` to every layer and have no ``layer_types``: transformers reads a
    Mistral config.json with ``layer_types`` as Ministral's (``MinistralForCausalLM``), so an export that wrote it
    changed class, and a copy saved by transformers no longer converted back."""
    out = llama_config_to_hf(c)
    if c.sliding_window is not None:
        if c.sliding_window_pattern != 1:
            raise ConfigError(f"{c.architecture} slides on every layer or none: this model slides on some (sliding_window_pattern {c.sliding_window_pattern})")
        for key in ("use_sliding_window", "layer_types", "max_window_layers"):
            del out[key]
    return out


def qwen2_config_from_hf(hf: dict) -> dict:
    out = {**llama_config_from_hf(hf), "attn_bias": True}  # Qwen2 always has a q/k/v bias, never others
    if hf.get("use_sliding_window") and "layer_types" not in hf and hf.get("max_window_layers", 0) > 0:
        raise ConfigError("Qwen2 sliding window on only the upper layers (max_window_layers > 0) is not supported")
    return out


def qwen2_config_to_hf(c: Config) -> dict:
    if not c.attn_bias or c.bias:
        raise ConfigError("Qwen2ForCausalLM has a bias on q/k/v and nowhere else: set attn_bias=True, bias=False")
    return llama_config_to_hf(Config(**{**c.to_dict(), "attn_bias": False}))


def qwen3_config_from_hf(hf: dict) -> dict:
    return {**llama_config_from_hf(hf), "norm_qk": True}


def moe_config_from_hf(hf: dict) -> dict:
    if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
        raise ConfigError("MoE checkpoints with dense layers (mlp_only_layers, decoder_sparse_step) are not supported")
    return dict(
        mlp_class_name="MoE",
        n_expert=hf.get("num_local_experts") or hf["num_experts"],
        n_expert_per_token=hf["num_experts_per_tok"],
        moe_intermediate_size=hf.get("moe_intermediate_size") or hf["intermediate_size"],
        moe_norm_topk_prob=hf.get("norm_topk_prob", True),
    )


TOP = {"transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.norm", "lm_head": "lm_head"}
ATTN = [
    (("norm_1",), ("input_layernorm",)),
    (("attn.qkv",), ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    (("attn.proj",), ("self_attn.o_proj",)),
    (("norm_2",), ("post_attention_layernorm",)),
]
QK_NORM = [(("attn.norm_q",), ("self_attn.q_norm",)), (("attn.norm_k",), ("self_attn.k_norm",))]
MLP = [(("mlp.fc_1",), ("mlp.gate_proj",)), (("mlp.fc_2",), ("mlp.up_proj",)), (("mlp.proj",), ("mlp.down_proj",))]
IGNORE = (r".*rotary_emb\.inv_freq$",)
QWEN_DEFAULTS = {"max_position_embeddings": 32768, "use_sliding_window": False}

register(
    Arch(
        name="LlamaForCausalLM", model_type="llama", config_from_hf=llama_config_from_hf,
        config_to_hf=llama_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.", layer=ATTN + MLP, ignore=IGNORE,
        hf_defaults={"max_position_embeddings": 2048},
    ),
    Arch(
        name="MistralForCausalLM", model_type="mistral", config_from_hf=llama_config_from_hf,
        config_to_hf=mistral_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.", layer=ATTN + MLP, ignore=IGNORE,
        hf_defaults={"max_position_embeddings": 131072, "num_key_value_heads": 8, "sliding_window": 4096},
    ),
    Arch(
        name="MixtralForCausalLM", model_type="mixtral",
        config_from_hf=lambda hf: {**llama_config_from_hf(hf), **moe_config_from_hf(hf)},
        config_to_hf=lambda c: {
            **mistral_config_to_hf(c), "num_local_experts": c.n_expert, "num_experts_per_tok": c.n_expert_per_token,
            "intermediate_size": c.moe_intermediate_size,
        },
        top=TOP, layer_prefix="model.layers.{l}.", ignore=IGNORE,
        hf_defaults={"max_position_embeddings": 131072, "num_key_value_heads": 8, "rope_theta": 1e6, "rms_norm_eps": 1e-5},
        layer=ATTN + [
            (("mlp.gate",), ("block_sparse_moe.gate",)),
            (("mlp.experts.{e}.fc_1",), ("block_sparse_moe.experts.{e}.w1",)),
            (("mlp.experts.{e}.fc_2",), ("block_sparse_moe.experts.{e}.w3",)),
            (("mlp.experts.{e}.proj",), ("block_sparse_moe.experts.{e}.w2",)),
        ],
    ),
    Arch(
        name="Qwen2ForCausalLM", model_type="qwen2", config_from_hf=qwen2_config_from_hf,
        config_to_hf=qwen2_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.", layer=ATTN + MLP, ignore=IGNORE,
        hf_defaults={**QWEN_DEFAULTS, "num_key_value_heads": 32},
    ),
    Arch(
        name="Qwen3ForCausalLM", model_type="qwen3", config_from_hf=qwen3_config_from_hf,
        config_to_hf=llama_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.", layer=ATTN + QK_NORM + MLP,
        ignore=IGNORE, hf_defaults={**QWEN_DEFAULTS, "num_key_value_heads": 32, "head_dim": 128},
    ),
    Arch(
        name="Qwen3MoeForCausalLM", model_type="qwen3_moe",
        config_from_hf=lambda hf: {**qwen3_config_from_hf(hf), **moe_config_from_hf(hf)},
        config_to_hf=lambda c: {
            **llama_config_to_hf(c), "num_experts": c.n_expert, "num_experts_per_tok": c.n_expert_per_token,
            "moe_intermediate_size": c.moe_intermediate_size, "norm_topk_prob": c.moe_norm_topk_prob,
            "decoder_sparse_step": 1, "mlp_only_layers": [],
        },
        top=TOP, layer_prefix="model.layers.{l}.", ignore=IGNORE,
        hf_defaults={**QWEN_DEFAULTS, "num_key_value_heads": 4, "moe_intermediate_size": 768, "norm_topk_prob": False},
        layer=ATTN + QK_NORM + [
            (("mlp.gate",), ("mlp.gate",)),
            (("mlp.experts.{e}.fc_1",), ("mlp.experts.{e}.gate_proj",)),
            (("mlp.experts.{e}.fc_2",), ("mlp.experts.{e}.up_proj",)),
            (("mlp.experts.{e}.proj",), ("mlp.experts.{e}.down_proj",)),
        ],
    ),
)
