"""StarCoder2: LayerNorm with bias, GQA, a GELU MLP (``c_fc``/``c_proj``), biases everywhere (``use_bias``) and a
sliding window on every layer."""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import Arch, register, rope_from_hf, rope_to_hf, sizes_to_hf
from litgpt_clone.checkpoints.families.gpt_neox import HF_ACTIVATIONS
from litgpt_clone.checkpoints.families.llama import ATTN, IGNORE, TOP, activation_from_hf
from litgpt_clone.config import Config, ConfigError


def starcoder2_config_from_hf(hf: dict) -> dict:
    base, scaling = rope_from_hf(hf)
    out = dict(
        block_size=hf.get("max_position_embeddings", 4096),
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        n_query_groups=hf.get("num_key_value_heads", 2),
        head_size=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        norm_class_name="LayerNorm",  # always with bias, whatever use_bias says
        norm_eps=hf.get("norm_epsilon", 1e-5),
        bias=bool(hf.get("use_bias", True)),
        mlp_class_name="GeluMLP",
        mlp_activation=activation_from_hf(hf.get("hidden_act", "gelu_pytorch_tanh")),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),  # transformers' default for StarCoder2
        rope_base=base,
        rope_scaling=scaling,
    )
    if hf.get("sliding_window") is not None:  # every layer, every attention implementation
        out.update(sliding_window=hf["sliding_window"], sliding_window_pattern=1)
    return out


def starcoder2_config_to_hf(c: Config) -> dict:
    if c.norm_class_name != "LayerNorm" or c.mlp_class_name != "GeluMLP" or c.parallel_residual or c.norm_qk:
        raise ConfigError("Starcoder2ForCausalLM has LayerNorm, a GELU MLP, a sequential block and no QK norm")
    if (c.attn_bias and not c.bias) or c.lm_head_bias or c.rotary_percentage != 1.0:
        raise ConfigError("Starcoder2ForCausalLM has biases on all linear layers or none (lm_head never) and full rotary")
    if c.sliding_window is not None and c.sliding_window_pattern != 1:
        raise ConfigError("Starcoder2ForCausalLM slides on every layer or none")
    out = dict(
        **sizes_to_hf(c),
        max_position_embeddings=c.block_size,
        norm_epsilon=c.norm_eps,
        hidden_act=HF_ACTIVATIONS[c.mlp_activation],
        use_bias=c.bias,
        tie_word_embeddings=c.tie_embeddings,
        sliding_window=c.sliding_window,
        **rope_to_hf(c),
    )
    if c.head_size * c.n_head != c.n_embd:
        out["head_dim"] = c.head_size
    return out


register(
    Arch(
        name="Starcoder2ForCausalLM", model_type="starcoder2", config_from_hf=starcoder2_config_from_hf,
        config_to_hf=starcoder2_config_to_hf, top=TOP, layer_prefix="model.layers.{l}.",
        layer=ATTN + [(("mlp.fc",), ("mlp.c_fc",)), (("mlp.proj",), ("mlp.c_proj",))], ignore=IGNORE,
    ),
)
