"""Loglikelihood requests per second on a GPU: our lm-eval model vs lm-eval's ``HFLM``, TinyLlama-1.1B shape.

The same measurement as ``benchmarks/evaluate.py`` (random weights written as a native checkpoint and exported for
transformers; the generated ``hellaswag-like`` and ``mmlu-like`` multiple-choice tasks; both models score the same
requests, rounds alternate the order), on CUDA in bf16: TinyLlama-1.1B's shape (22 layers, n_embd 2048, 32 heads /
4 KV groups, intermediate 5632, vocab 32000), 1,000 + 400 requests, batch size 32 (``--batch_size auto`` lets each
pick its own). Sized for under 8 minutes on one H100, most of it writing and loading the 2.2 GB checkpoints (an
estimate: not run on a GPU yet); stops with an error on a machine without CUDA.

    python benchmarks/gpu_evaluate.py                 # on a GPU machine
    python benchmarks/gpu_evaluate.py --smoke         # anywhere: the tiny shape, a few documents, CPU fp32
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_evaluate", Path(__file__).resolve().parent / "evaluate.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)  # by path: a module named `evaluate` would shadow the `evaluate` package


def main(argv=None) -> list[dict]:
    parser = bench.parser(__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny shape, 8 + 4 documents, 1 round, CPU fp32")
    parser.set_defaults(configs=["tinyllama-1.1b"], batch_size=32, device="cuda", dtype="bf16", threads=4)
    args = parser.parse_args(argv)
    if args.smoke:
        args.configs, args.docs, args.rounds, args.device, args.dtype, args.batch_size = ["tiny"], [8, 4], 1, "cpu", "fp32", 4
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device: run this on a GPU machine, or pass --smoke to try it on CPU")
    return bench.main(args=args)


if __name__ == "__main__":
    main()
