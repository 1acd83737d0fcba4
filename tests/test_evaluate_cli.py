"""``litgpt-clone evaluate`` as a user types it: ``evaluate --tasks x`` without a checkpoint (the newest one this
tool wrote under ./out) and a task whose hub dataset is not cached while offline run the real CLI in subprocesses; no
checkpoint at all runs ``main`` in this process. Each error is one line on stderr, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from litgpt_clone.__main__ import main, rewrite
from litgpt_clone.commands.evaluate import newest_checkpoint
from litgpt_clone.evaluate import EvaluationError
from test_evaluate import tasks_dir  # noqa: F401  (fixture: tests/eval_tasks with absolute data paths)
from test_generate import checkpoint, models_root  # noqa: F401  (models_root is a fixture)


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "litgpt_clone", *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=env)


def assert_one_error_line(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit status 2, no traceback, and the last stderr line is the error (lm-eval may log warnings before it)."""
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert line.startswith("error: ") and all(p in line for p in parts), line
    return line


def test_spellings():
    """`evaluate [checkpoint] --tasks` is `evaluate tasks`; `evaluate tasks|perplexity ...` and --help are untouched."""
    assert rewrite(["evaluate", "ckpt", "--tasks", "a"]) == ["evaluate", "tasks", "--checkpoint_dir", "ckpt", "--tasks", "a"]
    assert rewrite(["evaluate", "--tasks", "a"]) == ["evaluate", "tasks", "--tasks", "a"]
    assert rewrite(["evaluate", "tasks", "ckpt", "--tasks", "a"]) == ["evaluate", "tasks", "--checkpoint_dir", "ckpt", "--tasks", "a"]
    assert rewrite(["evaluate", "perplexity", "ckpt", "--data", "t.txt"]) == ["evaluate", "perplexity", "ckpt", "--data", "t.txt"]
    assert rewrite(["evaluate", "--help"]) == ["evaluate", "--help"]


def test_newest_checkpoint_under_out(models_root, tasks_dir, tmp_path, capsys):  # noqa: F811
    _, native = checkpoint(models_root, "llama")
    out = tmp_path / "out"
    for name in ("old/final", "new/step-00000020", "new/.step-00000040.tmp", "export", "lora/final"):
        shutil.copytree(native, out / name)
    (out / "export" / "model_config.yaml").unlink()  # a Hugging Face export: config.json, not ours
    (out / "export" / "config.json").write_text("{}")
    (out / "lora" / "final" / "lit_model.safetensors").rename(out / "lora" / "final" / "lora.safetensors")  # LoRA weights only
    now = time.time()
    ages = {"old/final": 300, "new/step-00000020": 200, "new/.step-00000040.tmp": 0, "export": 0, "lora/final": 0}
    for name, age in ages.items():  # a checkpoint being written, the export and the LoRA folder are the newest
        for f in (out / name).iterdir():
            os.utime(f, (now - age, now - age))

    proc = run_cli(tmp_path, "evaluate", "--tasks", "tiny_mc", "--include_path", str(tasks_dir), "--limit", "2",
                   "--batch_size", "auto", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Evaluating out/new/step-00000020 (the newest checkpoint under out/)" in proc.stdout.splitlines()[0]
    results = json.loads((out / "new" / "step-00000020" / "evaluate" / "results.json").read_text())
    assert results["results"]["tiny_mc"]["acc,none"] in (0, 0.5, 1)

    # a second run into the same out_dir, on other tasks, named by the path of their YAML as lm-eval takes it (it was
    # "unknown task"): the first run's results were deleted and its samples file left beside results not naming it
    evaluated = out / "new" / "step-00000020" / "evaluate"
    (evaluated / "samples_tiny_mc.jsonl").write_text("{}\n")  # (as --log_samples writes it)
    earlier = time.strftime("%Y-%m-%dT%H-%M-%S", time.localtime((evaluated / "results.json").stat().st_mtime))
    proc = run_cli(tmp_path, "evaluate", "out/new/step-00000020", "--tasks", str(tasks_dir / "tiny_gen.yaml"), "--limit", "2", "--device", "cpu",
                   "--gen_kwargs", "max_gen_toks=1", "--log_samples", "true")  # (lm-eval's override of the task's settings)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "new" / "step-00000020" / "evaluate" / "samples_tiny_gen.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["arguments"][0][1]["max_gen_toks"] == 1 for row in rows), rows[0]["arguments"]
    assert proc.stdout.splitlines()[-1] == (f"results: {Path('out/new/step-00000020/evaluate/results.json')}"
                                            f" (the earlier run's kept as results_{earlier}.json)")
    assert sorted(p.name for p in evaluated.iterdir()) == sorted(
        ["results.json", "results.md", f"results_{earlier}.json", f"results_{earlier}.md", f"samples_tiny_mc_{earlier}.jsonl", "samples_tiny_gen.jsonl"])
    assert list(json.loads((evaluated / "results.json").read_text())["results"]) == ["tiny_gen"]
    assert list(json.loads((evaluated / f"results_{earlier}.json").read_text())["results"]) == ["tiny_mc"]
    # an out_dir that cannot be written was a traceback after the whole evaluation: now one line before the model loads
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", str(out / "new" / "step-00000020"), "--tasks", "tiny_mc", "--include_path", str(tasks_dir),
              "--out_dir", str(tmp_path / "afile" / "x")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after what the fixtures printed)
    assert exit.value.code == 2 and last.startswith("error: ") and "afile" in last, last

    for f in (out / "old" / "final").iterdir():  # writing to the old one makes it the newest
        os.utime(f, (now + 10, now + 10))
    assert newest_checkpoint(out) == out / "old" / "final"


