"""GPU pretraining throughput and MFU: litgpt_clone's training loop vs LitGPT's model, on random tokens.

Two model shapes, each trained for a fixed number of optimizer steps, bf16-mixed, compiled, fused AdamW:

- ``pythia-160m`` (GPT-NeoX, 12 layers, 768 wide, vocab 50304) at T=2048, batch 8 (``--batches pythia-160m=16``
  changes it for both tools);
- ``tinyllama-1.1b`` (Llama, 22 layers, 2048 wide, 4 KV groups, vocab 32000) at T=2048, batch 4.

Every (implementation, model) pair runs in a fresh child process of this script (``--worker``):

- ``ours``: the real ``litgpt_clone.training`` path: ``build_fabric`` (Fabric, bf16-mixed, CSV logger),
  ``GPT.init_weights``, ``compile_model`` (``--compile model``: the whole model, as LitGPT compiles it, or ``blocks``),
  ``build_optimizer(fused=True)`` and ``fit`` (the loop that ``pretrain`` runs: the fused head + loss, lr schedule,
  clip 1.0, step, per-step log); the data is a random-token ``Batches`` object;
- ``litgpt``: ``litgpt.model.GPT`` (``Config.from_name``) in the loop ``litgpt pretrain`` runs: Fabric bf16-mixed,
  ``torch.compile(model)``, fused ``AdamW``, ``chunked_cross_entropy``, ``fabric.clip_gradients(max_norm=1.0)``, one
  ``.item()`` per step. It needs ``import litgpt``: the interpreter of ``--litgpt-python`` (default
  ``../litgpt-venv/bin/python``) or, if that does not exist, this one; if neither can import it, it is skipped.

Tokens/s is steady state: the tokens of the steps after ``--skip`` over their wall time (each step ends with a host
sync: the loss ``.item()``). MFU = tokens/s x (6 N + 12 L d T) / peak, with N the parameters without the input
embedding, L layers, d the attention width, T the sequence length; peak = 989 TFLOP/s bf16 dense on H100/H200 (the
table in ``litgpt_clone.parallel.gpu_peak_flops``). Peak memory: ``torch.cuda.max_memory_allocated``.

    python benchmarks/gpu_pretrain.py                   # on a GPU: both models, both implementations (< 8 min)
    python benchmarks/gpu_pretrain.py --smoke           # anywhere: tiny shapes, a few steps, CPU if no GPU
    python benchmarks/gpu_pretrain.py --models pythia-160m --impls ours
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Optional
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LITGPT_PYTHON = REPO_ROOT.parent / "litgpt-venv" / "bin" / "python"
RESULT_TAG = "@@RESULT@@ "
IMPLS = ("ours", "litgpt")
QUIET_ENV = {
    "LITDATA_DISABLE_VERSION_CHECK": "1",
    "LIGHTNING_DISABLE_VERSION_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}

# Registry names in each project; B/T/steps per model. Smoke overrides shrink every shape (same for both projects).
MODELS = {
    "pythia-160m": dict(ours="pythia-160m", litgpt="pythia-160m", B=8, T=2048, steps=30, skip=10,
                        smoke=dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=4, intermediate_size=256, vocab=512)),
    "tinyllama-1.1b": dict(ours="TinyLlama-1.1B-intermediate-step-1431k-3T", litgpt="tiny-llama-1.1b", B=4, T=2048, steps=25,
                           skip=10, smoke=dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=176, vocab=512)),
}
# Anchor from ../shared/anchors/README.md (H100 80GB HBM3, torch 2.11, LitGPT 0.5.13), printed when litgpt is skipped.
ANCHORS = {"pythia-160m": "LitGPT 0.5.13 on an H100, torch 2.11, same shape/batch: 325K tok/s, 31.9% MFU"}


# ----------------------------------------------------------------------------- worker side
def shapes(spec: dict, smoke: bool, batch: Optional[int] = None) -> tuple[dict, int, int, int, int]:
    """Config overrides, batch (``batch`` replaces the model's own), sequence length, steps and skipped steps."""
    if not smoke:
        return {}, batch or spec["B"], spec["T"], spec["steps"], spec["skip"]
    s = dict(spec["smoke"])
    vocab = s.pop("vocab")
    return dict(s, vocab_size=vocab, block_size=64), batch or 2, 64, 8, 3


def random_batches(vocab: int, T: int):
    """``batch(start, size) -> (inputs, targets)`` of uniform random tokens, the same for the same ``start``."""
    import torch

    class RandomBatches:
        def batch(self, start: int, size: int):
            g = torch.Generator().manual_seed(start)
            rows = torch.randint(0, vocab, (size, T + 1), generator=g)  # (size, T + 1)
            return rows[:, :-1], rows[:, 1:]

    return RandomBatches()


def flops_per_token(n_params_no_embedding: int, n_layer: int, attn_width: int, T: int) -> float:
    return 6 * n_params_no_embedding + 12 * n_layer * attn_width * T


def peak_memory_gb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # peak RSS (KiB on Linux) on CPU


def worker_ours(name: str, args) -> dict:
    import csv

    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from litgpt_clone.config import Config
    from litgpt_clone.model import GPT
    from litgpt_clone.parallel import compile_model, device_peak_flops
    from litgpt_clone.training.args import EvalArgs, TrainArgs
    from litgpt_clone.training.fit import FitState, fit
    from litgpt_clone.training.run import build_fabric, build_optimizer, flops_per_token as ours_flops

    spec = MODELS[name]
    overrides, B, T, steps, skip = shapes(spec, args.smoke, args.batch)
    config = Config.from_name(spec["ours"], **overrides)
    out_dir = Path(tempfile.mkdtemp(prefix="gpu_pretrain_ours_"))
    fabric = build_fabric(1, 1, "auto", args.precision, out_dir, "csv")
    fabric.seed_everything(0)
    t0 = time.perf_counter()
    with fabric.init_module():
        model = GPT(config)
    model.init_weights()
    model.max_seq_length = T
    flops = ours_flops(model, T)
    n_params = sum(p.numel() for p in model.parameters())
    if args.compile:
        compile_model(model, args.ours_compile)
    model = fabric.setup(model)
    train = TrainArgs(global_batch_size=B, micro_batch_size=B, max_steps=steps, max_seq_length=T, lr=3e-4,
                      warmup_steps=5, save_interval=None, log_interval=1, max_norm=1.0)
    optimizer = fabric.setup_optimizers(build_optimizer(model, "AdamW", train, fused=True))
    setup_s = time.perf_counter() - t0
    summary = fit(
        fabric, model, optimizer, random_batches(config.vocab_size, T), None, train, EvalArgs(final_validation=False),
        FitState(), T, save=lambda state, final: None, flops_per_token=flops,
        peak_flops=device_peak_flops(fabric.device, args.precision),
    )
    with open(out_dir / "logs" / "version_0" / "metrics.csv") as f:
        tps = {int(r["step"]): float(r["tokens_per_sec"]) for r in csv.DictReader(f) if r.get("tokens_per_sec")}
    step_times = [B * T / tps[s] for s in range(1, steps + 1)]
    result = dict(
        n_params=n_params, flops_per_token=flops, B=B, T=T, steps=steps, skip=skip, setup_s=setup_s, step_times=step_times,
        final_loss=summary["final_loss"], peak_gb=peak_memory_gb(fabric.device), device=device_name(fabric.device),
        torch=torch.__version__,
    )
    if args.profile:  # a few more steps under the profiler: where the GPU time goes, and how much of the wall it fills
        from torch.profiler import ProfilerActivity, profile

        more = TrainArgs(**{**train.__dict__, "max_steps": 3, "warmup_steps": 0})
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fit(fabric, model, optimizer, random_batches(config.vocab_size, T), None, more, EvalArgs(final_validation=False),
                FitState(), T, save=lambda state, final: None)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        result["profile"] = kernel_table(prof, wall)
    return result


KERNEL_KINDS = {  # kernel name fragments -> what they are (first match wins)
    "attention": ("flash", "fmha", "attention", "attn"),
    "matmul": ("gemm", "nvjet", "cutlass", "sm90_", "sm100_", "matmul", "cublas"),
    "optimizer": ("adam", "multi_tensor", "foreach"),
    "triton (fused by inductor)": ("triton_",),
}


def kernel_table(prof, wall_s: float, rows: int = 14) -> str:
    """The profiled kernels by GPU time: a share per kind, the top ``rows`` by name, and the GPU's busy share of the
    wall time (kernels summed: below 100% the GPU waited for the host)."""
    from torch.autograd import DeviceType

    # the kernels only: an operator's self device time is its kernels' time again (the H200 table of 2026-11-27
    # counted both and showed the GPU busy 159-189% of the wall time)
    kernels = [e for e in prof.key_averages() if e.device_type != DeviceType.CPU and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in kernels) / 1e6  # seconds
    if not kernels:
        return f"no device kernels profiled (wall {wall_s:.2f}s)"
    kinds: dict[str, float] = {}
    for e in kernels:
        kind = next((k for k, frags in KERNEL_KINDS.items() if any(f in e.key.lower() for f in frags)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + e.self_device_time_total / 1e6
    lines = [f"GPU kernels {total:.3f}s in {wall_s:.3f}s wall: busy {total / wall_s:.0%}",
             "by kind: " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))]
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:rows]:
        lines.append(f"  {e.self_device_time_total / 1e6 / total:6.1%} {e.count:6d}x  {e.key[:110]}")
    return "\n".join(lines)


