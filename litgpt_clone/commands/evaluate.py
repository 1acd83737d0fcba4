"""``litgpt-clone evaluate [tasks] [checkpoint] --tasks a,b`` (lm-eval tasks on a checkpoint) and
``litgpt-clone evaluate perplexity`` (perplexity over text files)."""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from litgpt_clone.evaluate import EvaluationError


def evaluate_tasks(
    checkpoint_dir: Optional[str] = None,
    tasks: Optional[str] = None,
    num_fewshot: Optional[int] = None,
    batch_size: Union[int, Literal["auto"]] = 8,
    limit: Optional[float] = None,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    quantize: Optional[str] = None,
    max_length: Optional[int] = None,
    out_dir: Optional[Path] = None,
    include_path: Optional[str] = None,
    apply_chat_template: bool = False,
    seed: int = 1234,
    bootstrap_iters: int = 0,
    log_samples: bool = False,
    gen_kwargs: Optional[str] = None,
    system_instruction: Optional[str] = None,
    fewshot_as_multiturn: bool = True,
) -> dict:
    """Run lm-evaluation-harness tasks on a checkpoint; print a markdown table, write results.json and results.md.

    ``litgpt-clone evaluate [checkpoint] --tasks a,b`` is this command; the results go into out_dir.

    Args:
        checkpoint_dir: Native checkpoint folder or hub repo id (the first word after ``evaluate``). Default: the
            newest checkpoint this tool wrote under ./out (a folder with model_config.yaml and lit_model.safetensors).
        tasks: Comma-separated lm-eval task or group names (``hellaswag,arc_easy``) or task YAML paths (each YAML's folder
            is then indexed as an include_path); ``list`` prints them all (the checkpoint is then not read).
        num_fewshot: Examples in each prompt (default: each task's own).
        batch_size: Sequences per forward pass, or "auto": on a GPU the largest of 64, 32, ... whose forward pass on
            the longest request fits in memory; on CPU at most 64, fewer where the logits of a batch would pass 1 GiB.
        limit: Examples per task: a count (>= 1) or a fraction (< 1). Default: all.
        device: "auto" (a GPU if there is one), "cpu" or "cuda[:N]".
        precision: "32-true", "bf16-true" or "16-true"; default bf16 on a GPU that supports it, else fp32.
        quantize: Score the model with its weights quantized by bitsandbytes, as generate and serve run it: bnb.nf4,
            bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        max_length: Longest sequence fed to the model (default: its context).
        out_dir: Where results.json and results.md go (default: <checkpoint_dir>/evaluate).
        include_path: A folder of extra task YAMLs (your own tasks, e.g. on local JSONL data). A YAML's ``!function`` runs
            Python from its folder, as in lm-eval: pass only folders you trust.
        apply_chat_template: Wrap each prompt in the checkpoint's chat template.
        seed: Seed of Python, NumPy, torch and the few-shot sampling.
        bootstrap_iters: Bootstrap resamples for the standard errors. 0, the default, reports none at all, not even
            accuracy's (which needs no resampling and comes with any value above 0); lm-eval's own default, 100000,
            takes minutes for the metrics that are resampled.
        log_samples: Also write each example's prompt, the model's responses and its scores, one JSON line per example,
            to samples_<task>.jsonl in out_dir (lm-eval's --log_samples).
        gen_kwargs: Generation settings for every generate_until task, over the tasks' own, as lm-eval takes them
            (``max_gen_toks=64,temperature=0``).
        system_instruction: A system message in front of every prompt (lm-eval's --system_instruction).
        fewshot_as_multiturn: With --apply_chat_template, give the few-shot examples as earlier turns of the chat
            (lm-eval's default); false puts them all in the first user message.

    A run whose out_dir already holds results keeps them: the earlier results.json, results.md and samples files
    are renamed with the time they were written (``results_2026-11-28T10-15-00.json``) before the new ones are written.
    """
    from litgpt_clone.api import find_checkpoint

    if tasks is None:
        raise EvaluationError("no tasks given: pass --tasks with comma-separated task names (--tasks list shows them)")
    if tasks.strip() == "list":
        print("\n".join(sorted(task_manager([include_path] if include_path else []).all_tasks)))
        return {}
    if limit is not None and (limit <= 0 or (limit > 1 and limit != int(limit))):
        raise EvaluationError(f"limit is {limit:g}: use a count of examples (>= 1), a fraction in (0, 1), or leave it unset for all")
    if num_fewshot is not None and num_fewshot < 0:
        raise EvaluationError(f"num_fewshot is {num_fewshot}: use 0 (zero-shot) or more, or leave it unset for each task's own")
    if checkpoint_dir is None:
        checkpoint = newest_checkpoint(Path("out"), tasks)
        print(f"Evaluating {checkpoint} (the newest checkpoint under out/)", flush=True)
    else:
        checkpoint = find_checkpoint(checkpoint_dir)  # a CheckpointError line for a folder that is not a checkpoint
    names, include_paths = task_yaml_paths([t.strip() for t in tasks.split(",") if t.strip()], include_path)
    out_dir = Path(out_dir) if out_dir is not None else checkpoint / "evaluate"
    from litgpt_clone.config import check_out_dir

    check_out_dir(out_dir)  # (a file, a folder it cannot write: said now, not after the whole evaluation)
    manager = task_manager(include_paths, local_only=bool(include_paths) and local_tasks(names, include_paths))
    check_tasks(names, manager.all_tasks, include_paths)
    import jinja2

    offline_if_unreachable()
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable, make_table

    from litgpt_clone.evaluate.lm import LitGPTLM

    lm = LitGPTLM(checkpoint, batch_size=batch_size, device=device or "auto", precision=precision, max_length=max_length, quantize=quantize)
    if apply_chat_template:
        lm.check_chat_template()  # before the task datasets load
    try:
        results = simple_evaluate(
            model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager, apply_chat_template=apply_chat_template,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed, log_samples=log_samples,
            bootstrap_iters=bootstrap_iters, gen_kwargs=gen_kwargs, system_instruction=system_instruction,
            fewshot_as_multiturn=fewshot_as_multiturn,
        )
    except ConnectionError as err:  # what `datasets` raises offline (HF_DATASETS_OFFLINE) for data it has not cached
        raise EvaluationError(unreachable_data(err)) from err
    except EvaluationError:  # the model's own one line (a ValueError too): not about the task YAMLs
        raise
    except (ValueError, KeyError, TypeError, IndexError, jinja2.TemplateError) as err:
        if num_fewshot and "Sample larger than population" in str(err):  # (random.sample of the few-shot examples)
            raise EvaluationError(f"--num_fewshot {num_fewshot} is more examples than a task has to draw them from: use fewer") from err
        if not (include_paths and local_tasks(names, include_paths)):
            raise
        reason = " ".join(str(err).split())[:300]  # lm-eval's verdict on a task YAML: a bad output_type, a template field
        raise EvaluationError(f"the task YAMLs of {' and '.join(include_paths)} do not run ({type(err).__name__}: {reason}): fix them") from err
    dtype = lm.model.transformer.wte.weight.dtype
    results["config"].update(
        model="litgpt_clone", model_args=f"checkpoint_dir={checkpoint}", batch_size=batch_size, device=str(lm.device),
        dtype=str(dtype).removeprefix("torch."), max_length=lm.max_length, quantize=quantize,
        model_dtype=str(dtype), model_num_parameters=sum(p.numel() for p in lm.model.parameters()),  # (lm-eval's keys too)
    )
    results.update(model_name=str(checkpoint), chat_template=lm.tok.chat_template if apply_chat_template else None)
    named, tok = lm.tok.template_tokens, lm.tok  # the tokenizer facts lm-eval's results.json carries, in its form
    pad = named.get("pad_token")
    results.update(
        tokenizer_pad_token=[pad, str(tok.token_to_id(pad) if pad else None)], tokenizer_eos_token=[named.get("eos_token"), str(tok.eos_id)],
        tokenizer_bos_token=[named.get("bos_token"), str(tok.bos_id)], eot_token_id=lm.eot_token_id, max_length=lm.max_length,
    )
    samples = results.pop("samples", {})
    from lm_eval.utils import hash_string

    # lm-eval's check that two runs scored the same examples the same way (with --log_samples, as lm-eval has it)
    results["task_hashes"] = {
        task: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in rows)) for task, rows in samples.items()
    }
    table = make_table(results)
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    from litgpt_clone.checkpoints.io import write_atomic_text

    kept = keep_earlier_results(out_dir)
    for task, rows in samples.items():  # as lm-eval writes them: one JSON object per line
        lines = (json.dumps(row, default=handle_non_serializable, ensure_ascii=False) for row in rows)
        write_atomic_text(out_dir / f"samples_{task}.jsonl", "".join(line + "\n" for line in lines))
    write_atomic_text(out_dir / "results.json", json.dumps(results, indent=2, default=handle_non_serializable))
    write_atomic_text(out_dir / "results.md", table)
    print(f"results: {out_dir / 'results.json'}" + (f" (the earlier run's kept as {kept})" if kept else ""))
    return results


