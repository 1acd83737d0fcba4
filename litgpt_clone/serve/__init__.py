"""``litgpt-clone serve``: an OpenAI-compatible HTTP server on LitServe.

    build_server(checkpoint_dir, "org/name").run(host="127.0.0.1", port=8000)

``OpenAIServeSpec`` (serve/openai.py) answers the HTTP requests; ``GenerationAPI`` workers (serve/api.py) load the
model (and LoRA adapters, serve/multi_lora.py) and decode every running request together (serve/engine.py).
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

STATS_INTERVAL_S = 10.0
"""Seconds between the server's log lines on what the engine did (prompt tokens, steps, their times, tokens/s, rows)."""


def default_model_name(checkpoint_dir: Path) -> str:
    """``checkpoints/org/name`` -> ``org/name``: the id clients send as ``model``."""
    return "/".join(checkpoint_dir.resolve().parts[-2:])


def build_server(
    checkpoint_dir: Path, model_name: str, max_new_tokens: int = 512, api_key: Optional[str] = None, accelerator: str = "auto",
    devices: Union[int, str] = 1, workers_per_device: int = 1, precision: Optional[str] = None, quantize: Optional[str] = None,
    max_batch_size: int = 32, adapters: Sequence[tuple[str, str]] = (), max_seq_length: Optional[int] = None, timeout: float = 600.0,
    cuda_graphs: bool = True, stats_interval: float = STATS_INTERVAL_S,
):
    """A ``litserve.LitServer`` serving ``checkpoint_dir`` under ``model_name`` (and each LoRA adapter of
    ``adapters``, (name, folder) pairs, under its name), decoding up to ``max_batch_size`` requests per worker
    together, each of at most ``max_seq_length`` tokens (default: the model's context); ``cuda_graphs``: replay the
    decode steps as CUDA graphs on a GPU; ``stats_interval``: seconds between the log lines on what the engine did
    (0: none). Prints the limits a request meets (the log's first line)."""
    import litserve as ls

    from litgpt_clone.serve.api import GenerationAPI
    from litgpt_clone.serve.openai import OpenAIServeSpec, RequireKey

    from litgpt_clone.config import Config

    context = min(max_seq_length or 10**9, Config.from_checkpoint(checkpoint_dir).block_size)
    manager = multiprocessing.Manager()  # holds the uids of abandoned generations for all processes
    spec = OpenAIServeSpec(str(checkpoint_dir), model_name, context, max_new_tokens, [name for name, _ in adapters], manager.dict())
    api = GenerationAPI(
        str(checkpoint_dir), precision=precision, quantize=quantize, adapters=tuple((n, str(p)) for n, p in adapters),
        max_rows=max_batch_size, context=context, spec=spec, cuda_graphs=cuda_graphs, stats_interval=stats_interval,
    )
    # LitServe's own transport (a Manager queue). Its fast_queue=True is a no-op in 0.2.19 (Lightning-AI/LitServe#751);
    # made to work here, its ZeroMQ transport (pyzmq's asyncio consumer under uvicorn's uvloop) stopped delivering
    # events to the test server's HTTP process in one full test run of 2026-11-27 (every request timed out): off.
    server = ls.LitServer(
        api, accelerator=accelerator, devices=devices, workers_per_device=workers_per_device, timeout=timeout,
        middlewares=[(RequireKey, {"api_key": api_key})] if api_key else None,
    )
    server.cancel_manager = manager  # kept alive as long as the server
    print(
        f"litgpt-clone serve: replies of at most {max_new_tokens} tokens (--max_new_tokens: a larger max_tokens is cut to it),"
        f" prompt + reply of at most {context} tokens (--max_seq_length), {max_batch_size} generations decoded together per worker"
        " (--max_batch_size)", file=sys.stderr, flush=True,
    )
    return server