def worker_litgpt(name: str, args) -> dict:
    import lightning as L
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    spec = MODELS[name]
    overrides, B, T, steps, skip = shapes(spec, args.smoke, args.batch)
    if "vocab_size" in overrides:
        overrides["padded_vocab_size"] = overrides["vocab_size"]
    config = Config.from_name(spec["litgpt"], **overrides)
    fabric = L.Fabric(devices=1, precision=args.precision)
    fabric.seed_everything(0)
    t0 = time.perf_counter()
    with fabric.init_module():
        model = GPT(config)
    model.max_seq_length = T
    n_params = sum(p.numel() for p in model.parameters())
    flops = flops_per_token(n_params - model.transformer.wte.weight.numel(), config.n_layer, config.n_head * config.head_size, T)
    if args.compile:
        model = torch.compile(model)  # what `litgpt pretrain` does
    model = fabric.setup(model)
    fused = fabric.device.type == "cuda"
    optimizer = fabric.setup_optimizers(
        torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=fused)
    )
    setup_s = time.perf_counter() - t0
    data = random_batches(config.padded_vocab_size, T)
    step_times, loss = [], None
    last = time.perf_counter()
    for step in range(steps):
        x, y = fabric.to_device(data.batch(step * B, B))
        logits = model(x)
        loss = chunked_cross_entropy(logits, y)
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        loss = loss.item()  # LitGPT's per-step log syncs here too
        now = time.perf_counter()
        step_times.append(now - last)
        last = now
    return dict(
        n_params=n_params, flops_per_token=flops, B=B, T=T, steps=steps, skip=skip, setup_s=setup_s, step_times=step_times,
        final_loss=loss, peak_gb=peak_memory_gb(fabric.device), device=device_name(fabric.device), torch=torch.__version__,
    )


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"


