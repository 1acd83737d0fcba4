"""Live tensor bytes on any device: the CPU stand-in for ``torch.cuda.memory_allocated`` and its peak.

    with LiveTensorBytes(model.parameters()) as memory:   # tensors made before the block are counted if passed
        loss = step(); loss.backward()
    memory.now, memory.peak                               # bytes of tensor storage alive now / at most at once

Every storage an op makes inside the block is counted once (views share it) from the op that makes it until it is
freed. It sees what a caching allocator would hand out, without the allocator's rounding and library workspaces:
for the Llama-3.2-1B LoRA step of ``benchmarks/gpu_finetune.py`` it counts 2.30 GiB resident and 3.19 GiB peak where
an H200 reported 2.30 and 3.26 (``benchmarks/gpu_finetune.py --live-bytes`` runs that step on the CPU).
"""

from __future__ import annotations

import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only


class LiveTensorBytes(TorchDispatchMode):
    """Counts live tensor storage bytes and their peak while active (see the module docstring)."""

    def __init__(self, tensors: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.now = self.peak = 0
        self._alive: dict[int, weakref.ref] = {}  # storage id -> a reference whose callback uncounts it
        for t in tensors:
            self.add(t)

    def add(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage (once) until it is freed."""
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._alive or storage.device.type == "meta":
            return
        size = storage.nbytes()

        def freed(_, key=key, size=size) -> None:
            self.now -= size
            self._alive.pop(key, None)

        self._alive[key] = weakref.ref(storage, freed)
        self.now += size
        self.peak = max(self.peak, self.now)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self.add, out)
        return out
