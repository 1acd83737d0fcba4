"""Serving on a GPU: ``litgpt-clone serve`` with continuous batching vs the same server one request at a time, on a
TinyLlama-1.1B-shaped model with random weights (bf16). Under 8 minutes on one H100.

LitGPT is not installed on GPU machines here, so the one-request-at-a-time baseline (what ``litgpt serve`` does) is
our own server with ``--max_batch_size 1``; ``benchmarks/serve.py`` compares with the real ``litgpt serve`` on CPU.

The checkpoint is written once (22 layers, n_embd 2048, 32 heads / 4 KV groups, intermediate 5632, vocab 32000,
context 2048; a word-level tokenizer of 32000 tokens) and both servers load it. Clients (``benchmarks/serve.py``'s
``level``) stream ``/v1/completions`` of random 128-token prompts (token ids), greedy, between half and 1.5x
``--max-tokens`` new tokens each, and report aggregate output tokens/s and p50/p95 time to first token at 1, 8, 32
and 64 concurrent clients. The one-at-a-time server runs at 1 and 8 clients: its aggregate rate is its single-stream
rate whatever the number waiting, and 64 clients would take minutes for no new figure. Both replay their decode
steps as CUDA graphs (the server's default on a GPU); ``--eager-clients 1 64`` adds the batched server with
``--cuda_graphs false`` at those levels, to measure what the graphs bring.

    python benchmarks/gpu_serve.py                 # on a CUDA machine
    .venv/bin/python benchmarks/gpu_serve.py --smoke   # a tiny model on CPU: checks the script end to end
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forward_backward as fb  # noqa: E402
import serve as bench  # noqa: E402  (server start/stop and the streaming clients)

TINYLLAMA = dict(n_layer=22, n_embd=2048, n_head=32, n_query_groups=4, intermediate_size=5632, vocab_size=32000, block_size=2048)
SMOKE = dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128, vocab_size=512, block_size=512)


def write_checkpoint(folder: Path, shape: dict, device: str, dtype) -> None:
    """A native checkpoint of a random Llama of ``shape`` with a word-level tokenizer of its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    from litgpt_clone.checkpoints.io import save_weights
    from litgpt_clone.config import Config
    from litgpt_clone.model import GPT

    folder.mkdir(parents=True)
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, shape["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": None}))
    config = Config(
        name="tinyllama-shape", block_size=shape["block_size"], vocab_size=shape["vocab_size"], n_layer=shape["n_layer"], n_embd=shape["n_embd"],
        n_head=shape["n_head"], n_query_groups=shape["n_query_groups"], intermediate_size=shape["intermediate_size"], norm_class_name="RMSNorm",
        norm_eps=1e-5, mlp_class_name="GatedMLP", mlp_activation="silu", bias=False, rope_base=10000.0, tie_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    save_weights({k: v.to(dtype).cpu() for k, v in model.state_dict().items()}, folder / "lit_model.safetensors")
    (folder / "model_config.yaml").write_text(config.to_yaml())
    del model


def completion_request(vocab: int, prompt_tokens: int, max_tokens: int):
    def make(c: int, r: int) -> tuple[str, dict]:
        rng = random.Random(c * 1000 + r)
        new = max_tokens // 2 + (c * 7 + r * 13) % (max_tokens + 1)
        prompt = [rng.randrange(1, vocab) for _ in range(prompt_tokens)]
        return "/v1/completions", dict(model="bench", prompt=prompt, temperature=0, max_tokens=new, stream=True, stream_options={"include_usage": True})

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny model on CPU with few requests (checks the script)")
    p.add_argument("--clients", nargs="+", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="mean new tokens per request")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--baseline-clients", nargs="+", type=int, default=None, help="levels for the one-at-a-time server (slow)")
    p.add_argument("--eager-clients", nargs="*", type=int, default=[], help="levels for the batched server with --cuda_graphs false (A/B)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_serve.py needs a CUDA GPU (use --smoke to check the script on CPU)")
    shape = SMOKE if args.smoke else TINYLLAMA
    clients = args.clients or ([1, 4] if args.smoke else [1, 8, 32, 64])
    baseline_clients = args.baseline_clients or ([1, 4] if args.smoke else [1, 8])
    max_tokens = args.max_tokens or (16 if args.smoke else 64)
    accelerator, precision = ("cpu", "32-true") if args.smoke else ("cuda", "bf16-true")
    work = Path(tempfile.mkdtemp(prefix="gpu-serve-bench-"))
    t0 = time.perf_counter()
    results = []
    try:
        write_checkpoint(work / "model", shape, "cpu" if args.smoke else "cuda", torch.float32 if args.smoke else torch.bfloat16)
        device = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
        print("# GPU serve benchmark: continuous batching vs one request at a time (litgpt-clone serve)")
        print(f"date: {_dt.datetime.now().isoformat(timespec='seconds')}; {device}; torch {torch.__version__}; shape {shape}, {precision}; "
              f"prompts of {args.prompt_tokens} random tokens, greedy, {max_tokens // 2}-{max_tokens * 3 // 2} new tokens (mean {max_tokens}); "
              f"model written in {time.perf_counter() - t0:.0f}s", flush=True)
        env = {**os.environ, **fb.QUIET_ENV, "PYTHONPATH": str(fb.REPO_ROOT)}
        if args.smoke:
            env["OMP_NUM_THREADS"] = "1"
        make = completion_request(shape["vocab_size"], args.prompt_tokens, max_tokens)
        servers = [("batched", max(clients), clients), ("one-at-a-time", 1, baseline_clients)]
        servers += [("batched eager", max(clients), args.eager_clients)] if args.eager_clients else []
        for name, batch, levels in servers:
            port = bench.free_port()
            cmd = [sys.executable, "-m", "litgpt_clone", "serve", str(work / "model"), "--port", str(port), "--accelerator", accelerator,
                   "--precision", precision, "--max_batch_size", str(batch), "--max_new_tokens", str(2 * max_tokens), "--model_name", "bench", "--stats_interval", "1"]
            cmd += ["--cuda_graphs", "false"] if name == "batched eager" else []
            started = time.perf_counter()
            proc = bench.start_server(cmd, port, work / f"{name}.log", env, timeout=600)
            print(f"{name}: server up in {time.perf_counter() - started:.0f}s", flush=True)
            try:
                url = f"http://127.0.0.1:{port}"
                # warm-up at the largest level, one request per client: the measured requests meet no shape for the first
                # time (cuBLAS picking kernels for a new prefill shape, a decode step captured late: the server captures
                # its decode steps when it starts, but the H200 run of 2026-11-27 warmed up at 2 clients only)
                asyncio.run(bench.level(url, max(levels), 1, make, True))
                for n in levels:
                    # at least 8 requests per level (4 for the slow baseline, whose clients send one each)
                    per = max(args.requests_per_client, math.ceil(8 / n)) if name != "one-at-a-time" else math.ceil(4 / n)
                    r = dict(bench.measure(url, n, per, make, True, rounds=1), server=name)
                    results.append(r)
                    bench.report(name, r)
            finally:
                bench.stop_server(proc)
                # the server's own account: graphs captured at start, and per 10 s prefills, decode steps, their times
                for line in (work / f"{name}.log").read_text(errors="replace").splitlines():
                    if line.startswith("litgpt-clone serve: "):
                        print(f"  [{name} log] {line.removeprefix('litgpt-clone serve: ')}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    bench.print_table(results)
    by = {(r["server"], r["clients"]): r for r in results}
    top = max(clients)
    if ("batched", 1) in by and ("batched", top) in by:
        print(f"batched: p50 TTFT at {top} clients / at 1 client = {by[('batched', top)]['ttft_p50'] / by[('batched', 1)]['ttft_p50']:.2f}x (target <= 2x)")
    # one at a time, the aggregate rate does not depend on how many clients wait: compare with its largest level
    base = max((n for server, n in by if server == "one-at-a-time"), default=None)
    if ("batched", top) in by and base is not None:
        print(f"aggregate tok/s, batched at {top} clients / one at a time at {base} = "
              f"{by[('batched', top)]['tokens_per_s'] / by[('one-at-a-time', base)]['tokens_per_s']:.1f}x (target >= 10x)")
    print(f"total wall time {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
