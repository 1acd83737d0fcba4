"""Google Gemma (``GemmaForCausalLM``), CodeGemma, Gemma 2 (``Gemma2ForCausalLM``) and the text part of
Gemma 3 (``Gemma3ForCausalLM``)."""

GEMMA = dict(
    architecture="GemmaForCausalLM",
    block_size=8192,
    vocab_size=256000,
    norm_class_name="RMSNorm",
    norm_eps=1e-6,
    norm_unit_offset=True,
    mlp_class_name="GatedMLP",
    mlp_activation="gelu_tanh",
    scale_embeddings=True,
    tie_embeddings=True,
)
GEMMA_2B = dict(GEMMA, n_layer=18, n_embd=2048, n_head=8, n_query_groups=1, head_size=256, intermediate_size=16384)
GEMMA_7B = dict(GEMMA, n_layer=28, n_embd=3072, n_head=16, n_query_groups=16, head_size=256, intermediate_size=24576)

# Gemma 2: sliding (4096) and global layers alternate, starting with a sliding one; soft-capped logits.
GEMMA_2 = dict(
    GEMMA,
    architecture="Gemma2ForCausalLM",
    post_attention_norm=True,
    post_mlp_norm=True,
    attention_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    sliding_window=4096,
    sliding_window_pattern=2,
)
GEMMA_2_SIZES = {
    "2b": dict(n_layer=26, n_embd=2304, n_head=8, n_query_groups=4, head_size=256, intermediate_size=9216,
               attention_scores_scalar=256),
    "9b": dict(n_layer=42, n_embd=3584, n_head=16, n_query_groups=8, head_size=256, intermediate_size=14336,
               attention_scores_scalar=256),
    "27b": dict(n_layer=46, n_embd=4608, n_head=32, n_query_groups=16, head_size=128, intermediate_size=36864,
                attention_scores_scalar=144),
}

# Gemma 3: five sliding layers per global one, q/k norms, local RoPE base 10k and global 1M
# (with linear scaling x8 from 4B up, whose embedding also holds the 64 image tokens: 262208 rows).
GEMMA_3 = dict(
    GEMMA,
    architecture="Gemma3ForCausalLM",
    post_attention_norm=True,
    post_mlp_norm=True,
    norm_qk=True,
    sliding_window_pattern=6,
    rope_base=1e6,
    rope_local_base=10000.0,
)
GEMMA_3_SIZES = {
    "1b": dict(block_size=32768, vocab_size=262144, n_layer=26, n_embd=1152, n_head=4, n_query_groups=1,
               head_size=256, intermediate_size=6912, attention_scores_scalar=256, sliding_window=512),
    "4b": dict(block_size=131072, vocab_size=262208, n_layer=34, n_embd=2560, n_head=8, n_query_groups=4,
               head_size=256, intermediate_size=10240, attention_scores_scalar=256, sliding_window=1024,
               rope_scaling=dict(rope_type="linear", factor=8.0)),
    "12b": dict(block_size=131072, vocab_size=262208, n_layer=48, n_embd=3840, n_head=16, n_query_groups=8,
                head_size=256, intermediate_size=15360, attention_scores_scalar=256, sliding_window=1024,
                rope_scaling=dict(rope_type="linear", factor=8.0)),
    "27b": dict(block_size=131072, vocab_size=262208, n_layer=62, n_embd=5376, n_head=32, n_query_groups=16,
                head_size=128, intermediate_size=21504, attention_scores_scalar=168, sliding_window=1024,
                rope_scaling=dict(rope_type="linear", factor=8.0)),
}


def entry(base: dict, name: str, **sizes) -> dict:
    return dict(base, name=name, hf_config=dict(org="google", name=name), **sizes)


configs: list[dict] = [
    *(entry(base, f"gemma-{size}{kind}") for size, base in (("2b", GEMMA_2B), ("7b", GEMMA_7B)) for kind in ("", "-it")),
    *(entry(GEMMA_2, f"gemma-2-{size}{kind}", **sizes) for size, sizes in GEMMA_2_SIZES.items() for kind in ("", "-it")),
    *(entry(GEMMA_3, f"gemma-3-{size}{kind}", **sizes) for size, sizes in GEMMA_3_SIZES.items() for kind in ("-pt", "-it")),
    entry(GEMMA_7B, "codegemma-7b"),
    entry(GEMMA_7B, "codegemma-7b-it"),
    entry(GEMMA_2B, "codegemma-2b"),
]
