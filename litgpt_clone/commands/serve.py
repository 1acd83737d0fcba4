"""``litgpt-clone serve``: an OpenAI-compatible HTTP server for one checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Optional, Union

from litgpt_clone.serve import STATS_INTERVAL_S


class ServeError(ValueError):
    """Server options that cannot work; the message names the problem and the fix."""


def parse_adapters(text: Optional[str], base_name: str) -> list[tuple[str, Path]]:
    """``"a=dir1,b=dir2"`` -> [("a", dir1), ("b", dir2)], each folder checked to be a LoRA checkpoint."""
    pairs: list[tuple[str, Path]] = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, folder = item.partition("=")
        name, folder = name.strip(), folder.strip()
        if not sep or not name or not folder:
            raise ServeError(f"--adapters entry {item!r} is not name=folder: write --adapters sql=out/lora-sql/final,chat=out/lora-chat/final")
        if name == base_name or name in (n for n, _ in pairs):
            raise ServeError(f"--adapters: the name {name!r} is used twice (the base model is {base_name!r}): give each adapter its own name")
        path = Path(folder)
        if not (path / "adapter_config.json").is_file() and not ((path / "lora.safetensors").is_file() and (path / "lora_config.yaml").is_file()):
            raise ServeError(
                f"--adapters: {path} is not a LoRA adapter (no lora.safetensors + lora_config.yaml, no adapter_config.json):"
                " pass a folder written by `finetune lora` or a PEFT LoRA folder"
            )
        pairs.append((name, path))
    return pairs


HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "0.0.0.0": "0.0.0.0", "::": "::"}
"""--host values -> the address LitServe binds (it takes these three only)."""


def check_address(host: str, port: int) -> str:
    """The address to bind for ``--host``, once it is known that ``port`` is free there (else ``ServeError``, before
    the model loads)."""
    if host not in HOSTS:
        raise ServeError(f"--host {host}: the server listens on 127.0.0.1 (this machine only), 0.0.0.0 (every IPv4 interface) or :: (every IPv6 interface): use one of those")
    address = HOSTS[host]
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: only a listening socket is in the way
        try:
            probe.bind((address, port))
        except OSError as err:
            raise ServeError(f"cannot listen on {address} port {port}: {err.strerror}; pass a free --port, or stop the server that has it") from None
    return address


def check_accelerator(accelerator: str, devices: Union[int, str]) -> None:
    """``ServeError`` for an accelerator or device count this machine does not have (LitServe found out only once its
    workers failed to start, behind their tracebacks)."""
    if accelerator not in ("auto", "cpu", "cuda", "gpu"):
        raise ServeError(f"--accelerator {accelerator}: use auto, cpu or cuda")
    if accelerator in ("cuda", "gpu"):
        import torch

        if not torch.cuda.is_available():
            raise ServeError(f"--accelerator {accelerator}: no CUDA GPU is visible here: use --accelerator cpu (or auto)")
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise ServeError(f"--devices {devices}: this machine has {torch.cuda.device_count()} CUDA GPU(s): use at most that many")


def check_api_key(api_key: Optional[str]) -> Optional[str]:
    """The key requests must carry: --api_key, else the environment's LITGPT_CLONE_API_KEY, else None (no key). An empty
    one is an error: given on purpose (``--api_key "$KEY"`` with KEY unset, an empty variable) it served every request
    without one, and the only notice was a warning off 127.0.0.1."""
    source = "--api_key"
    if api_key is None:
        api_key, source = os.environ.get("LITGPT_CLONE_API_KEY"), "LITGPT_CLONE_API_KEY"
    if api_key is not None and not api_key.strip():
        leave_out = "leave --api_key out" if source == "--api_key" else "unset LITGPT_CLONE_API_KEY"
        raise ServeError(f"{source} is empty: give a key, or {leave_out} to serve without one")
    return api_key


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill <pid>``, a service manager stopping the server) shut the server down as Ctrl-C does.
    LitServe stops its HTTP, manager and model processes on KeyboardInterrupt only: after a SIGTERM to its main process
    they kept running, answering on the port and holding the model's memory."""
    main = os.getpid()

    def handler(signum, frame) -> None:
        if os.getpid() != main:  # a process forked from this one inherited the handler: end as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def serve(
    checkpoint_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    accelerator: str = "auto",
    devices: Union[int, str] = 1,
    workers_per_device: int = 1,
    precision: Optional[str] = None,
    quantize: Optional[str] = None,
    max_batch_size: int = 32,
    max_new_tokens: int = 512,
    api_key: Optional[str] = None,
    model_name: Optional[str] = None,
    adapters: Optional[str] = None,
    max_seq_length: Optional[int] = None,
    cuda_graphs: bool = True,
    stats_interval: float = STATS_INTERVAL_S,
) -> None:
    """Serve a model over HTTP with OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models and /health.

    Any OpenAI client works: ``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")``. LitGPT's client scripts
    (for ``litgpt serve``) work too: POST /predict takes ``{"prompt": ...}`` and answers ``{"output": ...}``.

    Args:
        checkpoint_dir: Native checkpoint folder, hub repo id (downloaded and converted on first use) or model name.
        host: Address to listen on: 127.0.0.1 (the default; also "localhost") accepts local clients only; 0.0.0.0
            (IPv4) or :: (IPv6) opens the server to the network (set --api_key then).
        port: TCP port.
        accelerator: "auto", "cpu" or "cuda".
        devices: Number of devices (or "auto"); each runs workers_per_device workers with a copy of the model.
        workers_per_device: Model copies per device.
        precision: "32-true", "bf16-true" or "16-true"; default bf16 on a GPU that supports it, else fp32.
        quantize: Quantize the weights with bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        max_batch_size: Most requests one worker decodes together (continuous batching: a request joins or leaves
            the batch at any step); more wait in line. Each one holds a KV-cache row of --max_seq_length tokens.
        max_new_tokens: Most tokens of one reply (a request's max_tokens, or /predict's max_new_tokens, is capped to it).
        api_key: Require "Authorization: Bearer <api_key>" on every request but /health (default: env LITGPT_CLONE_API_KEY;
            an empty key is an error: leave both out to serve without one).
        model_name: The model id clients send and /v1/models lists (default: the checkpoint's last two folder names).
        adapters: LoRA adapters over the same base, "name=folder,name2=folder2" (folders written by `finetune lora`,
            or PEFT LoRA folders as vLLM's --lora-modules takes them): a request whose model is "name" uses that
            adapter; requests for different adapters share a batch.
        max_seq_length: Longest prompt + reply accepted; default: the model's context, at most 4096 (every one of
            the max_batch_size rows holds a KV cache this long).
        cuda_graphs: On a GPU, replay each decode step as a CUDA graph (one per batch size and cache length, those of
            up to 4,096 cache slots captured when the server starts: a 1.1B model's small steps cost their kernels,
            not Python's launches). False decodes eagerly (vLLM's --enforce-eager).
        stats_interval: Seconds between the log lines on what the server did while busy (prompt tokens and
            prefills, decode steps and their time, tokens/s, running and waiting requests); 0 logs none.
    """
    from litgpt_clone.api import PRECISIONS, check_quantize, find_checkpoint
    from litgpt_clone.serve import build_server, default_model_name

    if stats_interval < 0:
        raise ServeError(f"--stats_interval {stats_interval} is negative: give seconds between log lines, or 0 for none")
    if max_batch_size < 1 or workers_per_device < 1 or max_new_tokens < 1:
        raise ServeError("max_batch_size, workers_per_device and max_new_tokens must be 1 or more")
    if not 0 < port < 65536:
        raise ServeError(f"port {port} is not a TCP port: use 1-65535")
    host = check_address(host, port)
    check_accelerator(accelerator, devices)
    if precision is not None and precision not in PRECISIONS:
        raise ServeError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    check_quantize(quantize)
    api_key = check_api_key(api_key)
    checkpoint = find_checkpoint(checkpoint_dir)
    name = model_name or default_model_name(checkpoint)
    from litgpt_clone.config import Config

    block_size = Config.from_checkpoint(checkpoint).block_size
    context = min(max_seq_length or 4096, block_size)
    if max_seq_length is not None and not 1 < max_seq_length <= block_size:
        raise ServeError(f"--max_seq_length {max_seq_length} does not fit the model: use a value in [2, {block_size}]")
    lora = parse_adapters(adapters, name)
    if lora:  # fail here, with a one-line message, rather than in the worker
        from litgpt_clone.serve.multi_lora import check_adapters

        check_adapters(checkpoint, lora)
    server = build_server(
        checkpoint, name, max_new_tokens, api_key, accelerator, devices, workers_per_device, precision, quantize, max_batch_size, lora, context,
        cuda_graphs=cuda_graphs, stats_interval=stats_interval,
    )
    if host != "127.0.0.1" and api_key is None:
        print(f"warning: listening on {host} without --api_key: anyone who can reach this port can use the model", file=sys.stderr)
    where = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"Serving model {name!r} ({checkpoint}) at {where}/v1 (health: {where}/health)", file=sys.stderr, flush=True)
    for adapter, folder in lora:
        print(f"  LoRA adapter {adapter!r} ({folder})", file=sys.stderr, flush=True)
    stop_on_sigterm()
    server.run(host=host, port=port, generate_client_file=False)
