"""Gemma (``GemmaForCausalLM``: Gemma, CodeGemma), Gemma 2 and Gemma 3 (text, and the text half of the
multimodal ``Gemma3ForConditionalGeneration`` checkpoints).

All Gemmas: RMSNorm scaled by ``1 + weight``, GeGLU MLP, embeddings multiplied by ``sqrt(hidden_size)``, tied head.
Gemma 2 adds norms on the attention and MLP outputs, logit softcapping and a sliding window on every other layer;
Gemma 3 drops the softcapping and adds per-head QK norm, five sliding layers per global one and a separate RoPE base
for the sliding layers.
"""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import Arch, layer_types, register
from litgpt_clone.checkpoints.families.llama import (
    ATTN,
    IGNORE,
    MLP,
    QK_NORM,
    TOP,
    llama_config_from_hf,
    llama_config_to_hf,
)
from litgpt_clone.config import Config, ConfigError

# What transformers assumes for keys a config.json leaves out (the 4B-27B Gemma 3 files list only a few).
GEMMA_DEFAULTS = dict(head_dim=256, rms_norm_eps=1e-6, max_position_embeddings=8192, tie_word_embeddings=True)
GEMMA2_DEFAULTS = dict(
    GEMMA_DEFAULTS, vocab_size=256_000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=2,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
)
GEMMA3_DEFAULTS = dict(
    GEMMA2_DEFAULTS, vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=131_072, sliding_window_pattern=6,
    attn_logit_softcapping=None, final_logit_softcapping=None, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
)


def check_gemma(hf: dict) -> None:
    hf = hf.get("text_config") or hf
    if hf.get("attention_bias"):
        raise ConfigError("Gemma attention_bias=True (a bias on q/k/v/o but not the MLP) is not supported")
    if hf.get("use_bidirectional_attention"):
        raise ConfigError("Gemma with use_bidirectional_attention (an encoder, e.g. EmbeddingGemma) is not supported")


def with_layer_types(hf: dict) -> dict:
    """``layer_types`` from the older ``sliding_window_pattern`` key, as transformers derives it."""
    if hf.get("layer_types") or not hf.get("sliding_window"):
        return hf
    k = hf["sliding_window_pattern"]
    types = ["sliding_attention" if (i + 1) % k else "full_attention" for i in range(hf["num_hidden_layers"])]
    return {**hf, "layer_types": types}


def gemma_config_from_hf(hf: dict) -> dict:
    hf = {**GEMMA_DEFAULTS, **hf}
    # GemmaForCausalLM reads hidden_act, whose legacy value "gelu" transformers turns into the tanh approximation
    act = hf.get("hidden_act") or hf.get("hidden_activation") or "gelu_pytorch_tanh"
    act = "gelu_pytorch_tanh" if act == "gelu" else act
    out = llama_config_from_hf({**hf, "hidden_act": act, "sliding_window": None})
    return {**out, "norm_unit_offset": True, "scale_embeddings": True}


def gemma2_config_from_hf(hf: dict) -> dict:
    hf = with_layer_types({**GEMMA2_DEFAULTS, **hf})
    act = hf.get("hidden_activation") or "gelu_pytorch_tanh"  # Gemma 2/3 ignore hidden_act
    out = llama_config_from_hf({**hf, "hidden_act": act})  # sizes, RoPE, sliding window from layer_types
    return {
        **out,
        "norm_unit_offset": True,
        "scale_embeddings": True,
        "post_attention_norm": True,
        "post_mlp_norm": True,
        "attention_scores_scalar": hf["query_pre_attn_scalar"],
        "attention_logit_softcapping": hf["attn_logit_softcapping"],
        "final_logit_softcapping": hf["final_logit_softcapping"],
    }


def gemma3_config_from_hf(hf: dict) -> dict:
    hf = {**GEMMA3_DEFAULTS, **hf}
    # transformers 5 writes rope_parameters per layer type; rope_from_hf (in llama_config_from_hf) reads the global one
    local = (hf.get("rope_parameters") or {}).get("sliding_attention") or {}
    if local.get("rope_type", "default") != "default":
        raise ConfigError(f"Gemma 3 RoPE scaling on the sliding layers ({local['rope_type']}) is not supported")
    return {
        **gemma2_config_from_hf(hf),
        "norm_qk": True,
        "rope_local_base": float(local.get("rope_theta", hf["rope_local_base_freq"])),
        "attention_logit_softcapping": None,  # transformers' Gemma 3 keeps attn_logit_softcapping but never applies it
    }


def gemma3_multimodal_config_from_hf(hf: dict) -> dict:
    text = dict(hf.get("text_config") or {})
    if "tie_word_embeddings" in hf:  # the multimodal model ties its head by the top-level flag
        text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    return gemma3_config_from_hf(text)


