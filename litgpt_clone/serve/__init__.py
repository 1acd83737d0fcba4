"""``litgpt-clone serve``: an OpenAI-compatible HTTP server on LitServe.

    build_server(checkpoint_dir, ...).run(host="127.0.0.1", port=8000)

``OpenAIServeSpec`` (serve/openai.py) answers the HTTP requests; ``GenerationAPI`` (serve/api.py) workers load
the model and run the shared generate loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


def default_model_name(checkpoint_dir: Path) -> str:
    """``checkpoints/org/name`` -> ``org/name``: the id clients send as ``model``."""
    return "/".join(checkpoint_dir.resolve().parts[-2:])


def build_server(
    checkpoint_dir: Path, model_name: str, max_new_tokens: int = 512, api_key: Optional[str] = None, accelerator: str = "auto",
    devices: Union[int, str] = 1, workers_per_device: int = 1, precision: Optional[str] = None, quantize: Optional[str] = None,
    max_batch_size: int = 1, batch_timeout: float = 0.01, timeout: float = 600.0,
):
    """A ``litserve.LitServer`` serving ``checkpoint_dir`` under ``model_name``."""
    import litserve as ls

    from litgpt_clone.serve.api import GenerationAPI
    from litgpt_clone.serve.openai import OpenAIServeSpec

    spec = OpenAIServeSpec(str(checkpoint_dir), model_name, max_new_tokens, api_key)
    api = GenerationAPI(
        str(checkpoint_dir), precision=precision, quantize=quantize, spec=spec, max_batch_size=max_batch_size,
        batch_timeout=batch_timeout if max_batch_size > 1 else 0.0,
    )
    return ls.LitServer(api, accelerator=accelerator, devices=devices, workers_per_device=workers_per_device, timeout=timeout)
