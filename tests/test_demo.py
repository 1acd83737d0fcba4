"""The README's first command, `bash scripts/demo.sh`, is `python -m litgpt_clone.demo` after the install: run it
end to end (tokenizer, `prepare code`, `pretrain`, the unigram comparison, `convert to_hf`, `generate`) on a small
folder of standard-library files, then again to check that finished steps are not redone.

The full demo (the whole standard library, 300 steps) runs from a fresh clone in the stop checks; here `--source`
and `--steps` make it fit the suite."""

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def demo(out: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "litgpt_clone.demo", "--out_dir", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_demo_runs_end_to_end_and_reruns_without_redoing_steps(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = tmp_path / "src"
    source.mkdir()
    for path in sorted(stdlib.glob("[a-s]*.py"))[:60]:  # ~60 modules, ~2 MB of Python
        shutil.copy(path, source / path.name)
    out = tmp_path / "demo_out"

    first = demo(out, "--source", str(source), "--steps", "100")
    for step in ("prepare code", "pretrain --config", "convert to_hf", "generate"):
        assert f"$ litgpt-clone {step}" in first, first
    match = re.search(r"validation loss ([\d.]+) nats/token vs the unigram baseline ([\d.]+)", first)
    val, unigram = float(match[1]), float(match[2])
    # measured: val 5.64 vs unigram 6.47 nats/token after 100 steps
    assert val < unigram - 0.5, (val, unigram)
    corpus = out / "corpus" / "v1"
    for path in (corpus / "manifest.json", corpus / "report.md", out / "pretrain" / "final" / "lit_model.safetensors",
                 out / "hf" / "config.json"):
        assert path.is_file(), path
    assert f"Next: litgpt-clone chat {out / 'pretrain' / 'final'}" in first

    second = demo(out, "--source", str(source), "--steps", "100")
    for step in ("prepare code", "pretrain", "convert"):
        assert f"$ litgpt-clone {step}" not in second, second  # found on disk, not redone
    assert "$ litgpt-clone generate" in second and f"validation loss {match[1]}" in second
    assert sorted(p.name for p in (out / "corpus").glob("v*")) == ["v1"]
    # other options would be skipped steps reporting the old run: refused
    other = subprocess.run([sys.executable, "-m", "litgpt_clone.demo", "--out_dir", str(out), "--source", str(source), "--steps", "5"],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and other.stderr.strip().splitlines() == [
        f"error: {out} holds a demo run with --source {source} --steps 100, not --source {source} --steps 5: give another --out_dir,"
        f" or delete {out} to start over"]


def test_demo_says_when_the_source_is_not_a_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "litgpt_clone.demo", "--out_dir", str(tmp_path), "--source", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: --source {tmp_path / 'nope'} is not a folder; pass a folder of Python files"]


def test_a_failing_step_is_one_line_naming_it(tmp_path):
    source = tmp_path / "empty"
    source.mkdir()
    proc = subprocess.run([sys.executable, "-m", "litgpt_clone.demo", "--out_dir", str(tmp_path / "out"), "--source", str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "error: no training tokens in" in proc.stderr  # pretrain's own message ...
    assert proc.stderr.strip().splitlines()[-1] == "error: demo step 3/5 pretrain failed (exit status 2); its message is above"
