"""LLaMA-Adapter: learned prefix tokens that the top blocks' queries attend to, through a zero-initialized gate.

``inject_adapter(model, AdapterArgs(...))`` gives blocks ``start_layer..n_layer`` a ``PrefixAdapter`` (attached
to ``CausalSelfAttention.adapter``) and freezes everything else. The prefix goes through the block's own (frozen)
query/key/value projection, without RoPE; its attention output is multiplied by a per-head gate that starts at
zero, so training starts from the unchanged model. Adapters are not merged into the weights: a checkpoint carries
them in ``lit_model.safetensors`` with ``adapter_config.yaml``, and ``GPT.from_checkpoint`` puts them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from litgpt_clone.config import Config, ConfigError


@dataclass
class AdapterArgs:
    prompt_length: int = 10
    """Learned prefix tokens per adapted block."""
    start_layer: int = 2
    """Blocks from this index to the last get an adapter."""


class PrefixAdapter(nn.Module):
    def __init__(self, config: Config, prompt_length: int) -> None:
        super().__init__()
        self.prefix = nn.Parameter(torch.randn(prompt_length, config.n_embd) * 0.02)
        self.gate = nn.Parameter(torch.zeros(1, config.n_head, 1, 1))

    def forward(self, q: torch.Tensor, attn: nn.Module) -> torch.Tensor:
        """q (B, n_head, T, hs) after RoPE -> gated attention output over the prefix, (B, n_head, T, hs)."""
        c = attn.config
        L = self.prefix.size(0)
        qkv = attn.qkv(self.prefix.to(q.dtype))  # (L, qkv_size)
        if c.clip_qkv is not None:
            qkv = qkv.clamp(-c.clip_qkv, c.clip_qkv)
        _, k, v = qkv.split((c.n_head * c.head_size, c.n_query_groups * c.head_size, c.n_query_groups * c.head_size), dim=-1)
        if c.norm_qk and not c.norm_qk_per_head:
            k = attn.norm_k(k)
        k = k.view(1, L, c.n_query_groups, c.head_size).transpose(1, 2).expand(q.size(0), -1, -1, -1)  # (B, G, L, hs)
        v = v.view(1, L, c.n_query_groups, c.head_size).transpose(1, 2).expand(q.size(0), -1, -1, -1)  # (B, G, L, hs)
        if c.norm_qk and c.norm_qk_per_head:
            k = attn.norm_k(k)
        y = F.scaled_dot_product_attention(q, k, v, scale=attn.scale, enable_gqa=c.n_query_groups != c.n_head)
        return self.gate.to(y.dtype) * y


def inject_adapter(model: nn.Module, args: AdapterArgs, freeze: bool = True) -> nn.Module:
    """Attach prefix adapters to blocks ``start_layer..`` of a built GPT; with ``freeze``, only they train."""
    if not 0 <= args.start_layer < model.config.n_layer:
        raise ConfigError(f"--adapter.start_layer {args.start_layer} is outside the model's {model.config.n_layer} blocks: use 0 to {model.config.n_layer - 1}")
    if freeze:
        for p in model.parameters():
            p.requires_grad = False
    device = model.transformer.wte.weight.device
    for block in model.transformer.h[args.start_layer :]:
        block.attn.adapter = PrefixAdapter(model.config, args.prompt_length).to(device)
    return model


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapter weights of a full state dict."""
    return {k: v for k, v in state.items() if ".attn.adapter." in k}


def load_adapter_args(checkpoint_dir: Path) -> AdapterArgs:
    from litgpt_clone.checkpoints.io import read_settings

    return read_settings(Path(checkpoint_dir) / "adapter_config.yaml", AdapterArgs)
