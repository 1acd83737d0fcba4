"""TII Falcon (``FalconForCausalLM``) and Falcon3 (``LlamaForCausalLM``)."""

FALCON = dict(
    architecture="FalconForCausalLM",
    block_size=2048,
    vocab_size=65024,
    norm_class_name="LayerNorm",
    norm_eps=1e-5,
    parallel_residual=True,
    bias=False,
    mlp_class_name="GeluMLP",
    mlp_activation="gelu",
    tie_embeddings=True,
)
# 7B: multi-query attention, one input norm shared by attention and MLP.
FALCON_7B = dict(
    FALCON, n_layer=32, n_embd=4544, n_head=71, n_query_groups=1, intermediate_size=18176, shared_attention_norm=True
)
# 40B / 180B ("new decoder architecture"): grouped K/V, separate norms for attention and MLP.
FALCON_40B = dict(FALCON, n_layer=60, n_embd=8192, n_head=128, n_query_groups=8, intermediate_size=32768)
FALCON_180B = dict(FALCON, n_layer=80, n_embd=14848, n_head=232, n_query_groups=8, intermediate_size=59392)

FALCON_3 = dict(
    architecture="LlamaForCausalLM",
    vocab_size=131072,
    head_size=256,
    n_query_groups=4,
    norm_class_name="RMSNorm",
    norm_eps=1e-6,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
    rope_base=1000042.0,
)
FALCON_3_SIZES = {
    "1B": dict(block_size=4096, n_layer=18, n_embd=2048, n_head=8, intermediate_size=8192),
    "3B": dict(block_size=32768, n_layer=22, n_embd=3072, n_head=12, intermediate_size=9216),
    "7B": dict(block_size=32768, n_layer=28, n_embd=3072, n_head=12, intermediate_size=23040),
    "10B": dict(block_size=32768, n_layer=40, n_embd=3072, n_head=12, intermediate_size=23040),
}
# Falcon3-1B-Instruct was extended to an 8K context; the other instruct models keep their base's context.
FALCON_3_INSTRUCT_CONTEXT = {"1B": 8192}


def entry(base: dict, name: str, **changes) -> dict:
    return dict(base, name=name, hf_config=dict(org="tiiuae", name=name), **changes)


configs: list[dict] = [
    entry(FALCON_7B, "falcon-7b"),
    entry(FALCON_7B, "falcon-7b-instruct"),
    entry(FALCON_40B, "falcon-40b"),
    entry(FALCON_40B, "falcon-40b-instruct"),
    entry(FALCON_180B, "falcon-180B"),
    entry(FALCON_180B, "falcon-180B-chat"),
    *(entry(dict(FALCON_3, **sizes), f"Falcon3-{size}-Base") for size, sizes in FALCON_3_SIZES.items()),
    *(
        entry(dict(FALCON_3, **{**sizes, "block_size": FALCON_3_INSTRUCT_CONTEXT.get(size, sizes["block_size"])}),
              f"Falcon3-{size}-Instruct")
        for size, sizes in FALCON_3_SIZES.items()
    ),
]
