"""LoRA: low-rank adapters wrapped around the linear layers of a built ``GPT``.

``inject_lora(model, LoRAArgs(...))`` swaps each targeted ``nn.Linear`` (or bitsandbytes 4-bit/8-bit linear, for
QLoRA) for a ``LoRALinear`` that keeps the original layer as ``base`` and adds ``scale * B @ A`` to chosen row
ranges of its output. The fused ``attn.qkv`` gets one adapter per enabled part (query, key, value), so
``--lora.key false`` really leaves the keys alone. ``merge_lora`` folds the adapters into the weights and puts
plain ``nn.Linear`` layers back. Nothing else in the model changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from litgpt_clone.config import ConfigError
from litgpt_clone.model import GPT


@dataclass
class LoRAArgs:
    r: int = 8
    """Rank of the adapters."""
    alpha: int = 16
    """Adapters are scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    query: bool = True
    """Adapt the query projection."""
    key: bool = False
    """Adapt the key projection."""
    value: bool = True
    """Adapt the value projection."""
    projection: bool = False
    """Adapt the attention output projection."""
    mlp: bool = False
    """Adapt every MLP linear layer (experts included)."""
    head: bool = False
    """Adapt the output head."""
    layers: Optional[tuple[int, int]] = None
    """Only blocks in [start, end) get adapters; None means all."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"--lora.r is {self.r}: the rank of the adapters must be 1 or more (8-64 are usual)")
        if not any((self.query, self.key, self.value, self.projection, self.mlp, self.head)):
            raise ConfigError("LoRA has no target: enable at least one of --lora.query/key/value/projection/mlp/head")


class LoRALinear(nn.Module):
    """``base(x)`` plus a low-rank update on each of ``slices`` (row ranges of the output)."""

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], r: int, alpha: int, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.slices = slices
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        in_features, out_features = base.in_features, base.out_features
        device = next(p.device for p in base.parameters())
        self.lora_A = nn.ParameterDict({k: nn.Parameter(torch.empty(r, in_features, device=device)) for k in slices})
        self.lora_B = nn.ParameterDict({k: nn.Parameter(torch.zeros(e - s, r, device=device)) for k, (s, e) in slices.items()})
        self.out_features = out_features
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # B starts at zero: the model is unchanged at step 0

    @property
    def in_features(self) -> int:
        return self.base.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        parts = sorted(self.slices, key=self.slices.get)
        a = torch.cat([self.lora_A[k] for k in parts]) if len(parts) > 1 else self.lora_A[parts[0]]  # (parts * r, in)
        h = self.dropout(x).to(a.dtype) @ a.T  # (..., parts * r): every part's A in one matmul
        b = self.stacked_B(parts).to(y.dtype)  # (out, parts * r)
        # y + h @ b.T in one call: no full-width zero padding, concatenation or separate add of activations
        return torch.addmm(y.reshape(-1, self.out_features), h.reshape(-1, h.size(-1)).to(y.dtype), b.T).view(y.shape)

    def stacked_B(self, parts: list[str]) -> torch.Tensor:
        """The scaled ``B`` of every part as one (out_features, parts * r) matrix: part ``i``'s ``B`` in its output rows
        and columns ``i * r .. (i + 1) * r``, zeros elsewhere (rows without an adapter, other parts' columns)."""
        if len(parts) == 1 and self.slices[parts[0]] == (0, self.out_features):
            return self.lora_B[parts[0]] * self.scale
        blocks, pos = [], 0
        r = self.lora_B[parts[0]].size(1)
        for i, name in enumerate(parts):
            start, end = self.slices[name]
            b = self.lora_B[name] * self.scale
            if start > pos:
                blocks.append(b.new_zeros(start - pos, r * len(parts)))
            blocks.append(nn.functional.pad(b, (i * r, (len(parts) - 1 - i) * r)))  # (end - start, parts * r)
            pos = end
        if pos < self.out_features:
            blocks.append(blocks[-1].new_zeros(self.out_features - pos, r * len(parts)))
        return torch.cat(blocks)

    def delta_weight(self) -> torch.Tensor:
        """The (out, in) update that merging adds to the base weight."""
        delta = torch.zeros(self.out_features, self.in_features, device=self.lora_A[next(iter(self.slices))].device)
        for name, (start, end) in self.slices.items():
            delta[start:end] = self.lora_B[name] @ self.lora_A[name] * self.scale
        return delta


def check_layers(args: LoRAArgs, n_layer: int) -> tuple[int, int]:
    """The block range ``[start, end)`` that gets adapters; a ``ConfigError`` when ``--lora.layers`` is outside the model."""
    start, end = args.layers or (0, n_layer)
    if not 0 <= start < end <= n_layer:
        raise ConfigError(
            f"--lora.layers [{start}, {end}] is outside the model's {n_layer} blocks: give [start, end) with "
            f"0 <= start < end <= {n_layer}"
        )
    return start, end


def targets(model: GPT, args: LoRAArgs) -> dict[str, dict[str, tuple[int, int]]]:
    """Module name -> the output slices to adapt."""
    c = model.config
    q, kv = c.n_head * c.head_size, c.n_query_groups * c.head_size
    qkv_parts = {"query": (0, q), "key": (q, q + kv), "value": (q + kv, q + 2 * kv)}
    wanted = {k: v for k, v in qkv_parts.items() if getattr(args, k)}
    start, end = check_layers(args, c.n_layer)
    out = {}
    for name, module in model.named_modules():
        if not hasattr(module, "in_features") or isinstance(module, LoRALinear):
            continue
        full = {"all": (0, module.out_features)}
        if name.startswith("transformer.h."):
            layer = int(name.split(".")[2])
            if not start <= layer < end:
                continue
            if name.endswith("attn.qkv") and wanted:
                out[name] = wanted
            elif name.endswith("attn.proj") and args.projection:
                out[name] = full
            elif ".mlp." in name and args.mlp and not name.endswith("mlp.gate"):
                out[name] = full
        elif name == "lm_head" and args.head:
            out[name] = full
    return out


TIED_HEAD = "--lora.head on a model whose output head is its embedding (tie_embeddings): the adapters could not be merged without changing the embedding; drop --lora.head"
TIED_MERGE = "the adapters adapt lm_head, which this model shares with its embedding: merged, the embedding would change too; serve them unmerged (serve --adapters)"


def inject_lora(model: GPT, args: LoRAArgs) -> GPT:
    """Wrap the targeted layers in place and freeze everything but the adapters."""
    if args.head and model.config.tie_embeddings:  # refused before training, not when final/ is merged
        raise ConfigError(TIED_HEAD)
    if any(isinstance(m, LoRALinear) for m in model.modules()):  # (a notebook cell run twice froze the first adapters)
        raise ConfigError("this model has LoRA adapters already: merge them first (merge_lora(model)), or inject into a freshly loaded model")
    for p in model.parameters():
        p.requires_grad = False
    for name, slices in targets(model, args).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), slices, args.r, args.alpha, args.dropout))
    return model


