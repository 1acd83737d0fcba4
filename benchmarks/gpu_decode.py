"""Decode speed on a GPU: litgpt_clone vs LitGPT 0.5.13 vs transformers, TinyLlama-1.1B shape, bf16, greedy.

The GPU version of ``benchmarks/decode.py`` (same runners: ours ``generate.stream``, LitGPT ``generate_fn`` /
``batched_generate_fn``, transformers ``model.generate``; compiled the way each project documents it: ours
``compile=True``, LitGPT ``torch.compile(next_token, mode="reduce-overhead")``, transformers a static cache and
``torch.compile(model.forward, mode="reduce-overhead")``). Random weights with TinyLlama-1.1B's shape (22 layers,
n_embd 2048, 32 heads / 4 KV groups, intermediate 5632, vocab 32000) built on the GPU in bf16; ``--prompt`` (128)
random prompt tokens and ``--new`` (256) new tokens.

- batch 1, eager and compiled, every implementation: decode tokens/s (new tokens after the first over the time
  after the first) and time to first token; each token is on the host when it is counted (a streaming client
  needs it there): LitGPT's and transformers' device tensors through a device sync, ours' Python ints as
  ``stream`` yields them (it reads a step's tokens after it has queued the next step);
- batch ``--batches`` (8 and 32), ours eager and compiled and transformers eager: aggregate decode tokens/s;
- ours: the decode step alone, called back to back (what the token loop around it costs is the difference), and the
  eager step replayed as a plain CUDA graph (``generate.GraphedStep``, as ``serve`` decodes on a GPU).

Every (implementation, mode, batch) runs in a fresh child process with a time cap; the run has a budget.
Memory-bandwidth bound for batch 1 on an H100: ~1,450 tok/s (2.2 GB of weights read per token at ~3.3 TB/s).

    python benchmarks/gpu_decode.py                  # on a GPU machine (< 8 minutes)
    .venv/bin/python benchmarks/gpu_decode.py --smoke   # anywhere: a tiny shape on CPU, checks the script
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import forward_backward as fb  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_decode", HERE / "decode.py")
decode = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decode)

TINYLLAMA = dict(arch="llama", n_layer=22, n_embd=2048, n_head=32, n_query_groups=4, intermediate_size=5632,
                 vocab_size=32000, rotary_percentage=1.0, rope_base=10000.0, norm_eps=1e-5)
SMOKE = dict(TINYLLAMA, n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=176, vocab_size=512)


def runs(args) -> list[tuple[str, str, int]]:
    """(impl, mode, batch) in the order they run, the target figure first (with a tight budget, the tail is cut):
    ours compiled at batch 1, the eager baselines, ours compiled at larger batches, the compiled baselines, the rest."""
    order = [("ours", "compiled", 1), ("litgpt", "eager", 1), ("transformers", "eager", 1), ("ours", "eager", 1)]
    order += [("ours", "compiled", b) for b in args.batches]
    order += [("litgpt", "compiled", 1), ("transformers", "compiled", 1)]
    order += [(impl, "eager", b) for b in args.batches for impl in ("ours", "transformers")]
    return [(impl, mode, b) for impl, mode, b in order if impl in args.impls and mode in args.modes]


def worker(impl: str, mode: str, batch: int, args) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    decode.SYNC = cuda
    torch.manual_seed(0)
    shape = dict(SMOKE if args.smoke else TINYLLAMA, T=args.prompt + args.new)
    make, _ = fb.BUILDERS[impl](shape)
    with torch.device(device):
        model = make().to(dtype).eval()
    if impl == "ours":
        model.reset_rope()  # fp32 cos/sin, as GPT.from_checkpoint keeps them
    compiled = mode == "compiled"
    model = decode.prepare(impl, model, args.prompt + args.new, compiled, batch=batch)
    prompts = torch.randint(0, shape["vocab_size"], (batch, args.prompt), device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timed, warmup_s = [], []
    with torch.inference_mode():
        for i in range(args.warmup + args.reps):
            t0 = time.perf_counter()
            marks = decode.RUNNERS[impl](model, prompts, args.new, compiled)
            if len(marks) != args.new + 1:
                raise RuntimeError(f"{impl} generated {len(marks) - 1} steps, expected {args.new}")
            if i < args.warmup:
                warmup_s.append(time.perf_counter() - t0)
                continue
            (w0, _), (w1, _), (wn, _) = marks[0], marks[1], marks[-1]
            timed.append((w1 - w0, batch * (args.new - 1) / (wn - w1)))
        steps = step_rates(model, batch, args.prompt, compiled, device, args.profile) if impl == "ours" else {}
    return dict(impl=impl, mode=mode, batch=batch, ttft=statistics.median(t for t, _ in timed), **steps,
                tps=statistics.median(s for _, s in timed), warmup_s=sum(warmup_s),
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, version=fb.impl_version(impl))


def step_rates(model, batch: int, slot: int, compiled: bool, device, profile: bool = False) -> dict:
    """Ours only: tokens/s of the decode step alone, called back to back with no host read in between (the most the
    token loop could reach; what it loses to sampling, host copies and yields is the difference), and, eager, the same
    step replayed as a CUDA graph (``generate.GraphedStep``, what ``serve`` runs on a GPU)."""
    import torch

    from litgpt_clone.generate import GraphedStep, compiled_decode, decode_one_token, run_decode

    token = torch.zeros(batch, 1, dtype=torch.long, device=device)
    pos = torch.tensor([slot], device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def rate(call, n: int = 100) -> float:
        for _ in range(3):
            call()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        sync()
        return batch * n / (time.perf_counter() - t0)

    step = compiled_decode(device.type) if compiled else decode_one_token
    rates = dict(step_tps=rate(lambda: run_decode(step, compiled, model, token, pos, None, None, same_as_last=True)))
    if profile:  # where the step's GPU time goes: 20 steps, kernels by kind and name
        from gpu_pretrain import kernel_table

        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(20):
                run_decode(step, compiled, model, token, pos, None, None, same_as_last=True)
            sync()
        rates["profile"] = kernel_table(prof, time.perf_counter() - t0)
    if not compiled:
        graphed = GraphedStep(lambda t, p: decode_one_token(model, t, p), [token, pos])
        rates["graphed_step_tps"] = rate(lambda: graphed(token, pos))
    return rates


def run_worker(python: str, key: tuple[str, str, int], args, timeout: float) -> dict:
    impl, mode, batch = key
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, mode, str(batch), "--prompt", str(args.prompt),
           "--new", str(args.new), "--warmup", str(args.warmup), "--reps", str(args.reps)] + (["--smoke"] if args.smoke else [])
    cmd += ["--profile"] if args.profile else []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **fb.QUIET_ENV, "PYTHONPATH": str(fb.REPO_ROOT)},
                              cwd=str(fb.REPO_ROOT), timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f}s", wall_s=time.perf_counter() - t0)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(fb.RESULT_TAG):
            return dict(json.loads(line[len(fb.RESULT_TAG):]), wall_s=time.perf_counter() - t0)
    return dict(error="\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:]), wall_s=time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "MODE", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--impls", nargs="+", default=list(decode.IMPLS), choices=decode.IMPLS)
    p.add_argument("--modes", nargs="+", default=list(decode.MODES), choices=decode.MODES)
    p.add_argument("--batches", nargs="*", type=int, default=[8, 32], help="larger batches (ours, transformers eager)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny shape on CPU, 16 new tokens (checks the script)")
    p.add_argument("--profile", action="store_true", help="ours: a kernel table of 20 decode steps (GPU time by kind and name)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all workers; later ones are skipped")
    p.add_argument("--worker-timeout", type=float, default=150.0)
    p.add_argument("--litgpt-python", default=str(fb.DEFAULT_LITGPT_PYTHON))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.smoke and args.new == 256:
        args.new, args.prompt, args.batches = 16, 16, [4]
    if args.worker:
        impl, mode, batch = args.worker
        print(fb.RESULT_TAG + json.dumps(worker(impl, mode, int(batch), args)), flush=True)
        return

    pythons = {"ours": sys.executable, "transformers": sys.executable}
    for python in (args.litgpt_python, sys.executable):  # the litgpt venv here, or litgpt installed beside us
        if Path(python).exists() and subprocess.run([python, "-c", "import litgpt.generate.base"], capture_output=True).returncode == 0:
            pythons["litgpt"] = python
            break
    if "litgpt" in args.impls and "litgpt" not in pythons:
        args.impls.remove("litgpt")
        print("litgpt skipped: no interpreter here can import litgpt (install litgpt 0.5.13 or give --litgpt-python)")
    print(f"# GPU decode benchmark{' (smoke)' if args.smoke else ''}: TinyLlama-1.1B shape, greedy, prompt {args.prompt} + "
          f"{args.new} new tokens, {args.warmup} warm-up + {args.reps} timed generations per worker; python {platform.python_version()}")
    start, rows = time.perf_counter(), []
    for key in runs(args):
        left = args.budget - (time.perf_counter() - start)
        r = dict(error="budget spent", wall_s=0.0) if left < 20 else run_worker(pythons[key[0]], key, args, min(args.worker_timeout, left))
        rows.append((key, r))
        label = f"{key[0]:12s} {key[1]:8s} batch {key[2]:2d}"
        if "error" in r:
            print(f"  {label} FAILED after {r['wall_s']:.0f}s:\n    " + r["error"].replace("\n", "\n    "), flush=True)
        else:
            print(f"  {label} TTFT {r['ttft'] * 1e3:7.1f} ms  decode {r['tps']:8.1f} tok/s  warm-up {r['warmup_s']:5.1f}s  "
                  f"worker {r['wall_s']:.0f}s  [{r['device']}, torch {r['torch']}, {key[0]} {r['version']}]", flush=True)
            if "step_tps" in r:
                graphed = f", through GraphedStep (a CUDA graph on a GPU) {r['graphed_step_tps']:,.1f} tok/s" if "graphed_step_tps" in r else ""
                print(f"    the step alone, back to back: {r['step_tps']:,.1f} tok/s{graphed}", flush=True)
            if "profile" in r:
                print("    " + r["profile"].replace("\n", "\n    "), flush=True)
    ok = {k: r for k, r in rows if "error" not in r}
    print("\n| impl | mode | batch | TTFT ms | decode tok/s (all rows) | peak GB |\n|---|---|---:|---:|---:|---:|")
    for (impl, mode, batch), r in rows:
        cells = ["failed", "-", "-"] if "error" in r else [f"{r['ttft'] * 1e3:.1f}", f"{r['tps']:,.1f}", "-" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"]
        print(f"| {impl} | {mode} | {batch} | " + " | ".join(cells) + " |")
    print()
    for mode in args.modes:
        mine = ok.get(("ours", mode, 1))
        for other in ("litgpt", "transformers"):
            for their_mode in dict.fromkeys(("eager", mode)):
                theirs = ok.get((other, their_mode, 1))
                if mine and theirs:
                    print(f"batch 1: ours {mode} / {other} {their_mode}: decode {mine['tps'] / theirs['tps']:.2f}x, TTFT {theirs['ttft'] / mine['ttft']:.2f}x")
    print(f"total {time.perf_counter() - start:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(impl=k[0], mode=k[1], batch=k[2], **r) for k, r in rows], indent=1))


if __name__ == "__main__":
    main()
