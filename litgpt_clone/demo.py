"""The offline end-to-end demo behind the README's first command.

It exercises what exists today, on data every machine has (the Python standard library's source):
train a byte-level BPE tokenizer, build a registry model shape with that vocabulary, save it as a native
checkpoint, export it to a Hugging Face folder and convert it back (weights must survive bit for bit), then load
it and print next-token probabilities. Steps whose output exists are not redone.

Run: ``python -m litgpt_clone.demo [--out_dir demo_out] [--model pythia-14m]``.
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

import torch

from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint
from litgpt_clone.checkpoints.io import load_state, model_state, save_weights, write_atomic_text
from litgpt_clone.config import Config
from litgpt_clone.model import GPT
from litgpt_clone.tokenizer import Tokenizer


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", type=Path, default=Path("demo_out"))
    parser.add_argument("--model", default="pythia-14m", help="registry name whose shape the demo model takes")
    parser.add_argument("--files", type=int, default=120, help="standard-library files to train the tokenizer on")
    args = parser.parse_args()
    out, start = args.out_dir, time.perf_counter()

    files = stdlib_files(args.files)
    tok_path = train_tokenizer(out / "native", files, vocab_size=2048)
    tokenizer = Tokenizer(out / "native")
    print(f"[1/4] tokenizer: {tokenizer.vocab_size} tokens trained on {len(files)} stdlib files -> {tok_path}")

    native = out / "native"
    if not (native / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = Config.from_name(args.model, vocab_size=tokenizer.vocab_size, block_size=512)
        model = GPT(config)
        model.init_weights()
        save_weights(model_state(model), native / "model.safetensors")
        write_atomic_text(native / "model_config.yaml", config.to_yaml())
    config = Config.from_checkpoint(native)
    n_params = sum(t.numel() for t in load_state(native / "model.safetensors").values())
    print(f"[2/4] model: {config.name} shape ({config.architecture}), {n_params / 1e6:.2f}M parameters -> {native}")

    hf_dir, back = out / "hf", out / "roundtrip"
    convert_to_hf_checkpoint(native, hf_dir)
    convert_hf_checkpoint(hf_dir, back)
    a, b = load_state(native / "model.safetensors"), load_state(back / "model.safetensors")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"[3/4] convert to_hf -> {hf_dir}, from_hf -> {back}: weights identical = {same}")
    if not same:
        raise SystemExit("round trip changed the weights")

    model = GPT.from_checkpoint(back).eval()
    prompt = "def main():\n    "
    ids = tokenizer.encode(prompt)[None]  # (1, T)
    with torch.no_grad():
        probs = model(ids)[0, -1].softmax(-1)
    top = probs.topk(5)
    print(f"[4/4] next-token probabilities after {prompt!r} (random weights, so close to uniform 1/{config.vocab_size}):")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"      {tokenizer.decode([i])!r:>14}  {p:.5f}")
    print(f"done in {time.perf_counter() - start:.1f}s. Next: `litgpt-clone models`, `litgpt-clone convert --help`.")


if __name__ == "__main__":
    main()