# --------------------------------------------------------------------------- export (classic keys)
def gemma_common_to_hf(c: Config) -> dict:
    if c.norm_class_name != "RMSNorm" or not c.norm_unit_offset or not c.scale_embeddings or c.mlp_class_name != "GatedMLP":
        raise ConfigError("a Gemma export needs RMSNorm with norm_unit_offset, scale_embeddings and a GatedMLP")
    if c.bias or c.attn_bias or c.lm_head_bias or c.parallel_residual or not c.pre_norm or c.clip_qkv is not None:
        raise ConfigError("Gemma has no biases, no clip_qkv and a sequential pre-norm block: this config is not a Gemma")
    out = llama_config_to_hf(Config(**{**c.to_dict(), "sliding_window": None}))
    out.pop("mlp_bias")
    out["hidden_activation"] = out["hidden_act"]  # Gemma 2/3 read this one
    return out


def gemma_config_to_hf(c: Config) -> dict:
    if c.post_attention_norm or c.post_mlp_norm or c.attention_scores_scalar or c.sliding_window or c.norm_qk:
        raise ConfigError(
            "GemmaForCausalLM has no post-norms, sliding window, QK norm or query_pre_attn_scalar: export as Gemma 2/3"
        )
    return gemma_common_to_hf(c)


def gemma2_keys_to_hf(c: Config) -> dict:
    if not (c.post_attention_norm and c.post_mlp_norm):
        raise ConfigError("Gemma 2/3 have norms on the attention and MLP outputs (post_attention_norm, post_mlp_norm)")
    out = gemma_common_to_hf(c)
    out.update(
        query_pre_attn_scalar=c.attention_scores_scalar or c.head_size,
        attn_logit_softcapping=c.attention_logit_softcapping,
        final_logit_softcapping=c.final_logit_softcapping,
        sliding_window=c.sliding_window,
        layer_types=layer_types(c),
    )
    if c.sliding_window is not None:
        out["sliding_window_pattern"] = c.sliding_window_pattern  # transformers < 4.53 reads this, not layer_types
    return out


def gemma2_config_to_hf(c: Config) -> dict:
    if c.norm_qk:
        raise ConfigError("Gemma2ForCausalLM has no QK norm: export as Gemma3ForCausalLM")
    return gemma2_keys_to_hf(c)


def gemma3_config_to_hf(c: Config) -> dict:
    if not c.norm_qk or not c.norm_qk_per_head:
        raise ConfigError("Gemma 3 normalizes queries and keys per head (norm_qk, norm_qk_per_head)")
    if c.rope_local_base is None and c.rope_scaling:
        raise ConfigError("Gemma 3 scales RoPE on the global layers only: set rope_local_base for the sliding layers")
    if c.attention_logit_softcapping is not None:
        raise ConfigError("transformers' Gemma 3 does not cap attention scores (attention_logit_softcapping): export as Gemma 2, or without it")
    local_base = c.rope_base if c.rope_local_base is None else c.rope_local_base
    return {**gemma2_keys_to_hf(c), "rope_local_base_freq": local_base}


# --------------------------------------------------------------------------- weight names
ATTN_PROJ = [pair for pair in ATTN if pair[0][0].startswith("attn.")]
GEMMA2_NORMS = [
    (("norm_1",), ("input_layernorm",)),
    (("post_attention_norm",), ("post_attention_layernorm",)),  # on the attention output, not the MLP input
    (("norm_2",), ("pre_feedforward_layernorm",)),
    (("post_mlp_norm",), ("post_feedforward_layernorm",)),
]
MULTIMODAL_TOP = {
    "transformer.wte": "language_model.model.embed_tokens",
    "transformer.ln_f": "language_model.model.norm",
    "lm_head": "language_model.lm_head",
}

register(
    Arch(
        name="GemmaForCausalLM", model_type="gemma", config_from_hf=gemma_config_from_hf,
        config_to_hf=gemma_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.", layer=ATTN + MLP, ignore=IGNORE,
        check=check_gemma, hf_defaults={"num_key_value_heads": 16},
    ),
    Arch(
        name="Gemma2ForCausalLM", model_type="gemma2", config_from_hf=gemma2_config_from_hf,
        config_to_hf=gemma2_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.", layer=ATTN_PROJ + GEMMA2_NORMS + MLP,
        ignore=IGNORE, check=check_gemma,
    ),
    Arch(
        name="Gemma3ForCausalLM", model_type="gemma3_text", config_from_hf=gemma3_config_from_hf,
        config_to_hf=gemma3_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.",
        layer=ATTN_PROJ + QK_NORM + GEMMA2_NORMS + MLP, ignore=IGNORE, check=check_gemma,
    ),
    # The text half of the 4B/12B/27B multimodal checkpoints. save_pretrained writes `language_model.model.*`
    # (the google/* repos and transformers 5 alike; `model.language_model.*` exists only in memory).
    Arch(
        name="Gemma3ForConditionalGeneration", model_type="gemma3", config_from_hf=gemma3_multimodal_config_from_hf,
        config_to_hf=gemma3_config_to_hf, native_architecture="Gemma3ForCausalLM", top=MULTIMODAL_TOP, layer_prefix="language_model.model.layers.{l}.",
        module_names={"language_model.model.": "model.language_model.", "language_model.lm_head": "lm_head"},
        layer=ATTN_PROJ + QK_NORM + GEMMA2_NORMS + MLP, check=check_gemma,
        ignore=IGNORE + (r"^vision_tower\.", r"^multi_modal_projector\."),
    ),
)
