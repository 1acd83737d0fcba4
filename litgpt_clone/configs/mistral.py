"""Mistral AI: Mistral-7B v0.1 / v0.2 / v0.3 (``MistralForCausalLM``) and Mixtral 8x7B / 8x22B (``MixtralForCausalLM``)."""

COMMON = dict(norm_class_name="RMSNorm", norm_eps=1e-5, mlp_class_name="GatedMLP", mlp_activation="silu")

MISTRAL_7B = dict(
    COMMON, architecture="MistralForCausalLM", block_size=32768, vocab_size=32000, n_layer=32, n_embd=4096,
    n_head=32, n_query_groups=8, intermediate_size=14336,
)
MIXTRAL = dict(
    COMMON, architecture="MixtralForCausalLM", mlp_class_name="MoE", n_expert=8, n_expert_per_token=2,
    n_query_groups=8, rope_base=1e6,
)
MIXTRAL_8X7B = dict(MIXTRAL, block_size=32768, vocab_size=32000, n_layer=32, n_embd=4096, n_head=32, intermediate_size=14336)
MIXTRAL_8X22B = dict(MIXTRAL, block_size=65536, vocab_size=32000, n_layer=56, n_embd=6144, n_head=48, intermediate_size=16384)


def entry(base: dict, name: str, org: str = "mistralai", **changes) -> dict:
    return dict(base, name=name, hf_config=dict(org=org, name=name), **changes)


configs: list[dict] = [
    # v0.1 slides a 4096 window on every layer; v0.2 and v0.3 attend to the whole context with rope_theta 1e6.
    entry(MISTRAL_7B, "Mistral-7B-v0.1", sliding_window=4096),
    entry(MISTRAL_7B, "Mistral-7B-Instruct-v0.1", sliding_window=4096),
    entry(MISTRAL_7B, "Mistral-7B-v0.2", org="mistral-community", rope_base=1e6),  # base v0.2 is hosted by the community org
    entry(MISTRAL_7B, "Mistral-7B-Instruct-v0.2", rope_base=1e6),
    entry(MISTRAL_7B, "Mistral-7B-v0.3", vocab_size=32768, rope_base=1e6),
    entry(MISTRAL_7B, "Mistral-7B-Instruct-v0.3", vocab_size=32768, rope_base=1e6),
    entry(MIXTRAL_8X7B, "Mixtral-8x7B-v0.1"),
    entry(MIXTRAL_8X7B, "Mixtral-8x7B-Instruct-v0.1"),
    entry(MIXTRAL_8X22B, "Mixtral-8x22B-v0.1"),
    entry(MIXTRAL_8X22B, "Mixtral-8x22B-Instruct-v0.1", vocab_size=32768),  # the instruct model uses the v3 tokenizer
]
