"""Forward + backward time and peak memory: litgpt_clone vs LitGPT 0.5.13 vs Hugging Face transformers.

Every (implementation, config) pair runs in a fresh child process of this same script (``--worker IMPL CONFIG``),
so peak memory is that process's own peak and no allocator state leaks between measurements:

- ``ours`` and ``transformers`` run with this interpreter (``sys.executable``, the repo's venv);
- ``litgpt`` runs with ``--litgpt-python`` (default ``../litgpt-venv/bin/python`` next to the repo), a separate
  venv made by ``benchmarks/setup_litgpt_venv.sh`` because LitGPT pins older transformers/hub versions.

One timed step is: forward on random token ids, cross-entropy against random targets, backward, gradients
dropped (``zero_grad(set_to_none=True)``); no optimizer. After ``warmup`` steps, the median of ``steps`` timed
steps is reported. Peak memory: on CPU, peak RSS (``ru_maxrss``) minus the RSS just before the model is built
(libraries imported and warmed up first); on CUDA, ``torch.cuda.max_memory_allocated`` minus what was allocated
before the model was built. Either way it covers weights + gradients + activations + workspace.

    .venv/bin/python benchmarks/forward_backward.py                     # all configs, CPU fp32
    .venv/bin/python benchmarks/forward_backward.py --configs tiny      # one config
    .venv/bin/python benchmarks/forward_backward.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LITGPT_PYTHON = REPO_ROOT.parent / "litgpt-venv" / "bin" / "python"
IMPLS = ("ours", "litgpt", "transformers")
RESULT_TAG = "@@RESULT@@ "
QUIET_ENV = {
    "LITDATA_DISABLE_VERSION_CHECK": "1",
    "LIGHTNING_DISABLE_VERSION_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# One neutral description per config; each implementation maps it to its own config class.
# warmup/steps are sized so the whole default CPU run stays around 3-4 minutes on 2 cores.
CONFIGS: dict[str, dict] = {
    "tiny-llama": dict(
        desc="Llama-like, 2 layers, n_embd 128, 4 heads / 2 kv groups, vocab 1000",
        arch="llama", n_layer=2, n_embd=128, n_head=4, n_query_groups=2, intermediate_size=352,
        vocab_size=1000, rotary_percentage=1.0, rope_base=10000.0, norm_eps=1e-5,
        B=4, T=256, warmup=3, steps=15,
    ),
    "llama-134m": dict(
        desc="Llama-like 134M (85M without embeddings), 12 layers, n_embd 768, 12 heads (MHA), intermediate 2048, vocab 32000",
        arch="llama", n_layer=12, n_embd=768, n_head=12, n_query_groups=12, intermediate_size=2048,
        vocab_size=32000, rotary_percentage=1.0, rope_base=10000.0, norm_eps=1e-5,
        B=2, T=512, warmup=1, steps=3,
    ),
    "pythia-like": dict(
        desc="GPT-NeoX (pythia-like), 6 layers, n_embd 512, 8 heads, rotary 0.25, parallel residual, vocab 50304",
        arch="neox", n_layer=6, n_embd=512, n_head=8, n_query_groups=8, intermediate_size=2048,
        vocab_size=50304, rotary_percentage=0.25, rope_base=10000.0, norm_eps=1e-5,
        B=4, T=256, warmup=1, steps=3,
    ),
}
ALIASES = {"a": "tiny-llama", "tiny": "tiny-llama", "b": "llama-134m", "100m": "llama-134m", "llama-100m": "llama-134m", "c": "pythia-like", "pythia": "pythia-like"}


# ----------------------------------------------------------------------------- model builders (worker side)
def build_ours(s: dict):
    sys.path.insert(0, str(REPO_ROOT))
    from litgpt_clone.config import Config
    from litgpt_clone.model import GPT

    llama = s["arch"] == "llama"
    cfg = Config(
        name=f"bench-{s['arch']}",
        block_size=s["T"], vocab_size=s["vocab_size"], n_layer=s["n_layer"], n_embd=s["n_embd"],
        n_head=s["n_head"], n_query_groups=s["n_query_groups"], intermediate_size=s["intermediate_size"],
        norm_class_name="RMSNorm" if llama else "LayerNorm", norm_eps=s["norm_eps"],
        mlp_class_name="GatedMLP" if llama else "GeluMLP", mlp_activation="silu" if llama else "gelu",
        bias=not llama, parallel_residual=not llama, rotary_percentage=s["rotary_percentage"],
        rope_base=s["rope_base"], tie_embeddings=False,
    )

    def make():
        model = GPT(cfg)
        model.init_weights()
        return model

    return make, lambda model, idx: model(idx)


def build_litgpt(s: dict):
    from litgpt.config import Config
    from litgpt.model import GPT

    llama = s["arch"] == "llama"
    cfg = Config(
        name=f"bench-{s['arch']}",
        block_size=s["T"], vocab_size=s["vocab_size"], padded_vocab_size=s["vocab_size"], n_layer=s["n_layer"],
        n_embd=s["n_embd"], n_head=s["n_head"], n_query_groups=s["n_query_groups"],
        intermediate_size=s["intermediate_size"], norm_class_name="RMSNorm" if llama else "LayerNorm",
        norm_eps=s["norm_eps"], mlp_class_name="LLaMAMLP" if llama else "GptNeoxMLP", bias=not llama,
        parallel_residual=not llama, rotary_percentage=s["rotary_percentage"], rope_base=int(s["rope_base"]),
    )

    def make():
        model = GPT(cfg)
        model.apply(model._init_weights)
        return model

    return make, lambda model, idx: model(idx)


def build_transformers(s: dict, attn: str = "sdpa"):
    if s["arch"] == "llama":
        from transformers import LlamaConfig as HFConfig, LlamaForCausalLM as HFModel

        cfg = HFConfig(
            vocab_size=s["vocab_size"], hidden_size=s["n_embd"], intermediate_size=s["intermediate_size"],
            num_hidden_layers=s["n_layer"], num_attention_heads=s["n_head"], num_key_value_heads=s["n_query_groups"],
            max_position_embeddings=s["T"], rms_norm_eps=s["norm_eps"], tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": s["rope_base"]}, hidden_act="silu",
            attention_bias=False, mlp_bias=False, use_cache=False,
        )
    else:
        from transformers import GPTNeoXConfig as HFConfig, GPTNeoXForCausalLM as HFModel

        cfg = HFConfig(
            vocab_size=s["vocab_size"], hidden_size=s["n_embd"], intermediate_size=s["intermediate_size"],
            num_hidden_layers=s["n_layer"], num_attention_heads=s["n_head"], max_position_embeddings=s["T"],
            layer_norm_eps=s["norm_eps"], tie_word_embeddings=False, use_parallel_residual=True, hidden_act="gelu",
            attention_bias=True, use_cache=False,
            rope_parameters={"rope_type": "default", "rope_theta": s["rope_base"], "partial_rotary_factor": s["rotary_percentage"]},
        )
    cfg._attn_implementation = attn

    def make():
        model = HFModel(cfg)
        impl = model.config._attn_implementation
        if impl != attn:
            raise RuntimeError(f"transformers picked attn_implementation={impl!r}, wanted {attn!r}")
        return model

    return make, lambda model, idx: model(input_ids=idx, use_cache=False).logits


BUILDERS = {"ours": build_ours, "litgpt": build_litgpt, "transformers": build_transformers}


# ----------------------------------------------------------------------------- worker
def current_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def worker(impl: str, config_name: str, args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s = CONFIGS[config_name]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    make, fwd = BUILDERS[impl](s)
    B, T, V = s["B"], s["T"], s["vocab_size"]
    warmup = args.warmup if args.warmup is not None else s["warmup"]
    steps = args.steps if args.steps is not None else s["steps"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    # Warm the libraries (BLAS/oneDNN pools, SDPA kernels, CUDA context) so their one-off cost is not counted.
    a = torch.randn(64, 64, device=device, requires_grad=True)
    q = torch.randn(1, 2, 8, 16, device=device, requires_grad=True)
    with autocast:
        ((a @ a).sum() + F.scaled_dot_product_attention(q, q, q, is_causal=True).sum()).backward()
    del a, q
    idx = torch.randint(0, V, (B, T), device=device)
    targets = torch.randint(0, V, (B, T), device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_mem = current_rss_bytes()

    with torch.device(device):
        model = make()
    model.to(device)  # no-op where built in place; moves buffers some builders keep on CPU
    model.train()
    n_params = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights

    def step() -> tuple[float, float, float]:
        if cuda:
            torch.cuda.synchronize()
        c0 = time.process_time()
        t0 = time.perf_counter()
        with autocast:
            logits = fwd(model, idx)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        model.zero_grad(set_to_none=True)
        return dt, cpu, loss.item()

    first_loss = None
    for _ in range(warmup):
        _, _, l = step()
        first_loss = l if first_loss is None else first_loss
    times, cpu_times = [], []
    for _ in range(steps):
        dt, cpu, l = step()
        first_loss = l if first_loss is None else first_loss
        times.append(dt)
        cpu_times.append(cpu)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = peak_rss_bytes() - base_mem
    return dict(
        impl=impl, config=config_name, params=n_params, B=B, T=T, warmup=warmup, steps=steps,
        times_s=times, median_s=statistics.median(times), cpu_times_s=cpu_times, peak_bytes=peak, loss=first_loss,
        torch=torch.__version__, threads=torch.get_num_threads(), version=impl_version(impl),
    )


def impl_version(impl: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    name = {"ours": "litgpt_clone", "litgpt": "litgpt", "transformers": "transformers"}[impl]
    try:
        return version(name)
    except PackageNotFoundError:
        return "repo"


# ----------------------------------------------------------------------------- orchestrator
def run_worker(python: str, impl: str, config_name: str, args: argparse.Namespace) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, config_name, "--device", args.device,
           "--dtype", args.dtype, "--threads", str(args.threads)]
    if args.warmup is not None:
        cmd += ["--warmup", str(args.warmup)]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO_ROOT))
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            res["wall_s"] = wall
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-25:]
    return dict(impl=impl, config=config_name, error="\n".join(tail), wall_s=wall)


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "CONFIG"), help=argparse.SUPPRESS)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"subset of {list(CONFIGS)} (or a/b/c)")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16 = torch.autocast(bfloat16), weights fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads in every worker")
    p.add_argument("--warmup", type=int, default=None, help="override the per-config warmup steps")
    p.add_argument("--steps", type=int, default=None, help="override the per-config timed steps")
    p.add_argument("--rounds", type=int, default=2, help="fresh workers per (impl, config), interleaved; steps are pooled")
    p.add_argument("--litgpt-python", default=str(DEFAULT_LITGPT_PYTHON), help="python of the LitGPT 0.5.13 venv")
    p.add_argument("--json", default=None, help="also write all raw results to this file")
    args = p.parse_args()

    if args.worker:
        impl, config_name = args.worker
        print(RESULT_TAG + json.dumps(worker(impl, config_name, args)), flush=True)
        return

    configs = [ALIASES.get(c, c) for c in args.configs]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    impls = list(args.impls)
    pythons = {"ours": sys.executable, "transformers": sys.executable, "litgpt": args.litgpt_python}
    skipped = []
    if "litgpt" in impls and not Path(args.litgpt_python).exists():
        impls.remove("litgpt")
        skipped.append(
            f"litgpt skipped: no interpreter at {args.litgpt_python}. Create the venv with "
            f"`bash benchmarks/setup_litgpt_venv.sh [VENV_DIR]` and pass --litgpt-python VENV_DIR/bin/python."
        )

    import torch

    device_name = platform.processor() or platform.machine()
    if args.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (unavailable)"
    print("# Forward + backward benchmark")
    print(f"date: {_dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, device {args.device} ({device_name}), "
          f"os.cpu_count()={os.cpu_count()}, torch threads per worker={args.threads}, dtype={args.dtype}")
    for line in skipped:
        print(line)
    print(flush=True)

    results: list[dict] = []
    t_start = time.perf_counter()
    for c in configs:
        s = CONFIGS[c]
        print(f"[{c}] {s['desc']}, B={s['B']} T={s['T']}", flush=True)
        for rnd in range(args.rounds):
            # Interleave the implementations and reverse their order every round, so slow drifts in machine load
            # (other processes, thermal) hit all of them alike.
            for impl in impls if rnd % 2 == 0 else impls[::-1]:
                r = run_worker(pythons[impl], impl, c, args)
                r["round"] = rnd
                results.append(r)
                if "error" in r:
                    print(f"  {impl:12s} FAILED after {r['wall_s']:.0f}s:\n" + "\n".join("    " + l for l in r["error"].splitlines()), flush=True)
                else:
                    print(f"  r{rnd} {impl:12s} {r['median_s'] * 1e3:9.1f} ms/step  peak {r['peak_bytes'] / 2**20:8.1f} MiB  "
                          f"loss {r['loss']:.3f}  ({r['version']}, torch {r['torch']}, {r['threads']} threads, "
                          f"steps {[round(t * 1e3) for t in r['times_s']]} ms, worker {r['wall_s']:.0f}s)", flush=True)
    total = time.perf_counter() - t_start

    # Pool the timed steps of all rounds into one median; peak memory is the largest of the rounds.
    ok: dict[tuple[str, str], dict] = {}
    for r in results:
        if "error" in r:
            continue
        key = (r["impl"], r["config"])
        if key not in ok:
            ok[key] = dict(r, times_s=list(r["times_s"]), cpu_times_s=list(r["cpu_times_s"]))
        else:
            ok[key]["times_s"] += r["times_s"]
            ok[key]["cpu_times_s"] += r["cpu_times_s"]
            ok[key]["peak_bytes"] = max(ok[key]["peak_bytes"], r["peak_bytes"])
    for r in ok.values():
        r["median_s"] = statistics.median(r["times_s"])
        r["min_s"] = min(r["times_s"])
        r["cpu_s"] = statistics.median(r["cpu_times_s"])
    print()
    print("| config | impl | params | ms/step | tokens/s | CPU ms/step | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for c in configs:
        for impl in impls:
            r = ok.get((impl, c))
            if r is None:
                print(f"| {c} | {impl} | failed | - | - | - | - |")
                continue
            tps = r["B"] * r["T"] / r["median_s"]
            print(f"| {c} | {impl} | {r['params'] / 1e6:.2f}M | {r['median_s'] * 1e3:.1f} | {tps:,.0f} | "
                  f"{r['cpu_s'] * 1e3:.1f} | {r['peak_bytes'] / 2**20:.0f} |")
    print()
    print(f"ms/step: wall-clock median of all timed steps ({args.rounds} round(s) of fresh workers, pooled); "
          "tokens/s = B*T / that median; CPU ms/step: median process CPU time of a step (all threads; with "
          "--threads 1 much less sensitive than wall time to other load); peak MiB: "
          + ("max_memory_allocated" if args.device.startswith("cuda") else "peak RSS delta") + ", largest round.")
    print()
    others = [i for i in impls if i != "ours"]
    if "ours" in impls and others:
        kinds = (("speed", "median_s", True), ("speed (CPU time)", "cpu_s", True), ("speed (fastest step)", "min_s", True),
                 ("memory", "peak_bytes", False))
        cols = [(label, key, inverse, o) for o in others for (label, key, inverse) in kinds]
        print("| config | " + " | ".join(f"{label} ours/{o}" for label, _, _, o in cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for c in configs:
            mine = ok.get(("ours", c))
            cells = []
            for label, key, inverse, o in cols:
                theirs = ok.get((o, c))
                if mine is None or theirs is None or not theirs[key] or not mine[key]:
                    cells.append("-")
                elif inverse:  # a time: ours tokens/s over theirs = their time over ours
                    cells.append(fmt_ratio(theirs[key] / mine[key]))
                else:
                    cells.append(fmt_ratio(mine[key] / theirs[key]))
            print(f"| {c} | " + " | ".join(cells) + " |")
        print()
        print("speed ratios = ours tokens/s / their tokens/s (>1: ours faster), from the median wall time, the median "
              "CPU time and the fastest step; memory ratio = ours peak / their peak (<1: ours smaller).")
    print(f"total wall time {total:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
