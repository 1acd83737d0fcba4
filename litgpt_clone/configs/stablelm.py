"""Stability AI StableLM-3B-4E1T and StableLM 2 1.6B (``StableLmForCausalLM``)."""

STABLELM = dict(
    architecture="StableLmForCausalLM",
    block_size=4096,
    norm_class_name="LayerNorm",
    norm_eps=1e-5,
    rotary_percentage=0.25,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
)
STABLELM_3B = dict(STABLELM, vocab_size=50304, n_layer=32, n_embd=2560, n_head=32, intermediate_size=6912)
# StableLM 2 adds a bias on the q/k/v projections (use_qkv_bias).
STABLELM_2_1_6B = dict(
    STABLELM, vocab_size=100352, n_layer=24, n_embd=2048, n_head=32, intermediate_size=5632, attn_bias=True
)


def entry(base: dict, name: str) -> dict:
    return dict(base, name=name, hf_config=dict(org="stabilityai", name=name))


configs: list[dict] = [
    entry(STABLELM_3B, "stablelm-3b-4e1t"),
    entry(STABLELM_3B, "stablelm-zephyr-3b"),
    entry(STABLELM_2_1_6B, "stablelm-2-1_6b"),
    entry(STABLELM_2_1_6B, "stablelm-2-1_6b-chat"),
    entry(STABLELM_2_1_6B, "stablelm-2-zephyr-1_6b"),
]
