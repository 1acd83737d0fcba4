"""LoRA finetuning throughput: ``litgpt_clone finetune lora`` vs ``litgpt finetune_lora`` (LitGPT 0.5.13), same
model, weights, data and settings, on CPU in fp32.

Both tools run their real command line, each in a fresh process, eager (``litgpt finetune_lora`` has no compile
option, and ours runs with its default ``--compile false``):

- ours: ``python -m litgpt_clone finetune lora <native checkpoint> --data json --data.path train.json
  --data.val_path val.json ...`` (this venv);
- LitGPT: ``litgpt finetune_lora <LitGPT checkpoint> --data JSON --data.json_path <folder with train.json and
  val.json> --data.num_workers 0 ...`` (the venv made by ``benchmarks/setup_litgpt_venv.sh``).

Setup (done once, timed separately): ``--records`` instruction records (instruction / input / output) made from the
docstrings of the Python standard library (write the docstring of a named function or class; the input is its
signature, empty for every third record), split into train and validation files; a byte-level BPE tokenizer trained
on them with ``tokenizers``; one random-weight ``transformers`` ``LlamaForCausalLM`` saved with ``save_pretrained``
and converted by each tool's own converter (ours: ``convert from_hf``; LitGPT: ``convert_hf_checkpoint``, its
``litgpt convert_to_litgpt``, with the shape registered under a name), so both start from the same weights. The
setup then checks, in each venv, that both tools encode every training record to the same tokens (the Alpaca prompt,
the response, EOS; prompt masked) and that both checkpoints give the same logits.

Same settings for both: LoRA r / alpha / dropout 0 on the same projections, the same global and micro batch, fp32,
AdamW (betas 0.9 / 0.95, no weight decay), linear warmup then cosine to 0, no gradient clipping (LitGPT's
finetune_lora has none), seed 42, no validation and no step checkpoints during the runs; at the end both write the
adapters and a merged model (after the last step, outside the measured window). Each micro-batch is padded to its
longest row by both; ours (by default) also sorts each step's samples by length before splitting them into
micro-batches, which leaves the samples of a step unchanged and pads less.

Token counting, the same for both: a sample's tokens are its prompt + response + EOS (no padding), as LitGPT's
``raw_tokens_plus_prompt_template``. LitGPT logs their running sum; for ours this script rebuilds the training order
(``SFTDataset.sample``) and sums the samples of each step. The two tools visit the same records in different random
orders, so each run's count is its own.

Each run is launched under ``pretrain.WRAPPER`` (one torch thread, peak RSS at exit); this script records the wall
clock and the process CPU time (``/proc/<pid>/stat``) at every step's log line. Reported per tool, pooled over
``--rounds`` interleaved rounds (order reversed every round): tokens/s over the steps after ``--skip``, per wall
second and per process CPU second (the robust one on a shared machine); start to step 1; peak RSS; the mean loss of
the last 10 steps.

    .venv/bin/python benchmarks/finetune.py                   # 2 rounds, about 6-10 min on 2 busy cores
    .venv/bin/python benchmarks/finetune.py --rounds 1 --steps 20
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from pretrain import EOT, RESULT_TAG, STEP_LINE, WRAPPER, base_env, fmt, proc_cpu_seconds, tagged

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LITGPT_PYTHON = REPO_ROOT.parent / "litgpt-venv" / "bin" / "python"
IMPLS = ("ours", "litgpt")
NAME = "bench-finetune-llama"

# A small Llama (RMSNorm, SwiGLU, RoPE, grouped-query attention), untied head, as transformers' LlamaConfig fields.
HF_MODEL = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=1024, tie_word_embeddings=False)

# Encodes the training file with the tool's own data module, and runs its checkpoint on the first sample.
CHECK_OURS = r"""
import json, sys, torch
from pathlib import Path
from litgpt_clone.data.sft import JSON
from litgpt_clone.model import GPT
from litgpt_clone.tokenizer import Tokenizer
ckpt, data, seq = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
train, _ = JSON(path=data / "train.json", val_path=data / "val.json").datasets(Tokenizer(ckpt), seq, 42)
model = GPT.from_checkpoint(ckpt)
with torch.no_grad():
    logits = model(torch.from_numpy(train.samples[0][0][None]))[0].double()
print("@@RESULT@@ " + json.dumps({"tokens": [t.tolist() for t, _ in train.samples],
      "learned": [int((l != -100).sum()) for _, l in train.samples], "logits": logits[:, :16].tolist()}))
