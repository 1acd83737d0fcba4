"""Pretraining throughput: ``litgpt_clone pretrain`` vs ``litgpt pretrain`` (LitGPT 0.5.13), same model, text and batches.

Both tools are run through their real command lines, each in a fresh process, on CPU in fp32:

- ours: ``python -m litgpt_clone pretrain --model_config <yaml> --data text ... [--compile model]`` (this venv; in compiled
  mode the whole model in one graph, as LitGPT compiles it);
- LitGPT: ``litgpt pretrain bench --model_config <json> --data TextFiles ...`` (the venv made by
  ``benchmarks/setup_litgpt_venv.sh``; ``TORCH_COMPILE_DISABLE=1`` turns off the ``torch.compile`` it always applies).

Setup, done once and timed separately: a byte-level BPE tokenizer is trained with ``tokenizers`` on a few hundred KB of
Python standard-library source, the same ``.txt`` files are copied into one folder per tool (LitGPT writes its litdata
chunks into the data folder, and ours would read their ``index.json``), and each tool tokenizes them with its own
preprocessing (ours: token shards in ``LITGPT_CLONE_CACHE``, the last 5% of tokens held out for validation; LitGPT:
``TextFiles.prepare_data`` with litdata, all files for training and a copy of the largest one as its validation set).
Neither validates during the timed runs.

Each training run is launched under a tiny wrapper (``WRAPPER`` below) that fixes torch's thread count and prints the
process's peak RSS at exit. While it runs, this script reads its stdout and, at every per-step log line, records the
wall clock and the child's CPU time (``/proc/<pid>/stat``). Reported per (mode, tool), pooled over ``--rounds``:

- tokens/s (log): steady state from the tool's own log (``metrics.csv``) after ``--skip`` steps;
- tokens/s (CPU): the same tokens over the process CPU time between those steps' log lines; with one thread this is
  close to the uncontended wall time and much less sensitive to other jobs on a shared machine;
- start to step 1: process start until the first step's log line (imports, data, model, compile, first step);
- peak RSS of the whole process (libraries included);
- loss: the mean training loss of the last 10 steps, and at the last step (same number of tokens for both).

    .venv/bin/python benchmarks/pretrain.py                       # eager + compiled, 2 rounds, about 5-10 min on 2 cores
    .venv/bin/python benchmarks/pretrain.py --modes eager --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LITGPT_PYTHON = REPO_ROOT.parent / "litgpt-venv" / "bin" / "python"
IMPLS = ("ours", "litgpt")
MODES = ("eager", "compile")
RESULT_TAG = "@@RESULT@@ "
QUIET_ENV = {
    "LITDATA_DISABLE_VERSION_CHECK": "1",
    "LIGHTNING_DISABLE_VERSION_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",  # step lines must reach us when they are printed
}
EOT = "<|endoftext|>"

# The model: a tiny Llama (RMSNorm, SwiGLU MLP, RoPE, grouped-query attention), untied embeddings.
MODEL = dict(n_layer=4, n_embd=128, n_head=4, n_query_groups=2, intermediate_size=352, norm_eps=1e-5, rope_base=10000)

# Runs `python -m <module> args...` after fixing torch's thread count; at exit prints peak RSS and what torch ran with.
WRAPPER = r"""
import atexit, json, resource, runpy, sys
threads, module = int(sys.argv[1]), sys.argv[2]
import torch
torch.set_num_threads(threads)
def _report():
    print("@@RESULT@@ " + json.dumps({
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
atexit.register(_report)
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

PREPARE_OURS = r"""
import sys, time
from pathlib import Path
from litgpt_clone.data.pretrain import Text
from litgpt_clone.tokenizer import Tokenizer
t0 = time.perf_counter()
train, val = Text(Path(sys.argv[1])).streams(Tokenizer(Path(sys.argv[2])))
print("@@RESULT@@", time.perf_counter() - t0, len(train), len(val) if val is not None else 0)
"""

PREPARE_LITGPT = r"""
import sys, time
from pathlib import Path
from litgpt import Tokenizer
from litgpt.data import TextFiles
t0 = time.perf_counter()
data = TextFiles(train_data_path=Path(sys.argv[1]), val_data_path=Path(sys.argv[2]), num_workers=0)
data.connect(Tokenizer(Path(sys.argv[3])), batch_size=int(sys.argv[4]), max_seq_length=int(sys.argv[5]))
data.prepare_data()
print("@@RESULT@@", time.perf_counter() - t0)
"""


# ----------------------------------------------------------------------------- setup
def write_inputs(work: Path, data_kb: int, vocab_size: int, seq_length: int) -> dict:
    """Text folders (one per tool), tokenizer and both model configs under ``work``; reused when present."""
    import yaml
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked, total = [], 0
    for f in sorted(stdlib.glob("*.py")):  # deterministic: the first files by name, skipping very large ones
        size = f.stat().st_size
        if size > 60_000:
            continue
        picked.append(f)
        total += size
        if total >= data_kb * 1000:
            break
    # LitGPT's TextFiles needs a validation folder (by default it takes the first file, which can be shorter than one
    # batch, and then fails); it gets a copy of the largest file. It is never evaluated on in these runs.
    largest = max(picked, key=lambda f: f.stat().st_size)
    for name, files in (("text_ours", picked), ("text_litgpt", picked), ("val_litgpt", [largest])):
        folder = work / name
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for f in files:
                shutil.copyfile(f, folder / f"{f.stem}.txt")

    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train([str(f) for f in picked], trainer)
        tok_dir.mkdir(parents=True, exist_ok=True)
        tok.save(str(tok_dir / "tokenizer.json"))
        # LitGPT reads bos/eos and (unconditionally) tokenizer_class from here; ours reads bos/eos/add_bos_token.
        (tok_dir / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "add_bos_token": False}
        ))
    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()

    m = MODEL
    ours_cfg = dict(
        name="bench-tiny-llama", block_size=seq_length, vocab_size=vocab, n_layer=m["n_layer"], n_embd=m["n_embd"],
        n_head=m["n_head"], n_query_groups=m["n_query_groups"], intermediate_size=m["intermediate_size"],
        norm_class_name="RMSNorm", norm_eps=m["norm_eps"], mlp_class_name="GatedMLP", mlp_activation="silu", bias=False,
        parallel_residual=False, rotary_percentage=1.0, rope_base=float(m["rope_base"]), tie_embeddings=False,
    )
    (work / "ours_model.yaml").write_text(yaml.safe_dump(ours_cfg, sort_keys=False))
    litgpt_cfg = dict(
        name="bench-tiny-llama", block_size=seq_length, vocab_size=vocab, padded_vocab_size=vocab, n_layer=m["n_layer"],
        n_embd=m["n_embd"], n_head=m["n_head"], n_query_groups=m["n_query_groups"], intermediate_size=m["intermediate_size"],
        norm_class_name="RMSNorm", norm_eps=m["norm_eps"], mlp_class_name="LLaMAMLP", bias=False, parallel_residual=False,
        rotary_percentage=1.0, rope_base=m["rope_base"],
    )
    return dict(files=len(picked), bytes=total, vocab=vocab, tok_dir=tok_dir, ours_cfg=work / "ours_model.yaml", litgpt_cfg=litgpt_cfg)


def base_env(work: Path, threads: int) -> dict:
    return {
        **os.environ, **QUIET_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "LITGPT_CLONE_CACHE": str(work / "cache"),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",  # compile in-process for both (no worker pool on a 2-core machine)
    }


def prepare_data(work: Path, inputs: dict, args, pythons: dict, impls: list[str]) -> dict:
    """Each tool's own tokenization / chunking of the text, outside the timed training runs."""
    out = {}
    env = base_env(work, args.threads)
    if "ours" in impls:
        cmd = [pythons["ours"], "-c", PREPARE_OURS, str(work / "text_ours"), str(inputs["tok_dir"])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO_ROOT))
        fields = tagged(proc, "ours data preparation")
        out["ours"] = dict(inner_s=float(fields[0]), process_s=time.perf_counter() - t0, train_tokens=int(fields[1]), val_tokens=int(fields[2]))
    if "litgpt" in impls:
        cmd = [pythons["litgpt"], "-c", PREPARE_LITGPT, str(work / "text_litgpt"), str(work / "val_litgpt"), str(inputs["tok_dir"]), str(args.batch), str(args.seq)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(work))
        fields = tagged(proc, "litgpt data preparation")
        out["litgpt"] = dict(inner_s=float(fields[0]), process_s=time.perf_counter() - t0)
    return out


