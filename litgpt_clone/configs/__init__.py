"""The named model configs, one module per family. Each module has ``configs: list[dict]``."""

from litgpt_clone.configs import llama

FAMILIES = [llama]
