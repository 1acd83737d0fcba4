"""The whole network in one file, read top to bottom: norms -> RoPE -> KV cache -> attention -> MLPs -> Block -> GPT.

Every switch is a field of ``Config``; nothing here looks at a model's name.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from litgpt_clone.config import Config


# ----------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6, unit_offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps
        self.unit_offset = unit_offset
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return RMSNormFunction.apply(x, self.weight, self.eps, self.unit_offset)
        if x.is_cuda and not self.unit_offset and x.dtype == self.weight.dtype and not torch.compiler.is_compiling():
            # one CUDA kernel instead of eight, for launch-bound eager steps (inductor fuses the plain ops itself); it
            # multiplies by the weight before casting back, not after: at most one bf16 ulp from transformers' order
            return torch.ops.aten._fused_rms_norm(x, [x.size(-1)], self.weight, self.eps)[0]
        return rms_norm(x, self.weight, self.eps, self.unit_offset)[0]

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.unit_offset else nn.init.ones_(self.weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, 1 / rms(x) in fp32) of an RMSNorm, computed in fp32 as transformers does: the weight multiplies after
    the cast back to x's dtype (Gemma: by (1 + w) in fp32, before the cast)."""
    xf = x.float()
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xhat = xf * inv
    if unit_offset:
        return (xhat * (1.0 + weight.float())).to(x.dtype), inv
    return weight * xhat.to(x.dtype), inv