def keep_earlier_results(out_dir: Path) -> Optional[str]:
    """Rename an earlier run's results.json, results.md and samples_*.jsonl in ``out_dir`` with the time its
    results.json was written, so that a run on other tasks does not delete them (and its samples files are not left
    beside results that no longer name them); the new name of the earlier results.json, or None."""
    import time

    earlier = out_dir / "results.json"
    if not earlier.is_file():
        return None
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.localtime(earlier.stat().st_mtime))
    for path in [earlier, out_dir / "results.md", *sorted(out_dir.glob("samples_*.jsonl"))]:
        if path.is_file() and not re.search(r"_\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d$", path.stem):  # (not one kept already)
            os.replace(path, path.with_name(f"{path.stem}_{stamp}{path.suffix}"))
    return f"results_{stamp}.json"


@functools.lru_cache(maxsize=1)
def task_yaml_loader():
    """A YAML loader for lm-eval task files: safe, with any tag (``!function`` and the like) read as None."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    return Loader


def task_yaml_paths(names: list[str], include_path: Optional[str]) -> tuple[list[str], list[str]]:
    """``--tasks path/to/task.yaml`` (as lm-eval takes it): the task (or group) the file names; and the folders whose
    task YAMLs lm-eval indexes (where the files' includes and data files are found): ``--include_path``, else the
    folder of each YAML (one inside another counts once: lm-eval reads subfolders too). Not the one folder above them
    all: for YAMLs of two trees that was ``/``, and lm-eval indexed every YAML file on the machine."""
    import yaml

    out, folders = [], []
    for name in names:
        path = Path(name)
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            out.append(name)
            continue
        try:
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=task_yaml_loader())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise EvaluationError(f"{path} is not valid YAML ({type(err).__name__}): fix it") from None
        config = config if isinstance(config, dict) else {}
        task = config["task"] if isinstance(config.get("task"), str) else config.get("group")  # (a group's task: is a list)
        if not isinstance(task, str):
            raise EvaluationError(f"{path} names no task (a 'task:' or 'group:' key): give a task YAML")
        folder = path.parent.resolve()
        if include_path is not None and not folder.is_relative_to(Path(include_path).resolve()):
            raise EvaluationError(f"--tasks {name} lies outside --include_path {include_path}: move it there, or pass a folder holding both")
        folders.append(str(folder))
        out.append(task)
    if include_path is not None:
        return out, [include_path]
    outermost = []
    for folder in sorted(set(folders)):  # (a folder sorts before the folders inside it)
        if not any(Path(folder).is_relative_to(kept) for kept in outermost):
            outermost.append(folder)
    return out, outermost


def newest_checkpoint(root: Path, tasks: str = "...") -> Path:
    """The checkpoint this tool wrote last under ``root``: folders holding both model_config.yaml and
    lit_model.safetensors (as pretrain, finetune, merge_lora and convert write them), newest by the later of the two
    files' modification times. Folders starting with "." (checkpoints being written) and links are skipped."""
    from litgpt_clone.checkpoints.io import NATIVE_WEIGHTS, native_keys, resolve_checkpoint

    found = []
    for folder, dirs, files in os.walk(root):  # never follows links to folders
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        weights = NATIVE_WEIGHTS if NATIVE_WEIGHTS in files else "model.safetensors"  # (or under its old name)
        paths = [Path(folder) / name for name in ("model_config.yaml", weights)]
        if all(p.name in files and p.is_file() and not p.is_symlink() for p in paths) and (weights == NATIVE_WEIGHTS or native_keys(paths[1])):
            found.append((max(p.stat().st_mtime for p in paths), str(folder)))
    if not found:
        raise EvaluationError(
            f"no checkpoint under {root.resolve()} (looked for folders with model_config.yaml and lit_model.safetensors, "
            f"which pretrain, finetune and convert write): pass one, `litgpt-clone evaluate <checkpoint dir | repo id> --tasks {tasks}`"
        )
    return resolve_checkpoint(Path(max(found)[1]))  # (the newest under the old name: the line saying to rename it)


def task_manager(include_paths: Sequence[str] = (), local_only: bool = False):
    """lm-eval's task index (with the tasks of the folders ``include_paths``); ``local_only``: of those folders alone,
    which takes a second where indexing lm-eval's own ~14,000 tasks takes 5-10 s. Kept in this process until a YAML
    file of those folders changes."""
    folders, stamp = [], ()
    for include_path in include_paths:
        if not Path(include_path).is_dir():
            raise EvaluationError(f"--include_path {include_path}: no such folder: pass the folder that holds your task YAMLs")
        folders.append(str(Path(include_path).resolve()))
        for folder, _, files in os.walk(folders[-1]):  # never follows links to folders
            yamls = sorted(os.path.join(folder, f) for f in files if f.endswith((".yaml", ".yml")))
            stamp += tuple((path, os.stat(path).st_mtime_ns) for path in yamls)
    return cached_task_manager(tuple(folders), local_only, stamp)


@functools.lru_cache(maxsize=4)
def cached_task_manager(include_paths: tuple[str, ...], local_only: bool, stamp: tuple):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=not local_only)


