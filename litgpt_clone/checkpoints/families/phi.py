"""Phi-1/1.5/2 (``PhiForCausalLM``) and Phi-3/3.5/4/4-mini (``Phi3ForCausalLM``)."""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import Arch, register, rope_from_hf, rope_to_hf, sizes_from_hf, sizes_to_hf
from litgpt_clone.checkpoints.families.gpt_neox import HF_ACTIVATIONS, rotary_fraction
from litgpt_clone.checkpoints.families.llama import IGNORE, activation_from_hf
from litgpt_clone.config import Config, ConfigError


def head_dim_to_hf(c: Config) -> dict:
    """``head_dim`` only where it differs from ``hidden_size / num_attention_heads`` (newer transformers read it)."""
    return {} if c.head_size * c.n_head == c.n_embd else {"head_dim": c.head_size}


# --------------------------------------------------------------------------- Phi-1, Phi-1.5, Phi-2
def check_phi(hf: dict) -> None:
    if hf.get("model_type", "phi") != "phi":
        raise ConfigError(
            f"Phi checkpoint with model_type {hf['model_type']!r} (the old remote-code layout) is not supported: "
            "use a revision whose config.json says model_type 'phi'"
        )


def phi_config_from_hf(hf: dict) -> dict:
    base, scaling = rope_from_hf(hf)
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        **sizes_from_hf(hf),
        norm_class_name="LayerNorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        norm_qk=bool(hf.get("qk_layernorm", False)),  # one LayerNorm of head width shared by all heads
        parallel_residual=True,
        shared_attention_norm=True,  # attention and MLP both read input_layernorm(x)
        bias=True,
        lm_head_bias=True,
        mlp_class_name="GeluMLP",
        mlp_activation=activation_from_hf(hf.get("hidden_act", "gelu_new")),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rotary_percentage=rotary_fraction(hf, "partial_rotary_factor", 0.5),
        rope_base=base,
        rope_scaling=scaling,
    )


def phi_config_to_hf(c: Config) -> dict:
    if not (c.parallel_residual and c.shared_attention_norm) or c.norm_class_name != "LayerNorm":
        raise ConfigError("PhiForCausalLM needs parallel_residual with shared_attention_norm and LayerNorm")
    if not (c.bias and c.lm_head_bias) or c.mlp_class_name != "GeluMLP" or c.sliding_window is not None:
        raise ConfigError("PhiForCausalLM needs bias=True, lm_head_bias=True, GeluMLP and no sliding window")
    return dict(
        **sizes_to_hf(c),
        max_position_embeddings=c.block_size,
        layer_norm_eps=c.norm_eps,
        qk_layernorm=c.norm_qk,
        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}[c.mlp_activation],
        tie_word_embeddings=c.tie_embeddings,
        partial_rotary_factor=c.rotary_percentage,
        **head_dim_to_hf(c),
        **rope_to_hf(c),
    )


# --------------------------------------------------------------------------- Phi-3, Phi-3.5, Phi-4, Phi-4-mini
def phi3_rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """Like ``rope_from_hf``, with Phi-3's quirks: the old type names ``su`` and ``yarn`` mean ``longrope``, and the
    top-level ``original_max_position_embeddings`` (4096 when absent) wins over the one in the scaling dict."""
    base, scaling = rope_from_hf(hf)
    if scaling is None:
        return base, None
    if scaling["rope_type"] in ("su", "yarn"):
        scaling["rope_type"] = "longrope"
    if scaling["rope_type"] != "longrope":
        raise ConfigError(f"Phi-3 rope type {scaling['rope_type']!r} is not supported: transformers accepts only longrope")
    scaling["original_max_position_embeddings"] = hf.get("original_max_position_embeddings", 4096)
    return base, scaling


