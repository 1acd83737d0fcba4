"""The offline end-to-end demo behind the README's first command.

On data every machine has (the Python standard library's source), with no network: train a byte-level BPE
tokenizer, build a code corpus with ``prepare code`` (licenses, PII, dedup, report, token shards), pretrain a small
model on the shards for a few minutes, compare its validation loss with the unigram baseline, export it to a
Hugging Face folder and generate code from a prompt. Each step runs the real ``litgpt-clone`` command and prints
it; steps whose output exists are not redone.

Run: ``python -m litgpt_clone.demo [--out_dir demo_out] [--steps 300] [--source FOLDER]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import yaml

from litgpt_clone.checkpoints.io import write_atomic_text

MODEL = dict(
    name="demo-coder", architecture="LlamaForCausalLM", block_size=256, n_layer=4, n_embd=128, n_head=4, n_query_groups=2,
    intermediate_size=352, norm_class_name="RMSNorm", mlp_class_name="GatedMLP", mlp_activation="silu",
)

RECIPE = Path(__file__).resolve().parents[1] / "config_hub" / "pretrain" / "demo.yaml"
"""The training settings (batch, schedule, intervals); the demo passes its own paths on top."""


def stdlib_files(limit: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py"))[:limit]


def train_tokenizer(out_dir: Path, files: list[Path], vocab_size: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = out_dir / "tokenizer.json"
    if path.is_file():
        return path
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train([str(f) for f in files], trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    write_atomic_text(out_dir / "tokenizer_config.json", '{"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "add_bos_token": false}\n')
    return path


def run(step: str, *args: str) -> None:
    cmd = ["litgpt-clone", *args]
    print(f"\n[{step}] $ {shlex.join(cmd)}", flush=True)
    code = subprocess.run([sys.executable, "-m", "litgpt_clone", *args]).returncode
    if code:
        raise SystemExit(f"error: demo step {step} failed (exit status {code}); its message is above")


def unigram_baseline(corpus: Path) -> float:
    """Cross-entropy (nats/token) of the validation tokens under the training tokens' unigram distribution."""
    from litgpt_clone.data.shards import TokenShards

    train, val = TokenShards(corpus, "train"), TokenShards(corpus, "val")
    counts = Counter(train.read(0, len(train)).tolist())
    total, vocab = len(train), train.vocab_size
    val_tokens = val.read(0, len(val)).tolist()
    return -sum(math.log((counts.get(t, 0) + 1) / (total + vocab)) for t in val_tokens) / len(val_tokens)


def last_val_loss(out: Path) -> float:
    rows = [r for f in sorted(out.glob("logs/version_*/metrics.csv")) for r in csv.DictReader(f.open()) if r.get("val_loss")]
    return float(rows[-1]["val_loss"])


def check_same_options(out: Path, options: dict) -> None:
    """A rerun skips the finished steps, so it must ask for what they were run with (``out/options.json``)."""
    path = out / "options.json"
    if path.is_file() and (saved := json.loads(path.read_text())) != options:
        said = lambda o: f"--source {o['source']} --steps {o['steps']}"  # noqa: E731
        raise SystemExit(f"error: {out} holds a demo run with {said(saved)}, not {said(options)}: give another --out_dir, or delete {out} to start over")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic_text(path, json.dumps(options))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", type=Path, default=Path("demo_out"))
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps (about 0.3 s each on 2 CPU cores)")
    parser.add_argument("--source", type=Path, default=None,
                        help="folder of Python code to build the corpus from (default: the standard library's source)")
    args = parser.parse_args()
    out, start = args.out_dir, time.perf_counter()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = args.source or stdlib
    if not source.is_dir():
        raise SystemExit(f"error: --source {source} is not a folder; pass a folder of Python files")
    # ~2% of the files hold out for validation, but at least ~4 of them on a small source
    val_fraction = max(0.02, min(0.5, 4 / max(1, sum(1 for _ in source.rglob("*.py")))))

    check_same_options(out, {"source": str(source.resolve()), "steps": args.steps})

    tokenizer = out / "tokenizer"
    files = stdlib_files(300)
    train_tokenizer(tokenizer, files, vocab_size=4096)
    print(f"[1/5] tokenizer: 4096-token byte-level BPE trained on {len(files)} standard-library files -> {tokenizer}")

    corpus_root = out / "corpus"
    versions = sorted(corpus_root.glob("v[0-9]*/manifest.json")) if corpus_root.is_dir() else []
    if not versions:
        run("2/5 corpus", "prepare", "code", str(source), "--out_dir", str(corpus_root), "--tokenizer_dir", str(tokenizer),
            "--languages", "[Python]", "--exclude", '[site-packages, "*__pycache__", "test*", "idlelib", "lib2to3", "ensurepip", "encodings"]',
            "--val_fraction", f"{val_fraction:g}")
        versions = sorted(corpus_root.glob("v[0-9]*/manifest.json"))
    corpus = versions[-1].parent
    print(f"[2/5] corpus: {corpus} (report: {corpus / 'report.md'})")

    config = out / "model_config.yaml"
    if not config.is_file():
        from litgpt_clone.tokenizer import Tokenizer

        write_atomic_text(config, yaml.safe_dump({**MODEL, "vocab_size": Tokenizer(tokenizer).vocab_size}, sort_keys=False))
    pretrain_dir = out / "pretrain"
    if not (pretrain_dir / "final" / "lit_model.safetensors").is_file():
        run("3/5 pretrain", "pretrain", "--config", str(RECIPE), "--model_config", str(config), "--tokenizer_dir", str(tokenizer),
            "--data.path", str(corpus), "--out_dir", str(pretrain_dir), "--train.max_steps", str(args.steps))
    val, baseline = last_val_loss(pretrain_dir), unigram_baseline(corpus)
    print(f"[3/5] validation loss {val:.3f} nats/token vs the unigram baseline {baseline:.3f} ({baseline - val:+.3f} better)")

    hf_dir = out / "hf"
    if not (hf_dir / "config.json").is_file():
        run("4/5 export", "convert", "to_hf", str(pretrain_dir / "final"), "--out_dir", str(hf_dir))
    print(f"[4/5] Hugging Face export: {hf_dir} (AutoModelForCausalLM.from_pretrained loads it)")

    run("5/5 generate", "generate", str(pretrain_dir / "final"), "--prompt", "def ", "--max_new_tokens", "60",
        "--temperature", "0.7", "--seed", "1")
    final = pretrain_dir / "final"
    print(
        f"\ndone in {time.perf_counter() - start:.0f}s. Corpus {corpus}, report {corpus / 'report.md'}, checkpoint {final}, "
        f"logs {pretrain_dir / 'logs'}.\nNext: litgpt-clone chat {final} | litgpt-clone serve {final} | "
        f"litgpt-clone evaluate perplexity {final} --data {stdlib / 'json'}"
    )
    if val >= baseline:
        raise SystemExit("the model did not beat the unigram baseline")


if __name__ == "__main__":
    main()
