"""`litgpt-clone pretrain` through the real CLI: learning, multi-process equality, exact resume, bad input."""

import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from litgpt_clone import GPT
from litgpt_clone.demo import train_tokenizer
from litgpt_clone.tokenizer import Tokenizer
from litgpt_clone.training.checkpoint import latest_checkpoint
from litgpt_clone.__main__ import main
from test_generate import cli_error

MODEL = dict(
    name="tiny", architecture="LlamaForCausalLM", block_size=128, vocab_size=512, n_layer=2, n_embd=64, n_head=4,
    n_query_groups=2, intermediate_size=128, norm_class_name="RMSNorm", mlp_class_name="GatedMLP", mlp_activation="silu",
)
COMMON = ["--train.max_seq_length", "64", "--train.warmup_steps", "2", "--train.lr", "3e-3", "--train.log_interval", "1", "--eval.max_iters", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tokenizer and a text corpus from the standard library, a tiny model config, a private data cache."""
    root = tmp_path_factory.mktemp("pretrain")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = root / "text"
    corpus.mkdir()
    for name in ("argparse.py", "ast.py", "calendar.py", "base64.py", "bisect.py", "abc.py"):
        (corpus / f"{name}.txt").write_text((stdlib / name).read_text())
    train_tokenizer(root / "tok", [stdlib / "argparse.py", stdlib / "ast.py"], vocab_size=512)
    (root / "model.yaml").write_text(yaml.safe_dump(MODEL))
    return root


def pretrain(setup, out, *args, devices=1, check=True, wait=True, timeout=300, cwd=None, env=None):
    cmd = [
        sys.executable, "-m", "litgpt_clone", "pretrain",
        *([] if "--initial_checkpoint_dir" in map(str, args) else ["--model_config", setup / "model.yaml"]),  # the checkpoint's model
        "--tokenizer_dir", setup / "tok", "--data", "text", "--data.path", setup / "text", "--out_dir", out, "--devices", str(devices), *COMMON, *args,
    ]
    env = {**os.environ, "LITGPT_CLONE_CACHE": str(setup / "cache"), **(env or {})}
    if not wait:
        return subprocess.Popen(list(map(str, cmd)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=cwd)
    proc = run_all(list(map(str, cmd)), env=env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_all(cmd: list[str], timeout: float, **popen) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a process group of its own: on a timeout (a hang) the ranks the command started go too."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **popen) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def val_at_start(proc) -> float:
    """The ``--eval.initial_validation`` loss a run printed."""
    return float(re.search(r"^step 0: val loss ([\d.]+)$", proc.stdout, re.MULTILINE).group(1))


def losses(out: Path) -> dict[int, float]:
    """Per-step training loss from every CSV log version under out/logs (a resumed run adds a version)."""
    result = {}
    for f in sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        for row in csv.DictReader(f.open()):
            if row.get("loss"):
                result[int(float(row["step"]))] = float(row["loss"])
    return result


def val_losses(out: Path) -> list[float]:
    return [float(r["val_loss"]) for f in (out / "logs").glob("version_*/metrics.csv") for r in csv.DictReader(f.open()) if r.get("val_loss")]


def test_loss_drops_below_unigram_baseline(setup, tmp_path):
    tokenizer = Tokenizer(setup / "tok")
    ids = torch.cat([tokenizer.encode(p.read_text(), bos=False) for p in sorted((setup / "text").iterdir())])
    counts = Counter(ids.tolist())
    unigram = -sum(c / len(ids) * math.log(c / len(ids)) for c in counts.values())  # nats per token
    pretrain(setup, tmp_path / "out", "--train.max_steps", "120", "--train.global_batch_size", "8", "--train.micro_batch_size", "8",
             "--eval.interval", "120", "--train.save_interval", "null")
    val = val_losses(tmp_path / "out")
    # measured: unigram entropy 5.10 nats; val loss 4.46 after 100 steps, 4.35 after 120 (half a CPU minute)
    assert val[-1] < unigram - 0.6, (val, unigram)
    model = GPT.from_checkpoint(tmp_path / "out" / "final")  # the final folder is a native checkpoint
    assert model.config.n_layer == 2 and (tmp_path / "out" / "final" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_ddp_and_fsdp_match_one_process(setup, tmp_path):
    args = ["--train.max_steps", "4", "--train.global_batch_size", "8", "--train.micro_batch_size", "2", "--eval.interval", "100"]
    pretrain(setup, tmp_path / "one", *args)
    pretrain(setup, tmp_path / "ddp", *args, "--strategy", "ddp", devices=2)
    pretrain(setup, tmp_path / "fsdp", *args, "--strategy", "fsdp", devices=2)
    one = losses(tmp_path / "one")
    assert sorted(one) == [1, 2, 3, 4]
    for other in ("ddp", "fsdp"):
        theirs = losses(tmp_path / other)
        for step, loss in one.items():  # measured: equal to ~1e-7 (reduction order only)
            assert abs(theirs[step] - loss) < 1e-5, (other, step, theirs[step], loss)
    # the multi-process checkpoints load in one process and give the same logits
    idx = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        expected = GPT.from_checkpoint(tmp_path / "one" / "final")(idx)
        for other in ("ddp", "fsdp"):
            torch.testing.assert_close(GPT.from_checkpoint(tmp_path / other / "final")(idx), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_training_matches_eager(setup, tmp_path):
    """--compile true (per block) and --compile model (whole model) train the same losses as eager, validation
    included (its no-grad graph), and leave checkpoints with the usual keys."""
    args = ["--train.max_steps", "4", "--train.global_batch_size", "4", "--train.micro_batch_size", "4", "--eval.interval", "2"]
    pretrain(setup, tmp_path / "eager", *args)
    eager = losses(tmp_path / "eager")
    for how in ("true", "model"):
        pretrain(setup, tmp_path / how, *args, "--compile", how)
        compiled = losses(tmp_path / how)
        for step, loss in eager.items():  # measured: equal to the digits the log keeps
            assert abs(compiled[step] - loss) < 1e-4, (how, step, compiled[step], loss)
        assert val_losses(tmp_path / how) == pytest.approx(val_losses(tmp_path / "eager"), abs=1e-4)
        GPT.from_checkpoint(tmp_path / how / "final")


def test_whole_model_compile_is_refused_with_fsdp(setup, tmp_path):
    proc = pretrain(setup, tmp_path / "o", "--strategy", "fsdp", "--compile", "model", devices=2, check=False)
    assert proc.returncode == 2 and one_line(proc).startswith("error: --compile model") and "--compile true" in one_line(proc)


@pytest.mark.slow
def test_sigkill_and_resume_reproduce_the_uninterrupted_run(setup, tmp_path):
    args = ["--train.max_steps", "30", "--train.global_batch_size", "4", "--train.micro_batch_size", "2", "--eval.interval", "100",
            "--train.save_interval", "5"]
    pretrain(setup, tmp_path / "straight", *args)
    out = tmp_path / "killed"
    proc = pretrain(setup, out, *args, wait=False)
    deadline = time.time() + 120
    while not (out / "step-00000010").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "step-00000010").is_dir() and not (out / "final").exists(), "the run was not killed mid-training"
    pretrain(setup, out, *args, "--resume", "auto")
    expected, got = losses(tmp_path / "straight"), losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, 31))
    for step in range(11, 31):  # every step after the resume point, bit for bit
        assert got[step] == expected[step], (step, got[step], expected[step])

    # killed while writing final/ (step-30/ complete): the rerun said "nothing to train" and never wrote final/
    import fcntl

    from safetensors.torch import load_file

    final = load_file(out / "final" / "lit_model.safetensors")
    shutil.rmtree(out / "final")
    pretrain(setup, out, *args, "--resume", "auto")
    again = load_file(out / "final" / "lit_model.safetensors")
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
    # a second run into an out_dir a run is training into resumed from its checkpoints and wrote over them
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = pretrain(setup, out, *args, "--resume", "auto", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
        f"error: another run is training into {out} (it holds {out / '.lock'}): wait for it to end, or give another --out_dir")
    # a fresh run (no --resume) into it wrote its steps among the earlier run's and its final/ over that one's; killed
    # and resumed, it went on from the earlier run's newest step: refused before any work, the earlier run untouched
    before = sorted(p.name for p in out.iterdir())
    proc = pretrain(setup, out, *args, check=False)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: --out_dir {out} holds an earlier run (step-00000030, final): continue it with --resume auto, or give"
        " another --out_dir (or delete that one to start over in it)\n"), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_kill_while_saving_keeps_the_previous_checkpoint(setup, tmp_path):
    """A checkpoint is built in .step-N.tmp and renamed when complete: kills at many moments never leave a
    step-* folder that fails to load, and resume picks the newest complete one."""
    out = tmp_path / "out"
    out.mkdir()  # (the command's --out_dir check creates a missing folder and removes it again: a glob here then raced it)
    args = ["--train.max_steps", "200", "--train.global_batch_size", "2", "--train.micro_batch_size", "2", "--eval.interval", "1000",
            "--train.save_interval", "1"]
    for delay in (0.0, 0.15, 0.4):  # kill right as a new checkpoint appears, and a little after (mid-save, mid-step)
        known = set(out.glob("step-*"))
        proc = pretrain(setup, out, *args, "--resume", "auto", wait=False)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not set(out.glob("step-*")) - known:
            time.sleep(0.01)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert set(out.glob("step-*")) - known, "no checkpoint was written before the kill"
        for folder in out.glob("step-*"):
            GPT.from_checkpoint(folder)  # complete: weights, config, tokenizer
            assert (folder / "training_state.pt").is_file() and (folder / "hyperparameters.yaml").is_file()
    newest = latest_checkpoint(out)
    assert newest is not None
    (out / ".step-99999999.tmp").mkdir()  # what a kill during saving leaves behind
    assert latest_checkpoint(out) == newest
    done = pretrain(setup, out, *args[:-2], "--train.max_steps", str(int(newest.name[5:]) + 1), "--resume", "auto")
    assert f"resumed from {newest}" in done.stdout + done.stderr


def test_a_kill_while_replacing_a_folder_leaves_a_complete_one(tmp_path, monkeypatch):
    """Re-saving a folder (``final/`` of a rerun): the old one is deleted only after the new one is in place, so a
    kill in the middle of deleting (simulated: the delete stops after one file) never leaves a half-deleted folder."""
    from litgpt_clone import Config
    from litgpt_clone.training import checkpoint

    config = Config(name="tiny", n_layer=1, n_embd=8, n_head=2, vocab_size=16, block_size=8)
    weights = lambda value: {"lit_model.safetensors": {"w": torch.full((2,), value)}}  # noqa: E731
    checkpoint.write_checkpoint(tmp_path / "final", weights(1.0), config, None, {"run": 1})

    def killed_while_deleting(path, ignore_errors=False):
        files = sorted(p for p in Path(path).iterdir()) if Path(path).is_dir() else []
        if files and not ignore_errors:
            files[0].unlink()
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write_checkpoint(tmp_path / "final", weights(2.0), config, None, {"run": 2})
    final = tmp_path / "final"
    assert sorted(p.name for p in final.iterdir()) == ["hyperparameters.yaml", "lit_model.safetensors", "model_config.yaml"]
    assert yaml.safe_load((final / "hyperparameters.yaml").read_text()) == {"run": 2}
    monkeypatch.undo()
    # killed between its two renames: neither final/ nor a cleanup, and the .old copy stayed for good; the next
    # write puts the earlier folder back first, then replaces it, leaving nothing beside it
    shutil.rmtree(tmp_path / ".final.old", ignore_errors=True)
    final.rename(tmp_path / ".final.old")
    checkpoint.write_checkpoint(tmp_path / "final", weights(3.0), config, None, {"run": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert yaml.safe_load((final / "hyperparameters.yaml").read_text()) == {"run": 3}


# ----------------------------------------------------------------------------- bad input: one line with the fix
def one_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]


def test_micro_batch_larger_than_global(setup, tmp_path):
    line = one_line(pretrain(setup, tmp_path, "--train.max_steps", "2", "--train.global_batch_size", "2", "--train.micro_batch_size", "4", check=False))
    assert "micro_batch_size 4" in line and "global_batch_size 2" in line


def test_missing_and_empty_data(setup, tmp_path):
    proc = pretrain(setup, tmp_path / "o", "--data.path", tmp_path / "nowhere", "--train.max_steps", "1", check=False)
    assert str(tmp_path / "nowhere") in one_line(proc)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    proc = pretrain(setup, tmp_path / "o", "--data.path", tmp_path / "empty", "--train.max_steps", "1", check=False)
    assert "empty" in one_line(proc)
    # two processes: rank 0 finds it (it prepares the data first) and says so once; rank 1 stops quietly (it printed
    # a traceback from the barrier rank 0 never reached)
    proc = pretrain(setup, tmp_path / "o2", "--data.path", tmp_path / "empty", "--train.max_steps", "1", devices=2, check=False)
    assert "empty" in one_line(proc) and proc.stderr.count("error: ") == 1 and "[rank1]" not in proc.stderr, proc.stderr


def test_errors_of_every_process_are_said_once_before_the_launch(setup, tmp_path):
    """A tokenizer larger than the model or batch sizes that do not divide are wrong on every rank: said once, before
    the other processes start (each rank printed the line, two of them run together on one line)."""
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({**MODEL, "vocab_size": 256}))
    proc = pretrain(setup, tmp_path / "o", "--model_config", tmp_path / "small.yaml", devices=2, check=False)
    assert "256" in one_line(proc) and proc.stderr.count("error: ") == 1 and "distributed" not in proc.stderr, proc.stderr
    proc = pretrain(setup, tmp_path / "o", "--train.global_batch_size", "6", "--train.micro_batch_size", "2", devices=2, check=False)
    assert "global_batch_size 6" in one_line(proc) and proc.stderr.count("error: ") == 1 and "distributed" not in proc.stderr


def test_tokenizer_larger_than_model(setup, tmp_path):
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({**MODEL, "vocab_size": 256}))
    proc = pretrain(setup, tmp_path / "o", "--model_config", tmp_path / "small.yaml", "--train.max_steps", "1", check=False)
    line = one_line(proc)
    assert "512" in line and "256" in line and "vocab_size" in line


@pytest.mark.skipif(Path("/proc/sys/vm/overcommit_memory").read_text().strip() != "0" if Path("/proc/sys/vm/overcommit_memory").exists() else True,
                    reason="needs Linux's heuristic overcommit (vm.overcommit_memory=0) to refuse an impossible allocation")
def test_out_of_memory_says_what_to_lower(setup, tmp_path):
    """A real allocation failure: MLP activations of 128 x 64 tokens x 4M channels need 131 GB (the weights 0.8 GB)."""
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump({**MODEL, "intermediate_size": 4_000_000, "n_embd": 8, "n_layer": 1}))
    proc = pretrain(setup, tmp_path / "o", "--model_config", tmp_path / "wide.yaml", "--train.max_steps", "1",
                    "--train.global_batch_size", "128", "--train.micro_batch_size", "128", "--eval.interval", "1000", check=False)
    line = one_line(proc)
    assert line.startswith("error: out of memory with micro_batch_size 128 x max_seq_length 64"), line
    assert "--train.micro_batch_size" in line and "--train.max_seq_length" in line and "activation_checkpointing" in line


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup, tmp_path):
    out = tmp_path / "out"
    proc = pretrain(setup, out, "--train.max_steps", "50", "--train.global_batch_size", "2", "--train.micro_batch_size", "2",
                    "--train.lr", "1e6", "--train.warmup_steps", "1", "--train.max_norm", "null", "--train.save_interval", "1",
                    "--eval.interval", "1000", check=False)
    line = one_line(proc)
    # the loss turns NaN, or the weights stop being finite at a save: either way training stops there
    assert ("loss is nan" in line.lower() or "no longer finite" in line) and "last good checkpoint" in line and "--train.lr" in line
    newest = latest_checkpoint(out)
    assert newest is not None and not (out / "final").exists()
    model = GPT.from_checkpoint(newest)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_two_processes_validate_a_small_set_and_stop_together_with_one_line(setup, tmp_path):
    """A validation set of 2 sequences over 2 processes (FSDP2) with micro batches of 2: rank 1 has no batch of its
    own. It left validation while rank 0's forward waited for it in an all-gather (a hang); now it runs a stand-in
    batch it does not count, and the val loss is the one process's. Errors after the launch stop both processes
    with one line, from rank 0: weights no longer finite (only rank 0 holds the full weights: rank 1 died in a
    barrier with a traceback, and the line spoke of a last good checkpoint that was never written), and an error
    every rank raises (--resume true without a checkpoint was said once per process). A NaN loss does not suggest
    --train.max_norm where it is set."""
    args = ["--data.val_fraction", "0.002", "--eval.initial_validation", "true", "--eval.max_iters", "100", "--eval.interval", "1000",
            "--train.global_batch_size", "4", "--train.micro_batch_size", "2", "--train.max_steps", "3",
            "--train.lr", "1e300"]  # the first update overflows the weights (step 1's loss is still finite)
    two = pretrain(setup, tmp_path / "two", *args, "--train.max_norm", "null", "--train.save_interval", "1", "--strategy", "fsdp",
                   devices=2, check=False, timeout=200)
    one = pretrain(setup, tmp_path / "one", *args, "--train.save_interval", "null", check=False)
    assert val_at_start(two) == pytest.approx(val_at_start(one), abs=2e-4)  # measured: 6.2457 both
    assert one_line(one) == f"error: loss is nan at step 2: no checkpoint was saved in {tmp_path / 'one'} before it; lower --train.lr or raise --train.warmup_steps"
    assert one_line(two) == (
        f"error: weights are no longer finite at step 1: no checkpoint was saved in {tmp_path / 'two'} before it; lower --train.lr, "
        "raise --train.warmup_steps or set --train.max_norm"
    )
    assert two.stderr.count("error:") == 1 and latest_checkpoint(tmp_path / "two") is None, two.stderr
    none = pretrain(setup, tmp_path / "none", "--train.max_steps", "1", "--resume", "true", devices=2, check=False, timeout=200)
    assert one_line(none).startswith(f"error: --resume true: no checkpoint in {tmp_path / 'none'}") and none.stderr.count("error:") == 1, none.stderr


FULL_DISK = """
import os
if os.environ.get("FULL_DISK_AT"):  # writing weights into this folder fails as on a full disk, with safetensors' error
    import safetensors.torch
    from safetensors import SafetensorError

    save_file = safetensors.torch.save_file

    def full(tensors, filename, metadata=None):
        if os.environ["FULL_DISK_AT"] in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_file(tensors, filename, metadata)

    safetensors.torch.save_file = full
"""


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_line_and_stops_every_process(setup, tmp_path):
    """No space left while rank 0 writes step 3 (simulated in every process by a sitecustomize): it was a traceback
    from each rank. Now one line that names the step, the folder and the last complete checkpoint; both processes
    stop, and the partial folder is removed."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FULL_DISK)
    env = {"FULL_DISK_AT": ".step-00000003.tmp", "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "inject"), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out"
    proc = pretrain(setup, out, "--train.max_steps", "4", "--train.save_interval", "1", "--train.global_batch_size", "4", "--train.micro_batch_size", "2",
                    "--eval.interval", "1000", devices=2, check=False, timeout=200, env=env)
    assert one_line(proc) == (
        f"error: no space left on device while saving step 3 to {out / 'step-00000003'}: the last complete checkpoint is "
        f"{out / 'step-00000002'}: free some space and rerun with --resume auto to continue from it"
    )
    assert proc.stderr.count("error:") == 1 and sorted(p.name for p in out.glob("*step-*")) == ["step-00000001", "step-00000002"]


def test_a_launcher_that_started_another_number_of_processes_is_one_line(setup, tmp_path, capsys, monkeypatch):
    """torchrun or srun starting 2 processes for --devices 1 x --num_nodes 1 ran two 1-process trainings into the
    same out_dir (or ended in Lightning's traceback): one line from rank 0 with the flags to pass, before any work;
    the other ranks stop with the same status, quietly. --precision 16-mixed with FSDP2 was a Lightning traceback."""
    base = ["pretrain", "--model_config", setup / "model.yaml", "--tokenizer_dir", setup / "tok", "--out_dir", tmp_path / "o"]
    torchrun = {"TORCHELASTIC_RUN_ID": "t", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    assert cli_error(capsys, *base) == (
        "error: torchrun started 2 process(es) (2 per node on 1 node(s)) but --devices 1 --num_nodes 1 asks for 1: pass --devices 2 --num_nodes 1"
    )
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_:
        main(list(map(str, base)))
    assert exit_.value.code == 2 and capsys.readouterr().err == ""
    for name in torchrun:
        monkeypatch.delenv(name)
    slurm = {"SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert cli_error(capsys, *base, "--devices", "2") == (
        "error: SLURM started 2 process(es) (1 per node on 2 node(s)) but --devices 2 --num_nodes 1 asks for 2: pass --devices 1 --num_nodes 2"
    )
    for name in slurm:
        monkeypatch.delenv(name)
    assert cli_error(capsys, *base, "--devices", "2", "--strategy", "fsdp", "--precision", "16-mixed") == (
        "error: --precision 16-mixed is not available with --strategy fsdp (FSDP2): use bf16-mixed, bf16-true or 32-true"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_nodes_without_a_launcher_say_how_to_start_the_others_and_need_a_shared_out_dir(setup, tmp_path):
    """--num_nodes 2 without torchrun or SLURM waited for the other node without a word: now a line says where it
    waits and how to start the others. Two "nodes" started that way, whose --out_dir (relative) are different folders
    (no shared filesystem): --resume auto resumed on node 0 and started fresh on node 1, then trained a mix of both or
    hung. Rank 0 picks the checkpoint, and node 1, which cannot read it, stops both with one line (from rank 0)."""
    import select

    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir(), node1.mkdir()
    args = ["--train.max_steps", "3", "--train.global_batch_size", "4", "--train.micro_batch_size", "2", "--eval.interval", "1000"]
    pretrain(setup, "out", *args, "--train.max_steps", "2", "--train.save_interval", "2", cwd=node0)
    first = pretrain(setup, "out", *args, "--num_nodes", "2", "--resume", "auto", cwd=node0, wait=False)
    try:
        line, deadline = "", time.time() + 120
        while "waits at" not in line and time.time() < deadline and select.select([first.stderr], [], [], deadline - time.time())[0]:
            line = first.stderr.readline().decode()
        port = re.search(r"waits at 127\.0\.0\.1:(\d+) for the other 1: start this command on each of them with NODE_RANK=1 MASTER_ADDR=<this "
                         r"node's address> MASTER_PORT=(\d+), or start every node with torchrun or srun", line)
        assert port and port.group(1) == port.group(2), line
        second = pretrain(setup, "out", *args, "--num_nodes", "2", "--resume", "auto", cwd=node1, check=False, timeout=200,
                          env={"NODE_RANK": "1", "MASTER_PORT": port.group(1)})
        _, stderr = first.communicate(timeout=60)
    finally:
        os.killpg(first.pid, signal.SIGKILL) if first.poll() is None else None
    assert first.returncode == 2 and stderr.decode().strip().splitlines()[-1] == (
        "error: rank 1 cannot read out/step-00000002, the checkpoint rank 0 resumes from: --out_dir must be on a filesystem every "
        "node sees (rank 0 writes the checkpoints)"
    ), stderr.decode()[-2000:]
    assert second.returncode == 2 and "error" not in second.stderr and "joins the first node at 127.0.0.1" in second.stderr, second.stderr
    assert not (node1 / "out").exists() or not list((node1 / "out").glob("step-*"))
    assert not (node0 / "out" / "step-00000003").exists()


def test_shards_data_initial_checkpoint_and_tensorboard(setup, tmp_path):
    """--data shards reads ShardWriter output (the prepare code format); --initial_checkpoint_dir continues from a
    checkpoint's weights; --logger_name tensorboard writes event files."""
    from litgpt_clone.data.shards import ShardWriter

    tokenizer = Tokenizer(setup / "tok")
    with ShardWriter(tmp_path / "shards", vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, shard_tokens=4096) as w:
        for i, f in enumerate(sorted((setup / "text").iterdir())):
            w.add(tokenizer.encode(f.read_text(), bos=False).tolist(), split="val" if i == 0 else "train")
    args = ["--train.global_batch_size", "4", "--train.micro_batch_size", "4", "--eval.interval", "5", "--train.save_interval", "null"]
    pretrain(setup, tmp_path / "a", "--data", "shards", "--data.path", tmp_path / "shards", "--train.max_steps", "5", *args)
    first = losses(tmp_path / "a")
    proc = pretrain(setup, tmp_path / "b", "--data", "shards", "--data.path", tmp_path / "shards", "--train.max_steps", "5",
                    "--initial_checkpoint_dir", tmp_path / "a" / "final", "--logger_name", "tensorboard", *args)
    assert list((tmp_path / "b" / "logs").rglob("events.out.tfevents.*")), proc.stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "b" / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    continued = [e.value for e in events.Scalars("loss")]
    assert continued[0] < first[1] - 0.5, (first, continued)  # starts where the first run ended, not from scratch


def test_hub_datasets_offline_say_how_to_use_a_local_copy(setup, tmp_path):
    for name in ("tinystories", "openwebtext"):
        cmd = [sys.executable, "-m", "litgpt_clone", "pretrain", "--model_config", setup / "model.yaml", "--tokenizer_dir",
               setup / "tok", "--data", name, "--out_dir", tmp_path, "--train.max_steps", "1"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "LITGPT_CLONE_CACHE": str(tmp_path)}
        proc = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True, timeout=300)
        line = one_line(proc)
        assert name in line and "--data.path" in line, line


def test_the_model_is_checked_before_the_tokenizer_and_the_launch(tmp_path, capsys):
    """An unknown model name or a model file that is not there is the first error (it used to be "pretrain needs
    --tokenizer_dir" for both), before Fabric launches anything."""
    cases = [
        (["pythia-14x"], "error: unknown model 'pythia-14x'. Closest: pythia-14m"),
        (["--model_config", str(tmp_path / "nope.yaml")], f"error: no model config at {tmp_path / 'nope.yaml'}"),
        (["pythia-14m"], "error: pretrain needs --tokenizer_dir (a folder with tokenizer.json or tokenizer.model)"),
    ]
    for args, start in cases:
        assert cli_error(capsys, "pretrain", *args, "--out_dir", tmp_path / "out").startswith(start)


def test_impossible_training_numbers_are_one_line(tmp_path, capsys):
    """A zero micro batch divided by zero, a rank-0 LoRA raised a ValueError: both were tracebacks. Every count,
    interval and rate of --train, --eval and --lora is checked when it is parsed, with the flag and its bound."""
    cases = [
        (["pretrain", "pythia-14m", "--train.micro_batch_size", "0"], "error: --train.micro_batch_size is 0: it must be 1 or more"),
        (["pretrain", "pythia-14m", "--train.lr", "-0.1"], "error: --train.lr is -0.1: it must be above 0"),
        (["pretrain", "pythia-14m", "--train.max_seq_length", "1"], "error: --train.max_seq_length is 1: it must be 2 or more"),
        (["pretrain", "pythia-14m", "--eval.interval", "0"], "error: --eval.interval is 0: it must be 1 or more"),
        (["finetune", "lora", str(tmp_path), "--lora.r", "0"], "error: --lora.r is 0: the rank of the adapters must be 1 or more"),
        # a misspelt option of a data module (it said "expected a NoneType")
        (["pretrain", "pythia-14m", "--data", "text", "--data.pth", "x"], "error: --data.pth: --data Text has no such option (did you mean --data.path? it takes path, val_fraction)"),
    ]
    for args, start in cases:
        assert cli_error(capsys, *args, "--out_dir", tmp_path / "out").startswith(start)


def test_optimizer_settings_as_litgpt_recipes_and_flags_write_them(setup, tmp_path, capsys):
    """LitGPT's recipes put lr and weight_decay in the optimizer's init_args: they were silently replaced by --train.lr's
    schedule and --train.weight_decay. --optimizer.class_path X --optimizer.init_args.momentum 0.9 (which jsonargparse
    hands over flattened, as text) lost the momentum; settings without a class and unknown names were tracebacks."""
    import torch

    from litgpt_clone.training.args import TrainArgs
    from litgpt_clone.training.run import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    adamw = build_optimizer(model, {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.1, "weight_decay": 0.5, "betas": [0.8, 0.9]}}, TrainArgs(), False)
    assert [(g["lr"], g["weight_decay"], g["betas"]) for g in adamw.param_groups] == [(0.1, 0.5, (0.8, 0.9)), (0.1, 0.0, (0.8, 0.9))]
    sgd = build_optimizer(model, {"class_path": "torch.optim.SGD", "momentum": "0.9"}, TrainArgs(lr=0.2), False)  # flattened, as text
    assert type(sgd) is torch.optim.SGD and [(g["lr"], g["momentum"]) for g in sgd.param_groups] == [(0.2, 0.9)] * 2
    out = tmp_path / "run"
    pretrain(setup, out, "--train.max_steps", "3", "--train.warmup_steps", "2", "--optimizer",
             '{"class_path": "AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.0}}')
    rows = [r for r in csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()) if r.get("lr")]
    assert [round(float(r["lr"]), 6) for r in rows][:2] == [0.005, 0.01]  # the warmup climbs to init_args' lr
    written = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["train"]
    assert (written["lr"], written["weight_decay"]) == (0.01, 0.0)  # what the run used (it recorded --train.lr's default)
    base = ["pretrain", "--model_config", setup / "model.yaml", "--tokenizer_dir", setup / "tok", "--out_dir", tmp_path / "o"]
    cases = [
        (["--optimizer.lr", "0.1"], "error: --optimizer settings {'lr': 0.1} without the optimizer: name it with --optimizer NAME (e.g. --optimizer SGD"),
        (["--optimizer", "Foo"], "error: unknown optimizer 'Foo': use a torch.optim class name (AdamW, SGD, ...) or a full class path"),
        (["--optimizer.class_path", "torch.optim.SGD", "--optimizer.init_args.momentom", "0.9"], "error: --optimizer torch.optim.SGD has no setting 'momentom': it takes lr, momentum"),
    ]
    for args, start in cases:
        assert cli_error(capsys, *base, *args).startswith(start)
    assert not (tmp_path / "o").exists()  # said before any work


def test_out_dir_devices_val_fraction_and_resume_mistakes_are_one_line(setup, tmp_path, capsys, monkeypatch):
    """Each of these was a traceback: an --out_dir that is a file (after a training step), --devices 0, a validation
    share of 1 or below 0, --resume true (LitGPT's spelling), and resuming a checkpoint of another model shape."""
    (tmp_path / "afile").write_text("")
    base = ["pretrain", "--model_config", setup / "model.yaml", "--tokenizer_dir", setup / "tok", "--data", "text", "--data.path", setup / "text",
            "--train.max_steps", "1", "--out_dir"]
    cases = [
        ([*base, tmp_path / "afile"], f"error: --out_dir {tmp_path / 'afile'} is a file: give a folder (it is created when missing)"),
        ([*base, tmp_path / "o", "--devices", "0"], "error: --devices 0 --num_nodes 1: use 1 or more of each"),
        ([*base, tmp_path / "o", "--data.val_fraction", "1"], "error: --data.val_fraction 1.0: use a share of the tokens in [0, 1)"),
        ([*base, tmp_path / "o", "--data.val_fraction", "-0.5"], "error: --data.val_fraction -0.5: use a share of the tokens in [0, 1)"),
        (["prepare", "code", str(setup / "text"), "--out_dir", tmp_path / "afile"], f"error: --out_dir {tmp_path / 'afile'} is a file"),
    ]
    for args, start in cases:
        assert cli_error(capsys, *args).startswith(start)
    assert not (tmp_path / "o").exists()
    out = tmp_path / "run"
    none = pretrain(setup, out, "--train.max_steps", "2", "--resume", "true", check=False)
    assert one_line(none) == f"error: --resume true: no checkpoint in {out} to resume from: use --resume auto to start fresh when there is none"
    pretrain(setup, out, "--train.max_steps", "2", "--train.save_interval", "2")
    resumed = pretrain(setup, out, "--train.max_steps", "3", "--resume", "true").stdout
    assert "resumed from" in resumed  # the newest one
    # the summary counts this session's tokens (one step of 64 x 64) and time, then the run's (it mixed the two)
    assert re.search(r"trained 4,096 tokens in [\d.]+s \([\d,]+ tok/s over the run, validation and saves included; 12,288 since step 0\)", resumed), resumed
    done = pretrain(setup, out, "--train.max_steps", "3", "--resume", "auto").stdout
    assert "nothing to train: the run was complete at step 3 (12,288 tokens)" in done
    other = yaml.safe_load((setup / "model.yaml").read_text()) | {"n_layer": 1}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    line = one_line(pretrain(setup, out, "--model_config", tmp_path / "other.yaml", "--train.max_steps", "4", "--resume", "auto", check=False))
    assert line.startswith(f"error: {out / 'step-00000003'} holds another model (n_layer 2 there, 1 here): resume with the model"), line
    # the same shapes computing something else, or another data stream under the checkpoint's data position: each
    # resumed silently before (a QA run), training another model or skipping and repeating data
    monkeypatch.setenv("LITGPT_CLONE_CACHE", str(setup / "cache"))
    resume = ["pretrain", "--tokenizer_dir", setup / "tok", "--data", "text", "--data.path", setup / "text", "--out_dir", out,
              "--train.max_steps", "4", "--resume", "auto"]
    same = yaml.safe_load((setup / "model.yaml").read_text())
    (tmp_path / "rope.yaml").write_text(yaml.safe_dump(same | {"rope_base": 500000.0, "parallel_residual": True}))
    assert cli_error(capsys, *resume, "--model_config", tmp_path / "rope.yaml").startswith(
        f"error: {out / 'step-00000003'} holds another model (parallel_residual false there, true here; rope_base 10000.0 there, 500000.0 here)"
    )
    assert cli_error(capsys, *resume, "--model_config", setup / "model.yaml", "--train.tie_embeddings", "true").startswith(
        f"error: {out / 'step-00000003'} holds another model (tie_embeddings false there, true here)"
    )
    for changed in (["--seed", "7"], ["--train.max_seq_length", "32"], ["--data.val_fraction", "0.2"]):
        assert cli_error(capsys, *resume, "--model_config", setup / "model.yaml", *changed) == (
            f"error: {out / 'step-00000003'} was trained on another data stream: its data position counts samples of its own, "
            "and this run's differs (other data or --data.* settings, --seed, --train.max_seq_length, or, finetuning, "
            "--train.global_batch_size, which orders each step's samples); resume with the same ones, or give another --out_dir"
        ), changed
    assert cli_error(capsys, "pretrain", "--initial_checkpoint_dir", out / "step-00000003", "--train.tie_embeddings", "true", "--out_dir", tmp_path / "c") == (
        f"error: --train.tie_embeddings true: the model of --initial_checkpoint_dir {out / 'step-00000003'} has tie_embeddings "
        "false (its model_config.yaml): drop the flag"
    )


def test_shards_of_another_vocabulary_of_the_same_size_are_refused(setup, tmp_path, capsys):
    """Shards record their tokenizer's vocabulary digest: a tokenizer of the same size and EOS but other tokens (which
    would train on ids that mean something else, and copy the wrong tokenizer into every checkpoint) is refused."""
    import sysconfig

    from litgpt_clone.data.pretrain import Shards

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train_tokenizer(tmp_path / "other", [stdlib / "calendar.py", stdlib / "base64.py"], vocab_size=512)
    ours, other = Tokenizer(setup / "tok"), Tokenizer(tmp_path / "other")
    assert (ours.vocab_size, ours.eos_id) == (other.vocab_size, other.eos_id) and ours.vocabulary_digest() != other.vocabulary_digest()
    main_args = ["prepare", "code", str(setup / "text"), "--out_dir", str(tmp_path / "corpus"), "--tokenizer_dir", str(setup / "tok")]
    from litgpt_clone.__main__ import main

    main(main_args)
    Shards(tmp_path / "corpus" / "v1").streams(ours)  # the same tokenizer (or a copy of it) reads them
    line = cli_error(capsys, "pretrain", "--model_config", setup / "model.yaml", "--tokenizer_dir", tmp_path / "other", "--data", "shards",
                     "--data.path", tmp_path / "corpus" / "v1", "--out_dir", tmp_path / "out", "--train.max_steps", "1")
    assert line.startswith(f"error: the shards in {tmp_path / 'corpus' / 'v1'} were made with another tokenizer (vocab 512, EOS") and line.endswith("pass the same --tokenizer_dir")


def test_ctrl_c_is_one_line_and_the_run_resumes(setup, tmp_path):
    """Ctrl-C (SIGINT) during training ends with a line, not a KeyboardInterrupt traceback, and exit status 130."""
    out = tmp_path / "run"
    proc = pretrain(setup, out, "--train.max_steps", "400", "--train.save_interval", "2", wait=False)
    deadline = time.time() + 120
    while not (out / "step-00000002").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.decode().strip().splitlines()[-1] == "interrupted", stderr.decode()[-2000:]
    assert "Traceback" not in stderr.decode() and latest_checkpoint(out) is not None


def test_hyperparameters_yaml_reruns_and_an_initial_checkpoint_brings_its_model(setup, tmp_path, capsys):
    """`--config out/final/hyperparameters.yaml` reproduces the run (the data module was written as {name: text, ...},
    which --config refused); a model name or --model_config beside --initial_checkpoint_dir (silently dropped) and an
    unknown --data name ("expected a NoneType") are one line each."""
    pretrain(setup, tmp_path / "a", "--train.max_steps", "3")
    written = yaml.safe_load((tmp_path / "a" / "final" / "hyperparameters.yaml").read_text())
    assert written["data"] == {"class_path": "litgpt_clone.data.pretrain.Text", "init_args": {"path": str(setup / "text"), "val_fraction": 0.05}}
    subprocess.run([sys.executable, "-m", "litgpt_clone", "pretrain", "--config", str(tmp_path / "a" / "final" / "hyperparameters.yaml"),
                    "--out_dir", str(tmp_path / "b")], check=True, capture_output=True, env={**os.environ, "LITGPT_CLONE_CACHE": str(setup / "cache")})
    assert losses(tmp_path / "b") == losses(tmp_path / "a") and len(losses(tmp_path / "a")) == 3
    final = tmp_path / "a" / "final"
    common = ["--tokenizer_dir", setup / "tok", "--out_dir", tmp_path / "c", "--initial_checkpoint_dir", final]
    assert cli_error(capsys, "pretrain", "--model_config", setup / "model.yaml", *common) == (
        f"error: --initial_checkpoint_dir {final} brings its own model (its model_config.yaml): drop --model_config {setup / 'model.yaml'}"
    )
    assert cli_error(capsys, "pretrain", "pythia-14m", *common) == (
        f"error: --initial_checkpoint_dir {final} brings its own model (its model_config.yaml): drop the model name pythia-14m"
    )
    assert cli_error(capsys, "pretrain", "--model_config", setup / "model.yaml", "--data", "foo").startswith(
        "error: unknown --data foo: use one of text, shards, tinystories, openwebtext ("
    )
    # a tokenizer larger than the checkpoint's model: the advice was --model_config, which the line above refuses
    train_tokenizer(tmp_path / "big", [Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"], vocab_size=1024)
    said = cli_error(capsys, "pretrain", "--initial_checkpoint_dir", final, "--tokenizer_dir", tmp_path / "big", "--out_dir", tmp_path / "d")
    assert said.startswith("error: the tokenizer has 1024 tokens but the model only ") and said.endswith(
        f": leave --tokenizer_dir out to use {final}'s own tokenizer"), said


def test_validation_covers_a_small_set_once():
    """eval.max_iters beyond the validation set: each batch once, the last one partial (it wrapped around, 500
    batches over 5 samples, the first ones counted more often in the mean); the loss is the mean over the set's tokens,
    the same with 1, 2 or 4 samples per batch (the mean of batch means counted the partial batch's one sample as
    much as two: a 7% difference between micro batch sizes 1 and 4 in a QA run)."""
    import lightning_fabric as L

    from litgpt_clone import Config
    from litgpt_clone.training.args import EvalArgs, TrainArgs
    from litgpt_clone.training.fit import validate

    torch.manual_seed(0)
    model = GPT(Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, block_size=8, intermediate_size=32))
    model.init_weights()
    rows = torch.randint(0, 32, (5, 9))

    class Data:
        count, calls = 5, []

        def batch(self, start, size):
            self.calls.append((start, size))
            return rows[start : start + size, :-1], rows[start : start + size, 1:]

    fabric = L.Fabric(accelerator="cpu", devices=1)
    data = Data()
    loss = validate(fabric, model, data, TrainArgs(micro_batch_size=2), EvalArgs(max_iters=500))
    assert data.calls == [(0, 2), (2, 2), (4, 1)]
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten()).item()
    assert loss == pytest.approx(expected, rel=1e-6)
    for micro in (1, 4):
        assert validate(fabric, model, data, TrainArgs(micro_batch_size=micro), EvalArgs(max_iters=500)) == pytest.approx(expected, rel=1e-6)
    data.calls.clear()
    data.calls.clear()
    validate(fabric, model, data, TrainArgs(micro_batch_size=2), EvalArgs(max_iters=2))  # fewer than the set: as asked
    assert data.calls == [(0, 2), (2, 2)]


def test_a_checkpoint_missing_a_tensor_is_refused_before_training_on_from_a_random_layer(tmp_path):
    """--initial_checkpoint_dir and --resume load full state dicts through torch's set_model_state_dict, whose strict
    check never fires (it fills the missing keys from the model first): a layer missing from the file trained on from
    its random initialization, silently (a QA run). Now one line naming the file and the tensor, as generate says it."""
    from litgpt_clone import Config
    from litgpt_clone.checkpoints.io import CheckpointError
    from litgpt_clone.training.checkpoint import load_full_state

    config = Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32, block_size=8, intermediate_size=32)
    saved = GPT(config).state_dict()
    model = GPT(config)
    load_full_state(model, None, dict(saved), None, where="x/lit_model.safetensors")  # whole: loads
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    broken = {k: v for k, v in saved.items() if k != "transformer.h.1.mlp.proj.weight"}
    with pytest.raises(CheckpointError) as err:
        load_full_state(model, None, broken, None, where="x/lit_model.safetensors")
    assert str(err.value) == "x/lit_model.safetensors does not match model_config.yaml: missing ['transformer.h.1.mlp.proj.weight'], unexpected []"
    tied = GPT(Config(**{**config.__dict__, "tie_embeddings": True}))
    load_full_state(tied, None, {k: v for k, v in saved.items() if k != "lm_head.weight"}, None)  # a tied head is the embedding
    with pytest.raises(CheckpointError, match=r"missing \['lm_head.weight'\]"):  # an untied model needs its own
        load_full_state(GPT(config), None, {k: v for k, v in saved.items() if k != "lm_head.weight"}, None)


