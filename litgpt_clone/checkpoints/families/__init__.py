"""One module per family of ``transformers`` architectures; importing this package registers them all."""

from litgpt_clone.checkpoints.families import falcon, gemma, gpt_neox, llama, olmo, phi, stablelm, starcoder2  # noqa: F401