def tagged(proc: subprocess.CompletedProcess, what: str) -> list[str]:
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG.strip()):
            return line.split()[1:]
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
    raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{tail}")


# ----------------------------------------------------------------------------- one training run
STEP_LINE = {
    "ours": re.compile(r"^step (\d+)/\d+ \|"),
    "litgpt": re.compile(r"\| iter (\d+) step \d+ \|"),
}


def command(impl: str, mode: str, work: Path, run_dir: Path, inputs: dict, args, python: str) -> list[str]:
    """The tool's own pretrain command line, with the same schedule: warmup, cosine to min_lr, AdamW(0.9, 0.95), wd 0.1."""
    head = [python, "-c", WRAPPER, str(args.threads)]
    common_tokens = args.steps * args.batch * args.seq
    if impl == "ours":
        return head + [
            "litgpt_clone", "pretrain", "--model_config", str(inputs["ours_cfg"]), "--tokenizer_dir", str(inputs["tok_dir"]),
            "--data", "text", "--data.path", str(work / "text_ours"), "--out_dir", str(run_dir), "--precision", "32-true",
            "--train.max_steps", str(args.steps), "--train.global_batch_size", str(args.batch),
            "--train.micro_batch_size", str(args.batch), "--train.max_seq_length", str(args.seq), "--train.lr", str(args.lr),
            "--train.warmup_steps", str(args.warmup), "--train.min_lr", str(args.lr / 10), "--train.weight_decay", "0.1",
            "--train.beta1", "0.9", "--train.beta2", "0.95", "--train.max_norm", "1.0", "--train.log_interval", "1",
            "--train.save_interval", "null", "--eval.interval", "1000000", "--eval.final_validation", "false",
            "--logger_name", "csv", "--seed", "42", "--compile", "model" if mode == "compile" else "false",
        ]
    optimizer = {"class_path": "torch.optim.AdamW", "init_args": {"lr": args.lr, "weight_decay": 0.1, "betas": [0.9, 0.95]}}
    return head + [
        "litgpt", "pretrain", "bench", "--model_config", json.dumps(inputs["litgpt_cfg"]),
        "--tokenizer_dir", str(inputs["tok_dir"]), "--data", "TextFiles", "--data.train_data_path", str(work / "text_litgpt"),
        "--data.val_data_path", str(work / "val_litgpt"),
        "--data.num_workers", "0", "--out_dir", str(run_dir), "--precision", "32-true",
        "--train.max_tokens", str(common_tokens), "--train.global_batch_size", str(args.batch),
        "--train.micro_batch_size", str(args.batch), "--train.max_seq_length", str(args.seq),
        "--train.lr_warmup_steps", str(args.warmup), "--train.min_lr", str(args.lr / 10), "--train.max_norm", "1.0",
        "--train.log_interval", "1", "--train.save_interval", "null", "--train.tie_embeddings", "false",
        "--eval.interval", "1000000", "--eval.final_validation", "false", "--optimizer", json.dumps(optimizer),
        "--logger_name", "csv", "--seed", "42",
    ]


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_one(impl: str, mode: str, rnd: int, work: Path, inputs: dict, args, python: str) -> dict:
    run_dir = work / "runs" / f"{mode}-{impl}-r{rnd}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    env = base_env(work, args.threads)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(run_dir / "inductor_cache")  # a cold compile every run, nothing shared
    if mode == "eager":
        env["TORCH_COMPILE_DISABLE"] = "1"
    cmd = command(impl, mode, work, run_dir, inputs, args, python)
    stderr_path = run_dir / "stderr.txt"
    marks: dict[int, tuple[float, float | None]] = {}  # step -> (wall since start, process CPU seconds)
    result, lines = None, []
    t0 = time.perf_counter()
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(run_dir))
        for line in proc.stdout:
            now, cpu = time.perf_counter() - t0, proc_cpu_seconds(proc.pid)
            lines.append(line.rstrip("\n"))
            m = STEP_LINE[impl].search(line)
            if m:
                marks[int(m.group(1))] = (now, cpu)
            elif line.startswith(RESULT_TAG):
                result = json.loads(line[len(RESULT_TAG):])
        proc.wait()
    wall = time.perf_counter() - t0
    (run_dir / "stdout.txt").write_text("\n".join(lines) + "\n")
    if proc.returncode != 0 or result is None or len(marks) < args.steps:
        tail = "\n".join((stderr_path.read_text().strip().splitlines() + lines)[-25:])
        return dict(impl=impl, mode=mode, round=rnd, wall_s=wall, error=f"exit {proc.returncode}, {len(marks)} step lines:\n{tail}")

    rows = read_metrics(impl, run_dir)
    step_tokens = args.batch * args.seq
    first, last = args.skip, args.steps
    if impl == "ours":  # tokens_per_sec of a step covers everything since the previous step's log line
        log_time = sum(step_tokens / rows[s]["tokens_per_sec"] for s in range(first + 1, last + 1))
    else:  # LitGPT's "time": seconds since its loop started, at the end of that iteration
        log_time = rows[last]["time"] - rows[first]["time"]
    cpu_time = marks[last][1] - marks[first][1] if marks[last][1] is not None and marks[first][1] is not None else None
    losses = [rows[s]["loss"] for s in range(1, last + 1)]
    return dict(
        impl=impl, mode=mode, round=rnd, wall_s=wall, steps=last, skip=first, tokens=(last - first) * step_tokens,
        log_time_s=log_time, cpu_time_s=cpu_time, line_time_s=marks[last][0] - marks[first][0], first_step_s=marks[1][0],
        peak_rss_kib=result["maxrss_kib"], children_rss_kib=result["children_maxrss_kib"], threads=result["threads"],
        torch=result["torch"], losses=losses, step_wall_s=[marks[s][0] - marks[s - 1][0] for s in range(2, last + 1)],
    )


