"""Several LoRA adapters over one base model, chosen per row of a batch (``litgpt-clone serve --adapters``).

``attach_adapters(model, [("sql", "out/lora-sql/final"), ...])`` wraps every layer that some adapter adapts in a
``MultiLoRALinear``. The layer keeps its base weights and holds all adapters stacked: ``A`` (N + 1, R, in) and
``B`` (N + 1, out, R), entry 0 all zeros (the base model), an adapter's parts of the fused qkv side by side in the
rank dimension (its query and value updates are then one rank-2r product), ``alpha / r`` folded into ``B`` and R
the largest such rank (smaller ones padded with zeros). Before each forward, ``AdapterRows.select`` says which
adapter each row of the batch uses; a row's output is then ``base(x) + x @ A[i].T @ B[i].T``, the same as the
merged checkpoint's ``x @ (W + alpha / r * B @ A).T`` (``merge_lora``). Rows with different adapters run in one
batch: the per-row matrices are gathered and applied with two batched matmuls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn as nn

from litgpt_clone.checkpoints.io import CheckpointError
from litgpt_clone.checkpoints.peft_format import Update, read_updates
from litgpt_clone.generate import to_device
from litgpt_clone.model import GPT


class AdapterRows:
    """Which adapter (0: none) each row of the next forward uses; shared by every ``MultiLoRALinear`` of a model."""

    def __init__(self, max_rows: int, device: torch.device) -> None:
        self.ids = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.any = False

    def select(self, ids: Sequence[int]) -> None:
        self.any = any(ids)
        if self.any:
            self.ids[: len(ids)] = to_device(torch.tensor(list(ids)), self.ids.device)


class MultiLoRALinear(nn.Module):
    """``base(x)`` plus, for each row of x, the low-rank update of the adapter that row selected."""

    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, rows: AdapterRows) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("A", A, persistent=False)  # (N + 1, R, in)
        self.register_buffer("B", B, persistent=False)  # (N + 1, out, R), alpha / r included
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.rows.any:
            return y
        index = self.rows.ids[: x.size(0)]  # (B,)
        h = torch.bmm(x.to(self.A.dtype), self.A[index].transpose(1, 2))  # (B, T, R)
        return y + torch.bmm(h, self.B[index].transpose(1, 2)).to(y.dtype)  # (B, T, out)


def attach_adapters(model: GPT, adapters: Sequence[tuple[str, Union[str, Path]]], max_rows: int) -> AdapterRows:
    """Wrap ``model``'s adapted layers so that row i of a batch can use adapter ``rows.ids[i]`` (1 = the first of
    ``adapters``, a list of (name, folder written by ``finetune lora`` or a PEFT LoRA folder)). Returns the shared
    ``AdapterRows``."""
    device = model.transformer.wte.weight.device
    dtype = model.transformer.wte.weight.dtype
    layers = dict(model.named_modules())
    updates: dict[str, dict[int, Update]] = {}  # layer -> adapter -> its update
    for number, (name, folder) in enumerate(adapters, start=1):
        try:
            per_layer = read_updates(Path(folder), model.config)
        except CheckpointError as err:
            raise CheckpointError(f"adapter {name!r}: {err}") from None
        for layer, update in per_layer.items():
            if ".mlp.experts." in layer:
                raise CheckpointError(f"adapter {name!r} adapts MoE experts, which cannot be chosen per request: merge it (`merge_lora`) and serve the merged checkpoint")
            updates.setdefault(layer, {})[number] = update
    rows = AdapterRows(max_rows, device)
    for layer, per_adapter in updates.items():
        module = layers[layer]
        rank = max(u.A.size(0) for u in per_adapter.values())
        A = torch.zeros(len(adapters) + 1, rank, module.in_features)
        B = torch.zeros(len(adapters) + 1, module.out_features, rank)
        for number, u in per_adapter.items():
            A[number, : u.A.size(0)], B[number, :, : u.A.size(0)] = u.A, u.B
        parent, _, child = layer.rpartition(".")
        wrapped = MultiLoRALinear(module, A.to(device, dtype), B.to(device, dtype), rows)
        setattr(model.get_submodule(parent) if parent else model, child, wrapped)
    return rows


def check_adapters(checkpoint_dir: Union[str, Path], adapters: Sequence[tuple[str, Union[str, Path]]]) -> None:
    """Raise ``CheckpointError`` unless every adapter fits the base checkpoint (on the meta device: no weights read)."""
    from litgpt_clone.config import Config

    with torch.device("meta"):
        model = GPT(Config.from_checkpoint(checkpoint_dir))
    attach_adapters(model, adapters, max_rows=1)