def load_lora_args(folder) -> LoRAArgs:
    """The ``LoRAArgs`` a ``finetune lora`` checkpoint folder was trained with (its lora_config.yaml)."""
    from pathlib import Path

    from litgpt_clone.checkpoints.io import read_settings

    args = read_settings(Path(folder) / "lora_config.yaml", LoRAArgs)
    args.layers = tuple(args.layers) if args.layers else None  # (YAML has lists)
    return args


def lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapter weights of a (full) state dict."""
    return {k: v for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def base_key(key: str) -> str:
    """The key a wrapped layer's base weight has in an unwrapped model (``attn.qkv.base.weight`` -> ``attn.qkv.weight``)."""
    return key.replace(".base.", ".")


@torch.no_grad()
def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its base weight and put the plain layer back (the base must be full precision)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            if not isinstance(module.base, nn.Linear):
                raise TypeError(f"{name} is {type(module.base).__name__}, not a full-precision Linear: merge into a full-precision copy of the base (merge_lora --base)")
            module.base.weight += module.delta_weight().to(module.base.weight.dtype)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base)
    return model


@torch.no_grad()
def merge_into(base: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], config, args: LoRAArgs) -> dict[str, torch.Tensor]:
    """A native state dict: ``base`` (full-precision weights) with every adapter of ``adapters`` folded in.

    Works from saved files alone, so the merged checkpoint of a QLoRA run (whose live base is 4-bit) is exact.
    """
    from litgpt_clone.checkpoints.peft_format import state_updates

    return merge_updates(base, state_updates(adapters, args, config), config)


@torch.no_grad()
def merge_updates(base: dict[str, torch.Tensor], updates: dict, config) -> dict[str, torch.Tensor]:
    """``base`` with each layer's update (``peft_format.Update``: ours or a PEFT adapter's) folded into its weight."""
    merged = dict(base)
    for name, update in updates.items():
        if name == "lm_head" and config.tie_embeddings:
            raise ConfigError(TIED_MERGE)
        weight = base[f"{name}.weight"]
        merged[f"{name}.weight"] = (weight.float() + update.B @ update.A).to(weight.dtype)
    return merged
