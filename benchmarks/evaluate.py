"""Loglikelihood requests per second: our lm-eval model (``litgpt_clone``) vs lm-eval's ``HFLM``, same model, same run.

For each config, a random-weight Llama is written as a native checkpoint (our ``GPT`` + ``init_weights``, a BPE
tokenizer trained here on standard-library text) and exported with ``convert_to_hf_checkpoint``; ``HFLM`` loads the
export through transformers (fp32, ``sdpa``), ``LitGPTLM`` the native folder. Two generated multiple-choice tasks
(the local ``tiny_mc`` format, scaled up; real lm-eval tasks on local JSONL, their requests built by lm-eval):

- ``hellaswag-like``: a context of ~60 words and 4 endings of ~15 words each (the endings differ, the context is
  shared by the 4 requests of a document);
- ``mmlu-like``: a question with 4 listed options (~250 words) and the answers " A" ... " D" (2 tokens each with
  this tokenizer; the requests of a document differ in their last token only).

Both models score the same ``Instance`` list with ``loglikelihood`` at the same batch size; rounds alternate the
order. req/s = requests / wall time of the call (best round); "CPU" uses the process CPU time instead, which on a
shared machine is closer to the uncontended speed. The tokenizers run with their default ``TOKENIZERS_PARALLELISM``
(true, as a user of lm-eval has it): ours encodes a call's texts in batches, which use several threads, HFLM one text
at a time (one thread); "CPU" counts every thread's time. The loglikelihoods of the two are compared (max |diff|) so that
both did the same work.

    .venv/bin/python benchmarks/evaluate.py        # tiny + ~100M, CPU fp32, 1 thread: ~7 min of CPU time (25 min on a busy 2-core VM)
    .venv/bin/python benchmarks/evaluate.py --configs tiny --rounds 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # this file must not shadow the `evaluate` package
sys.path.insert(0, str(HERE.parent))
for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true",
                   "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
    os.environ.setdefault(key, value)

# model shapes: the tiny and the 134M Llama of benchmarks/forward_backward.py (85M parameters without embeddings)
CONFIGS = {
    "tiny": dict(n_layer=2, n_embd=128, n_head=4, n_query_groups=2, intermediate_size=352, vocab_size=4096, docs=(300, 120)),
    "100m": dict(n_layer=12, n_embd=768, n_head=12, n_query_groups=12, intermediate_size=2048, vocab_size=32000, docs=(40, 16)),
    "tinyllama-1.1b": dict(n_layer=22, n_embd=2048, n_head=32, n_query_groups=4, intermediate_size=5632, vocab_size=32000, docs=(250, 100)),
}
TASKS = ("hellaswag-like", "mmlu-like")
SPECIALS = ["<|endoftext|>"]


# ----------------------------------------------------------------------------- model, tokenizer, tasks
def corpus_words(n: int = 200_000) -> list[str]:
    """Words of the standard library's source (real, varied text for the tokenizer and the tasks)."""
    words: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"], "email").rglob("*.py")):
        words.extend(path.read_text(encoding="utf-8", errors="replace").split())
        if len(words) >= n:
            break
    return words[:n]


def write_tokenizer(folder: Path, vocab_size: int, words: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 4096), special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(words[i : i + 1000]) for i in range(0, len(words), 1000)], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": None}))


def make_checkpoint(root: Path, spec: dict, words: list[str], seed: int = 0, dtype=None) -> tuple[Path, Path]:
    """(native checkpoint, its transformers export) of a random-weight Llama of ``spec``'s shape (weights stored in
    ``dtype``, default fp32)."""
    import torch

    from litgpt_clone.checkpoints.convert import convert_to_hf_checkpoint
    from litgpt_clone.checkpoints.io import model_state
    from litgpt_clone.config import Config
    from litgpt_clone.model import GPT
    from litgpt_clone.training.checkpoint import write_checkpoint

    tok_dir = root / "tokenizer"
    write_tokenizer(tok_dir, spec["vocab_size"], words)
    config = Config(
        name="bench-llama", architecture="LlamaForCausalLM", block_size=1024, vocab_size=spec["vocab_size"],
        n_layer=spec["n_layer"], n_embd=spec["n_embd"], n_head=spec["n_head"], n_query_groups=spec["n_query_groups"],
        intermediate_size=spec["intermediate_size"], norm_class_name="RMSNorm", mlp_class_name="GatedMLP",
        mlp_activation="silu", tie_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights()
    if dtype is not None:
        model.to(dtype)
    native = write_checkpoint(root / "native", {"lit_model.safetensors": model_state(model)}, config, tok_dir, hparams={})
    return native, convert_to_hf_checkpoint(native, root / "hf")


def write_task(folder: Path, kind: str, n_docs: int, words: list[str], seed: int = 0) -> str:
    """A multiple-choice task on local JSONL (the tiny_mc format); returns its name."""
    rng = random.Random(seed)

    def span(n: int) -> str:
        start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    docs = []
    for _ in range(n_docs):
        if kind == "hellaswag-like":
            docs.append({"question": span(rng.randint(45, 75)), "choices": [" " + span(rng.randint(10, 20)) for _ in range(4)], "label": 0})
        else:
            options = "\n".join(f"{letter}. {span(rng.randint(20, 40))}" for letter in "ABCD")
            docs.append({"question": f"{span(rng.randint(90, 150))}\n{options}", "choices": [" A", " B", " C", " D"], "label": 0})
    name = kind.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n"
    )
    return name


