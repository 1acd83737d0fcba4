"""Decode speed: litgpt_clone vs LitGPT 0.5.13 vs Hugging Face transformers, batch 1, greedy.

For each config (the same random-weight shapes as ``forward_backward.py``), each implementation generates
``--new`` tokens after a random ``--prompt``-token prompt, eager and compiled, through its own generation code:

- ours: ``litgpt_clone.generate.stream`` (static KV cache; ``compile=True`` compiles the decode step);
- litgpt: ``litgpt.generate.base.generate_fn``; compiled as ``litgpt generate --compile`` does it
  (``torch.compile(next_token, mode="reduce-overhead")`` with automatic dynamic shapes);
- transformers: ``model.generate(do_sample=False)`` with its default dynamic cache; compiled as its docs say
  (``cache_implementation="static"`` and ``torch.compile(model.forward, mode="reduce-overhead")``).

Every (implementation, config, mode) runs in a fresh child process (``--worker``); litgpt runs with the python of its
own venv (``benchmarks/setup_litgpt_venv.sh``). A worker does ``--warmup`` generations (compilation happens there),
then ``--reps`` timed ones. Time to first token (TTFT) = from the call until the first new token is out (prefill +
one sample); decode tokens/s = (new - 1) / (time from the first to the last token); "CPU" = the same with the
process CPU time, which on a shared machine (and with ``--threads 1``) is closer to the uncontended speed.

    .venv/bin/python benchmarks/decode.py                        # tiny + llama-134m, eager + compiled, ~4-5 min
    .venv/bin/python benchmarks/decode.py --configs tiny --modes eager --impls ours litgpt
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forward_backward as fb  # noqa: E402  (the shared configs, model builders and litgpt venv location)

IMPLS = ("ours", "litgpt", "transformers")
MODES = ("eager", "compiled")
CONFIGS = ("tiny-llama", "llama-134m")


# ----------------------------------------------------------------------------- one generation per implementation
SYNC = False  # CUDA (gpu_decode.py): wait for the device before each time mark


def mark(sync: bool = True) -> tuple[float, float]:
    if SYNC and sync:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def run_ours(model, prompts, new: int, compiled: bool) -> list[tuple[float, float]]:
    """``prompts``: (B, T) token ids; one mark before the call and one per step (all rows' tokens out).

    ``stream`` yields Python ints, so each step's tokens are on the host when it yields: its marks need no device
    sync. A sync there would also wait for the next step, which ``stream`` queues before it reads this one's tokens
    (``ToHost``), and so take away the overlap a streaming client gets (the H200 run of 2026-11-27 measured that
    way: 505-575 tok/s through the loop, 689 for the step alone)."""
    from litgpt_clone.generate import stream

    marks = [mark()]
    for _ in stream(model, list(prompts), new, compile=compiled):
        marks.append(mark(sync=False))
    return marks


def run_litgpt(model, prompts, new: int, compiled: bool) -> list[tuple[float, float]]:
    from litgpt.generate.base import batched_generate_fn, generate_fn

    for block in model.transformer.h:  # as `litgpt generate` does between samples
        block.attn.kv_cache.reset_parameters()
    total = prompts.size(1) + new
    marks = [mark()]
    if prompts.size(0) == 1:
        tokens = generate_fn(model, prompts[0], total, temperature=0.0, include_prompt=False, include_eos=True)
    else:
        tokens = batched_generate_fn(model, prompts, total, sample_args=dict(temperature=0.0), include_prompt=False, include_eos=True)
    for _ in tokens:
        marks.append(mark())
    return marks


class _Clock:
    """A transformers streamer that only notes when each new token comes out (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.marks.append(mark())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def run_transformers(model, prompts, new: int, compiled: bool) -> list[tuple[float, float]]:
    import torch

    clock = _Clock()
    start = mark()
    model.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
        streamer=clock, pad_token_id=0, eos_token_id=None,
    )
    return [start, *clock.marks]


def prepare(impl: str, model, total: int, compiled: bool, batch: int = 1):
    """Per-implementation setup before the first generation: KV cache (litgpt), compilation switches."""
    import torch

    if impl == "litgpt":
        model.max_seq_length = total  # litgpt generate: max_returned_tokens
        param = next(model.parameters())
        model.set_kv_cache(batch_size=batch, device=param.device, dtype=param.dtype)
        if compiled:
            import litgpt.generate.base as base

            torch._dynamo.config.automatic_dynamic_shapes = True
            base.next_token = torch.compile(base.next_token, mode="reduce-overhead")
    elif impl == "transformers":
        model.generation_config.cache_implementation = "static" if compiled else None
        if compiled:
            model.forward = torch.compile(model.forward, mode="reduce-overhead")
    return model


RUNNERS = {"ours": run_ours, "litgpt": run_litgpt, "transformers": run_transformers}


def worker(impl: str, config_name: str, mode: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    total = args.prompt + args.new
    spec = dict(fb.CONFIGS[config_name], T=total)  # T: the builders' block size / max_position_embeddings
    make, _ = fb.BUILDERS[impl](spec)
    base_rss = fb.current_rss_bytes()
    model = prepare(impl, make().eval(), total, mode == "compiled")
    n_params = sum(p.numel() for p in model.parameters())
    prompt = torch.randint(0, spec["vocab_size"], (1, args.prompt))
    runs = []
    with torch.inference_mode():
        for i in range(args.warmup + args.reps):
            t0 = time.perf_counter()
            marks = RUNNERS[impl](model, prompt, args.new, mode == "compiled")
            if len(marks) != args.new + 1:
                raise RuntimeError(f"{impl} generated {len(marks) - 1} tokens, expected {args.new}")
            if i >= args.warmup:
                (w0, c0), (w1, c1), (wn, cn) = marks[0], marks[1], marks[-1]
                runs.append(dict(ttft=w1 - w0, ttft_cpu=c1 - c0, tps=(args.new - 1) / (wn - w1), tps_cpu=(args.new - 1) / max(cn - c1, 1e-9)))
            else:
                runs.append(dict(warmup_s=time.perf_counter() - t0))
    timed = [r for r in runs if "tps" in r]
    median = lambda key: statistics.median(r[key] for r in timed)  # noqa: E731
    return dict(
        impl=impl, config=config_name, mode=mode, params=n_params, ttft=median("ttft"), ttft_cpu=median("ttft_cpu"),
        tps=median("tps"), tps_cpu=median("tps_cpu"), warmup_s=[r["warmup_s"] for r in runs if "warmup_s" in r],
        peak_bytes=fb.peak_rss_bytes() - base_rss, version=fb.impl_version(impl), torch=torch.__version__, threads=torch.get_num_threads(),
    )


# ----------------------------------------------------------------------------- orchestrator
def run_worker(python: str, impl: str, config_name: str, mode: str, args: argparse.Namespace) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, config_name, mode, "--threads", str(args.threads),
           "--prompt", str(args.prompt), "--new", str(args.new), "--warmup", str(args.warmup), "--reps", str(args.reps)]
    env = {**os.environ, **fb.QUIET_ENV, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(fb.REPO_ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(fb.REPO_ROOT))
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(fb.RESULT_TAG):
            return dict(json.loads(line[len(fb.RESULT_TAG):]), wall_s=wall)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return dict(impl=impl, config=config_name, mode=mode, error="\n".join(tail), wall_s=wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "CONFIG", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"subset of {list(CONFIGS)} (or tiny / 100m)")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--new", type=int, default=64, help="new tokens")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations first (compilation happens here)")
    p.add_argument("--reps", type=int, default=3, help="timed generations (medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: steadiest on a shared machine)")
    p.add_argument("--litgpt-python", default=str(fb.DEFAULT_LITGPT_PYTHON), help="python of the LitGPT 0.5.13 venv")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    args = p.parse_args()

    if args.worker:
        print(fb.RESULT_TAG + json.dumps(worker(*args.worker, args)), flush=True)
        return

    configs = [fb.ALIASES.get(c, c) for c in args.configs]
    impls = list(args.impls)
    pythons = {"ours": sys.executable, "transformers": sys.executable, "litgpt": args.litgpt_python}
    notes = []
    if "litgpt" in impls and not Path(args.litgpt_python).exists():
        impls.remove("litgpt")
        notes.append(f"litgpt skipped: no interpreter at {args.litgpt_python} (run benchmarks/setup_litgpt_venv.sh)")

    import torch

    print("# Decode benchmark (batch 1, greedy)")
    print(f"date: {_dt.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}, python {platform.python_version()}, "
          f"os.cpu_count()={os.cpu_count()}, torch threads per worker={args.threads}; prompt {args.prompt} + {args.new} new tokens, "
          f"{args.warmup} warmup + {args.reps} timed generations per worker")
    for line in notes:
        print(line)
    results, t_start = [], time.perf_counter()
    for c in configs:
        for mode in args.modes:
            for impl in impls:
                r = run_worker(pythons[impl], impl, c, mode, args)
                results.append(r)
                if "error" in r:
                    print(f"  {c:11s} {mode:8s} {impl:12s} FAILED after {r['wall_s']:.0f}s:\n    " + r["error"].replace("\n", "\n    "), flush=True)
                else:
                    print(f"  {c:11s} {mode:8s} {impl:12s} TTFT {r['ttft'] * 1e3:7.1f} ms  decode {r['tps']:7.1f} tok/s "
                          f"(CPU {r['tps_cpu']:7.1f})  warmup {sum(r['warmup_s']):5.1f}s  worker {r['wall_s']:.0f}s  ({r['version']})", flush=True)
    total = time.perf_counter() - t_start

    ok = {(r["impl"], r["config"], r["mode"]): r for r in results if "error" not in r}
    print()
    print("| config | mode | impl | params | TTFT ms | decode tok/s | decode tok/s (CPU time) | peak MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for c in configs:
        for mode in args.modes:
            for impl in impls:
                r = ok.get((impl, c, mode))
                if r is None:
                    print(f"| {c} | {mode} | {impl} | failed | - | - | - | - |")
                else:
                    print(f"| {c} | {mode} | {impl} | {r['params'] / 1e6:.1f}M | {r['ttft'] * 1e3:.1f} | {r['tps']:.1f} | {r['tps_cpu']:.1f} | {r['peak_bytes'] / 2**20:.0f} |")
    print()
    baselines = [("litgpt", "eager"), ("litgpt", "compiled"), ("transformers", "eager"), ("transformers", "compiled")]
    baselines = [(i, m) for i, m in baselines if i in impls and m in args.modes]
    if "ours" in impls and baselines:
        header = [f"ours {m} / {i} {mb}" for m in args.modes for i, mb in baselines if m == mb or mb == "eager"]
        print("| config | " + " | ".join(f"{h}: decode (CPU) / TTFT" for h in header) + " |")
        print("|---|" + "---:|" * len(header))
        for c in configs:
            cells = []
            for m in args.modes:
                for i, mb in baselines:
                    if not (m == mb or mb == "eager"):
                        continue
                    mine, theirs = ok.get(("ours", c, m)), ok.get((i, c, mb))
                    if mine is None or theirs is None:
                        cells.append("-")
                    else:
                        cells.append(f"{mine['tps'] / theirs['tps']:.2f}x ({mine['tps_cpu'] / theirs['tps_cpu']:.2f}x) / {theirs['ttft'] / mine['ttft']:.2f}x")
            print(f"| {c} | " + " | ".join(cells) + " |")
        print()
        print("ratios > 1: ours faster (decode: tokens/s ours over theirs, wall and CPU time; TTFT: their time over ours).")
    print(f"total wall time {total:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