# ----------------------------------------------------------------------------- orchestrator
def litgpt_interpreter(path: str) -> tuple[str | None, str]:
    """An interpreter that can ``import litgpt``, or None and why not."""
    candidates = [path] if Path(path).exists() else []
    candidates.append(sys.executable)
    why = []
    for python in candidates:
        proc = subprocess.run([python, "-c", "import litgpt.model"], capture_output=True, text=True,
                              env={**os.environ, **QUIET_ENV})
        if proc.returncode == 0:
            return python, ""
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        why.append(f"{python}: {last}")
    return None, "; ".join(why)


def run_worker(python: str, impl: str, name: str, args, timeout: float) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, name, "--precision", args.precision]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--ours-compile", args.ours_compile] if args.compile else ["--no-compile"]
    cmd += ["--batch", str(args.batches[name])] if name in args.batches else []
    cmd += ["--profile"] if args.profile and impl == "ours" else []
    env = {**os.environ, **QUIET_ENV}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO_ROOT), timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return dict(error=f"timed out after {timeout:.0f}s; last output:\n" + "\n".join(out.strip().splitlines()[-5:]), wall_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return dict(json.loads(line[len(RESULT_TAG):]), wall_s=wall)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-20:]
    return dict(error="\n".join(tail), wall_s=wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 8 steps, runs on CPU (proves the script works)")
    p.add_argument("--precision", default="bf16-mixed", help="Fabric precision (default bf16-mixed)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--ours-compile", default="model", choices=("model", "blocks"), help="ours: whole model (default) or per block")
    p.add_argument("--batches", nargs="*", default=[], metavar="MODEL=B",
                   help="sequences per step for a model, both tools (default: pythia-160m=8, tinyllama-1.1b=4)")
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)  # a worker's batch (from --batches)
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all workers together; later ones are skipped")
    p.add_argument("--worker-timeout", type=float, default=170.0, help="seconds one worker may take")
    p.add_argument("--litgpt-python", default=str(DEFAULT_LITGPT_PYTHON), help="python that can import litgpt 0.5.13")
    p.add_argument("--profile", action="store_true", help="ours: 3 more steps under torch.profiler, kernels by GPU time")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args()
    try:
        args.batches = {name: int(b) for name, b in (item.split("=") for item in args.batches)}
    except ValueError:
        raise SystemExit(f"--batches takes MODEL=B pairs (e.g. pythia-160m=16), got {args.batches}")
    if set(args.batches) - set(MODELS):
        raise SystemExit(f"--batches: unknown model(s) {sorted(set(args.batches) - set(MODELS))}; use {sorted(MODELS)}")

    if args.worker:
        impl, name = args.worker
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # CPU smoke runs: OpenMP barriers on a busy machine make steps erratic
        result = (worker_ours if impl == "ours" else worker_litgpt)(name, args)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    sys.path.insert(0, str(REPO_ROOT))
    from litgpt_clone.parallel import gpu_peak_flops  # the table the pretrain command's MFU uses

    pythons = {"ours": sys.executable}
    impls = list(args.impls)
    if "litgpt" in impls:
        python, why = litgpt_interpreter(args.litgpt_python)
        if python is None:
            impls.remove("litgpt")
            print(f"litgpt skipped: no interpreter here can import litgpt ({why}). Give one with --litgpt-python, or "
                  "put litgpt 0.5.13 and its imports on PYTHONPATH.")
        else:
            pythons["litgpt"] = python
    print(f"# GPU pretrain benchmark{' (smoke)' if args.smoke else ''}: {args.precision}, "
          f"{'compiled' if args.compile else 'eager'}, fused AdamW, random tokens; python {platform.python_version()}")
    start = time.perf_counter()
    rows = []
    for impl in impls:  # ours for every model first: with a tight budget, our MFU figures come before the baseline's
        for name in args.models:
            left = args.budget - (time.perf_counter() - start)
            if left < 30:
                print(f"  {name:15s} {impl:6s} skipped: the {args.budget:.0f}s budget is spent", flush=True)
                rows.append((name, impl, dict(error="budget spent")))
                continue
            r = run_worker(pythons[impl], impl, name, args, timeout=min(args.worker_timeout, left))
            rows.append((name, impl, r))
            if "error" in r:
                print(f"  {name:15s} {impl:6s} FAILED after {r['wall_s']:.0f}s:\n" + "\n".join("    " + l for l in r["error"].splitlines()), flush=True)
                continue
            timed = r["step_times"][r["skip"]:]
            r["tokens_per_sec"] = len(timed) * r["B"] * r["T"] / sum(timed)
            peak = gpu_peak_flops(r["device"], args.precision)
            r["mfu"] = r["tokens_per_sec"] * r["flops_per_token"] / peak if peak else None
            print(f"  {name:15s} {impl:6s} {r['tokens_per_sec']:10,.0f} tok/s  MFU {fmt_pct(r['mfu'])}  first step "
                  f"{r['step_times'][0]:6.1f}s  peak {r['peak_gb']:6.2f} GB  loss {r['final_loss']:.3f}  worker {r['wall_s']:.0f}s  "
                  f"[{r['device']}, torch {r['torch']}]", flush=True)
            if "profile" in r:
                print("\n".join("    " + line for line in r["profile"].splitlines()), flush=True)

    print()
    print("| model | impl | params | B x T | tokens/s | MFU | first step s (compile) | peak GB | device |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    for name, impl, r in rows:
        if "error" in r:
            print(f"| {name} | {impl} | failed | - | - | - | - | - | - |")
            continue
        print(f"| {name} | {impl} | {r['n_params'] / 1e6:.1f}M | {r['B']} x {r['T']} | {r['tokens_per_sec']:,.0f} | {fmt_pct(r['mfu'])} | "
              f"{r['step_times'][0]:.1f} | {r['peak_gb']:.2f} | {r['device']} |")
    ok = {(n, i): r for n, i, r in rows if "error" not in r}
    for name in args.models:
        if (name, "ours") in ok and (name, "litgpt") in ok:
            print(f"{name}: speed ours/litgpt {ok[(name, 'ours')]['tokens_per_sec'] / ok[(name, 'litgpt')]['tokens_per_sec']:.2f}x")
        elif (name, "ours") in ok and name in ANCHORS and not args.smoke:
            print(f"{name}: reference, {ANCHORS[name]}")
    print(f"tokens/s over steps {', '.join(sorted({str(r['skip'] + 1) + '-' + str(r['steps']) for r in ok.values()}))} "
          f"(wall time, a host sync every step); MFU with (6N + 12 L d T) FLOPs per token. Total {time.perf_counter() - start:.0f}s.")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(model=n, impl=i, **r) for n, i, r in rows], indent=1))


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


if __name__ == "__main__":
    main()
