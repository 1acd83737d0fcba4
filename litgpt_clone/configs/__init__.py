"""The named model configs, one module per family. Each module has ``configs: list[dict]``."""

from litgpt_clone.configs import (
    deepseek,
    falcon,
    gemma,
    llama,
    mistral,
    olmo,
    phi,
    pythia,
    qwen,
    smollm,
    stablelm,
    starcoder,
)

FAMILIES = [llama, mistral, phi, gemma, qwen, falcon, olmo, stablelm, smollm, starcoder, deepseek, pythia]
