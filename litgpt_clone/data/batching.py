"""Batches of sequences of different lengths with little padding: shared by evaluation (``evaluate/lm.py``) and
finetuning (``training/fit.py``).

Interface::

    length_runs(lengths, batch_size, max_padding=MAX_PADDING, free_tokens=0) -> list[list[int]]
    free_tokens(n_embd, device) -> int      # how many tokens a forward pass holds for the cost of its launches
"""

from __future__ import annotations

from typing import Sequence

import torch

MAX_PADDING = 0.1
"""The share of a run's tokens that padding may add (evaluation used 0.25 before 2026-11-27: 0.1 ran the 134M
MMLU-shaped benchmark 1.15x faster)."""


FREE_TOKENS_GPU = 2**33
"""On a GPU, a forward pass of up to ``FREE_TOKENS_GPU / n_embd**2`` tokens (2,048 for TinyLlama's 2,048 channels)
is taken to cost what its kernel launches and Python cost, however many tokens it holds: the H200 run of 2026-11-27
spent 1.6 s of an evaluation's 2.1 s in 106 such launch-bound passes of TinyLlama. The compute per token grows with
n_embd**2, the launches do not. An estimate, not a measured threshold."""


def free_tokens(n_embd: int, device: torch.device) -> int:
    """Tokens a forward pass of a model of width ``n_embd`` holds for about the cost of its launches: 0 on a CPU
    (every token costs), ``FREE_TOKENS_GPU / n_embd**2`` on a GPU. Evaluation does not cut batches this small for
    padding; the server prefills a burst of requests in chunks at least this large."""
    return 0 if device.type == "cpu" else FREE_TOKENS_GPU // n_embd**2


def length_runs(lengths: Sequence[int], batch_size: int, max_padding: float = MAX_PADDING, free_tokens: int = 0) -> list[list[int]]:
    """The positions of ``lengths`` (sorted longest first) cut into runs of at most ``batch_size`` in which padding
    every sequence to the first (longest) adds at most ``max_padding`` of the run's tokens. A run of at most
    ``free_tokens`` tokens once padded is not cut at all (on a GPU, a pass that small costs its kernel launches
    however many sequences and padding it holds)."""
    runs, run, total = [], [], 0
    for i, n in enumerate(lengths):
        padded = (len(run) + 1) * lengths[run[0]] if run else 0
        if run and padded > free_tokens and (len(run) >= batch_size or padded > (1 + max_padding) * (total + n)):
            runs.append(run)
            run, total = [], 0
        run.append(i)
        total += n
    return runs + [run] if run else runs
