"""``litgpt-clone models``: list the named configs."""

from __future__ import annotations

from typing import Optional

from litgpt_clone.config import ConfigError, all_configs


def models(filter: Optional[str] = None, architecture: Optional[str] = None) -> None:
    """List the model names litgpt_clone knows, with their Hugging Face repo ids.

    Args:
        filter: Only names or repo ids containing this text (case-insensitive), e.g. ``llama-3.2``.
        architecture: Only this transformers architecture, e.g. ``Qwen3ForCausalLM`` (case-insensitive).
    """
    configs = all_configs()
    known = sorted({c.get("architecture", "") for c in configs})
    if architecture and architecture.lower() not in {a.lower() for a in known}:
        raise ConfigError(f"--architecture {architecture!r} is none of the registry's: {', '.join(known)}")
    rows = []
    for c in configs:
        repo = f"{c['hf_config']['org']}/{c['hf_config']['name']}" if c.get("hf_config") else ""
        if filter and filter.lower() not in f"{c['name']} {repo}".lower():
            continue
        if architecture and c.get("architecture", "").lower() != architecture.lower():
            continue
        rows.append((c["name"], repo))
    if not rows:
        print(f"no model matches filter={filter!r} architecture={architecture!r}")
        return
    width = max(len(name) for name, _ in rows)
    for name, repo in rows:
        print(f"{name:<{width}}  {repo}")
