"""GPU LoRA and QLoRA finetuning: tokens/s and peak memory, litgpt_clone vs LitGPT 0.5.13, on a Llama-3.2-1B shape.

Random weights (each tool's own initialization), bf16-true, sequences of ``--seq`` (512) positions, ``--batch``
sequences per step, LoRA r 8 / alpha 16 / dropout 0 on query and value (LitGPT's defaults), AdamW. QLoRA keeps the
base weights in bitsandbytes NF4 with bf16 compute. Every (implementation, method) pair runs in a fresh child
process of this script (``--worker``), in the order ours-lora, ours-qlora, litgpt-lora, litgpt-qlora:

- ``ours``: the path ``litgpt_clone finetune lora [--quantize bnb.nf4]`` takes: ``build_fabric`` (bf16-true),
  ``GPT`` built under ``fabric.init_module``, ``quantize`` (QLoRA), ``inject_lora``, ``build_optimizer`` (torch
  AdamW over the adapters, fused, as train_and_save builds it) and the shared ``fit`` loop with ``learned_only=True``, as finetune runs it;
- ``litgpt``: what ``litgpt finetune_lora [--quantize bnb.nf4]`` does: ``litgpt.lora.GPT`` built under
  ``fabric.init_module`` (QLoRA: Fabric's ``BitsandbytesPrecision("nf4", bfloat16)`` plugin, ``bnb.optim.PagedAdamW``
  and the ``StableEmbedding`` swap; LoRA: bf16-true and torch ``AdamW``), ``mark_only_lora_as_trainable`` and its
  loop body: ``model(x, lm_head_chunk_size=128)``, ``chunked_cross_entropy``, backward, step, one ``.item()``.

The data is the same for both: random token rows of ``seq + 1`` tokens whose first ``--prompt`` share of targets is
-100 (a masked prompt, as in instruction data), so each step trains on the remaining ~60%. Ours computes the output
head only there; LitGPT's loop computes it at every position (its own chunked way). Ours feeds ``seq`` positions
(inputs = the row without its last token); LitGPT feeds the whole row (``seq + 1``) and drops the last logit.

Reported per pair: tokens/s = ``batch x seq`` per step over the steps after ``--skip`` (wall time; every step ends
with a host sync), "resident" = ``torch.cuda.memory_allocated`` after setup (weights, adapters, optimizer), "peak" =
``torch.cuda.max_memory_allocated`` over the training steps (reset after setup), and QLoRA / LoRA peak per tool.
Each worker has a time cap (``--worker-timeout``) and the whole run a budget (``--budget``), < 8 minutes together.

    python benchmarks/gpu_finetune.py                  # on a GPU: both tools, LoRA and QLoRA (about 2-4 min)
    python benchmarks/gpu_finetune.py --smoke          # anywhere: tiny shapes, a few steps, CPU if there is no GPU
    python benchmarks/gpu_finetune.py --impls ours --methods qlora --batch 4
    python benchmarks/gpu_finetune.py --live-bytes     # no GPU: ours' real shapes on the CPU, live tensor bytes

``--live-bytes`` runs ours' workers on the CPU at the real shapes (bf16, the loss chunked as on a GPU) and counts live
tensor storage bytes (``litgpt_clone.training.tensor_memory.LiveTensorBytes``) in place of the CUDA counters: the
same tensors without the CUDA allocator's rounding and library workspaces (an H200 reported 2.30 / 3.26 GiB resident /
peak for ours' LoRA where it counts 2.30 / 3.19). Its tokens/s mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_pretrain import QUIET_ENV, RESULT_TAG, device_name, litgpt_interpreter

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LITGPT_PYTHON = REPO_ROOT.parent / "litgpt-venv" / "bin" / "python"
IMPLS = ("ours", "litgpt")
METHODS = ("lora", "qlora")
MODEL = "Llama-3.2-1B"  # the same registry name in both projects
SMOKE = dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, head_size=16, intermediate_size=176, vocab_size=512)
LORA = dict(r=8, alpha=16, dropout=0.0, query=True, key=False, value=True, projection=False, mlp=False, head=False)


# ----------------------------------------------------------------------------- worker side
def run_shape(args) -> tuple[dict, int, int, int, int]:
    """Config overrides, batch, positions per row, steps and skipped steps."""
    if args.smoke:
        return dict(SMOKE, block_size=64), 2, 32, 6, 2
    return {}, args.batch, args.seq, args.steps, args.skip


def sft_rows(vocab: int, seq: int, prompt: float, start: int, size: int):
    """``size`` rows of ``seq + 1`` random tokens (the same for the same ``start``) and their labels: the tokens, with
    the first ``prompt`` share of the targets set to -100."""
    import torch

    g = torch.Generator().manual_seed(start)
    rows = torch.randint(0, vocab, (size, seq + 1), generator=g)  # (size, seq + 1)
    labels = rows.clone()
    labels[:, : 1 + int(prompt * seq)] = -100  # targets are labels[:, 1:]: int(prompt * seq) of them are masked
    return rows, labels


def four_bit_layers(model) -> int:
    """How many modules are bitsandbytes 4-bit linears (subclasses included): proof that QLoRA quantized."""
    return sum(any(c.__name__ == "Linear4bit" for c in type(m).__mro__) for m in model.modules())


def peak_bytes(device) -> int:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU smoke runs: peak RSS of the process


def reset_peak(device) -> int:
    """Resident bytes now; the peak counter starts again from here (CUDA only)."""
    import torch

    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def worker_ours(method: str, args) -> dict:
    import csv

    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from litgpt_clone.config import Config
    from litgpt_clone.lora import LoRAArgs, inject_lora
    from litgpt_clone.model import GPT
    from litgpt_clone.quantize import quantize
    from litgpt_clone.training.args import EvalArgs, TrainArgs
    from litgpt_clone.training.fit import FitState, fit
    from litgpt_clone.training.run import build_fabric, build_optimizer

    overrides, B, T, steps, skip = run_shape(args)
    config = Config.from_name(MODEL, **overrides)
    out_dir = Path(tempfile.mkdtemp(prefix="gpu_finetune_ours_"))
    fabric = build_fabric(1, 1, "auto", args.precision, out_dir, "csv")
    fabric.seed_everything(0)
    t0 = time.perf_counter()
    with fabric.init_module():
        model = GPT(config)
    model.init_weights()
    model.max_seq_length = T
    if method == "qlora":
        quantize(model, "bnb.nf4")
    inject_lora(model, LoRAArgs(**LORA))
    with torch.device("meta"):  # the parameter count before any 4-bit packing, adapters included
        n_params = sum(p.numel() for p in inject_lora(GPT(config), LoRAArgs(**LORA)).parameters())
    model = fabric.setup(model)
    train = TrainArgs(global_batch_size=B, micro_batch_size=B, max_steps=steps, max_seq_length=T, lr=2e-4, warmup_steps=2,
                      min_lr=0.0, weight_decay=0.0, save_interval=None, log_interval=1, max_norm=None)
    optimizer = fabric.setup_optimizers(build_optimizer(model, "AdamW", train, fused=True))
    setup_s = time.perf_counter() - t0

    class Rows:
        def batch(self, start: int, size: int):
            rows, labels = sft_rows(config.vocab_size, T, args.prompt, start, size)
            return rows[:, :-1], labels[:, 1:]  # (size, T) inputs and targets

    memory = contextlib.nullcontext()
    if args.live_bytes:  # the CPU stand-in for the CUDA counters, with the loss chunked as on a GPU
        from litgpt_clone.training import loss
        from litgpt_clone.training.tensor_memory import LiveTensorBytes

        gpu_rows = loss.chunk_rows
        loss.chunk_rows = lambda vocab_size, device, weight_grad=False: gpu_rows(vocab_size, torch.device("cuda"), weight_grad)
        memory = LiveTensorBytes([*model.parameters(), *model.buffers()])
    resident = memory.now if args.live_bytes else reset_peak(fabric.device)
    with memory:
        summary = fit(fabric, model, optimizer, Rows(), None, train, EvalArgs(final_validation=False), FitState(), T,
                      save=lambda state, final: None, learned_only=True)
    with open(out_dir / "logs" / "version_0" / "metrics.csv") as f:
        tps = {int(r["step"]): float(r["tokens_per_sec"]) for r in csv.DictReader(f) if r.get("tokens_per_sec")}
    return dict(n_params=n_params, B=B, T=T, steps=steps, skip=skip, setup_s=setup_s, four_bit=four_bit_layers(model),
                step_times=[B * T / tps[s] for s in range(1, steps + 1)], final_loss=summary["final_loss"],
                resident=resident, peak=memory.peak if args.live_bytes else peak_bytes(fabric.device), device=device_name(fabric.device),
                torch=torch.__version__)


def worker_litgpt(method: str, args) -> dict:
    import lightning as L
    import torch
    from lightning.fabric.plugins import BitsandbytesPrecision
    from litgpt.lora import GPT, Config, mark_only_lora_as_trainable
    from litgpt.utils import chunked_cross_entropy, instantiate_bnb_optimizer

    overrides, B, T, steps, skip = run_shape(args)
    if "vocab_size" in overrides:
        overrides["padded_vocab_size"] = overrides["vocab_size"]
    config = Config.from_name(MODEL, **overrides, **{f"lora_{k}": v for k, v in LORA.items()})
    if method == "qlora":  # as finetune/lora.py does for --quantize bnb.nf4
        fabric = L.Fabric(devices=1, precision=None, plugins=BitsandbytesPrecision("nf4", torch.bfloat16))
    else:
        fabric = L.Fabric(devices=1, precision=args.precision)
    fabric.seed_everything(0)
    t0 = time.perf_counter()
    with fabric.init_module(empty_init=False):
        model = GPT(config)
    mark_only_lora_as_trainable(model)
    with torch.device("meta"):  # the parameter count before any 4-bit packing, adapters included
        n_params = sum(p.numel() for p in GPT(config).parameters())
    model = fabric.setup_module(model)
    if method == "qlora":
        optimizer = instantiate_bnb_optimizer({"class_path": "torch.optim.AdamW", "init_args": {"lr": 2e-4, "weight_decay": 0.0}},
                                              model.parameters())
        from bitsandbytes.nn import StableEmbedding

        old = model.transformer.wte
        model.transformer.wte = StableEmbedding(old.num_embeddings, old.embedding_dim)
        with torch.no_grad():
            model.transformer.wte.weight.copy_(old.weight)
        model.transformer.wte = model.transformer.wte.to(device=old.weight.device, dtype=old.weight.dtype)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    optimizer = fabric.setup_optimizers(optimizer)
    model.max_seq_length = T + 1
    setup_s = time.perf_counter() - t0
    resident = reset_peak(fabric.device)
    step_times, last, loss = [], time.perf_counter(), None
    for step in range(steps):
        rows, labels = sft_rows(config.padded_vocab_size, T, args.prompt, step * B, B)
        input_ids, targets = fabric.to_device((rows, labels))
        logits = model(input_ids, lm_head_chunk_size=128)
        logits[-1] = logits[-1][..., :-1, :]  # shift: output n predicts token n + 1
        loss = chunked_cross_entropy(logits, targets[..., 1:])
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        loss = loss.item()  # its loop syncs here when it logs (every iteration by default)
        now = time.perf_counter()
        step_times.append(now - last)
        last = now
    return dict(n_params=n_params, B=B, T=T, steps=steps, skip=skip, setup_s=setup_s, step_times=step_times,
                four_bit=four_bit_layers(model), final_loss=loss, resident=resident, peak=peak_bytes(fabric.device), device=device_name(fabric.device),
                torch=torch.__version__)


# ----------------------------------------------------------------------------- orchestrator
def run_worker(python: str, impl: str, method: str, args, timeout: float) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, method, "--precision", args.precision,
           "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--skip", str(args.skip),
           "--prompt", str(args.prompt)] + (["--smoke"] if args.smoke else []) + (["--live-bytes"] if args.live_bytes else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **QUIET_ENV}, cwd=str(REPO_ROOT), timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return dict(error=f"timed out after {timeout:.0f}s; last output:\n" + "\n".join(out.strip().splitlines()[-5:]))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return dict(json.loads(line[len(RESULT_TAG):]), wall_s=time.perf_counter() - t0)
    return dict(error="\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 6 steps, runs on CPU (proves the script works)")
    p.add_argument("--live-bytes", action="store_true", help="no GPU: ours' real shapes on the CPU, counting live tensor bytes")
    p.add_argument("--precision", default="bf16-true", help="Fabric precision of LoRA runs (QLoRA: NF4 with bf16 compute)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (LitGPT's default micro batch is 1)")
    p.add_argument("--seq", type=int, default=512, help="positions per sequence")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--skip", type=int, default=6, help="first steps left out of tokens/s")
    p.add_argument("--prompt", type=float, default=0.4, help="share of each row's targets masked as prompt")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all workers together; later ones are skipped")
    p.add_argument("--worker-timeout", type=float, default=150.0, help="seconds one worker may take")
    p.add_argument("--litgpt-python", default=str(DEFAULT_LITGPT_PYTHON), help="python that can import litgpt 0.5.13")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args()

    if args.worker:
        impl, method = args.worker
        import torch

        if not torch.cuda.is_available() and not args.live_bytes:
            torch.set_num_threads(1)
            if args.smoke and args.precision == "bf16-true":
                args.precision = "32-true"  # CPU smoke runs: fp32 (bf16 matmuls are slow on most CPUs)
        result = (worker_ours if impl == "ours" else worker_litgpt)(method, args)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    import torch

    cuda = torch.cuda.is_available()
    if args.live_bytes:
        args.impls, args.steps, args.skip = ["ours"], min(args.steps, 3), 0
    elif not cuda and not args.smoke:
        raise SystemExit("no CUDA device: this benchmark measures GPU memory; run it on a GPU, --live-bytes to count tensor"
                         " bytes on the CPU, or --smoke to check it here")
    pythons, impls = {"ours": sys.executable}, list(args.impls)
    if "litgpt" in impls:
        python, why = litgpt_interpreter(args.litgpt_python)
        if python is None:
            impls.remove("litgpt")
            print(f"litgpt skipped: no interpreter here can import litgpt ({why}); give one with --litgpt-python")
        else:
            pythons["litgpt"] = python
    print(f"# GPU finetune benchmark{' (smoke)' if args.smoke else ''}: {MODEL} shape, random weights, LoRA r 8 on "
          f"query+value, {args.precision} (QLoRA: bnb.nf4, bf16 compute); python {platform.python_version()}")
    start, rows = time.perf_counter(), []
    # ours' LoRA and QLoRA first: the QLoRA / LoRA peak ratio (the target) is out even if a time cap cuts the rest
    for impl, method in sorted(((i, m) for m in args.methods for i in impls), key=lambda im: im[0] != "ours"):
        left = args.budget - (time.perf_counter() - start)
        if method == "qlora" and impl == "litgpt" and not cuda:
            r = dict(error="skipped on CPU: Lightning's BitsandbytesPrecision, which litgpt uses for QLoRA, needs CUDA")
        elif left < 30:
            r = dict(error=f"skipped: the {args.budget:.0f}s budget is spent")
        else:
            r = run_worker(pythons[impl], impl, method, args, timeout=min(args.worker_timeout, left))
        rows.append((impl, method, r))
        if "error" in r:
            print(f"  {impl:6s} {method:5s} " + "\n    ".join(r["error"].splitlines()), flush=True)
            continue
        timed = r["step_times"][r["skip"]:]
        r["tokens_per_sec"] = len(timed) * r["B"] * r["T"] / sum(timed)
        print(f"  {impl:6s} {method:5s} {r['tokens_per_sec']:9,.0f} tok/s  resident {r['resident'] / 2**30:6.2f} GiB  peak "
              f"{r['peak'] / 2**30:6.2f} GiB ({r['peak']:,} bytes)  loss {r['final_loss']:.4f}  worker {r['wall_s']:.0f}s  [{r['device']}]", flush=True)
        done = {m: rr for i, m, rr in rows if i == impl and "error" not in rr}
        if method == "qlora" and "lora" in done:
            print(f"  {impl}: QLoRA / LoRA peak memory {r['peak'] / done['lora']['peak']:.3f}x", flush=True)

    print()
    print("| impl | method | params | 4-bit layers | B x T | tokens/s | resident GiB | peak GiB | setup s | device |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---|")
    for impl, method, r in rows:
        if "error" in r:
            print(f"| {impl} | {method} | {r['error'].splitlines()[0]} | - | - | - | - | - | - | - |")
            continue
        print(f"| {impl} | {method} | {r['n_params'] / 1e6:,.1f}M | {r['four_bit']} | {r['B']} x {r['T']} | {r['tokens_per_sec']:,.0f} | "
              f"{r['resident'] / 2**30:.2f} | {r['peak'] / 2**30:.2f} | {r['setup_s']:.1f} | {r['device']} |")
    ok = {(i, m): r for i, m, r in rows if "error" not in r}
    print()
    for impl in impls:
        if (impl, "lora") in ok and (impl, "qlora") in ok:
            a, b = ok[(impl, "qlora")], ok[(impl, "lora")]
            print(f"{impl}: QLoRA / LoRA peak memory {a['peak'] / b['peak']:.3f}x, speed {a['tokens_per_sec'] / b['tokens_per_sec']:.2f}x")
    for method in args.methods:
        if ("ours", method) in ok and ("litgpt", method) in ok:
            a, b = ok[("ours", method)], ok[("litgpt", method)]
            print(f"{method}: ours/litgpt speed {a['tokens_per_sec'] / b['tokens_per_sec']:.2f}x, peak memory {a['peak'] / b['peak']:.2f}x")
    if args.live_bytes:
        print("(--live-bytes: CPU run; 'resident' and 'peak' are live tensor bytes, tokens/s mean nothing)")
    elif not cuda:
        print("(CPU smoke run: 'peak' is the process's peak RSS and 'resident' is not measured)")
    print(f"Total {time.perf_counter() - start:.0f}s.")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(impl=i, method=m, **r) for i, m, r in rows], indent=1))


if __name__ == "__main__":
    main()