class RMSNormFunction(torch.autograd.Function):
    """``rms_norm`` keeping only x (in its dtype) and 1 / rms(x) for the backward pass; autograd kept an fp32 copy
    of x and x / rms(x) besides (6 bytes per element of a bf16 x, now 2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
        out, inv = rms_norm(x, weight, eps, unit_offset)
        ctx.save_for_backward(x, weight, inv)
        ctx.unit_offset = unit_offset
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, inv = ctx.saved_tensors
        xhat = x.float() * inv
        grad_xhat = grad.float() * (1.0 + weight.float()) if ctx.unit_offset else (grad * weight).float()
        grad_x = inv * (grad_xhat - xhat * (grad_xhat * xhat).mean(-1, keepdim=True))  # through x / rms(x)
        grad_weight = None
        if ctx.needs_input_grad[1]:  # a frozen weight (LoRA) needs none
            grad_weight = grad.float() * xhat if ctx.unit_offset else grad * xhat.to(x.dtype)
            grad_weight = grad_weight.reshape(-1, grad_weight.size(-1)).sum(0).to(weight.dtype)
        return grad_x.to(x.dtype), grad_weight, None, None


def build_norm(config: Config, size: Optional[int] = None) -> nn.Module:
    size = size or config.n_embd
    if config.norm_class_name == "RMSNorm":
        return RMSNorm(size, eps=config.norm_eps, unit_offset=config.norm_unit_offset)
    return nn.LayerNorm(size, eps=config.norm_eps, elementwise_affine=config.norm_affine, bias=config.norm_affine)


# ----------------------------------------------------------------------------- rotary position embedding
def rope_inv_freq(config: Config, base: float, scaling: Optional[dict], long: bool = False) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rotated channels and the attention factor that scales cos/sin.

    ``long`` picks longrope's long factors (used while a sequence is longer than the original context).
    """
    dim = config.rope_n_elem
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # HF's exact recipe
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq, 1.0
    factor = scaling.get("factor", 1.0)
    if kind == "linear":
        return inv_freq / factor, 1.0
    original = scaling.get("original_max_position_embeddings") or config.block_size
    if kind == "llama3":
        low_wavelen = original / scaling["low_freq_factor"]
        high_wavelen = original / scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - scaling["low_freq_factor"]) / (scaling["high_freq_factor"] - scaling["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = scaling.get("attention_factor")
        if attention is None:
            if scaling.get("mscale") and scaling.get("mscale_all_dim"):
                attention = mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"])
            else:
                attention = mscale(factor)

        def correction_dim(rotations: float) -> float:
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(scaling.get("beta_fast") or 32), correction_dim(scaling.get("beta_slow") or 1)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low if high != low else 0.001)).clamp(0, 1)
        extrapolate = 1 - ramp  # 1 keeps the original frequency, 0 interpolates it by `factor`
        return (inv_freq / factor) * (1 - extrapolate) + inv_freq * extrapolate, attention
    if kind == "longrope":
        ext = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
        inv_freq = 1.0 / (ext * base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        attention = scaling.get("attention_factor")
        if attention is None:
            factor = scaling.get("factor") or config.block_size / original  # HF: explicit factor, else the ratio
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
        return inv_freq, attention
    raise ValueError(f"unsupported rope_type {kind!r}: use default, linear, llama3, yarn or longrope")


def build_rope_cache(config: Config, base: float, scaling: Optional[dict], seq_len: int, long: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (seq_len, rope_n_elem), in fp32."""
    inv_freq, attention = rope_inv_freq(config, base, scaling, long)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, rope_n_elem / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, rope_n_elem)
    return emb.cos() * attention, emb.sin() * attention


def rope_tables(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``apply_rope`` multiplies by: cos and (-sin, sin) over the two halves of the rotated channels, in ``dtype``.
    Made once per forward pass, not once per layer and per q and k (4 fewer kernels a call)."""
    n = cos.size(-1)
    return cos.to(dtype), torch.cat((-sin[..., : n // 2], sin[..., n // 2 :]), dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first n = ``cos.size(-1)`` channels of x (B, T, n_head, hs) by the "rotate half" convention:
    x * cos + (-x2, x1) * sin, computed as x * cos + (x2, x1) * (-sin, sin) with one roll by half the channels (no
    slices, negation or concatenation of x, whose backward passes cost as much as the forward ones). ``cos``,
    ``signed_sin``: from ``rope_tables`` (cast here if they are not in x's dtype)."""
    n = cos.size(-1)
    rot = x if n == x.size(-1) else x[..., :n]
    swapped = torch.roll(rot, n // 2, dims=-1)  # (x2, x1)
    out = rot * cos.to(x.dtype) + swapped * signed_sin.to(x.dtype)
    return out if n == x.size(-1) else torch.cat((out, x[..., n:]), dim=-1)


# ----------------------------------------------------------------------------- KV cache
class KVCache(nn.Module):
    """Static cache (B, n_query_groups, max_seq, head_size) written in place, so decode steps have fixed shapes."""

    def __init__(self, batch_size: int, max_seq: int, config: Config, device=None, dtype=None) -> None:
        super().__init__()
        shape = (batch_size, config.n_query_groups, max_seq, config.head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))  # k: (B, n_query_groups, T, hs)
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


# ----------------------------------------------------------------------------- attention
class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.sliding = config.is_sliding(layer)
        self.qkv = nn.Linear(config.n_embd, config.qkv_size, bias=config.bias or config.attn_bias)  # [q; k; v]
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        if config.norm_qk:
            q_size = config.head_size if config.norm_qk_per_head else config.n_head * config.head_size
            k_size = config.head_size if config.norm_qk_per_head else config.n_query_groups * config.head_size
            self.norm_q, self.norm_k = build_norm(config, q_size), build_norm(config, k_size)
        self.kv_cache: Optional[KVCache] = None
        self.adapter: Optional[nn.Module] = None  # set by litgpt_clone.adapter.inject_adapter (LLaMA-Adapter)
        scalar = config.attention_scores_scalar or config.head_size
        self.scale = scalar**-0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Optional[torch.Tensor], input_pos: Optional[torch.Tensor]) -> torch.Tensor:
        c = self.config
        B, T, _ = x.shape
        qkv = self.qkv(x)  # (B, T, (n_head + 2 * n_query_groups) * hs)
        if c.clip_qkv is not None:
            qkv = qkv.clamp(-c.clip_qkv, c.clip_qkv)
        H, G, hs = c.n_head, c.n_query_groups, c.head_size
        q, k, v = qkv.split((H * hs, G * hs, G * hs), dim=-1)
        if c.norm_qk and not c.norm_qk_per_head:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = q.view(B, T, H, hs), k.view(B, T, G, hs), v.view(B, T, G, hs)  # (B, T, heads, hs)
        if c.norm_qk and c.norm_qk_per_head:
            q, k = self.norm_q(q), self.norm_k(k)
        if c.rope_n_elem > 0 and c.norm_qk:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        elif c.rope_n_elem > 0:  # q and k side by side in qkv: rotated together, half the kernels
            q, k = apply_rope(qkv[..., : (H + G) * hs].view(B, T, H + G, hs), cos, sin).split((H, G), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hs)
        if v.requires_grad and torch.is_grad_enabled() and (c.rope_n_elem > 0 or c.norm_qk):
            v = v.contiguous()  # q and k are new tensors: attention keeps v for backward, not the whole qkv output
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call model.set_kv_cache(batch_size) first")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, n_query_groups, max_seq, hs)
        y = self.attend(q, k, v, mask)  # (B, n_head, T, hs)
        if self.adapter is not None:
            y = y + self.adapter(q, self)  # gated attention over learned prefix tokens
        y = y.transpose(1, 2).reshape(B, T, c.n_head * c.head_size)  # (B, T, n_head * hs)
        return self.proj(y)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        c = self.config
        if c.attention_logit_softcapping is None:
            gqa = c.n_query_groups != c.n_head
            if mask is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) > 1, scale=self.scale, enable_gqa=gqa)
            if gqa and q.size(2) == 1:  # a decode step: a group's query heads become its queries over the shared K/V
                # (SDPA runs a GQA broadcast with a mask only in its slowest kernel: 2x this on a CPU, "math" on CUDA)
                B, H, _, hs = q.shape
                y = F.scaled_dot_product_attention(q.view(B, c.n_query_groups, H // c.n_query_groups, hs), k, v, attn_mask=mask, scale=self.scale)
                return y.reshape(B, H, 1, hs)
            if gqa and q.is_cuda:  # K/V copied per query head (as transformers does): memory-efficient attention then
                k, v = (t.repeat_interleave(c.n_head // c.n_query_groups, dim=1) for t in (k, v))  # takes the mask; the
                gqa = False  # math kernel would copy them too and also write out every attention score
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)
        # SDPA cannot softcap the scores: group the query heads by their K/V head instead of copying K/V.
        B, H, T, hs = q.shape
        G = c.n_query_groups
        q = q.view(B, G, H // G, T, hs)  # (B, G, q_per_kv, T, hs)
        scores = (q @ k.unsqueeze(2).transpose(-1, -2)) * self.scale  # (B, G, q_per_kv, T, S)
        scores = torch.tanh(scores / c.attention_logit_softcapping) * c.attention_logit_softcapping
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        elif mask.dim() == 4:  # per-row mask (B, 1, T, S) -> (B, 1, 1, T, S) to broadcast over (G, q_per_kv)
            mask = mask.unsqueeze(2)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return (probs @ v.unsqueeze(2)).view(B, H, T, hs)  # (B, n_head, T, hs)


# ----------------------------------------------------------------------------- MLPs
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}
ACTIVATION_GRADS = {  # d act(a) / d a, applied to the incoming gradient: the kernels autograd itself runs
    "gelu": lambda grad, a: torch.ops.aten.gelu_backward(grad, a),
    "gelu_tanh": lambda grad, a: torch.ops.aten.gelu_backward(grad, a, approximate="tanh"),
    "silu": torch.ops.aten.silu_backward,
}


class GatedActivation(torch.autograd.Function):
    """act(a) * b, keeping only a and b for the backward pass and computing act(a) again there: autograd would also
    keep act(a), one more (tokens x intermediate size) tensor per layer. Same kernels, so the same gradients."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, act: str) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.act = act
        return ACTIVATIONS[act](a) * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        grad_a = ACTIVATION_GRADS[ctx.act](grad * b, a) if ctx.needs_input_grad[0] else None
        grad_b = grad * ACTIVATIONS[ctx.act](a) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


def gated_activation(a: torch.Tensor, b: torch.Tensor, act: str) -> torch.Tensor:
    """act(a) * b; through ``GatedActivation`` only when a gradient will be needed (no autograd overhead when decoding)."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return GatedActivation.apply(a, b, act)
    return ACTIVATIONS[act](a) * b


class GeluMLP(nn.Module):
    """proj(act(fc(x))): GPT-NeoX, Phi-2, Falcon, StarCoder2."""

    def __init__(self, config: Config, intermediate_size: Optional[int] = None) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[config.mlp_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class GatedMLP(nn.Module):
    """proj(act(fc_1(x)) * fc_2(x)): SwiGLU (Llama, Qwen, Mistral) or GeGLU (Gemma)."""

    def __init__(self, config: Config, intermediate_size: Optional[int] = None) -> None:
        super().__init__()
        size = intermediate_size or config.intermediate_size
        self.fc_1 = nn.Linear(config.n_embd, size, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, size, bias=config.bias)
        self.proj = nn.Linear(size, config.n_embd, bias=config.bias)
        self.act = config.mlp_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(gated_activation(self.fc_1(x), self.fc_2(x), self.act))


class MoE(nn.Module):
    """Top-k routed GatedMLP experts (Mixtral, Qwen3-MoE): softmax over all experts, keep the k best."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.n_expert, bias=False)
        self.experts = nn.ModuleList(GatedMLP(config, config.moe_intermediate_size) for _ in range(config.n_expert))
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        x = x.reshape(-1, C)  # (B * T, C)
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)  # (B * T, n_expert)
        weights, chosen = probs.topk(self.config.n_expert_per_token, dim=-1)  # (B * T, k)
        if self.config.moe_norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # the tokens routed to expert e
            if token.numel():
                y.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return y.view(B, T, C)


MLPS = {"GeluMLP": GeluMLP, "GatedMLP": GatedMLP, "MoE": MoE}


# ----------------------------------------------------------------------------- block
class Block(nn.Module):
    def __init__(self, config: Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.norm_1 = build_norm(config) if config.pre_norm else nn.Identity()
        self.attn = CausalSelfAttention(config, layer)
        self.post_attention_norm = build_norm(config) if config.post_attention_norm else nn.Identity()
        needs_norm_2 = config.pre_norm and not (config.parallel_residual and config.shared_attention_norm)
        self.norm_2 = build_norm(config) if needs_norm_2 else nn.Identity()
        self.mlp = MLPS[config.mlp_class_name](config)
        self.post_mlp_norm = build_norm(config) if config.post_mlp_norm else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Optional[torch.Tensor] = None, input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        x_normed = self.norm_1(x)
        h = self.post_attention_norm(self.attn(x_normed, cos, sin, mask, input_pos))
        if self.config.parallel_residual:
            mlp_in = x_normed if self.config.shared_attention_norm else self.norm_2(x)
            return x + h + self.post_mlp_norm(self.mlp(mlp_in))
        x = x + h
        return x + self.post_mlp_norm(self.mlp(self.norm_2(x)))


# ----------------------------------------------------------------------------- GPT
class GPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=build_norm(config),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.max_seq_length = config.block_size

    # ---- construction
    @classmethod
    def from_name(cls, name: str, device: torch.device | str | None = None, **overrides) -> "GPT":
        """Build a registry model (random init, or uninitialized on ``device="meta"``)."""
        with torch.device(device or "cpu"):
            model = cls(Config.from_name(name, **overrides))
        if str(device) != "meta":
            model.init_weights()
        return model

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None) -> "GPT":
        """Build from a native checkpoint folder (or an HF repo id, downloaded and converted on first use); ``dtype``
        may be named: "float32", "bfloat16", "float16"."""
        from litgpt_clone.checkpoints.io import load_weights, resolve_checkpoint

        if isinstance(dtype, str):
            if dtype not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"dtype {dtype!r}: use float32, bfloat16 or float16 (or a torch.dtype)")
            dtype = getattr(torch, dtype)
        checkpoint_dir = resolve_checkpoint(checkpoint_dir)
        with torch.device("meta"):
            model = cls(Config.from_checkpoint(checkpoint_dir))
            if (Path(checkpoint_dir) / "adapter_config.yaml").is_file():  # finetuned with LLaMA-Adapter
                from litgpt_clone.adapter import load_adapter_args, inject_adapter

                inject_adapter(model, load_adapter_args(checkpoint_dir), freeze=False)
        load_weights(model, checkpoint_dir, device=device, dtype=dtype)
        return model

    def init_weights(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer), norms to identity."""
        std = 0.02
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = math.sqrt(2 * self.config.n_layer) if name.endswith(".proj") else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std / scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()
        self.reset_rope()

    # ---- RoPE tables and masks (buffers rebuilt whenever max_seq_length or device changes)
    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if value > self.config.block_size:
            raise ValueError(f"max_seq_length {value} is longer than the model's block_size {self.config.block_size}")
        self._max_seq_length = value
        self.reset_rope()

    def reset_rope(self, device: Optional[torch.device] = None) -> None:
        """(Re)build the cos/sin tables for ``max_seq_length`` on ``device`` (default: where the weights are)."""
        c = self.config
        device = device or self.transformer.wte.weight.device
        with torch.device(device):
            cos, sin = build_rope_cache(c, c.rope_base, c.rope_scaling, self._max_seq_length)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
            if c.rope_local_base is not None:  # sliding layers rotate with their own base and no scaling
                cos, sin = build_rope_cache(c, c.rope_local_base, None, self._max_seq_length)
            self.register_buffer("cos_local", cos, persistent=False)
            self.register_buffer("sin_local", sin, persistent=False)
            self.longrope_after: Optional[int] = None
            self.longrope_rows = False  # per row (B, T positions: independent requests, as in serve), else for the batch
            if (c.rope_scaling or {}).get("rope_type") == "longrope":  # like transformers: long factors for the
                self.longrope_after = c.rope_scaling.get("original_max_position_embeddings") or c.block_size
                cos, sin = build_rope_cache(c, c.rope_base, c.rope_scaling, self._max_seq_length, long=True)
                self.register_buffer("cos_long", cos, persistent=False)  # whole call once it passes the original
                self.register_buffer("sin_long", sin, persistent=False)  # context, short factors before that

    def set_kv_cache(self, batch_size: int, max_seq_length: Optional[int] = None, device=None, dtype=None) -> None:
        max_seq = max_seq_length or self.max_seq_length
        device = device or self.transformer.wte.weight.device
        dtype = dtype or self.transformer.wte.weight.dtype  # never quantized, unlike a head that may be
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, max_seq, self.config, device=device, dtype=dtype)

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def build_mask(self, q_pos: torch.Tensor, k_len: int, window: Optional[int], key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Boolean (T, k_len) mask: key j is visible to the query at position p if j <= p (and p - j < window).

        With ``key_mask`` (B, k_len) the mask is per row, (B, 1, T, k_len): keys where ``key_mask`` is False
        (padding) are hidden, except from their own query, so that no row is all -inf (SDPA would give NaN).
        """
        k_pos = torch.arange(k_len, device=q_pos.device)
        visible = k_pos[None, :] <= q_pos[:, None]
        if window is not None:
            visible &= q_pos[:, None] - k_pos[None, :] < window
        if key_mask is not None:
            itself = k_pos[None, :] == q_pos[:, None]  # (T, k_len)
            visible = (visible & (key_mask[:, None, :] | itself)).unsqueeze(1)  # (B, 1, T, k_len)
        return visible

    # ---- forward
    def forward(
        self, idx: torch.Tensor, input_pos: Optional[torch.Tensor] = None, rope_pos: Optional[torch.Tensor] = None,
        key_mask: Optional[torch.Tensor] = None, last_only: bool = False, hidden: bool = False,
    ) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size).

        Without ``input_pos`` the whole sequence is processed from position 0. With ``input_pos`` (T,) the
        tokens are written into the KV cache at those slots and attend to everything cached before them.

        Left-padded batches (rows of different lengths) add two tensors: ``rope_pos`` (B, T), each row's own RoPE
        positions (slot minus the row's padding), and ``key_mask`` (B, k_len), True where a cache slot (or, without
        a cache, a position) holds a real token. ``last_only`` computes the logits of the last position only
        (B, 1, vocab_size), which is all generation needs. ``hidden`` returns the final-normed hidden states
        (B, T, n_embd) instead of logits, for a loss that applies the head itself (``training.loss``).
        """
        c = self.config
        B, T = idx.shape
        if input_pos is None:
            if T > self.max_seq_length:
                raise ValueError(f"sequence of {T} tokens is longer than max_seq_length {self.max_seq_length}")
            pos = torch.arange(T, device=idx.device)
            k_len = T
        else:
            pos, cache = input_pos, self.transformer.h[0].attn.kv_cache
            if cache is None:
                raise RuntimeError("input_pos given but no KV cache: call model.set_kv_cache(batch_size) first")
            k_len = cache.k.size(2)
        rpos = pos if rope_pos is None else rope_pos  # (T,) or (B, T)
        cos, sin = self.cos[rpos], self.sin[rpos]  # (T, rope_n_elem) or (B, T, rope_n_elem)
        if self.longrope_after is not None:  # chosen on the device: no host sync, and a compiled step has no graph
            top = rpos.amax(-1, keepdim=True)[..., None] if self.longrope_rows and rpos.dim() == 2 else rpos.max()  # break whose
            long = top + 1 > self.longrope_after  # guards a step skipping them would miss
            cos, sin = torch.where(long, self.cos_long[rpos], cos), torch.where(long, self.sin_long[rpos], sin)
        # in the dtype of q and k (autocast's, else the weights'): one cast here, none in the layers
        device = idx.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.transformer.wte.weight.dtype
        cos, sin = rope_tables(cos, sin, dtype)
        # sliding layers rotate with their own table where they have their own base (Gemma 3), else like the rest
        cos_l, sin_l = rope_tables(self.cos_local[rpos], self.sin_local[rpos], dtype) if c.rope_local_base is not None else (cos, sin)
        # (T, 1, rope_n_elem), or (B, T, 1, rope_n_elem) with one table per row: broadcast over the heads of (B, T, heads, hs)
        cos, sin, cos_l, sin_l = (t.unsqueeze(-2) for t in (cos, sin, cos_l, sin_l))
        needs_mask = input_pos is not None or key_mask is not None  # else SDPA's is_causal does it
        full_mask = self.build_mask(pos, k_len, None, key_mask) if needs_mask else None
        slide_mask = self.build_mask(pos, k_len, c.sliding_window, key_mask) if c.sliding_window is not None else full_mask

        x = self.transformer.wte(idx)  # (B, T, n_embd)
        if c.scale_embeddings:
            x = x * torch.tensor(c.n_embd**0.5, dtype=x.dtype)
        for block in self.transformer.h:
            if block.attn.sliding:
                x = block(x, cos_l, sin_l, slide_mask, input_pos)
            else:
                x = block(x, cos, sin, full_mask, input_pos)
        if last_only:
            x = x[:, -1:]  # (B, 1, n_embd)
        x = self.transformer.ln_f(x)
        if hidden:
            return x
        logits = self.lm_head(x)  # (B, T, vocab_size)
        if c.final_logit_softcapping is not None:
            logits = torch.tanh(logits / c.final_logit_softcapping) * c.final_logit_softcapping
        return logits


@contextmanager
def head_only_at(model, rows: torch.Tensor):
    """Inside the block, ``model(x)`` runs its output head only on the flattened positions ``rows`` (N,) of ``x``
    (B, T) and returns their logits (N, vocab_size): a forward pre-hook on ``lm_head`` picks those hidden states."""
    head = getattr(model, "module", model).lm_head  # through a wrapper (Fabric's) to the GPT
    handle = head.register_forward_pre_hook(lambda _, args: (args[0].flatten(0, 1).index_select(0, rows),))  # (N, C)
    try:
        yield
    finally:
        handle.remove()
