"""BigCode StarCoder2 (``Starcoder2ForCausalLM``): LayerNorm, biases everywhere, a 4096 sliding window on every layer."""

STARCODER2 = dict(
    architecture="Starcoder2ForCausalLM",
    block_size=16384,
    vocab_size=49152,
    norm_class_name="LayerNorm",
    norm_eps=1e-5,
    bias=True,
    mlp_class_name="GeluMLP",
    mlp_activation="gelu_tanh",
    sliding_window=4096,
)


def entry(name: str, **sizes) -> dict:
    return dict(STARCODER2, name=name, hf_config=dict(org="bigcode", name=name), **sizes)


configs: list[dict] = [
    entry("starcoder2-3b", n_layer=30, n_embd=3072, n_head=24, n_query_groups=2, intermediate_size=12288,
          rope_base=999999.4420358813, tie_embeddings=True),
    entry("starcoder2-7b", n_layer=32, n_embd=4608, n_head=36, n_query_groups=4, intermediate_size=18432,
          rope_base=1000000.0, tie_embeddings=True),
    entry("starcoder2-15b", n_layer=40, n_embd=6144, n_head=48, n_query_groups=4, intermediate_size=24576,
          rope_base=100000.0),
]
