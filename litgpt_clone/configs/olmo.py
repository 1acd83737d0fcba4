"""Allen AI OLMo (``OlmoForCausalLM``) and OLMo 2 (``Olmo2ForCausalLM``)."""

# OLMo 1: LayerNorm without any learned scale or bias.
OLMO = dict(
    architecture="OlmoForCausalLM",
    block_size=2048,
    vocab_size=50304,
    norm_class_name="LayerNorm",
    norm_eps=1e-5,
    norm_affine=False,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
)
# OLMo 2: no input norms; the attention and MLP outputs are normalized before the residual add, and q/k are
# normalized over all heads at once.
OLMO_2 = dict(
    architecture="Olmo2ForCausalLM",
    block_size=4096,
    vocab_size=100352,
    norm_class_name="RMSNorm",
    norm_eps=1e-6,
    pre_norm=False,
    post_attention_norm=True,
    post_mlp_norm=True,
    norm_qk=True,
    norm_qk_per_head=False,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
    rope_base=500000.0,
)


def entry(base: dict, name: str, **sizes) -> dict:
    return dict(base, name=name, hf_config=dict(org="allenai", name=name), **sizes)


OLMO_2_SIZES = {
    "7B": dict(n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008),
    "13B": dict(n_layer=40, n_embd=5120, n_head=40, intermediate_size=13824),
}

configs: list[dict] = [
    entry(OLMO, "OLMo-1B-hf", n_layer=16, n_embd=2048, n_head=16, intermediate_size=8192, tie_embeddings=True),
    entry(OLMO, "OLMo-7B-hf", n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008),
    *(
        entry(OLMO_2, f"OLMo-2-1124-{size}{kind}", **sizes)
        for size, sizes in OLMO_2_SIZES.items()
        for kind in ("", "-Instruct")
    ),
]
