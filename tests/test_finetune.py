"""Finetuning through the real CLI (LoRA, QLoRA, full), merge_lora, exact resume, and the LoRA mechanism itself."""

import csv
import dataclasses
import json
import re
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from litgpt_clone import GPT
from litgpt_clone.checkpoints.convert import convert_hf_checkpoint
from litgpt_clone.lora import LoRAArgs, inject_lora, lora_state, merge_lora
from litgpt_clone.training.run import build_optimizer
from litgpt_clone.training.args import TrainArgs
from test_generate import cli_error
from test_pretrain import run_all, val_at_start

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "ocean", "lemon", "candle", "forest", "rocket"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random Llama converted to a native checkpoint, with a byte-level BPE tokenizer and a JSON dataset."""
    root = tmp_path_factory.mktemp("finetune")
    samples = [{"instruction": f"Repeat the word {w} three times.", "input": "", "output": f"{w} {w} {w}"} for w in WORDS * 4]
    (root / "data.json").write_text(json.dumps(samples))
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [s["instruction"] + " " + s["output"] for s in samples] + ["Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n### Response:\n"]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=tok.get_vocab_size(), max_position_embeddings=256))
    hf.save_pretrained(root / "hf")
    tok.save(str(root / "hf" / "tokenizer.json"))
    (root / "hf" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    convert_hf_checkpoint(root / "hf", root / "base")
    return root


def finetune(base, out, *args, method=None, wait=True, check=True, timeout=300, cwd=None):
    checkpoint = base / "base" if cwd is None else os.path.relpath(base / "base", cwd)  # (relative to cwd when given)
    cmd = [sys.executable, "-m", "litgpt_clone", "finetune", *([method] if method else []), checkpoint, "--data", "json",
           "--data.path", base / "data.json", "--data.val_fraction", "0.1", "--out_dir", out, "--train.global_batch_size", "4",
           "--train.micro_batch_size", "2", "--train.log_interval", "1", "--eval.interval", "1000", "--eval.max_iters", "2", *args]
    env = {**os.environ, "LITGPT_CLONE_CACHE": str(base / "cache")}
    if not wait:
        return subprocess.Popen(list(map(str, cmd)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    proc = run_all(list(map(str, cmd)), env=env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def losses(out) -> dict[int, float]:
    result = {}
    for f in sorted(out.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        result.update({int(float(r["step"])): float(r["loss"]) for r in csv.DictReader(f.open()) if r.get("loss")})
    return result


def mean(values):
    return sum(values) / len(values)


def test_lora_trains_saves_adapters_and_merges(base, tmp_path):
    out = tmp_path / "lora"
    finetune(base, out, "--train.max_steps", "40", "--train.lr", "1e-2", "--train.save_interval", "20", "--lora.r", "4",
             "--lora.mlp", "true", "--lora.head", "true", cwd=tmp_path)  # the base given relative to the run's folder
    loss = losses(out)
    assert mean([loss[s] for s in range(36, 41)]) < mean([loss[s] for s in range(1, 6)]) - 1.0, loss
    adapters = load_file(out / "step-00000020" / "lora.safetensors")
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    modules = {k.split(".lora_")[0] for k in adapters}
    assert modules == {"lm_head"} | {f"transformer.h.{i}.{m}" for i in (0, 1) for m in ("attn.qkv", "mlp.fc_1", "mlp.fc_2", "mlp.proj")}
    qkv_parts = {k.rsplit(".", 1)[1] for k in adapters if ".attn.qkv." in k}
    assert qkv_parts == {"query", "value"}  # --lora.key is off by default: the keys get no adapter
    size = (out / "step-00000020" / "lora.safetensors").stat().st_size
    assert size < 0.1 * (base / "base" / "lit_model.safetensors").stat().st_size

    # final/ holds the merged model: its logits equal the base with the adapters applied
    merged = GPT.from_checkpoint(out / "final").eval()
    live = inject_lora(GPT.from_checkpoint(base / "base"), LoRAArgs(r=4, dropout=0.0, mlp=True, head=True)).eval()
    live.load_state_dict(load_file(out / "final" / "lora.safetensors"), strict=False)
    idx = torch.randint(0, merged.config.vocab_size, (2, 16))
    with torch.no_grad():
        # fp32 rounding of the merged weights: measured up to 7.5e-5 on logits of magnitude ~6 after these 40 steps at
        # lr 1e-2 (a wrong merge scale or a missing adapter is off by more than 1e-2)
        torch.testing.assert_close(merged(idx), live(idx), atol=2e-4, rtol=1e-5)
        assert not torch.allclose(merged(idx), GPT.from_checkpoint(base / "base")(idx), atol=1e-3)

    # generate takes the merged output as it is
    gen = subprocess.run([sys.executable, "-m", "litgpt_clone", "generate", str(out / "final"), "--prompt", "Repeat the word apple",
                          "--max_new_tokens", "5"], capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0 and "tokens/s" in gen.stderr, gen.stderr

    # merge_lora on a step folder writes a native checkpoint next to its adapters, keeping what else it holds
    (out / "step-00000020" / "evaluate").mkdir()
    (out / "step-00000020" / "evaluate" / "results.json").write_text("{}")
    subprocess.run([sys.executable, "-m", "litgpt_clone", "merge_lora", str(out / "step-00000020")], check=True, capture_output=True)
    step = GPT.from_checkpoint(out / "step-00000020")
    assert (out / "step-00000020" / "lora.safetensors").is_file() and (out / "step-00000020" / "training_state.pt").is_file()
    assert (out / "step-00000020" / "evaluate" / "results.json").read_text() == "{}"
    with torch.no_grad():
        assert not torch.allclose(step(idx), merged(idx), atol=1e-4)  # step 20 is not the end of training

    # --out_dir replaced the folder it named: the training run (every step, final/, logs) or the base were deleted
    import re

    from litgpt_clone.commands.finetune import merge_lora as merge_command
    from litgpt_clone.config import ConfigError

    before = sorted(p.name for p in out.iterdir())
    for folder in (out, base / "base"):
        with pytest.raises(ConfigError, match=rf"^--out_dir {re.escape(str(folder))} already holds .*: merge_lora writes a whole checkpoint folder"):
            merge_command(out / "step-00000020", out_dir=folder)
    assert sorted(p.name for p in out.iterdir()) == before and (base / "base" / "config.json").is_file()
    (tmp_path / "notes.txt").write_text("mine")  # a file: it was renamed aside to .notes.txt.old, then a traceback
    with pytest.raises(ConfigError, match=rf"^--out_dir {re.escape(str(tmp_path / 'notes.txt'))} is a file: give a folder"):
        merge_command(out / "step-00000020", out_dir=tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    for _ in range(2):  # a new folder, then the same one again: an earlier merge output is replaced
        merge_command(out / "step-00000020", out_dir=tmp_path / "merged")
    torch.testing.assert_close(load_file(tmp_path / "merged" / "lit_model.safetensors"), load_file(out / "step-00000020" / "lit_model.safetensors"))

    # the base is recorded absolute: a relative one was read from whatever folder merge_lora (or --config) ran in
    import yaml

    recorded = out / "step-00000020" / "hyperparameters.yaml"
    hparams = yaml.safe_load(recorded.read_text())
    assert hparams["checkpoint_dir"] == str((base / "base").resolve())
    recorded.write_text(yaml.safe_dump({**hparams, "checkpoint_dir": "../older/run/base"}))  # as an older run wrote it
    with pytest.raises(ConfigError) as err:
        merge_command(out / "step-00000020", out_dir=tmp_path / "merged")
    assert str(err.value) == (f"the base recorded in {recorded}, ../older/run/base (relative to the folder that run started in), is not"
                              " there: pass --base <the base checkpoint>")
    merge_command(out / "step-00000020", base=str(base / "base"), out_dir=tmp_path / "merged")


def test_settings_given_as_dicts_from_python_keep_the_commands_other_defaults():
    """``finetune_lora(train=dict(max_steps=2))`` is ``--train.max_steps 2``: finetune's warmup (10), min_lr and weight
    decay stay (a TrainArgs(...) brought pretrain's warmup 100 and weight decay 0.1, as the tutorial's call did)."""
    from litgpt_clone.commands.finetune import FINETUNE_TRAIN, finetune_full, finetune_lora
    from litgpt_clone.commands.pretrain import pretrain
    from litgpt_clone.training.args import with_defaults

    h = with_defaults(finetune_lora, {"train": {"max_steps": 2, "lr": 1e-2}, "lora": {"r": 4}, "seed": 1, "optimizer": {"class_path": "SGD"}})
    assert h["train"] == dataclasses.replace(FINETUNE_TRAIN, max_steps=2, lr=1e-2) and h["train"].warmup_steps == 10
    assert (h["lora"].r, h["lora"].alpha, h["seed"], h["optimizer"]) == (4, 16, 1, {"class_path": "SGD"})
    assert with_defaults(finetune_full, {"train": {"max_steps": 2}})["train"].lr == 2e-5  # full's own default lr
    assert with_defaults(pretrain, {"train": {"max_steps": 2}})["train"] == TrainArgs(max_steps=2)
    assert with_defaults(finetune_lora, {"train": TrainArgs(max_steps=2)})["train"] == TrainArgs(max_steps=2)  # replaced whole
    # and checked as the command line checks them (an unknown strategy ran as "auto", data="json" failed deep inside)
    from litgpt_clone.config import ConfigError

    for settings, message in (
        ({"strategy": "deepspeed"}, "finetune_lora(): strategy is 'deepspeed', not one of 'auto', 'ddp', 'fsdp'"),
        ({"logger_name": "wandb"}, "logger_name is 'wandb', not one of 'csv', 'tensorboard'"),
        ({"data": "json"}, "data is 'json', not a SFTData (e.g. Alpaca(...), Dolly(...), JSON(...), Chat(...)) or None"),
        ({"seed": "1"}, "seed is '1', not an int"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            with_defaults(finetune_lora, {"checkpoint_dir": "base", **settings})
    with pytest.raises(ConfigError, match=re.escape("compile is 'false', not a bool or one of 'blocks', 'model'")):
        with_defaults(pretrain, {"compile": "false"})


def test_only_adapters_change():
    """One optimizer step with weight decay changes the LoRA weights and nothing else."""
    from litgpt_clone import Config

    torch.manual_seed(0)
    model = GPT(Config(n_layer=2, n_embd=32, n_head=4, n_query_groups=2, vocab_size=50, block_size=16, mlp_class_name="GatedMLP", intermediate_size=64))
    inject_lora(model, LoRAArgs(r=2, mlp=True, projection=True))
    from litgpt_clone.config import ConfigError

    with pytest.raises(ConfigError, match="^this model has LoRA adapters already: merge them first"):  # (a cell run twice)
        inject_lora(model, LoRAArgs(r=2, mlp=True))  # (it nested adapters in the MLP and froze the first ones)
    assert sum(p.requires_grad for p in model.parameters()) == 2 * 2 * 6  # A and B of qkv's 2 parts + proj + 3 MLP, per block
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, "AdamW", TrainArgs(weight_decay=0.1), fused=False)
    for _ in range(2):  # B starts at zero, so A only moves from the second step
        idx = torch.randint(0, 50, (2, 16))
        torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
        opt.step()
        opt.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(lora_state(before)) and changed
    merged = merge_lora(model)
    assert not any(".lora_" in k or ".base." in k for k in merged.state_dict())


def test_ragged_batches_run_unpadded_with_the_padded_loss_and_gradients():
    """On one process a finetuning batch runs as sub-batches of similar lengths (``length_groups``), each cut to its
    longest row: the loss and gradients must be those of the whole right-padded batch under -100 targets."""
    from lightning_fabric import Fabric

    from litgpt_clone import Config
    from litgpt_clone.training.fit import batch_loss, length_groups
    from litgpt_clone.training.loss import loss_fn

    torch.manual_seed(0)
    model = GPT(Config(n_layer=2, n_embd=32, n_head=4, n_query_groups=2, vocab_size=50, block_size=64, mlp_class_name="GatedMLP", intermediate_size=64))
    x = torch.randint(0, 50, (6, 64))
    y = torch.randint(0, 50, (6, 64))
    for row, (prompt, length) in enumerate([(5, 64), (10, 60), (3, 20), (0, 18), (8, 40), (64, 64)]):
        y[row, :prompt] = -100  # the prompt: no loss
        y[row, length:] = -100  # right padding (row 5: nothing learned at all)
    lengths = [64, 60, 20, 18, 40, 0]
    assert length_groups(lengths) == [[0, 1], [4], [2, 3]]  # 4 groups' worth of padding avoided, row 5 skipped

    def loss_and_grads(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    fabric = Fabric(accelerator="cpu", devices=1)
    ours, ours_grads = loss_and_grads(lambda: batch_loss(fabric, model, x, y, learned_only=True))
    padded, padded_grads = loss_and_grads(lambda: loss_fn(model(x), y))
    torch.testing.assert_close(ours, padded, atol=1e-6, rtol=1e-5)
    for a, b in zip(ours_grads, padded_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_loss_weighs_every_learned_token_of_a_step_the_same_whatever_the_micro_batch():
    """A finetuning step's loss is the mean over the learned tokens of its whole global batch (transformers' Trainer
    and TRL since 4.46): samples of uneven length give the same logged losses and the same weights with 1 or 4 samples
    per micro batch (each micro batch's own mean, as LitGPT takes, weighed a 3-token answer like a 40-token one), and
    the first step's loss is the cross-entropy over the four samples' learned tokens, computed here directly. The
    validation loss is the token mean over the whole set, whatever the micro batch size."""
    import numpy as np
    from lightning_fabric import Fabric

    from litgpt_clone import Config
    from litgpt_clone.data.sft import SFTDataset
    from litgpt_clone.training.args import EvalArgs
    from litgpt_clone.training.fit import FitState, fit, validate

    rng = np.random.default_rng(0)
    samples = []
    for prompt, answer in [(5, 3), (4, 40), (12, 2), (3, 25), (6, 9), (2, 31), (7, 4), (3, 12)]:
        tokens = rng.integers(0, 50, prompt + answer)
        labels = tokens.copy()
        labels[:prompt] = -100
        samples.append((tokens, labels))
    config = Config(n_layer=2, n_embd=32, n_head=4, n_query_groups=2, vocab_size=50, block_size=64, mlp_class_name="GatedMLP", intermediate_size=64)
    fabric = Fabric(accelerator="cpu", devices=1)

    def train(micro, steps=2):
        torch.manual_seed(0)
        model = GPT(config)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.5))
        data = SFTDataset(samples, seed=0, shuffle=False, stats={})
        args = TrainArgs(global_batch_size=4, micro_batch_size=micro, max_steps=steps, warmup_steps=0, lr=0.5, min_lr=0.5, max_norm=None)
        eval_args = EvalArgs(interval=1000, final_validation=False)
        summary = fit(fabric, model, optimizer, data, None, args, eval_args, FitState(), 64, lambda *a: None, learned_only=True)
        val = validate(fabric, model, SFTDataset(samples[:5], 0, False, {}), args, EvalArgs(max_iters=100), learned_only=True)
        return model, start, summary, val

    one, start, one_summary, one_val = train(1)
    four, _, four_summary, four_val = train(4)
    for a, b in zip(one.parameters(), four.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(one.lm_head.weight, start["lm_head.weight"], atol=1e-3)  # (the steps moved the weights)
    assert one_summary["final_loss"] == pytest.approx(four_summary["final_loss"], abs=1e-6)
    assert one_val == pytest.approx(four_val, abs=1e-6)

    model = GPT(config)
    model.load_state_dict(start)
    with torch.no_grad():  # step 1 by hand: the four samples' learned tokens, one mean
        sums = [torch.nn.functional.cross_entropy(model(torch.tensor(t[None, :-1]))[0], torch.tensor(l[1:]), ignore_index=-100, reduction="sum")
                for t, l in samples[:4]]
    learned = sum(int((l[1:] != -100).sum()) for _, l in samples[:4])
    assert learned == 3 + 40 + 2 + 25  # every answer token is a target (the first one predicted from the prompt's last)
    per_micro_mean = sum(float(x) / int((l[1:] != -100).sum()) for x, (_, l) in zip(sums, samples[:4])) / 4  # LitGPT's
    for micro in (1, 2):
        first = train(micro, steps=1)[2]["final_loss"]
        assert first == pytest.approx(float(sum(sums)) / learned, abs=1e-5) and abs(first - per_micro_mean) > 0.01, (first, per_micro_mean)


def test_full_finetune_changes_everything(base, tmp_path):
    out = tmp_path / "full"
    finetune(base, out, "--train.max_steps", "6", "--train.lr", "1e-3", "--train.warmup_steps", "1", method="full")
    before, after = load_file(base / "base" / "lit_model.safetensors"), load_file(out / "final" / "lit_model.safetensors")
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    GPT.from_checkpoint(out / "final")


def test_qlora_on_cpu(base, tmp_path):
    out = tmp_path / "qlora"
    proc = finetune(base, out, "--quantize", "bnb.nf4", "--train.max_steps", "30", "--train.lr", "1e-2", "--lora.r", "4",
                    "--lora.mlp", "true", "--lora.head", "true")
    assert "bnb.nf4: base weights" in proc.stdout + proc.stderr
    loss = losses(out)
    assert mean([loss[s] for s in range(26, 31)]) < mean([loss[s] for s in range(1, 6)]) - 0.7, loss
    merged = GPT.from_checkpoint(out / "final")  # merged into the full-precision base
    assert merged.transformer.h[0].attn.qkv.weight.dtype == torch.float32


def test_int8_qlora_saves_and_qlora_resumes_exactly_across_a_validation(base, tmp_path):
    """int8 QLoRA writes its checkpoints (saving failed on bitsandbytes' int8 state-dict keys, and the run was lost);
    a 4-bit QLoRA run that validated before its checkpoint resumes to the uninterrupted losses (on a CPU with
    AVX512-BF16 the validation repacked the 4-bit weights in place, and the steps after it computed other numbers)."""
    import shutil

    finetune(base, tmp_path / "int8", "--quantize", "bnb.int8", "--train.max_steps", "2", "--lora.r", "4")
    saved = load_file(tmp_path / "int8" / "final" / "lora.safetensors")
    assert saved and all(".lora_" in k for k in saved)
    args = ["--quantize", "bnb.nf4", "--train.max_steps", "8", "--train.save_interval", "4", "--eval.interval", "4",
            "--train.lr", "1e-2", "--lora.r", "4"]
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    finetune(base, straight, *args)
    shutil.copytree(straight, out)  # as if the run had died after step 4: its later checkpoints gone
    shutil.rmtree(out / "step-00000008")
    shutil.rmtree(out / "final")
    finetune(base, out, *args, "--resume", "auto")
    expected, got = losses(straight), losses(out)  # steps 5-8 of the resumed run override the copied log's
    assert len(list(out.glob("logs/version_*"))) == 2
    assert [got[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]


def test_qlora_refuses_several_devices(base, tmp_path):
    proc = finetune(base, tmp_path, "--quantize", "bnb.nf4", "--devices", "2", "--train.max_steps", "1", check=False)
    assert proc.returncode == 2 and "QLoRA" in proc.stderr.strip().splitlines()[-1]


def test_lora_resume_after_sigkill(base, tmp_path):
    args = ["--train.max_steps", "24", "--train.lr", "1e-2", "--train.save_interval", "4", "--lora.r", "4"]
    finetune(base, tmp_path / "straight", *args)
    out = tmp_path / "killed"
    proc = finetune(base, out, *args, wait=False)
    deadline = time.time() + 120
    while not (out / "step-00000008").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    finetune(base, out, *args, "--resume", "auto")
    expected, got = losses(tmp_path / "straight"), losses(out)
    assert sorted(got) == list(range(1, 25))
    for step in range(9, 25):
        assert got[step] == expected[step], (step, got[step], expected[step])


@pytest.mark.slow
def test_two_processes_validate_every_sample_and_resume_lora_dropout_exactly(base, tmp_path):
    """2 validation samples over 2 processes with micro batches of 2: rank 1 has no batch. It left validation while
    rank 0's forward waited for it in DDP's buffer broadcast (a hang); now it runs a stand-in batch it does not
    count, and the val loss is the one process's, which runs the same batch. LoRA's dropout draws
    from each rank's own generator: a resumed 2-process run gave both ranks rank 0's state and its losses differed
    from the uninterrupted run's. A checkpoint that holds one state (written before there was one per rank) still
    resumes exactly on 1 process."""
    import shutil

    args = ["--train.max_steps", "4", "--train.save_interval", "2", "--train.lr", "1e-2", "--lora.r", "4",  # (dropout 0.05)
            "--data.val_fraction", "0.04", "--eval.initial_validation", "true", "--eval.max_iters", "100"]
    one = finetune(base, tmp_path / "one", *args)
    two = finetune(base, tmp_path / "two", *args, "--devices", "2", timeout=200)
    assert val_at_start(two) == pytest.approx(val_at_start(one), abs=2e-4)
    for run, processes in (("two", 2), ("one", 1)):
        out = tmp_path / f"{run}-resumed"  # as if killed after step 2's checkpoint
        shutil.copytree(tmp_path / run, out)
        shutil.rmtree(out / "step-00000004")
        shutil.rmtree(out / "final")
        if processes == 1:  # the training state as it was saved before: one CPU generator state, not a list of ranks'
            state = torch.load(out / "step-00000002" / "training_state.pt", weights_only=True)
            torch.save({**state, "rng": state["rng"][0]["cpu"]}, out / "step-00000002" / "training_state.pt")
        finetune(base, out, *args, "--devices", str(processes), "--resume", "auto", timeout=200)
        expected, got = losses(tmp_path / run), losses(out)
        assert [got[s] for s in (3, 4)] == [expected[s] for s in (3, 4)], (run, got, expected)


def test_two_processes_train_the_one_process_losses_with_sgd(base, tmp_path):
    """Each micro batch's loss is divided by the step's learned tokens over all processes and its gradient multiplied
    by their number (DDP averages): with SGD (no Adam normalization to hide a scale) and no dropout, 2 processes
    train the losses of 1 on uneven samples (checked by hand on FSDP too)."""
    args = ["--train.max_steps", "3", "--train.micro_batch_size", "1", "--optimizer", "SGD", "--train.lr", "20",
            "--train.warmup_steps", "1", "--lora.dropout", "0", "--train.save_interval", "null"]
    one, two = finetune(base, tmp_path / "one", *args), finetune(base, tmp_path / "two", *args, "--devices", "2", timeout=200)
    expected, got = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert abs(expected[2] - expected[1]) > 0.05 and got == pytest.approx(expected, abs=2e-5), (got, expected)  # (the steps move it)


def test_adapter_trains_only_its_prefixes_and_loads_back(base, tmp_path):
    out = tmp_path / "adapter"
    finetune(base, out, "--train.max_steps", "30", "--train.lr", "1e-1", "--train.save_interval", "15",
             "--adapter.start_layer", "0", "--adapter.prompt_length", "4", method="adapter")
    loss = losses(out)
    # measured: 5.73 -> 5.55 (prefixes over a random frozen base learn slowly; LoRA on the head falls > 1.0)
    assert mean([loss[s] for s in range(26, 31)]) < mean([loss[s] for s in range(1, 6)]) - 0.1, loss
    saved = load_file(out / "step-00000015" / "adapter.safetensors")
    assert set(saved) == {f"transformer.h.{i}.attn.adapter.{p}" for i in (0, 1) for p in ("prefix", "gate")}
    final = load_file(out / "final" / "lit_model.safetensors")
    base_weights = load_file(base / "base" / "lit_model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in base_weights.items())  # the base is untouched
    gen = subprocess.run([sys.executable, "-m", "litgpt_clone", "generate", str(out / "final"), "--prompt", "Repeat the word apple",
                          "--max_new_tokens", "5"], capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0 and "tokens/s" in gen.stderr, gen.stderr
    model = GPT.from_checkpoint(out / "final").eval()  # adapter_config.yaml puts the prefixes back
    assert model.transformer.h[0].attn.adapter is not None
    idx = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        assert not torch.allclose(model(idx), GPT.from_checkpoint(base / "base")(idx), atol=1e-4)


def test_adapter_starts_from_the_unchanged_model():
    from litgpt_clone import Config
    from litgpt_clone.adapter import AdapterArgs, inject_adapter

    torch.manual_seed(0)
    model = GPT(Config(n_layer=2, n_embd=32, n_head=4, n_query_groups=2, vocab_size=50, block_size=16, mlp_class_name="GatedMLP", intermediate_size=64))
    idx = torch.randint(0, 50, (2, 16))
    from litgpt_clone.config import ConfigError

    with pytest.raises(ConfigError, match="start_layer 2 is outside the model's 2 blocks: use 0 to 1"):  # one CLI line
        inject_adapter(model, AdapterArgs(prompt_length=3, start_layer=2))
    with torch.no_grad():
        before = model(idx)
        inject_adapter(model, AdapterArgs(prompt_length=3, start_layer=0))
        torch.testing.assert_close(model(idx), before)  # zero gates
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"transformer.h.{i}.attn.adapter.{p}" for i in (0, 1) for p in ("prefix", "gate")
    }


def test_file_data_without_a_path_is_one_line(base, tmp_path, capsys):
    """`--data json` or `--data chat` without --data.path: the flag to add (it was jsonargparse's dump of the
    data class's arguments, "expected a NoneType")."""
    from test_generate import cli_error

    for name in ("json", "chat"):
        style = ["--data.prompt_style", "chatml"] if name == "chat" else []  # (the base has no chat template)
        line = cli_error(capsys, "finetune", "lora", base / "base", "--data", name, *style, "--out_dir", tmp_path / name)
        assert line == f"error: --data {name} needs --data.path <file.json or file.jsonl>"


def test_finetuning_an_adapter_checkpoint_carries_its_adapter_config(base, tmp_path):
    """The prefixes of a `finetune adapter` final/ are in every lit_model.safetensors made from it (full and LoRA
    finetuning, merge_lora, pretrain --initial_checkpoint_dir): each such folder carries adapter_config.yaml too, or
    nothing could load it. A step-* folder of an adapter run says to use final/ (it advised `convert from_hf`)."""
    import yaml

    ad = tmp_path / "ad"
    finetune(base, ad, "--train.max_steps", "2", "--train.save_interval", "1", "--adapter.start_layer", "1",
             "--adapter.prompt_length", "3", method="adapter")
    config = yaml.safe_load((ad / "final" / "adapter_config.yaml").read_text())
    assert config == {"prompt_length": 3, "start_layer": 1}
    gen = subprocess.run([sys.executable, "-m", "litgpt_clone", "generate", str(ad / "step-00000001"), "--prompt", "hi"],
                         capture_output=True, text=True, timeout=120)
    assert gen.returncode == 2 and gen.stderr.strip() == (
        f"error: {ad / 'step-00000001'} holds LLaMA-Adapter weights only (a step checkpoint, which has no merge): use the "
        "run's final/ folder, the base model with the adapters inside"
    )
    args = ["--train.max_steps", "1", "--train.save_interval", "1"]
    full, lora = tmp_path / "full", tmp_path / "lora"
    for method, out in (("full", full), ("lora", lora)):
        proc = subprocess.run([sys.executable, "-m", "litgpt_clone", "finetune", method, str(ad / "final"), "--data", "json",
                               "--data.path", str(base / "data.json"), "--out_dir", str(out), "--train.global_batch_size", "2",
                               "--train.micro_batch_size", "2", "--eval.max_iters", "1", *args],
                              env={**os.environ, "LITGPT_CLONE_CACHE": str(base / "cache")}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    subprocess.run([sys.executable, "-m", "litgpt_clone", "merge_lora", str(lora / "step-00000001")], check=True, capture_output=True)
    (tmp_path / "text.txt").write_text(" ".join(WORDS * 40))
    subprocess.run([sys.executable, "-m", "litgpt_clone", "pretrain", "--initial_checkpoint_dir", str(ad / "final"), "--data", "text",
                    "--data.path", str(tmp_path / "text.txt"), "--out_dir", str(tmp_path / "pre"), "--train.max_steps", "1",
                    "--train.global_batch_size", "2", "--train.micro_batch_size", "2", "--train.max_seq_length", "32",
                    "--eval.max_iters", "1"], check=True, capture_output=True, env={**os.environ, "LITGPT_CLONE_CACHE": str(base / "cache")})
    for folder in (full / "step-00000001", full / "final", lora / "final", lora / "step-00000001", tmp_path / "pre" / "final"):
        assert yaml.safe_load((folder / "adapter_config.yaml").read_text()) == config, folder
        model = GPT.from_checkpoint(folder)  # was: "does not match model_config.yaml: unexpected ...adapter.gate"
        assert model.transformer.h[0].attn.adapter is None and model.transformer.h[1].attn.adapter.prefix.shape == (3, 64)
    assert not (lora / "step-00000002").exists() and not (ad / "final" / "lora_config.yaml").exists()


@pytest.mark.parametrize("name, text", [
    ("adapter_config.yaml", "prompt_length: 4\nevil_key: 1\n"), ("adapter_config.yaml", "- 1\n- 2\n"),
    ("lora_config.yaml", "r: 4\nalpha: oops: x\n"), ("lora_config.yaml", "r: 0\n"),
])
def test_a_broken_settings_file_beside_the_weights_is_one_line(tmp_path, name, text):
    from litgpt_clone.adapter import load_adapter_args
    from litgpt_clone.checkpoints.io import CheckpointError
    from litgpt_clone.lora import load_lora_args

    (tmp_path / name).write_text(text)
    with pytest.raises(CheckpointError, match=f"{name} is not a valid {name} \\(.+\\): the finetune run writes it") as info:
        (load_adapter_args if name.startswith("adapter") else load_lora_args)(tmp_path)
    assert "\n" not in str(info.value)


def test_max_tokens_counts_the_samples_tokens_and_wins_over_the_default_epoch(base, tmp_path):
    """--train.max_tokens stops once the samples' own tokens (no padding) reach it: steps were counted as if every
    sample were block_size long (1 step for 5,000 tokens), and finetune's default epoch overruled it."""
    from litgpt_clone.data.sft import JSON
    from litgpt_clone.tokenizer import Tokenizer

    out = tmp_path / "mt"
    proc = finetune(base, out, "--train.max_tokens", "1200", "--train.save_interval", "null")
    rows = [r for r in csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()) if r.get("tokens")]
    tokens = [int(float(r["tokens"])) for r in rows]
    assert tokens == [505, 1019, 1532], tokens  # 4 samples of ~126 tokens a step, until 1,200 are reached
    assert "step 3/3 |" in proc.stdout and "trained 1,532 tokens" in proc.stdout
    train, _ = JSON(path=base / "data.json", val_fraction=0.1).datasets(Tokenizer(base / "base"), 256, 1337)
    assert [train.tokens(0, 4 * k) for k in (1, 2, 3)] == tokens  # the samples' lengths, no padding
    epoch = finetune(base, tmp_path / "ep", "--train.save_interval", "null")  # nothing given: one epoch
    assert train.count == 43 and "step 11/11 |" in epoch.stdout
    import yaml  # the default epoch is not written as if given: a rerun of the file with --train.max_tokens trained an epoch

    assert yaml.safe_load((tmp_path / "ep" / "final" / "hyperparameters.yaml").read_text())["train"]["epochs"] is None


def test_hyperparameters_yaml_reruns_the_finetune(base, tmp_path):
    """`--config out/final/hyperparameters.yaml` reproduces the run (it was refused: the data module was written as
    {name: json, ..., field_sets: ...}, not class_path/init_args)."""
    import yaml

    finetune(base, tmp_path / "a", "--train.max_steps", "3", "--train.lr", "1e-2", "--lora.r", "4")
    written = yaml.safe_load((tmp_path / "a" / "final" / "hyperparameters.yaml").read_text())
    assert written["data"] == {"class_path": "litgpt_clone.data.sft.JSON", "init_args": {
        "path": str(base / "data.json"), "val_path": None, "mask_prompt": True, "val_fraction": 0.1, "prompt_style": "alpaca",
        "packing": False, "ignore_index": -100}}
    subprocess.run([sys.executable, "-m", "litgpt_clone", "finetune", "lora", "--config", str(tmp_path / "a" / "final" / "hyperparameters.yaml"),
                    "--out_dir", str(tmp_path / "b")], check=True, capture_output=True, env={**os.environ, "LITGPT_CLONE_CACHE": str(base / "cache")})
    assert losses(tmp_path / "b") == losses(tmp_path / "a") and len(losses(tmp_path / "a")) == 3


def test_optimizer_name_and_settings_in_any_order_and_over_a_recipe(base, tmp_path, capsys):
    """jsonargparse kept only the last of `--optimizer NAME` and `--optimizer.init_args.*`: `--optimizer.init_args.lr
    0.05 --optimizer SGD` trained at the default lr without a word, `--optimizer SGD --optimizer.init_args.momentum
    0.9` said the optimizer was not named, and a recipe's optimizer (LitGPT's class_path/init_args) lost its settings
    to `--optimizer Adam`. Now the name and every setting count, whatever their order; hyperparameters.yaml, the
    optimizer's state and the logged lr show them."""
    import yaml

    from litgpt_clone.__main__ import main
    from litgpt_clone.training.checkpoint import read_training_state

    recipe = tmp_path / "recipe.yaml"  # LitGPT's config_hub layout of the optimizer
    recipe.write_text("optimizer:\n  class_path: torch.optim.AdamW\n  init_args:\n    lr: 0.002\n    betas: [0.8, 0.9]\n")
    runs = {
        "lr_then_name": ["--optimizer.init_args.lr", "0.05", "--optimizer", "SGD"],
        "name_then_settings": ["--optimizer", "SGD", "--optimizer.init_args.momentum", "0.9", "--optimizer.lr", "0.03"],
        "recipe_then_name": ["--config", recipe, "--optimizer", "Adam", "--optimizer.init_args.eps", "1e-7"],
    }
    for name, flags in runs.items():
        out = tmp_path / name
        main(list(map(str, ["finetune", "lora", base / "base", "--data", "json", "--data.path", base / "data.json", "--train.max_steps", "1",
                            "--train.warmup_steps", "0", "--train.global_batch_size", "2", "--train.micro_batch_size", "2",
                            "--train.save_interval", "1", "--eval.final_validation", "false", "--out_dir", out, *flags])))
        capsys.readouterr()
        written = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["optimizer"]
        group = read_training_state(out / "step-00000001")["optimizer"]["param_groups"][0]
        lr = [float(r["lr"]) for r in csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()) if r.get("lr")]
        if name == "lr_then_name":
            assert written == {"class_path": "SGD", "lr": 0.05} and lr == [0.05] and group["momentum"] == 0
        elif name == "name_then_settings":
            assert written == {"class_path": "SGD", "momentum": 0.9, "lr": 0.03} and lr == [0.03] and group["momentum"] == 0.9
        else:
            assert written == {"class_path": "Adam", "lr": 0.002, "betas": [0.8, 0.9], "eps": 1e-7} and lr == [0.002]
            assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-7
    # a recipe's setting the newly named optimizer lacks is named, with the way to drop it
    line = cli_error(capsys, "finetune", "lora", "--config", recipe, base / "base", "--optimizer", "SGD")
    assert line == (
        "error: --optimizer SGD has no setting 'betas': it takes lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, "
        """differentiable, fused (settings given before, or in a recipe, stay when --optimizer names another; --optimizer '{"class_path": "SGD"}' drops them)"""
    )


def test_lora_resume_with_other_settings_and_mistaken_flags_are_one_line(base, tmp_path, capsys):
    """Resuming with another --lora.r was a size-mismatch traceback, with new targets a silently mixed run;
    --lora.layers outside the model trained nothing and failed; merge_lora into another model and finetune's
    --train.tie_embeddings (ignored) and an unknown --data name ("expected a NoneType") are one line each."""
    from test_generate import cli_error

    from litgpt_clone.__main__ import main

    out = tmp_path / "r"
    finetune(base, out, "--train.max_steps", "2", "--train.save_interval", "2", "--lora.r", "4")
    common = [base / "base", "--data", "json", "--data.path", base / "data.json", "--train.max_steps", "4", "--train.global_batch_size", "4",
              "--train.micro_batch_size", "2", "--out_dir", out]
    step = out / "step-00000002"
    for flags, differ in ((["--lora.r", "8"], "--lora.r 4 there, 8 here"), (["--lora.r", "4", "--lora.mlp", "true"], "--lora.mlp false there, true here")):
        with pytest.raises(SystemExit) as exit_:  # (after the data and the model: Lightning's seed line comes first)
            main(list(map(str, ["finetune", "lora", *common, *flags, "--resume", "auto"])))
        assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: {step} was trained with other lora settings ({differ}): resume with the same --lora.* values, or give another --out_dir"
        )
    for changed in (["--seed", "7"], ["--train.global_batch_size", "2"]):  # other samples, or another order of each step's
        with pytest.raises(SystemExit) as exit_:  # under the checkpoint's data position: skipped or repeated silently
            main(list(map(str, ["finetune", "lora", *common, "--lora.r", "4", *changed, "--resume", "auto"])))
        assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith(
            f"error: {step} was trained on another data stream: its data position counts samples of its own"
        ), changed
    assert cli_error(capsys, "finetune", "lora", *common, "--lora.layers", "[5, 9]") == (
        "error: --lora.layers [5, 9] is outside the model's 2 blocks: give [start, end) with 0 <= start < end <= 2"
    )
    assert cli_error(capsys, "finetune", "full", *common, "--train.tie_embeddings", "true") == (
        f"error: --train.tie_embeddings true: finetuning keeps the checkpoint's own (tie_embeddings false in {base / 'base'}): drop the flag"
    )
    assert cli_error(capsys, "finetune", "lora", base / "base", "--data", "foo").startswith(
        "error: unknown --data foo: use one of alpaca, dolly, json, chat ("
    )
    import shutil

    other = tmp_path / "other"
    shutil.copytree(base / "base", other)
    (other / "model_config.yaml").write_text((other / "model_config.yaml").read_text().replace("intermediate_size: 128", "intermediate_size: 256"))
    assert cli_error(capsys, "merge_lora", step, "--base", other) == (
        f"error: {step} holds adapters trained on another model than {other} (intermediate_size 128 there, 256 in the base): "
        "give the base it was finetuned from with --base"
    )


def test_lora_on_a_tied_head_is_refused_before_training():
    """The head of a tied model is its embedding: its adapters cannot be merged into final/. This was found out after
    the whole run (a traceback, no final/); now injecting refuses it, and merging such adapters is one line too."""
    from litgpt_clone import Config
    from litgpt_clone.config import ConfigError
    from litgpt_clone.lora import merge_into

    config = Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50, block_size=16, tie_embeddings=True)
    with pytest.raises(ConfigError, match=r"^--lora.head on a model whose output head is its embedding .*drop --lora.head$"):
        inject_lora(GPT(config), LoRAArgs(r=2, head=True))
    inject_lora(GPT(config), LoRAArgs(r=2))  # the other targets are fine
    untied = dataclasses.replace(config, tie_embeddings=False)
    adapters = lora_state(inject_lora(GPT(untied), LoRAArgs(r=2, head=True)).state_dict())
    with pytest.raises(ConfigError, match="adapt lm_head, which this model shares with its embedding"):
        merge_into(GPT(untied).state_dict(), adapters, config, LoRAArgs(r=2, head=True))
