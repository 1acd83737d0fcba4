"""Falcon (``FalconForCausalLM``): 7B (multi-query, one LayerNorm shared by attention and MLP), 40B/180B
(``new_decoder_architecture``: grouped K/V heads, ``ln_attn`` + ``ln_mlp``) and Falcon2-11B (grouped K/V heads, one
shared LayerNorm). Every layout is a parallel-residual block with a GELU MLP and rotary positions; the fused
``query_key_value`` is interleaved per K/V group (``grouped_qkv``). Falcon3 checkpoints are ``LlamaForCausalLM``.
"""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import Arch, register, rope_from_hf, rope_to_hf
from litgpt_clone.checkpoints.families.llama import IGNORE, activation_from_hf
from litgpt_clone.config import Config, ConfigError


def check_falcon(hf: dict) -> None:
    if hf.get("alibi"):
        raise ConfigError("Falcon with alibi=True (Falcon-RW) is not supported: litgpt_clone has rotary positions only")
    if not hf.get("parallel_attn", True) and not hf.get("new_decoder_architecture"):
        raise ConfigError("Falcon with parallel_attn=False (a sequential block) is not supported")


def falcon_config_from_hf(hf: dict) -> dict:
    n_embd = hf.get("hidden_size") or hf["n_embed"]
    n_head = hf["num_attention_heads"]
    new = bool(hf.get("new_decoder_architecture", False))
    if new:
        groups = hf.get("num_kv_heads") or n_head
    else:
        groups = 1 if hf.get("multi_query", True) else n_head  # the old layout ignores num_kv_heads
    shared_norm = (hf.get("num_ln_in_parallel_attn") or 2) == 1 if new else True
    base, scaling = rope_from_hf(hf)
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=groups,
        intermediate_size=hf.get("ffn_hidden_size") or 4 * n_embd,
        norm_class_name="LayerNorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        parallel_residual=True,
        shared_attention_norm=shared_norm,
        bias=bool(hf.get("bias", False)),
        mlp_class_name="GeluMLP",
        mlp_activation=activation_from_hf(hf.get("activation", "gelu")),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        rope_base=base,
        rope_scaling=scaling,
    )


def falcon_config_to_hf(c: Config) -> dict:
    if not c.parallel_residual or c.norm_class_name != "LayerNorm" or not c.norm_affine or c.mlp_class_name != "GeluMLP":
        raise ConfigError("Falcon is a parallel-residual block with affine LayerNorms and a GELU MLP")
    if c.head_size * c.n_head != c.n_embd or c.rotary_percentage != 1.0:
        raise ConfigError("Falcon derives head_dim from hidden_size / num_attention_heads and rotates whole heads")
    if (c.attn_bias and not c.bias) or c.lm_head_bias or c.norm_qk or c.post_attention_norm or c.post_mlp_norm:
        raise ConfigError("this config has features (attn_bias, lm_head_bias, QK norm, post-norms) Falcon does not have")
    if c.sliding_window is not None or c.clip_qkv is not None or c.attention_logit_softcapping or c.final_logit_softcapping:
        raise ConfigError("Falcon has no sliding window, clip_qkv or softcapping")
    out = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_kv_heads=c.n_query_groups,
        ffn_hidden_size=c.intermediate_size,
        layer_norm_epsilon=c.norm_eps,
        bias=c.bias,
        alibi=False,
        parallel_attn=True,
        activation={"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu"}[c.mlp_activation],
        max_position_embeddings=c.block_size,
        tie_word_embeddings=c.tie_embeddings,
        **rope_to_hf(c),
    )
    if c.shared_attention_norm and c.n_query_groups in (1, c.n_head):  # the 7B layout: (multi-)query heads
        out.update(new_decoder_architecture=False, multi_query=c.n_query_groups == 1)
    else:  # 40B/180B (ln_attn + ln_mlp) or Falcon2-11B (one shared input_layernorm)
        n_norms = 1 if c.shared_attention_norm else 2
        out.update(new_decoder_architecture=True, multi_query=False, num_ln_in_parallel_attn=n_norms)
    return out


def falcon_layer(c: Config) -> list:
    """Shared-norm layouts (7B, Falcon2-11B) store ``input_layernorm``; 40B/180B store ``ln_attn`` + ``ln_mlp``."""
    if c.shared_attention_norm:
        norms = [(("norm_1",), ("input_layernorm",))]
    else:
        norms = [(("norm_1",), ("ln_attn",)), (("norm_2",), ("ln_mlp",))]
    return norms + [
        (("attn.qkv",), ("self_attention.query_key_value",)),
        (("attn.proj",), ("self_attention.dense",)),
        (("mlp.fc",), ("mlp.dense_h_to_4h",)),
        (("mlp.proj",), ("mlp.dense_4h_to_h",)),
    ]


register(
    Arch(
        name="FalconForCausalLM", model_type="falcon", config_from_hf=falcon_config_from_hf,
        config_to_hf=falcon_config_to_hf,
        top={"transformer.wte": "transformer.word_embeddings", "transformer.ln_f": "transformer.ln_f", "lm_head": "lm_head"},
        layer_prefix="transformer.h.{l}.", layer=falcon_layer, grouped_qkv=True, ignore=IGNORE, check=check_falcon,
    ),
)