def local_tasks(names: list[str], include_paths: Sequence[str]) -> bool:
    """Whether every name is a task (not a group or tag, which may refer to lm-eval's own tasks) of ``include_paths``."""
    local = set(task_manager(include_paths, local_only=True).all_subtasks)
    return all(name in local for name in names)


def offline_if_unreachable(timeout: float = 3.0) -> None:
    """With the hub out of reach and no offline setting, switch ``datasets`` and ``huggingface_hub`` to offline mode
    first: they would retry each request with growing pauses (about 30 s and ten log lines) before failing, where
    offline they read the cache at once or fail with ``unreachable_data``'s one line."""
    if os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE"):
        return
    import sys
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
        return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError):
        pass
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:  # read at import: set where it was read
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    print(f"note: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached: task datasets come from the local cache only", file=sys.stderr)


def unreachable_data(err: ConnectionError) -> str:
    """The one-line fix for a task whose dataset is neither cached nor reachable."""
    match = re.search(r"reach '([^']+)'", str(err))
    dataset = f"dataset {match.group(1)!r}" if match else f"a task's dataset ({err})"
    return (
        f"{dataset} is not in the local cache and the hub cannot be reached"
        f"{' (HF_DATASETS_OFFLINE is set)' if os.environ.get('HF_DATASETS_OFFLINE') else ''}: run once online to cache it "
        "(under $HF_HOME/datasets), or copy it and give a task YAML with dataset_path or dataset_kwargs.data_files "
        "pointing at the local files with --include_path <folder>"
    )


