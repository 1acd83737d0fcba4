"""Streaming detokenization: time per token of ``litgpt_clone.generate.TextStream`` vs transformers' ``TextStreamer``.

Both turn a growing list of token ids into text pieces as a server or a chat loop hands them out. ``TextStream``
decodes a short window of the latest ids per token; ``TextStreamer`` decodes everything since the last newline
(it flushes its cache at each ``\\n``). Same tokenizer for both: a byte-level BPE of ``--vocab`` tokens trained here
with ``tokenizers`` on Python stdlib source, loaded by ours and by ``PreTrainedTokenizerFast``. Two streams: source
code (a newline every ~40 characters) and the same code joined onto one line (no newline for the whole stream).
Each output is checked to equal ``decode`` of all ids. Prints microseconds per token at 64 to 8,192 tokens of output
and the ratio.

    .venv/bin/python benchmarks/detokenize.py
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path


def train_tokenizer(folder: Path, vocab: int, text: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def ours(tokenizer, ids: list[int]) -> tuple[float, str]:
    from litgpt_clone.generate import TextStream

    start = time.perf_counter()
    stream = TextStream(tokenizer)
    text = "".join(stream.add([i]) for i in ids) + stream.flush()
    return time.perf_counter() - start, text


def transformers_streamer(tokenizer, ids: list[int]) -> tuple[float, str]:
    import torch
    from transformers import TextStreamer

    pieces: list[str] = []

    class Collect(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            pieces.append(text)

    tensors = [torch.tensor([i]) for i in ids]  # generate() hands each step's token as a tensor
    start = time.perf_counter()
    streamer = Collect(tokenizer)
    for t in tensors:
        streamer.put(t)
    streamer.end()
    return time.perf_counter() - start, "".join(pieces)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 512, 2048, 8192])
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs per cell")
    args = p.parse_args()

    from transformers import PreTrainedTokenizerFast

    from litgpt_clone.tokenizer import Tokenizer

    source = "".join(Path(inspect.getfile(m)).read_text() for m in (inspect, argparse, json))
    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(Path(tmp), args.vocab, source)
        mine = Tokenizer(Path(tmp))
        theirs = PreTrainedTokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"))
        streams = {"code": mine.encode(source, bos=False).tolist(),
                   "one line": mine.encode(" ".join(source.split()), bos=False).tolist()}
        print(f"# Streaming detokenization, byte-level BPE of {args.vocab} tokens; microseconds per token, best of {args.repeats}")
        print("\n| stream | tokens | ours us/token | transformers TextStreamer us/token | ratio (theirs / ours) |")
        print("|---|---:|---:|---:|---:|")
        for name, all_ids in streams.items():
            for n in args.lengths:
                ids = all_ids[:n]
                expected = mine.decode(ids)
                best = {}
                for label, fn, tok in (("ours", ours, mine), ("transformers", transformers_streamer, theirs)):
                    times = []
                    for _ in range(args.repeats):
                        seconds, text = fn(tok, ids)
                        if text != expected:
                            raise SystemExit(f"{label} streamed text differs from decode(ids) ({name}, {n} tokens)")
                        times.append(seconds)
                    best[label] = min(times) / len(ids) * 1e6
                print(f"| {name} | {len(ids):,} | {best['ours']:.1f} | {best['transformers']:.1f} | {best['transformers'] / best['ours']:.1f}x |")


if __name__ == "__main__":
    main()
