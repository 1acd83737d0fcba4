"""Meta's Llama 2, Llama 3 / 3.1 / 3.2 / 3.3, Code Llama, and TinyLlama: all ``LlamaForCausalLM``.

Values follow each checkpoint's ``config.json`` on the Hugging Face hub (``vocab_size`` is the embedding rows,
``block_size`` is ``max_position_embeddings``).
"""

LLAMA = dict(
    architecture="LlamaForCausalLM",
    norm_class_name="RMSNorm",
    norm_eps=1e-5,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
)


def llama3_scaling(factor: float) -> dict:
    """The ``rope_scaling`` of Llama 3.1 / 3.2 / 3.3 (``rope_type: llama3``)."""
    return dict(
        rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )


def entry(name: str, org: str, repo: str | None = None, **sizes) -> dict:
    return dict(LLAMA, name=name, hf_config=dict(org=org, name=repo or name), **sizes)


# --------------------------------------------------------------------------------------------- Llama 2
LLAMA_2 = {
    "7b": dict(block_size=4096, vocab_size=32000, n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008),
    "13b": dict(block_size=4096, vocab_size=32000, n_layer=40, n_embd=5120, n_head=40, intermediate_size=13824),
    "70b": dict(
        block_size=4096, vocab_size=32000, n_layer=80, n_embd=8192, n_head=64, n_query_groups=8, intermediate_size=28672
    ),
}

# --------------------------------------------------------------------------------------------- Llama 3.x
LLAMA_3_8B = dict(
    block_size=8192, vocab_size=128256, n_layer=32, n_embd=4096, n_head=32, n_query_groups=8,
    intermediate_size=14336, rope_base=500000.0,
)
LLAMA_3_70B = dict(
    block_size=8192, vocab_size=128256, n_layer=80, n_embd=8192, n_head=64, n_query_groups=8,
    intermediate_size=28672, rope_base=500000.0,
)
LLAMA_3_1_8B = dict(LLAMA_3_8B, block_size=131072, rope_scaling=llama3_scaling(8.0))
LLAMA_3_1_70B = dict(LLAMA_3_70B, block_size=131072, rope_scaling=llama3_scaling(8.0))
LLAMA_3_1_405B = dict(
    block_size=131072, vocab_size=128256, n_layer=126, n_embd=16384, n_head=128, n_query_groups=8,
    intermediate_size=53248, rope_base=500000.0, rope_scaling=llama3_scaling(8.0),
)
LLAMA_3_2_1B = dict(
    block_size=131072, vocab_size=128256, n_layer=16, n_embd=2048, n_head=32, n_query_groups=8, head_size=64,
    intermediate_size=8192, rope_base=500000.0, rope_scaling=llama3_scaling(32.0), tie_embeddings=True,
)
LLAMA_3_2_3B = dict(
    block_size=131072, vocab_size=128256, n_layer=28, n_embd=3072, n_head=24, n_query_groups=8, head_size=128,
    intermediate_size=8192, rope_base=500000.0, rope_scaling=llama3_scaling(32.0), tie_embeddings=True,
)

# --------------------------------------------------------------------------------------------- Code Llama
# The Python variants of 7B/13B lack the 16 infilling tokens (32000 rows); 70B-Python/-Instruct use
# rope_theta 10000 and a 4096 context (see meta-llama/codellama#188).
CODE_LLAMA_7B = dict(
    block_size=16384, vocab_size=32016, n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008, rope_base=1e6
)
CODE_LLAMA_13B = dict(
    block_size=16384, vocab_size=32016, n_layer=40, n_embd=5120, n_head=40, intermediate_size=13824, rope_base=1e6
)
CODE_LLAMA_34B = dict(
    block_size=16384, vocab_size=32000, n_layer=48, n_embd=8192, n_head=64, n_query_groups=8,
    intermediate_size=22016, rope_base=1e6,
)
CODE_LLAMA_70B = dict(
    block_size=16384, vocab_size=32016, n_layer=80, n_embd=8192, n_head=64, n_query_groups=8,
    intermediate_size=28672, rope_base=1e6,
)

TINY_LLAMA = dict(
    block_size=2048, vocab_size=32000, n_layer=22, n_embd=2048, n_head=32, n_query_groups=4, intermediate_size=5632
)

configs: list[dict] = [
    *(
        entry(f"Llama-2-{size}{kind}-hf", "meta-llama", **sizes)
        for size, sizes in LLAMA_2.items()
        for kind in ("", "-chat")
    ),
    *(
        entry(f"Llama-3-{size}{kind}", "meta-llama", f"Meta-Llama-3-{size}{kind}", **sizes)
        for size, sizes in (("8B", LLAMA_3_8B), ("70B", LLAMA_3_70B))
        for kind in ("", "-Instruct")
    ),
    *(
        entry(f"Llama-3.1-{size}{kind}", "meta-llama", **sizes)
        for size, sizes in (("8B", LLAMA_3_1_8B), ("70B", LLAMA_3_1_70B), ("405B", LLAMA_3_1_405B))
        for kind in ("", "-Instruct")
    ),
    *(
        entry(f"Llama-3.2-{size}{kind}", "meta-llama", **sizes)
        for size, sizes in (("1B", LLAMA_3_2_1B), ("3B", LLAMA_3_2_3B))
        for kind in ("", "-Instruct")
    ),
    entry("Llama-3.3-70B-Instruct", "meta-llama", **LLAMA_3_1_70B),
    # Code Llama
    entry("CodeLlama-7b-hf", "codellama", **CODE_LLAMA_7B),
    entry("CodeLlama-7b-Python-hf", "codellama", **dict(CODE_LLAMA_7B, vocab_size=32000)),
    entry("CodeLlama-7b-Instruct-hf", "codellama", **CODE_LLAMA_7B),
    entry("CodeLlama-13b-hf", "codellama", **CODE_LLAMA_13B),
    entry("CodeLlama-13b-Python-hf", "codellama", **dict(CODE_LLAMA_13B, vocab_size=32000)),
    entry("CodeLlama-13b-Instruct-hf", "codellama", **CODE_LLAMA_13B),
    *(entry(f"CodeLlama-34b{kind}-hf", "codellama", **CODE_LLAMA_34B) for kind in ("", "-Python", "-Instruct")),
    entry("CodeLlama-70b-hf", "codellama", **CODE_LLAMA_70B),
    entry("CodeLlama-70b-Python-hf", "codellama", **dict(CODE_LLAMA_70B, block_size=4096, rope_base=10000.0)),
    entry("CodeLlama-70b-Instruct-hf", "codellama", **dict(CODE_LLAMA_70B, block_size=4096, rope_base=10000.0)),
    # TinyLlama
    entry("TinyLlama-1.1B-intermediate-step-1431k-3T", "TinyLlama", **TINY_LLAMA),
    entry("TinyLlama-1.1B-Chat-v1.0", "TinyLlama", **TINY_LLAMA),
]
