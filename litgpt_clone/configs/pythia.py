"""EleutherAI Pythia (``GPTNeoXForCausalLM``): parallel residual, LayerNorm, a quarter of each head rotated."""

PYTHIA = dict(
    architecture="GPTNeoXForCausalLM",
    block_size=2048,
    vocab_size=50304,
    norm_class_name="LayerNorm",
    norm_eps=1e-5,
    parallel_residual=True,
    bias=True,
    rotary_percentage=0.25,
    mlp_class_name="GeluMLP",
    mlp_activation="gelu",
)


def size(n_layer: int, n_embd: int, n_head: int, **changes) -> dict:
    return dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, intermediate_size=4 * n_embd, **changes)


SIZES = {
    "14m": size(6, 128, 4, block_size=512),
    "31m": size(6, 256, 8, block_size=1024),
    "70m": size(6, 512, 8),
    "160m": size(12, 768, 12),
    "410m": size(24, 1024, 16),
    "1b": size(16, 2048, 8),
    "1.4b": size(24, 2048, 16),
    "2.8b": size(32, 2560, 32),
    "6.9b": size(32, 4096, 32, vocab_size=50432),
    "12b": size(36, 5120, 40, vocab_size=50688),
}
NO_DEDUPED = ("14m", "31m")  # trained only on the standard Pile

configs: list[dict] = [
    dict(PYTHIA, name=f"pythia-{s}{kind}", hf_config=dict(org="EleutherAI", name=f"pythia-{s}{kind}"), **sizes)
    for s, sizes in SIZES.items()
    for kind in (("",) if s in NO_DEDUPED else ("", "-deduped"))
]