def read_metrics(impl: str, run_dir: Path) -> dict[int, dict]:
    """Per-step rows of the tool's CSV log, keyed by step number (1-based)."""
    path = run_dir / "logs" / ("version_0" if impl == "ours" else "csv/version_0") / "metrics.csv"
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if impl == "ours":
                if row.get("tokens_per_sec"):
                    rows[int(row["step"])] = dict(loss=float(row["loss"]), tokens_per_sec=float(row["tokens_per_sec"]))
            elif row.get("iter") and row.get("time"):
                rows[int(row["iter"])] = dict(loss=float(row["loss"]), time=float(row["time"]))
    return rows


# ----------------------------------------------------------------------------- report
def pooled(runs: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in runs)
    cpu = [r["cpu_time_s"] for r in runs]
    return dict(
        tps_log=tokens / sum(r["log_time_s"] for r in runs),
        tps_cpu=tokens / sum(cpu) if all(c is not None for c in cpu) else None,
        first_step_s=statistics.median(r["first_step_s"] for r in runs),
        wall_s=statistics.median(r["wall_s"] for r in runs),
        peak_mib=max(r["peak_rss_kib"] for r in runs) / 1024,
        loss_last10=statistics.mean(runs[0]["losses"][-10:]),
        loss_last=runs[0]["losses"][-1],
        same_losses=all(r["losses"] == runs[0]["losses"] for r in runs),
        threads=runs[0]["threads"],
        rounds=len(runs),
    )


