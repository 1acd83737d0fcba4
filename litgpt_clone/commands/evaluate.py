"""``litgpt-clone evaluate tasks|perplexity``: lm-eval tasks on a checkpoint, and perplexity over text files."""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Optional

from litgpt_clone.evaluate import EvaluationError


def evaluate_tasks(
    checkpoint_dir: str,
    tasks: Optional[str] = None,
    num_fewshot: Optional[int] = None,
    batch_size: int = 8,
    limit: Optional[float] = None,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    max_length: Optional[int] = None,
    out_dir: Optional[Path] = None,
    include_path: Optional[str] = None,
    apply_chat_template: bool = False,
    seed: int = 1234,
    bootstrap_iters: int = 0,
) -> dict:
    """Run lm-evaluation-harness tasks on a checkpoint; print a markdown table and write results.json and
    results.md into out_dir.

    Args:
        checkpoint_dir: Native checkpoint folder or hub repo id.
        tasks: Comma-separated lm-eval task or group names (``hellaswag,arc_easy``); ``list`` prints them all (the
            checkpoint is then not read).
        num_fewshot: Examples in each prompt (default: each task's own).
        batch_size: Sequences per forward pass.
        limit: Examples per task: a count (>= 1) or a fraction (< 1). Default: all.
        device: "auto" (a GPU if there is one), "cpu" or "cuda[:N]".
        precision: "32-true", "bf16-true" or "16-true"; default bf16 on a GPU that supports it, else fp32.
        max_length: Longest sequence fed to the model (default: its context).
        out_dir: Where results.json and results.md go (default: <checkpoint_dir>/evaluate).
        include_path: A folder of extra task YAMLs (your own tasks, e.g. on local JSONL data).
        apply_chat_template: Wrap each prompt in the checkpoint's chat template.
        seed: Seed of Python, NumPy, torch and the few-shot sampling.
        bootstrap_iters: Bootstrap resamples for the standard errors of metrics that need them (0: none; lm-eval's
            own default, 100000, takes minutes).
    """
    from lm_eval.tasks import TaskManager

    from litgpt_clone.api import find_checkpoint

    if tasks is None:
        raise EvaluationError("no tasks given: pass --tasks with comma-separated task names (--tasks list shows them)")
    if tasks.strip() == "list":
        print("\n".join(sorted(TaskManager(include_path=include_path).all_tasks)))
        return {}
    if limit is not None and limit <= 0:
        raise EvaluationError(f"limit is {limit:g}: use a count of examples (>= 1), a fraction in (0, 1), or leave it unset for all")
    checkpoint = find_checkpoint(checkpoint_dir)  # a CheckpointError line for a folder that is not a checkpoint
    manager = TaskManager(include_path=include_path)
    names = check_tasks(tasks, manager.all_tasks)
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable, make_table

    from litgpt_clone.evaluate.lm import LitGPTLM

    lm = LitGPTLM(checkpoint, batch_size=batch_size, device=device or "auto", precision=precision, max_length=max_length)
    results = simple_evaluate(
        model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager, apply_chat_template=apply_chat_template,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed, log_samples=False,
        bootstrap_iters=bootstrap_iters,
    )
    table = make_table(results)
    print(table)
    out_dir = Path(out_dir) if out_dir is not None else checkpoint / "evaluate"
    out_dir.mkdir(parents=True, exist_ok=True)
    from litgpt_clone.checkpoints.io import write_atomic_text

    write_atomic_text(out_dir / "results.json", json.dumps(results, indent=2, default=handle_non_serializable))
    write_atomic_text(out_dir / "results.md", table)
    return results


def check_tasks(tasks: str, known: list[str]) -> list[str]:
    """The task names of ``tasks`` (comma-separated); an unknown one is an error that suggests the closest names."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise EvaluationError("no tasks given: pass --tasks with comma-separated task names (--tasks list shows them)")
    known_set = set(known)
    for name in names:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "`--tasks list` shows them"
            raise EvaluationError(f"unknown task {name!r}: {hint} (your own task YAMLs: --include_path <folder>)")
    return names


def text_files(data: Path) -> list[Path]:
    """``data`` if it is a file, else the .txt and .md files under it (sorted, links not followed)."""
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise FileNotFoundError(f"no text at {data}: pass a text file or a folder of .txt/.md files with --data")
    files = sorted(p for p in data.rglob("*") if p.suffix in (".txt", ".md") and p.is_file() and not p.is_symlink())
    if not files:
        raise EvaluationError(f"{data} has no .txt or .md files: pass a text file or a folder of them with --data")
    return files


def evaluate_perplexity(
    checkpoint_dir: str,
    data: Optional[Path] = None,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    stride_context: Optional[int] = None,
    device: Optional[str] = None,
    precision: Optional[str] = None,
) -> dict:
    """Token-level perplexity of a checkpoint on text: each file is scored in sliding windows of max_length tokens.

    Args:
        checkpoint_dir: Native checkpoint folder or hub repo id.
        data: A text file, or a folder of .txt/.md files (each one a separate text).
        batch_size: Windows per forward pass.
        max_length: Window length in tokens (default: the model's context).
        stride_context: Tokens each window after the first re-reads from the one before (default: max_length // 2;
            1 scores disjoint windows, as lm-eval's HF model does).
        device: "auto" (a GPU if there is one), "cpu" or "cuda[:N]".
        precision: "32-true", "bf16-true" or "16-true"; default bf16 on a GPU that supports it, else fp32.
    """
    from litgpt_clone.api import find_checkpoint

    if data is None:
        raise EvaluationError("no text given: pass --data with a text file or a folder of .txt/.md files")
    files = text_files(Path(data))
    from litgpt_clone.evaluate.lm import LitGPTLM

    lm = LitGPTLM(find_checkpoint(checkpoint_dir), batch_size=batch_size, device=device or "auto", precision=precision, max_length=max_length, rolling_context=stride_context)
    nll, tokens = 0.0, 0
    for path in files:
        ids = lm.tok_encode(path.read_text(encoding="utf-8"))
        nll += lm.rolling_nll(ids)
        tokens += len(ids)
    if tokens == 0:
        raise EvaluationError(f"the text in {data} is empty: give it some text")
    result = dict(files=len(files), tokens=tokens, nll=nll, nll_per_token=nll / tokens, perplexity=math.exp(nll / tokens))
    print(f"{len(files)} file(s), {tokens} tokens: NLL {nll:.4f} ({nll / tokens:.4f} per token), perplexity {result['perplexity']:.4f}")
    return result
