"""Hugging Face SmolLM2 (``LlamaForCausalLM`` with tied embeddings)."""

SMOLLM2 = dict(
    architecture="LlamaForCausalLM",
    block_size=8192,
    vocab_size=49152,
    norm_class_name="RMSNorm",
    norm_eps=1e-5,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
    tie_embeddings=True,
)
SIZES = {
    "135M": dict(n_layer=30, n_embd=576, n_head=9, n_query_groups=3, intermediate_size=1536, rope_base=100000.0),
    "360M": dict(n_layer=32, n_embd=960, n_head=15, n_query_groups=5, intermediate_size=2560, rope_base=100000.0),
    "1.7B": dict(n_layer=24, n_embd=2048, n_head=32, n_query_groups=32, intermediate_size=8192, rope_base=130000.0),
}

configs: list[dict] = [
    dict(SMOLLM2, name=f"SmolLM2-{size}{kind}", hf_config=dict(org="HuggingFaceTB", name=f"SmolLM2-{size}{kind}"), **sizes)
    for size, sizes in SIZES.items()
    for kind in ("", "-Instruct")
]
