"""Microsoft Phi: Phi-1.5 / Phi-2 (``PhiForCausalLM``) and Phi-3-mini / Phi-3.5-mini / Phi-4 (``Phi3ForCausalLM``).

Phi-3-mini-128k-instruct and Phi-4-mini-instruct are not listed: their ``longrope`` factor lists are not reproduced here.
"""

PHI = dict(
    architecture="PhiForCausalLM",
    block_size=2048,
    vocab_size=51200,
    norm_class_name="LayerNorm",
    norm_eps=1e-5,
    parallel_residual=True,
    shared_attention_norm=True,
    bias=True,
    lm_head_bias=True,
    mlp_class_name="GeluMLP",
    mlp_activation="gelu_tanh",
)

PHI_3 = dict(
    architecture="Phi3ForCausalLM",
    vocab_size=32064,
    n_layer=32,
    n_embd=3072,
    n_head=32,
    intermediate_size=8192,
    norm_class_name="RMSNorm",
    norm_eps=1e-5,
    mlp_class_name="GatedMLP",
    mlp_activation="silu",
)

# Phi-3.5-mini-instruct config.json rope_scaling (48 = head_size 96 / 2 factors each).
PHI_3_5_MINI_LONG_FACTOR = [
    1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601, 1.5899999141693115,
    1.600000023841858, 1.6200000047683716, 2.620000123977661, 3.2300000190734863, 3.2300000190734863,
    4.789999961853027, 7.400000095367432, 7.700000286102295, 9.09000015258789, 12.199999809265137,
    17.670000076293945, 24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523,
    32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992, 50.340003967285156,
    50.45000457763672, 57.55000305175781, 57.93000411987305, 58.21000289916992, 60.1400032043457,
    62.61000442504883, 62.62000274658203, 62.71000289916992, 63.1400032043457, 63.1400032043457,
    63.77000427246094, 63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
    64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938, 64.4800033569336,
    64.51000213623047, 64.52999877929688, 64.83999633789062,
]
PHI_3_5_MINI_SHORT_FACTOR = [
    1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705, 1.0499999523162842, 1.0499999523162842,
    1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0699999332427979, 1.0999999046325684,
    1.1099998950958252, 1.1599998474121094, 1.1599998474121094, 1.1699998378753662, 1.2899998426437378,
    1.339999794960022, 1.679999828338623, 1.7899998426437378, 1.8199998140335083, 1.8499997854232788,
    1.8799997568130493, 1.9099997282028198, 1.9399996995925903, 1.9899996519088745, 2.0199997425079346,
    2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0799996852874756,
    2.0899996757507324, 2.189999580383301, 2.2199995517730713, 2.5899994373321533, 2.729999542236328,
    2.749999523162842, 2.8399994373321533,
]


def entry(base: dict, name: str, **sizes) -> dict:
    return dict(base, name=name, hf_config=dict(org="microsoft", name=name), **sizes)


configs: list[dict] = [
    entry(PHI, "phi-1_5", n_layer=24, n_embd=2048, n_head=32, intermediate_size=8192, rotary_percentage=0.5),
    entry(PHI, "phi-2", n_layer=32, n_embd=2560, n_head=32, intermediate_size=10240, rotary_percentage=0.4),
    entry(PHI_3, "Phi-3-mini-4k-instruct", block_size=4096, sliding_window=2047),
    entry(
        PHI_3,
        "Phi-3.5-mini-instruct",
        block_size=131072,
        sliding_window=262144,  # as in config.json: longer than the context, so it never cuts anything off
        rope_scaling=dict(
            rope_type="longrope",
            long_factor=PHI_3_5_MINI_LONG_FACTOR,
            short_factor=PHI_3_5_MINI_SHORT_FACTOR,
            original_max_position_embeddings=4096,
        ),
        rope_recompute_at_switch=True,  # as Phi3ForCausalLM generates
    ),
    entry(
        PHI_3,
        "phi-4",
        block_size=16384,
        vocab_size=100352,
        n_layer=40,
        n_embd=5120,
        n_head=40,
        n_query_groups=10,
        intermediate_size=17920,
        rope_base=250000.0,
    ),
]
