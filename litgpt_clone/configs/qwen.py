"""Alibaba Qwen: Qwen2.5, Qwen2.5-Coder, Qwen2.5-Math and QwQ (``Qwen2ForCausalLM``), Qwen3 (``Qwen3ForCausalLM``)
and Qwen3 MoE (``Qwen3MoeForCausalLM``)."""

QWEN_2 = dict(
    architecture="Qwen2ForCausalLM",
    attn_bias=True,
    norm_class_name="RMSNorm",
    norm_eps=1e-6,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
    rope_base=1e6,
    vocab_size=151936,
)
# Qwen2.5 sizes; the three smallest tie the output head to the embedding, the others have 152064 rows.
SIZES = {
    "0.5B": dict(n_layer=24, n_embd=896, n_head=14, n_query_groups=2, intermediate_size=4864, tie_embeddings=True),
    "1.5B": dict(n_layer=28, n_embd=1536, n_head=12, n_query_groups=2, intermediate_size=8960, tie_embeddings=True),
    "3B": dict(n_layer=36, n_embd=2048, n_head=16, n_query_groups=2, intermediate_size=11008, tie_embeddings=True),
    "7B": dict(vocab_size=152064, n_layer=28, n_embd=3584, n_head=28, n_query_groups=4, intermediate_size=18944),
    "14B": dict(vocab_size=152064, n_layer=48, n_embd=5120, n_head=40, n_query_groups=8, intermediate_size=13824),
    "32B": dict(vocab_size=152064, n_layer=64, n_embd=5120, n_head=40, n_query_groups=8, intermediate_size=27648),
    "72B": dict(vocab_size=152064, n_layer=80, n_embd=8192, n_head=64, n_query_groups=8, intermediate_size=29568),
}
# Base checkpoints of 14B and up use rms_norm_eps 1e-5; their instruct versions use 1e-6.
BASE_EPS = {"14B": 1e-5, "32B": 1e-5, "72B": 1e-5}
# Qwen2.5 base max_position_embeddings; every Qwen2.5 instruct model has 32768.
BASE_CONTEXT = {"0.5B": 32768, "1.5B": 131072, "3B": 32768, "7B": 131072, "14B": 131072, "32B": 131072, "72B": 131072}


def entry(base: dict, name: str, org: str = "Qwen", **changes) -> dict:
    return dict(base, name=name, hf_config=dict(org=org, name=name), **changes)


def qwen2_5(size: str, **changes) -> dict:
    """A Qwen2.5-architecture config of one of the SIZES."""
    return dict(QWEN_2, **{**SIZES[size], **changes})


QWEN_3 = dict(
    architecture="Qwen3ForCausalLM",
    block_size=40960,
    vocab_size=151936,
    head_size=128,
    norm_qk=True,
    norm_class_name="RMSNorm",
    norm_eps=1e-6,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
    rope_base=1e6,
)
QWEN_3_SIZES = {
    "0.6B": dict(n_layer=28, n_embd=1024, n_head=16, n_query_groups=8, intermediate_size=3072, tie_embeddings=True),
    "1.7B": dict(n_layer=28, n_embd=2048, n_head=16, n_query_groups=8, intermediate_size=6144, tie_embeddings=True),
    "4B": dict(n_layer=36, n_embd=2560, n_head=32, n_query_groups=8, intermediate_size=9728, tie_embeddings=True),
    "8B": dict(n_layer=36, n_embd=4096, n_head=32, n_query_groups=8, intermediate_size=12288),
    "14B": dict(n_layer=40, n_embd=5120, n_head=40, n_query_groups=8, intermediate_size=17408),
    "32B": dict(n_layer=64, n_embd=5120, n_head=64, n_query_groups=8, intermediate_size=25600),
}
QWEN_3_MOE = dict(
    QWEN_3, architecture="Qwen3MoeForCausalLM", mlp_class_name="MoE", n_expert=128, n_expert_per_token=8,
    moe_norm_topk_prob=True,
)
QWEN_3_MOE_SIZES = {
    "30B-A3B": dict(n_layer=48, n_embd=2048, n_head=32, n_query_groups=4, intermediate_size=6144, moe_intermediate_size=768),
    "235B-A22B": dict(
        n_layer=94, n_embd=4096, n_head=64, n_query_groups=4, intermediate_size=12288, moe_intermediate_size=1536
    ),
}

configs: list[dict] = [
    # Qwen2.5
    *(
        entry(qwen2_5(size, block_size=BASE_CONTEXT[size], norm_eps=BASE_EPS.get(size, 1e-6)), f"Qwen2.5-{size}")
        for size in SIZES
    ),
    *(entry(qwen2_5(size, block_size=32768), f"Qwen2.5-{size}-Instruct") for size in SIZES),
    # Qwen2.5-Coder (no 72B): 32768 context throughout
    *(
        entry(qwen2_5(size, block_size=32768, norm_eps=eps), f"Qwen2.5-Coder-{size}{kind}")
        for size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B")
        for kind, eps in (("", BASE_EPS.get(size, 1e-6)), ("-Instruct", 1e-6))
    ),
    # Qwen2.5-Math: 4096 context, rope_theta 10000
    *(
        entry(
            qwen2_5(size, block_size=4096, rope_base=10000.0, norm_eps=BASE_EPS.get(size, 1e-6)),
            f"Qwen2.5-Math-{size}{kind}",
        )
        for size in ("1.5B", "7B", "72B")
        for kind in ("", "-Instruct")
    ),
    # QwQ
    entry(qwen2_5("32B", block_size=32768, norm_eps=1e-5), "QwQ-32B-Preview"),
    entry(qwen2_5("32B", block_size=40960, norm_eps=1e-5), "QwQ-32B"),
    # Qwen3
    *(entry(dict(QWEN_3, **sizes), f"Qwen3-{size}") for size, sizes in QWEN_3_SIZES.items()),
    *(entry(dict(QWEN_3_MOE, **sizes), f"Qwen3-{size}") for size, sizes in QWEN_3_MOE_SIZES.items()),
]
