"""Meta's Llama family."""

configs: list[dict] = []