def test_throughput_after_a_validation_or_a_save_leaves_their_time_out(capsys, monkeypatch):
    """The tok/s (and MFU) logged for the steps after a validation or a checkpoint counted their time as training
    time (499 tok/s against ~3,500 in a QA run). On a clock that only the data moves: a training batch takes 1 s, a
    validation batch 100 s and a save 1,000 s, so every logged figure must be 2 x 8 tokens per 2 s of training."""
    import lightning_fabric as L

    from litgpt_clone import Config
    from litgpt_clone.training import fit as fit_module
    from litgpt_clone.training.args import EvalArgs, TrainArgs

    now = [0.0]
    monkeypatch.setattr(fit_module.time, "perf_counter", lambda: now[0])
    rows = torch.randint(0, 32, (64, 9))

    class Data:
        count = 64

        def __init__(self, cost):
            self.cost = cost

        def batch(self, start, size):
            now[0] += self.cost
            return rows[start : start + size, :-1], rows[start : start + size, 1:]

    def save(state, final):
        now[0] += 1000

    model = GPT(Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, block_size=8, intermediate_size=32))
    fabric = L.Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    args = TrainArgs(global_batch_size=2, micro_batch_size=2, max_steps=6, warmup_steps=0, log_interval=2, save_interval=2)
    fit_module.fit(fabric, model, optimizer, Data(1), Data(100), args, EvalArgs(interval=2, max_iters=1), fit_module.FitState(), 8, save)
    logged = re.findall(r"step (\d)/6 \| .* \| ([\d,]+) tok/s", capsys.readouterr().out)
    assert logged == [("2", "16"), ("4", "16"), ("6", "16")], logged