def phi3_config_from_hf(hf: dict) -> dict:
    base, scaling = phi3_rope_from_hf(hf)
    out = dict(
        block_size=hf.get("max_position_embeddings", 4096),
        **sizes_from_hf(hf),
        norm_class_name="RMSNorm",
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        mlp_class_name="GatedMLP",
        mlp_activation=activation_from_hf(hf.get("hidden_act", "silu")),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rotary_percentage=rotary_fraction(hf, "partial_rotary_factor", 1.0),
        rope_base=base,
        rope_scaling=scaling,
        # Phi3ForCausalLM.prepare_inputs_for_generation drops the cache at the first step past the original context
        # and recomputes every key with the long factors (LlamaForCausalLM with longrope does not)
        rope_recompute_at_switch=scaling is not None,
    )
    # transformers 5 applies config.json's sliding_window on every layer with every attention implementation
    # (create_sliding_window_causal_mask); older versions applied it with flash-attention only.
    if hf.get("sliding_window") is not None:
        out.update(sliding_window=hf["sliding_window"], sliding_window_pattern=1)
    return out


def phi3_config_to_hf(c: Config) -> dict:
    if c.bias or c.attn_bias or c.lm_head_bias or c.norm_class_name != "RMSNorm" or c.mlp_class_name != "GatedMLP":
        raise ConfigError("Phi3ForCausalLM has no biases, RMSNorm and a gated MLP")
    if c.parallel_residual or c.norm_qk or (c.sliding_window is not None and c.sliding_window_pattern != 1):
        raise ConfigError("Phi3ForCausalLM has a sequential block, no QK norm and a sliding window on all layers or none")
    out = dict(
        **sizes_to_hf(c),
        max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps,
        hidden_act=HF_ACTIVATIONS[c.mlp_activation],
        tie_word_embeddings=c.tie_embeddings,
        partial_rotary_factor=c.rotary_percentage,
        sliding_window=c.sliding_window,
        rope_theta=c.rope_base,
        # Phi3Config's default pad_token_id (32000) is an embedding padding_idx that breaks vocabularies up to 32000;
        # it only zeroes that row's gradient, so leave it unset (the tokenizer files keep the real pad token)
        pad_token_id=None,
        **head_dim_to_hf(c),
    )
    if c.rope_scaling:
        scaling = dict(c.rope_scaling)
        if scaling.pop("rope_type") != "longrope":
            raise ConfigError("Phi3ForCausalLM supports only longrope scaling")
        out["original_max_position_embeddings"] = scaling.pop("original_max_position_embeddings", c.block_size)
        out["rope_scaling"] = {"type": "longrope", **scaling}  # old transformers want type/short_factor/long_factor
    return out


register(
    Arch(
        name="PhiForCausalLM", model_type="phi", config_from_hf=phi_config_from_hf, config_to_hf=phi_config_to_hf,
        check=check_phi,
        top={"transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.final_layernorm", "lm_head": "lm_head"},
        layer_prefix="model.layers.{l}.",
        layer=[
            (("norm_1",), ("input_layernorm",)),
            (("attn.qkv",), ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            (("attn.norm_q",), ("self_attn.q_layernorm",)),
            (("attn.norm_k",), ("self_attn.k_layernorm",)),
            (("attn.proj",), ("self_attn.dense",)),
            (("mlp.fc",), ("mlp.fc1",)),
            (("mlp.proj",), ("mlp.fc2",)),
        ],
        ignore=IGNORE,
    ),
    Arch(
        name="Phi3ForCausalLM", model_type="phi3", config_from_hf=phi3_config_from_hf, config_to_hf=phi3_config_to_hf,
        top={"transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.norm", "lm_head": "lm_head"},
        layer_prefix="model.layers.{l}.",
        layer=[
            (("norm_1",), ("input_layernorm",)),
            (("attn.qkv",), ("self_attn.qkv_proj",)),  # already [q; k; v]
            (("attn.proj",), ("self_attn.o_proj",)),
            (("norm_2",), ("post_attention_layernorm",)),
            (("mlp.fc_1", "mlp.fc_2"), ("mlp.gate_up_proj",)),  # [gate; up]
            (("mlp.proj",), ("mlp.down_proj",)),
        ],
        ignore=IGNORE,
    ),
)