def check_tasks(names: list[str], known: list[str], include_paths: Sequence[str] = ()) -> None:
    """An unknown task name is an error that suggests the closest known names (and names the YAML files of
    ``include_paths`` that do not parse, which lm-eval skips with a log line)."""
    if not names:
        raise EvaluationError("no tasks given: pass --tasks with comma-separated task names (--tasks list shows them)")
    known_set = set(known)
    for name in names:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "`--tasks list` shows them"
            broken = [path for folder in include_paths for path in unparsable_yamls(folder)]
            if broken:
                raise EvaluationError(f"unknown task {name!r}, and {broken[0]} is not valid YAML: fix it ({hint})")
            raise EvaluationError(f"unknown task {name!r}: {hint} (your own task YAMLs: --include_path <folder>)")


def unparsable_yamls(folder: str) -> list[str]:
    """The YAML files under ``folder`` that do not parse (lm-eval's ``!function`` tags and the like are accepted)."""
    import yaml

    broken = []
    for root, _, files in os.walk(folder):  # never follows links to folders
        for name in sorted(f for f in files if f.endswith((".yaml", ".yml"))):
            try:
                yaml.load(Path(root, name).read_text(encoding="utf-8"), Loader=task_yaml_loader())
            except (yaml.YAMLError, UnicodeDecodeError, OSError):
                broken.append(os.path.join(root, name))
    return sorted(broken)


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
    quantize: Optional[str] = None,
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
        quantize: Quantize the weights with bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
    """
    from litgpt_clone.api import find_checkpoint

    if data is None:
        raise EvaluationError("no text given: pass --data with a text file or a folder of .txt/.md files")
    files = text_files(Path(data))
    from litgpt_clone.evaluate.lm import LitGPTLM

    lm = LitGPTLM(find_checkpoint(checkpoint_dir), batch_size=batch_size, device=device or "auto", precision=precision, max_length=max_length, rolling_context=stride_context,
                  quantize=quantize)
    if stride_context is None:  # half a window of context for every token after the first window
        lm.rolling_context = lm.max_length // 2
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