def fmt(x, spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="eager and/or compile (torch.compile)")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per (mode, tool), interleaved; pooled")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and OMP/MKL) in every training process")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run (one micro-batch each)")
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the steady-state tokens/s")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=5, help="linear warmup steps")
    p.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary size to train")
    p.add_argument("--data-kb", type=int, default=400, help="KB of stdlib source to train on")
    p.add_argument("--work-dir", default=None, help="keep inputs, logs and checkpoints here (default: a temp dir, removed)")
    p.add_argument("--litgpt-python", default=str(DEFAULT_LITGPT_PYTHON), help="python of the LitGPT 0.5.13 venv")
    p.add_argument("--json", default=None, help="also write all raw per-run results to this file")
    args = p.parse_args()
    if not 0 < args.skip < args.steps - 1:
        p.error("--skip must be between 1 and --steps - 2")

    impls = list(args.impls)
    pythons = {"ours": sys.executable, "litgpt": args.litgpt_python}
    notes = []
    if "litgpt" in impls and not Path(args.litgpt_python).exists():
        impls.remove("litgpt")
        notes.append(f"litgpt skipped: no interpreter at {args.litgpt_python} (create it with `bash benchmarks/setup_litgpt_venv.sh`)")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="pretrain_bench_"))
    work.mkdir(parents=True, exist_ok=True)

    import torch

    print("# Pretrain benchmark: litgpt_clone vs LitGPT")
    print(f"date: {_dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, CPU {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, threads per process={args.threads}, fp32")
    for line in notes:
        print(line)
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    inputs = write_inputs(work, args.data_kb, args.vocab, args.seq)
    print(f"inputs: {inputs['files']} stdlib files, {inputs['bytes'] / 1000:.0f} KB; BPE vocab {inputs['vocab']} "
          f"(tokenizer and folders ready in {time.perf_counter() - t0:.1f}s); work dir {work}")
    print(f"model: Llama-like, {MODEL['n_layer']} layers, n_embd {MODEL['n_embd']}, {MODEL['n_head']} heads / "
          f"{MODEL['n_query_groups']} KV groups, intermediate {MODEL['intermediate_size']}, vocab {inputs['vocab']}, untied; "
          f"batch {args.batch} x {args.seq} tokens, {args.steps} steps ({args.steps * args.batch * args.seq:,} tokens), "
          f"AdamW lr {args.lr} (warmup {args.warmup}, cosine to {args.lr / 10}), betas (0.9, 0.95), wd 0.1, clip 1.0")
    prep = prepare_data(work, inputs, args, pythons, impls)
    for impl, d in prep.items():
        extra = f", {d['train_tokens']:,} train + {d['val_tokens']:,} val tokens" if "train_tokens" in d else ""
        print(f"data preparation (not in the runs below) {impl}: {d['inner_s']:.1f}s inside a {d['process_s']:.1f}s process{extra}")
    print(flush=True)

    results: list[dict] = []
    for rnd in range(args.rounds):
        for mode in args.modes:
            # Interleave the tools and reverse their order every round, so drifts in machine load hit both alike.
            for impl in impls if rnd % 2 == 0 else impls[::-1]:
                r = run_one(impl, mode, rnd, work, inputs, args, pythons[impl])
                results.append(r)
                if "error" in r:
                    print(f"  r{rnd} {mode:7s} {impl:6s} FAILED after {r['wall_s']:.0f}s:\n" + "\n".join("    " + l for l in r["error"].splitlines()), flush=True)
                    continue
                cpu = f"{r['tokens'] / r['cpu_time_s']:,.0f}" if r["cpu_time_s"] else "-"
                print(f"  r{rnd} {mode:7s} {impl:6s} {r['tokens'] / r['log_time_s']:8,.0f} tok/s (log)  {cpu:>8s} tok/s (CPU)  "
                      f"step 1 at {r['first_step_s']:5.1f}s  wall {r['wall_s']:5.1f}s  peak RSS {r['peak_rss_kib'] / 1024:6.0f} MiB  "
                      f"loss {r['losses'][-1]:.3f}  median step {statistics.median(r['step_wall_s'][args.skip:]) * 1e3:.0f} ms  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    total = time.perf_counter() - t_start

    table = {}
    for mode in args.modes:
        for impl in impls:
            ok = [r for r in results if r["mode"] == mode and r["impl"] == impl and "error" not in r]
            table[(mode, impl)] = pooled(ok) if ok else None
    print()
    print("| mode | impl | tokens/s (log) | tokens/s (CPU time) | start to step 1 s | run wall s | peak RSS MiB | loss, mean of last 10 steps | loss at last step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (mode, impl), s in table.items():
        if s is None:
            print(f"| {mode} | {impl} | failed | - | - | - | - | - | - |")
            continue
        print(f"| {mode} | {impl} | {s['tps_log']:,.0f} | {fmt(s['tps_cpu'], ',.0f')} | {s['first_step_s']:.1f} | {s['wall_s']:.1f} | "
              f"{s['peak_mib']:.0f} | {s['loss_last10']:.3f} | {s['loss_last']:.3f} |")
    print()
    if "ours" in impls and "litgpt" in impls:
        print("| mode | speed ours/litgpt (log) | speed ours/litgpt (CPU time) | peak RSS ours/litgpt | loss (last 10) ours - litgpt |")
        print("|---|---:|---:|---:|---:|")
        for mode in args.modes:
            a, b = table.get((mode, "ours")), table.get((mode, "litgpt"))
            if a is None or b is None:
                print(f"| {mode} | - | - | - | - |")
                continue
            cpu_ratio = a["tps_cpu"] / b["tps_cpu"] if a["tps_cpu"] and b["tps_cpu"] else None
            print(f"| {mode} | {a['tps_log'] / b['tps_log']:.2f}x | {fmt(cpu_ratio, '.2f', 'x')} | {a['peak_mib'] / b['peak_mib']:.2f}x | "
                  f"{a['loss_last10'] - b['loss_last10']:+.3f} |")
        print()
    same = all(s["same_losses"] for s in table.values() if s)
    print(f"tokens/s over steps {args.skip + 1}-{args.steps} of every run, pooled over {args.rounds} round(s): (log) from the "
          "tool's own metrics.csv (wall time), (CPU time) over the process CPU time between those steps' log lines. "
          f"Loss curves identical across rounds: {same}. Total wall time {total:.0f}s.")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(prep=prep, results=results), indent=1, default=str))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