def test_no_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    """(In this process: the error comes before anything is loaded.)"""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "hf").mkdir(parents=True)  # a folder that is not one of ours does not count
    (tmp_path / "out" / "hf" / "config.json").write_text("{}")
    (tmp_path / "out" / "hf" / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "--tasks", "tiny_mc"])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and "\n" not in err, err
    assert err.startswith(f"error: no checkpoint under {tmp_path.resolve() / 'out'}") and "model_config.yaml and lit_model.safetensors" in err
    assert err.endswith("pass one, `litgpt-clone evaluate <checkpoint dir | repo id> --tasks tiny_mc`"), err


def test_offline_uncached_dataset_is_one_line(models_root, tmp_path):  # noqa: F811
    """A task on a hub dataset (the one lm-eval's hellaswag reads) with an empty cache and HF_DATASETS_OFFLINE=1."""
    _, native = checkpoint(models_root, "llama")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: Rowan/hellaswag\nvalidation_split: validation\noutput_type: multiple_choice\n"
        "doc_to_text: '{{ctx}}'\ndoc_to_choice: '{{endings}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    proc = run_cli(tmp_path, "evaluate", str(native), "--tasks", "hub_task", "--include_path", str(tmp_path / "tasks"),
                   "--device", "cpu", HF_HOME=str(tmp_path / "empty_hf_home"))
    assert_one_error_line(proc, "dataset 'Rowan/hellaswag' is not in the local cache", "HF_DATASETS_OFFLINE is set",
                          "dataset_path or dataset_kwargs.data_files", "--include_path")
    # no offline setting, and the hub out of reach: the same line at once (it took ~30 s of retries and ten log lines)
    started = time.monotonic()
    proc = run_cli(tmp_path, "evaluate", str(native), "--tasks", "hub_task", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
                   HF_HOME=str(tmp_path / "empty_hf_home"), HF_DATASETS_OFFLINE="", HF_HUB_OFFLINE="", HF_ENDPOINT="http://127.0.0.1:9")
    assert_one_error_line(proc, "dataset 'Rowan/hellaswag' is not in the local cache")
    assert "note: the Hugging Face hub (http://127.0.0.1:9) cannot be reached" in proc.stderr and "Retrying" not in proc.stderr
    assert time.monotonic() - started < 60


def test_task_index_follows_edited_yamls(tmp_path):
    """The task index is kept within a process, but a new or edited YAML in --include_path is seen."""
    from litgpt_clone.commands.evaluate import task_manager

    yaml = "task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: x.jsonl\ntest_split: test\n" \
           "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"
    (tmp_path / "one.yaml").write_text(yaml.format(name="task_one"))
    first = task_manager([str(tmp_path)], local_only=True)
    assert first.all_tasks == ["task_one"] and task_manager([str(tmp_path)], local_only=True) is first
    (tmp_path / "two.yaml").write_text(yaml.format(name="task_two"))
    assert task_manager([str(tmp_path)], local_only=True).all_tasks == ["task_one", "task_two"]


def test_task_yaml_paths_name_tasks_and_groups_in_any_folders(tmp_path):
    """`--tasks a/grp.yaml` (a group: its task: is a list) was refused as naming no group; YAMLs in two folders were
    refused with advice about an --include_path nobody gave. lm-eval takes both. YAMLs of two trees are indexed from
    their own folders, not from the folder above both (for /tmp/x.yaml and lm-eval's arc_easy.yaml that was /, and
    lm-eval walked the whole file system)."""
    from litgpt_clone.commands.evaluate import task_manager, task_yaml_paths

    files = {"a/grp.yaml": "group: mygroup\ntask:\n  - t1\n", "a/t1.yaml": "task: t1\n", "a/sub/t3.yaml": "task: t3\n",
             "b/t2.yaml": "task: t2\n", "c/t4.yaml": "task: t4\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert task_yaml_paths([str(tmp_path / "a" / "grp.yaml"), "hellaswag"], None) == (["mygroup", "hellaswag"], [str(tmp_path / "a")])
    names, folders = task_yaml_paths([str(tmp_path / p) for p in ("b/t2.yaml", "a/sub/t3.yaml", "a/t1.yaml")], None)
    assert (names, folders) == (["t2", "t3", "t1"], [str(tmp_path / "a"), str(tmp_path / "b")])  # (a/sub is in a)
    assert task_manager(folders, local_only=True).all_subtasks == ["t1", "t2", "t3"]  # not c/t4.yaml beside them
    assert task_yaml_paths(["t1"], str(tmp_path / "a")) == (["t1"], [str(tmp_path / "a")])
    with pytest.raises(EvaluationError, match=r"lies outside --include_path .*: move it there, or pass a folder holding both$"):
        task_yaml_paths([str(tmp_path / "b" / "t2.yaml")], str(tmp_path / "a"))
