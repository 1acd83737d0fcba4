"""OLMo-1 (``OlmoForCausalLM``: LayerNorm without weight or bias, SwiGLU, optional ``clip_qkv``) and OLMo-2
(``Olmo2ForCausalLM``: RMSNorm on the attention and MLP outputs instead of their inputs, QK norm over all heads).
Both otherwise share Llama's layout and weight names."""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import Arch, register
from litgpt_clone.checkpoints.families.llama import ATTN, IGNORE, MLP, QK_NORM, TOP, llama_config_from_hf, llama_config_to_hf
from litgpt_clone.config import Config, ConfigError


DEFAULTS = dict(max_position_embeddings=2048)  # what transformers assumes when config.json leaves it out


def check_olmo(hf: dict) -> None:
    if hf.get("attention_bias"):
        raise ConfigError("OLMo attention_bias=True (a bias on q/k/v/o but not the MLP) is not supported")


def olmo_config_from_hf(hf: dict) -> dict:
    return {
        **llama_config_from_hf({**DEFAULTS, **hf}),
        "norm_class_name": "LayerNorm",
        "norm_eps": 1e-5,  # fixed in OlmoLayerNorm
        "norm_affine": False,
        "clip_qkv": hf.get("clip_qkv"),
    }


def olmo2_config_from_hf(hf: dict) -> dict:
    return {
        **llama_config_from_hf({**DEFAULTS, "rms_norm_eps": 1e-5, **hf}),
        "pre_norm": False,
        "post_attention_norm": True,
        "post_mlp_norm": True,
        "norm_qk": True,
        "norm_qk_per_head": False,
    }


def olmo_common_to_hf(c: Config) -> dict:
    if c.mlp_class_name != "GatedMLP" or c.bias or c.attn_bias or c.parallel_residual or c.sliding_window is not None:
        raise ConfigError("OLMo is a sequential block with a bias-free SwiGLU MLP and full attention")
    out = llama_config_to_hf(c)
    for key in ("mlp_bias", "head_dim"):  # OlmoConfig has neither; head_dim must be hidden_size / heads
        out.pop(key)
    if c.head_size * c.n_head != c.n_embd:
        raise ConfigError("OLMo derives head_dim from hidden_size / num_attention_heads")
    return out


def olmo_config_to_hf(c: Config) -> dict:
    if c.norm_class_name != "LayerNorm" or c.norm_affine or c.norm_eps != 1e-5 or not c.pre_norm or c.norm_qk:
        raise ConfigError("OlmoForCausalLM has pre-norm LayerNorms without weight or bias (eps 1e-5) and no QK norm")
    out = olmo_common_to_hf(c)
    out.pop("rms_norm_eps")
    return {**out, "clip_qkv": c.clip_qkv}


def olmo2_config_to_hf(c: Config) -> dict:
    if c.norm_class_name != "RMSNorm" or c.pre_norm or not (c.post_attention_norm and c.post_mlp_norm):
        raise ConfigError("Olmo2ForCausalLM has RMSNorms on the attention and MLP outputs only (pre_norm=False)")
    if not c.norm_qk or c.norm_qk_per_head or c.clip_qkv is not None:
        raise ConfigError("Olmo2ForCausalLM normalizes queries and keys over all heads (norm_qk_per_head=False)")
    return olmo_common_to_hf(c)


ATTN_PROJ = [pair for pair in ATTN if pair[0][0].startswith("attn.")]
OLMO2_LAYER = ATTN_PROJ + QK_NORM + [  # q_norm/k_norm span all heads (norm_qk_per_head=False)
    (("post_attention_norm",), ("post_attention_layernorm",)),  # on the attention output
    (("post_mlp_norm",), ("post_feedforward_layernorm",)),
] + MLP

register(
    # OLMo-1's norms have no weights, so the norm entries of Llama's table simply find nothing to map
    Arch(
        name="OlmoForCausalLM", model_type="olmo", config_from_hf=olmo_config_from_hf, config_to_hf=olmo_config_to_hf,
        top=TOP, layer_prefix="model.layers.{l}.", layer=ATTN + MLP, ignore=IGNORE, check=check_olmo,
    ),
    Arch(
        name="Olmo2ForCausalLM", model_type="olmo2", config_from_hf=olmo2_config_from_hf,
        config_to_hf=olmo2_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.", layer=OLMO2_LAYER, ignore=IGNORE,
        check=check_olmo,
    ),
)