def test_a_warmup_longer_than_the_run_is_said(capsys):
    """The default 100 warmup steps over a 20-step finetune never reach --train.lr (it ends at a fifth of it), which the
    logged lr showed only to a reader who knew the schedule."""
    import lightning_fabric as L

    from litgpt_clone import Config
    from litgpt_clone.training import fit as fit_module
    from litgpt_clone.training.args import EvalArgs, TrainArgs

    rows = torch.randint(0, 32, (64, 9))

    class Data:
        count = 64

        def batch(self, start, size):
            return rows[start : start + size, :-1], rows[start : start + size, 1:]

    model = GPT(Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, block_size=8, intermediate_size=32))
    fabric = L.Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for warmup, said in ((20, True), (4, False)):  # (4: the last step runs at --train.lr)
        args = TrainArgs(global_batch_size=2, micro_batch_size=2, max_steps=4, warmup_steps=warmup, lr=1e-3, log_interval=4)
        fit_module.fit(fabric, model, optimizer, Data(), None, args, EvalArgs(interval=100), fit_module.FitState(), 8, lambda s, f: None)
        note = ("note: --train.warmup_steps 20 covers the whole run of 4 steps: the learning rate ends at 2.00e-04, never"
                " reaching --train.lr 1.00e-03; lower --train.warmup_steps to reach it")
        assert (note in capsys.readouterr().out) is said