"""
CHECK_LITGPT = r"""
import json, sys, torch
from pathlib import Path
from litgpt import Tokenizer
from litgpt.config import Config
from litgpt.data import JSON
from litgpt.model import GPT
ckpt, data, seq = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
module = JSON(json_path=data, mask_prompt=True, num_workers=0)
module.connect(Tokenizer(ckpt), batch_size=1, max_seq_length=seq)
module.setup()
items = [module.train_dataset[i] for i in range(len(module.train_dataset))]
model = GPT(Config.from_file(ckpt / "model_config.yaml"))
model.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True))
with torch.no_grad():
    logits = model(items[0]["input_ids"][None])[0].double()
print("@@RESULT@@ " + json.dumps({"tokens": [d["input_ids"].tolist() for d in items],
      "learned": [int(d["labels"][1:].ne(-100).sum()) for d in items], "logits": logits[:, :16].tolist()}))
"""
# LitGPT's converter picks the config by name: register ours under NAME, then run it as `litgpt convert_to_litgpt` does.
CONVERT_LITGPT = r"""
import json, sys
from pathlib import Path
import litgpt.config
from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
litgpt.config.name_to_config[sys.argv[2]] = json.loads(sys.argv[3])
convert_hf_checkpoint(Path(sys.argv[1]), model_name=sys.argv[2])
"""


# ----------------------------------------------------------------------------- setup
def make_records(count: int) -> list[dict]:
    """``count`` docstring-writing records spread over the stdlib's functions and classes with a docstring."""
    candidates = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and len(ast.get_docstring(node) or "") > 40:
                candidates.append((path.stem, node))
    records = []
    for i, (module, node) in enumerate(candidates[:: max(1, len(candidates) // count)][:count]):
        doc = ast.get_docstring(node)
        if len(doc) > 700:  # cut long ones at a word boundary: every sample stays well under max_seq_length
            doc = doc[:700].rsplit(" ", 1)[0]
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        if kind == "class":
            signature = f"class {node.name}({', '.join(ast.unparse(b) for b in node.bases)}):"
        else:
            signature = f"def {node.name}({ast.unparse(node.args)}):"
        records.append({
            "instruction": f"Write the docstring of the {kind} `{node.name}` in the Python module `{module}`.",
            "input": "" if i % 3 == 2 else signature,
            "output": doc,
        })
    return records


def write_inputs(work: Path, args) -> dict:
    """Data files, tokenizer, the HF model and both tools' checkpoints under ``work``; reused when present."""
    data = work / "data"
    if not (data / "val.json").is_file():
        records = make_records(args.records)
        n_val = max(1, len(records) // 20)
        data.mkdir(parents=True, exist_ok=True)
        (data / "train.json").write_text(json.dumps(records[n_val:], indent=0))
        (data / "val.json").write_text(json.dumps(records[:n_val], indent=0))
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        train_tokenizer(hf, json.loads((data / "train.json").read_text()), args.vocab)
        save_hf_model(hf)
    ours, theirs = work / "ckpt_ours", work / "ckpt_litgpt"
    if not (ours / "lit_model.safetensors").is_file():
        run_checked([sys.executable, "-m", "litgpt_clone", "convert", "from_hf", str(hf), "--out_dir", str(ours)], "ours convert from_hf", work)
    if not (theirs / "lit_model.pth").is_file():
        shutil.rmtree(theirs, ignore_errors=True)
        shutil.copytree(hf, theirs)
        run_checked([args.litgpt_python, "-c", CONVERT_LITGPT, str(theirs), NAME, json.dumps(litgpt_config(hf))], "litgpt convert", work)
    return dict(data=data, ours=ours, litgpt=theirs, hf=json.loads((hf / "config.json").read_text()))


def train_tokenizer(hf: Path, records: list[dict], vocab_size: int) -> None:
    """A byte-level BPE over the records' text, ``EOT`` as BOS and EOS (no BOS added), as the pretrain benchmark."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = ["Below is an instruction that describes a task, paired with an input that provides further context. "
             "Write a response that appropriately completes the request.\n\n### Instruction:\n### Input:\n### Response:\n"]
    texts += [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in records]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf.mkdir(parents=True, exist_ok=True)
    tok.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "add_bos_token": False}))


def save_hf_model(hf: Path) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    eot = tok.token_to_id(EOT)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot, **HF_MODEL))
    model.save_pretrained(hf)


def litgpt_config(hf: Path) -> dict:
    """The LitGPT ``Config`` fields of the HF model in ``hf``."""
    c = json.loads((hf / "config.json").read_text())
    return dict(
        name=NAME, hf_config=dict(org="bench", name=NAME), block_size=c["max_position_embeddings"], vocab_size=c["vocab_size"],
        padded_vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_embd=c["hidden_size"],
        n_head=c["num_attention_heads"], n_query_groups=c["num_key_value_heads"], intermediate_size=c["intermediate_size"],
        norm_class_name="RMSNorm", norm_eps=c["rms_norm_eps"], mlp_class_name="LLaMAMLP", bias=False,
        parallel_residual=False, rotary_percentage=1.0, rope_base=int(HF_MODEL["rope_theta"]),
    )


def run_checked(cmd: list[str], what: str, work: Path) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=base_env(work, 1), cwd=str(REPO_ROOT))
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def result_json(proc: subprocess.CompletedProcess, what: str) -> dict:
    """The JSON a child printed after ``RESULT_TAG``; exits with the child's last lines when there is none."""
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tagged(proc, what)  # raises SystemExit with the tail of the child's output
    raise AssertionError("unreachable")


def check_same_inputs(work: Path, inputs: dict, args, impls: list[str]) -> dict:
    """Each tool's encoding of the training file and logits of its checkpoint on the first sample, compared."""
    import numpy as np

    got = {}
    for impl, python, script in (("ours", sys.executable, CHECK_OURS), ("litgpt", args.litgpt_python, CHECK_LITGPT)):
        if impl in impls:
            proc = subprocess.run([python, "-c", script, str(inputs[impl]), str(inputs["data"]), str(args.seq)],
                                  capture_output=True, text=True, env=base_env(work, 1), cwd=str(REPO_ROOT))
            got[impl] = result_json(proc, f"{impl} data/checkpoint check")
    ref = got.get("ours") or got["litgpt"]
    lengths = [len(t) for t in ref["tokens"]]
    out = dict(samples=len(lengths), tokens=sum(lengths), longest=max(lengths), mean=statistics.mean(lengths),
               learned=sum(ref["learned"]))
    if len(got) == 2:
        out["same_tokens"] = got["ours"]["tokens"] == got["litgpt"]["tokens"]
        out["same_learned"] = got["ours"]["learned"] == got["litgpt"]["learned"]
        out["logit_diff"] = float(np.abs(np.array(got["ours"]["logits"]) - np.array(got["litgpt"]["logits"])).max())
    return out


# ----------------------------------------------------------------------------- one training run
def lora_flags(args) -> dict[str, str]:
    on = set(args.lora_targets)
    return {k: str(k in on).lower() for k in ("query", "key", "value", "projection", "mlp", "head")}


def command(impl: str, run_dir: Path, inputs: dict, args, python: str) -> list[str]:
    """The tool's own finetune command: same LoRA, batches, lengths, steps and schedule (warmup, cosine to 0)."""
    head = [python, "-c", WRAPPER, str(args.threads)]
    lora = lora_flags(args)
    if impl == "ours":
        return head + [
            "litgpt_clone", "finetune", "lora", str(inputs["ours"]), "--data", "json",
            "--data.path", str(inputs["data"] / "train.json"), "--data.val_path", str(inputs["data"] / "val.json"),
            "--data.mask_prompt", "true", "--out_dir", str(run_dir), "--precision", "32-true",
            "--lora.r", str(args.r), "--lora.alpha", str(args.alpha), "--lora.dropout", "0",
            *(x for k, v in lora.items() for x in (f"--lora.{k}", v)),
            "--train.max_steps", str(args.steps), "--train.global_batch_size", str(args.batch),
            "--train.micro_batch_size", str(args.micro_batch), "--train.max_seq_length", str(args.seq),
            "--train.lr", str(args.lr), "--train.warmup_steps", str(args.warmup), "--train.min_lr", "0",
            "--train.weight_decay", "0", "--train.beta1", "0.9", "--train.beta2", "0.95", "--train.max_norm", "null",
            "--train.log_interval", "1", "--train.save_interval", "null", "--eval.interval", "1000000",
            "--eval.final_validation", "false", "--logger_name", "csv", "--seed", "42",
        ]
    optimizer = {"class_path": "torch.optim.AdamW", "init_args": {"lr": args.lr, "weight_decay": 0.0, "betas": [0.9, 0.95]}}
    return head + [
        "litgpt", "finetune_lora", str(inputs["litgpt"]), "--data", "JSON", "--data.json_path", str(inputs["data"]),
        "--data.mask_prompt", "true", "--data.num_workers", "0", "--data.seed", "42", "--out_dir", str(run_dir),
        "--precision", "32-true", "--lora_r", str(args.r), "--lora_alpha", str(args.alpha), "--lora_dropout", "0",
        *(x for k, v in lora.items() for x in (f"--lora_{k}", v)),
        "--train.max_steps", str(args.steps), "--train.epochs", "1000", "--train.global_batch_size", str(args.batch),
        "--train.micro_batch_size", str(args.micro_batch), "--train.max_seq_length", str(args.seq),
        "--train.lr_warmup_steps", str(args.warmup), "--train.log_interval", "1", "--train.save_interval", "null",
        "--eval.interval", "1000000", "--eval.initial_validation", "false", "--eval.final_validation", "false",
        "--optimizer", json.dumps(optimizer), "--logger_name", "csv", "--seed", "42",
    ]


def ours_step_tokens(inputs: dict, args) -> dict[int, int]:
    """Non-padding tokens of each optimizer step of ours: its training order rebuilt with its own dataset."""
    sys.path.insert(0, str(REPO_ROOT))
    from litgpt_clone.data.sft import JSON
    from litgpt_clone.tokenizer import Tokenizer

    data = inputs["data"]
    train, _ = JSON(path=data / "train.json", val_path=data / "val.json").datasets(Tokenizer(inputs["ours"]), args.seq, 42)
    return {s: sum(len(train.sample(i)[0]) for i in range((s - 1) * args.batch, s * args.batch)) for s in range(1, args.steps + 1)}


def logged_steps(impl: str, run_dir: Path, args, ours_tokens: dict[int, int]) -> dict[int, dict]:
    """Per optimizer step: loss and cumulative non-padding tokens (LitGPT logs them; ours are rebuilt)."""
    path = run_dir / "logs" / ("version_0" if impl == "ours" else "csv/version_0") / "metrics.csv"
    rows, total = {}, 0
    with open(path) as f:
        for row in csv.DictReader(f):
            if impl == "ours" and row.get("loss"):
                step = int(row["step"])
                total += ours_tokens[step]
                rows[step] = dict(loss=float(row["loss"]), tokens=total)
            elif impl == "litgpt" and row.get("loss") and row.get("tokens"):
                step, rest = divmod(int(row["iter"]), args.accum)  # its CSV "step" column is the iteration
                if rest == 0:  # the iteration that ends an optimizer step; its loss is the step's mean
                    rows[step] = dict(loss=float(row["loss"]), tokens=int(float(row["tokens"])))
    return rows


def run_one(impl: str, rnd: int, work: Path, inputs: dict, args, python: str, ours_tokens: dict[int, int]) -> dict:
    """One fresh training process; wall clock and CPU time recorded at every optimizer step's log line."""
    run_dir = work / "runs" / f"{impl}-r{rnd}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out_lines, marks, result = [], {}, None  # marks: step -> (wall seconds since start, process CPU seconds)
    start = time.perf_counter()
    with open(run_dir / "stderr.txt", "w") as err:
        proc = subprocess.Popen(command(impl, run_dir, inputs, args, python), stdout=subprocess.PIPE, stderr=err, text=True,
                                env=base_env(work, args.threads), cwd=str(run_dir))
        for line in proc.stdout:
            stamp = (time.perf_counter() - start, proc_cpu_seconds(proc.pid))
            out_lines.append(line.rstrip("\n"))
            if line.startswith(RESULT_TAG):
                result = json.loads(line[len(RESULT_TAG):])
            elif m := STEP_LINE[impl].search(line):
                n = int(m.group(1))
                if impl == "ours" or n % args.accum == 0:  # LitGPT prints a line per micro-batch iteration
                    marks[n if impl == "ours" else n // args.accum] = stamp
        proc.wait()
    wall = time.perf_counter() - start
    (run_dir / "stdout.txt").write_text("\n".join(out_lines) + "\n")
    if proc.returncode != 0 or result is None or len(marks) < args.steps:
        tail = "\n".join(((run_dir / "stderr.txt").read_text().strip().splitlines() + out_lines)[-25:])
        return dict(impl=impl, round=rnd, wall_s=wall, error=f"exit {proc.returncode}, {len(marks)} step lines:\n{tail}")
    rows = logged_steps(impl, run_dir, args, ours_tokens)
    first, last = args.skip, args.steps
    cpu = marks[last][1] - marks[first][1] if None not in (marks[last][1], marks[first][1]) else None
    return dict(
        impl=impl, round=rnd, wall_s=wall, tokens=rows[last]["tokens"] - rows[first]["tokens"], all_tokens=rows[last]["tokens"],
        line_time_s=marks[last][0] - marks[first][0], cpu_time_s=cpu, first_step_s=marks[1][0],
        peak_rss_kib=result["maxrss_kib"], threads=result["threads"], losses=[rows[s]["loss"] for s in range(1, last + 1)],
    )


# ----------------------------------------------------------------------------- report
def pool(runs: list[dict]) -> dict:
    cpu = [r["cpu_time_s"] for r in runs]
    tokens = sum(r["tokens"] for r in runs)
    return dict(
        tps_wall=tokens / sum(r["line_time_s"] for r in runs),
        tps_cpu=tokens / sum(cpu) if None not in cpu else None,
        first_step_s=statistics.median(r["first_step_s"] for r in runs),
        wall_s=statistics.median(r["wall_s"] for r in runs),
        peak_mib=max(r["peak_rss_kib"] for r in runs) / 1024,
        loss_last10=statistics.mean(statistics.mean(r["losses"][-10:]) for r in runs),
        tokens_per_run=statistics.mean(r["all_tokens"] for r in runs),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per tool, interleaved, order reversed each round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and OMP/MKL) in every training process")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the steady-state tokens/s")
    p.add_argument("--batch", type=int, default=8, help="global batch size (samples per optimizer step)")
    p.add_argument("--micro-batch", type=int, default=4, help="micro batch size (gradient accumulation in between)")
    p.add_argument("--seq", type=int, default=512, help="max_seq_length (no sample here is longer)")
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    p.add_argument("--lora-targets", nargs="+", default=["query", "value"],
                   choices=["query", "key", "value", "projection", "mlp", "head"], help="layers that get adapters")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=5, help="linear warmup steps")
    p.add_argument("--records", type=int, default=500, help="instruction records to make (5%% go to validation)")
    p.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size to train")
    p.add_argument("--work-dir", default=None, help="keep inputs, logs and checkpoints here (default: a temp dir, removed)")
    p.add_argument("--litgpt-python", default=str(DEFAULT_LITGPT_PYTHON), help="python of the LitGPT 0.5.13 venv")
    p.add_argument("--json", default=None, help="also write all raw per-run results to this file")
    args = p.parse_args()
    if not 0 < args.skip < args.steps - 1:
        p.error("--skip must be between 1 and --steps - 2")
    if args.batch % args.micro_batch:
        p.error("--batch must be a multiple of --micro-batch")
    args.accum = args.batch // args.micro_batch

    impls = list(args.impls)
    pythons = {"ours": sys.executable, "litgpt": args.litgpt_python}
    if "litgpt" in impls and not Path(args.litgpt_python).exists():
        impls.remove("litgpt")
        print(f"litgpt skipped: no interpreter at {args.litgpt_python} (create it with `bash benchmarks/setup_litgpt_venv.sh`)")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="finetune_bench_"))
    work.mkdir(parents=True, exist_ok=True)

    import torch

    print("# LoRA finetune benchmark: litgpt_clone vs LitGPT")
    print(f"date: {_dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, CPU {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, threads per process={args.threads}, fp32, eager")
    t_start = t0 = time.perf_counter()
    inputs = write_inputs(work, args)
    check = check_same_inputs(work, inputs, args, impls)
    ours_tokens = ours_step_tokens(inputs, args)
    h = inputs["hf"]
    print(f"setup {time.perf_counter() - t0:.1f}s (records, tokenizer, HF model, both conversions, checks); work dir {work}")
    print(f"model: Llama, {h['num_hidden_layers']} layers, n_embd {h['hidden_size']}, {h['num_attention_heads']} heads / "
          f"{h['num_key_value_heads']} KV groups, intermediate {h['intermediate_size']}, vocab {h['vocab_size']}, untied, random weights")
    print(f"data: {check['samples']} training records, {check['tokens']:,} tokens (mean {check['mean']:.0f}, longest "
          f"{check['longest']}), {check['learned']:,} of them learned (prompt masked); Alpaca prompt, EOS appended")
    if "same_tokens" in check:
        print(f"same encoding in both tools: tokens {check['same_tokens']}, learned positions {check['same_learned']}; "
              f"logits of the two checkpoints on sample 0 differ by at most {check['logit_diff']:.2e}")
    print(f"run: LoRA r {args.r}, alpha {args.alpha}, dropout 0 on {'+'.join(args.lora_targets)}; {args.steps} steps of "
          f"{args.batch} samples (micro batch {args.micro_batch}), max_seq_length {args.seq}; AdamW lr {args.lr} "
          f"(warmup {args.warmup}, cosine to 0), betas (0.9, 0.95), no weight decay, no clipping", flush=True)

    results = []
    for rnd in range(args.rounds):
        for impl in impls if rnd % 2 == 0 else impls[::-1]:
            r = run_one(impl, rnd, work, inputs, args, pythons[impl], ours_tokens)
            results.append(r)
            if "error" in r:
                print(f"  r{rnd} {impl:6s} FAILED after {r['wall_s']:.0f}s:\n" + "\n".join("    " + l for l in r["error"].splitlines()), flush=True)
                continue
            print(f"  r{rnd} {impl:6s} {r['tokens'] / r['line_time_s']:7,.0f} tok/s (wall)  "
                  f"{fmt(r['tokens'] / r['cpu_time_s'] if r['cpu_time_s'] else None, ',.0f'):>7s} tok/s (CPU)  "
                  f"step 1 at {r['first_step_s']:5.1f}s  wall {r['wall_s']:5.1f}s  peak RSS {r['peak_rss_kib'] / 1024:5.0f} MiB  "
                  f"loss(last 10) {statistics.mean(r['losses'][-10:]):.3f}  load {os.getloadavg()[0]:.1f}", flush=True)

    table = {}
    for impl in impls:
        ok = [r for r in results if r["impl"] == impl and "error" not in r]
        table[impl] = pool(ok) if ok else None
    print()
    print("| impl | tokens/s (wall) | tokens/s (CPU time) | start to step 1 s | run wall s | peak RSS MiB | tokens per run | loss, mean of last 10 steps |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for impl, s in table.items():
        if s is None:
            print(f"| {impl} | failed | - | - | - | - | - | - |")
            continue
        print(f"| {impl} | {s['tps_wall']:,.0f} | {fmt(s['tps_cpu'], ',.0f')} | {s['first_step_s']:.1f} | {s['wall_s']:.1f} | "
              f"{s['peak_mib']:.0f} | {s['tokens_per_run']:,.0f} | {s['loss_last10']:.3f} |")
    a, b = table.get("ours"), table.get("litgpt")
    if a and b:
        cpu_ratio = a["tps_cpu"] / b["tps_cpu"] if a["tps_cpu"] and b["tps_cpu"] else None
        print()
        print("| speed ours/litgpt (wall) | speed ours/litgpt (CPU time) | peak RSS ours/litgpt | loss (last 10) ours - litgpt |")
        print("|---:|---:|---:|---:|")
        print(f"| {a['tps_wall'] / b['tps_wall']:.2f}x | {fmt(cpu_ratio, '.2f', 'x')} | {a['peak_mib'] / b['peak_mib']:.2f}x | "
              f"{a['loss_last10'] - b['loss_last10']:+.3f} |")
        for rnd in range(args.rounds):
            pair = {r["impl"]: r for r in results if r["round"] == rnd and "error" not in r}
            if len(pair) == 2 and pair["ours"]["cpu_time_s"] and pair["litgpt"]["cpu_time_s"]:
                o, l = (pair[i]["tokens"] / pair[i]["cpu_time_s"] for i in ("ours", "litgpt"))
                print(f"round {rnd} ({'ours' if rnd % 2 == 0 else 'litgpt'} first): speed ours/litgpt (CPU time) {o / l:.2f}x")
    print()
    print(f"tokens = non-padding tokens (prompt + response + EOS) of the samples of steps {args.skip + 1}-{args.steps}, pooled "
          f"over {args.rounds} round(s); (wall) over the wall time between those steps' log lines, (CPU time) over the "
          f"process CPU time between them. Total wall time {time.perf_counter() - t_start:.0f}s.")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(check=check, results=results), indent=1, default=str))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
