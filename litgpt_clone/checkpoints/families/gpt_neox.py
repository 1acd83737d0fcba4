"""GPT-NeoX (Pythia, GPT-NeoX-20B): fused q/k/v interleaved per head, partial rotary, LayerNorm, GELU MLP."""

from __future__ import annotations

from litgpt_clone.checkpoints.arch import Arch, register, rope_from_hf
from litgpt_clone.checkpoints.families.llama import activation_from_hf
from litgpt_clone.config import Config, ConfigError

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu"}
"""Our ``mlp_activation`` -> config.json ``hidden_act`` (GPT-NeoX, StableLM)."""


def rotary_fraction(hf: dict, classic_key: str, default: float) -> float:
    """The rotated fraction of each head: transformers 5 keeps it in ``rope_parameters``, older configs at the top
    level under ``classic_key`` (``rotary_pct`` for GPT-NeoX, ``partial_rotary_factor`` for the others); absent, it is
    the architecture's own ``default``, as transformers assumes."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "partial_rotary_factor" in params:
        return float(params["partial_rotary_factor"])
    return float(hf.get(classic_key, default))


def check_neox(hf: dict) -> None:
    if not hf.get("attention_bias", True):
        raise ConfigError("GPT-NeoX with attention_bias=false (no attention bias but MLP bias) is not supported")


def neox_config_from_hf(hf: dict) -> dict:
    if "rotary_emb_base" in hf and not isinstance(hf.get("rope_parameters"), dict):
        hf = {**hf, "rope_theta": hf["rotary_emb_base"]}  # GPT-NeoX's classic name for rope_theta
    base, scaling = rope_from_hf(hf)
    parallel = bool(hf.get("use_parallel_residual", True))
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        norm_class_name="LayerNorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        parallel_residual=parallel,
        shared_attention_norm=False,  # parallel: attention reads input_layernorm, the MLP post_attention_layernorm
        bias=True,
        mlp_class_name="GeluMLP",
        mlp_activation=activation_from_hf(hf.get("hidden_act", "gelu")),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rotary_percentage=rotary_fraction(hf, "rotary_pct", 0.25),
        rope_base=base,
        rope_scaling=scaling,
    )


def neox_config_to_hf(c: Config) -> dict:
    if not c.bias or c.norm_class_name != "LayerNorm" or c.mlp_class_name != "GeluMLP" or c.n_query_groups != c.n_head:
        raise ConfigError("GPTNeoXForCausalLM needs bias=True, LayerNorm, GeluMLP and no GQA")
    if c.head_size * c.n_head != c.n_embd or c.sliding_window is not None or c.lm_head_bias:
        raise ConfigError("GPTNeoXForCausalLM needs head_size = n_embd / n_head, no sliding window, no lm_head bias")
    if c.parallel_residual and c.shared_attention_norm:
        raise ConfigError("GPTNeoXForCausalLM's parallel residual has two norms: set shared_attention_norm=False")
    out = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        max_position_embeddings=c.block_size,
        layer_norm_eps=c.norm_eps,
        hidden_act=HF_ACTIVATIONS[c.mlp_activation],
        use_parallel_residual=c.parallel_residual,
        attention_bias=True,
        tie_word_embeddings=c.tie_embeddings,
        rotary_pct=c.rotary_percentage,
        rotary_emb_base=c.rope_base,
    )
    if c.rope_scaling:  # old transformers read the scaling kind from "type"
        scaling = dict(c.rope_scaling)
        out["rope_scaling"] = {"type": scaling.pop("rope_type"), **scaling}
    return out


register(
    Arch(
        name="GPTNeoXForCausalLM", model_type="gpt_neox", config_from_hf=neox_config_from_hf,
        config_to_hf=neox_config_to_hf, check=check_neox, grouped_qkv=True, module_names={"embed_out": "lm_head"},
        top={"transformer.wte": "gpt_neox.embed_in", "transformer.ln_f": "gpt_neox.final_layer_norm", "lm_head": "embed_out"},
        layer_prefix="gpt_neox.layers.{l}.",
        layer=[
            (("norm_1",), ("input_layernorm",)),
            (("attn.qkv",), ("attention.query_key_value",)),
            (("attn.proj",), ("attention.dense",)),
            (("norm_2",), ("post_attention_layernorm",)),
            (("mlp.fc",), ("mlp.dense_h_to_4h",)),
            (("mlp.proj",), ("mlp.dense_4h_to_h",)),
        ],
        # old cached buffers; embed_out is the head, dropped (and unused) when tie_word_embeddings is set
        ignore=(r".*\.attention\.bias$", r".*\.attention\.masked_bias$", r".*rotary_emb\.inv_freq$", r"^embed_out\.weight$"),
    ),
)