def test_mfu_uses_the_datasheet_peak_of_the_card_torch_names():
    """MFU divides by the dense bf16 peak of NVIDIA's datasheets; "H100" alone matched the PCIe and NVL cards to the
    SXM figure, so their MFU came out 24% and 16% low."""
    from litgpt_clone.parallel import gpu_peak_flops

    names = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12, "NVIDIA H200": 989e12,
             "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA GeForce RTX 4090": 165e12, "Tesla T4": None}
    assert {name: gpu_peak_flops(name, "bf16-mixed") for name in names} == names
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "32-true") == 156e12  # tf32: half the rate


def test_a_sequence_length_beyond_the_block_size_is_cut_with_a_note():
    """--train.max_seq_length above the model's block_size trained shorter sequences with no word (and max_tokens
    turned into more steps than asked for)."""
    from litgpt_clone import Config
    from litgpt_clone.training.args import TrainArgs
    from litgpt_clone.training.run import sequence_length

    class Fabric:
        said: list = []

        def print(self, line):
            self.said.append(line)

    config = Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, block_size=32)
    assert [sequence_length(Fabric(), TrainArgs(max_seq_length=n), config) for n in (None, 16, 32, 64)] == [32, 16, 32, 32]
    assert Fabric.said == ["note: --train.max_seq_length 64 is beyond the model's block_size: sequences of 32"]
