"""``litgpt-clone models``: list the named configs."""

from __future__ import annotations

from typing import Optional

from litgpt_clone.config import all_configs


def models(filter: Optional[str] = None, architecture: Optional[str] = None) -> None:
    """List the model names litgpt_clone knows, with their Hugging Face repo ids.

    Args:
        filter: Only names or repo ids containing this text (case-insensitive), e.g. ``llama-3.2``.
        architecture: Only this transformers architecture, e.g. ``Qwen3ForCausalLM``.
    """
    rows = []
    for c in all_configs():
        repo = f"{c['hf_config']['org']}/{c['hf_config']['name']}" if c.get("hf_config") else ""
        if filter and filter.lower() not in f"{c['name']} {repo}".lower():
            continue
        if architecture and c.get("architecture") != architecture:
            continue
        rows.append((c["name"], repo))
    if not rows:
        print(f"no model matches filter={filter!r} architecture={architecture!r}")
        return
    width = max(len(name) for name, _ in rows)
    for name, repo in rows:
        print(f"{name:<{width}}  {repo}")