def task_requests(folder: Path, name: str) -> list:
    """The loglikelihood ``Instance``s lm-eval builds for the task (0-shot)."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return list(task.instances)


# ----------------------------------------------------------------------------- timing
def timed(lm, requests) -> tuple[float, float, list]:
    """(wall s, process CPU s, results) of one ``loglikelihood`` call (its results are Python floats: synchronized)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = lm.loglikelihood(requests, disable_tqdm=True)
    return time.perf_counter() - start, time.process_time() - cpu, out


def bench_config(name: str, args: argparse.Namespace, words: list[str], root: Path) -> list[dict]:
    import torch
    from lm_eval.models.huggingface import HFLM

    from litgpt_clone.evaluate.lm import LitGPTLM

    spec = CONFIGS[name]
    native, export = make_checkpoint(root / name, spec, words, dtype=torch.bfloat16 if args.dtype == "bf16" else None)
    dtype = {"fp32": ("32-true", "float32"), "bf16": ("bf16-true", "bfloat16")}[args.dtype]
    lms = {
        "ours": LitGPTLM(native, batch_size=args.batch_size, device=args.device, precision=dtype[0]),
        "hflm": HFLM(pretrained=str(export), device=args.device, batch_size=args.batch_size, dtype=dtype[1]),
    }
    if args.ours_free_tokens is not None:  # A/B of FREE_TOKENS_GPU (default: the device's own)
        lms["ours"].free_tokens = args.ours_free_tokens
    n_params = sum(p.numel() for p in lms["ours"].model.parameters())
    rows = []
    for kind, n_docs in zip(TASKS, args.docs or spec["docs"]):
        requests = task_requests(root / name / "tasks", write_task(root / name / "tasks", kind, n_docs, words))
        n_tokens = sum(len(lms["ours"].tok_encode(r.args[0] + r.args[1])) for r in requests)
        for lm in lms.values():  # warm-up: allocator, kernels, lazy imports
            lm.loglikelihood(requests[:8], disable_tqdm=True)
        best = {impl: (float("inf"), float("inf")) for impl in lms}
        outputs = {}
        for r in range(args.rounds):
            for impl in (list(lms) if r % 2 == 0 else list(lms)[::-1]):
                wall, cpu, outputs[impl] = timed(lms[impl], requests)
                best[impl] = (min(best[impl][0], wall), min(best[impl][1], cpu))
                print(f"  {name} {kind} round {r} {impl}: {len(requests) / wall:.1f} req/s ({wall:.2f} s wall, {cpu:.2f} s CPU)", flush=True)
        if args.profile:
            profile_call(lambda: timed(lms["ours"], requests), f"{name} {kind} ours")
        diff = max(abs(a[0] - b[0]) for a, b in zip(outputs["ours"], outputs["hflm"]))
        for impl in lms:
            wall, cpu = best[impl]
            rows.append(dict(config=name, params_m=n_params / 1e6, task=kind, requests=len(requests), tokens=n_tokens, impl=impl,
                             req_s=len(requests) / wall, cpu_req_s=len(requests) / cpu, wall_s=wall, max_abs_diff=diff))
    return rows


def profile_call(call, label: str) -> None:
    """Print the functions that take the most time in ``call()``, by own time and by time with their callees."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.runcall(call)
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats(key).print_stats(25)
        print(f"--- profile of {label}, by {key}\n" + "\n".join(text.getvalue().strip().splitlines()[3:]), flush=True)


def print_table(rows: list[dict]) -> None:
    print("\n| config | params | task | requests | tokens | impl | req/s | req/s (CPU time) | max abs diff |")
    print("|---|---:|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['params_m']:.1f}M | {r['task']} | {r['requests']} | {r['tokens']:,} | {r['impl']} | "
              f"{r['req_s']:.2f} | {r['cpu_req_s']:.2f} | {r['max_abs_diff']:.1e} |")
    print("\n| config | task | speed ours/HFLM | speed (CPU time) ours/HFLM |")
    print("|---|---|---:|---:|")
    by = {(r["config"], r["task"], r["impl"]): r for r in rows}
    for config, task in dict.fromkeys((r["config"], r["task"]) for r in rows):
        ours, theirs = by[config, task, "ours"], by[config, task, "hflm"]
        print(f"| {config} | {task} | {ours['req_s'] / theirs['req_s']:.2f}x | {ours['cpu_req_s'] / theirs['cpu_req_s']:.2f}x |")


def batch_size(value: str):
    return value if value == "auto" else int(value)


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "100m"], choices=list(CONFIGS))
    parser.add_argument("--docs", nargs=2, type=int, help="documents of the two tasks (default: per config)")
    parser.add_argument("--batch_size", type=batch_size, default=16, help="an int or auto, for both models")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--profile", action="store_true", help="after the rounds, where ours spends its time (cProfile, top 25)")
    parser.add_argument("--ours-free-tokens", type=int, default=None,
                        help="ours' batches of at most this many padded tokens are not cut (default: 0 on CPU, FREE_TOKENS_GPU / n_embd^2 on a GPU)")
    return parser


def main(argv=None, args: argparse.Namespace = None) -> list[dict]:
    args = args or parser().parse_args(argv)
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    import lm_eval

    print(f"{_dt.date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs | torch {torch.__version__}, "
          f"transformers {transformers.__version__}, lm_eval {lm_eval.__version__} | {args.device} {args.dtype}, "
          f"{args.threads} thread(s), batch size {args.batch_size}", flush=True)
    words = corpus_words()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            rows += bench_config(name, args, words, Path(tmp))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
