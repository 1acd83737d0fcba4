"""The training loss: token cross-entropy, fused with the output head where it can be.

``F.cross_entropy(model(x), y)`` materializes the (tokens x vocab) logits, their log-softmax and the gradient of
both: three tensors as large as the batch times the vocabulary (for a 128K vocabulary, 1 GB per 2K tokens in fp32),
written once and read once each. ``linear_cross_entropy`` takes the final hidden states instead and runs the head
and the loss a chunk of rows at a time, computing the gradient of the hidden states and of the head's weight in the
same pass (the gradient of the mean cross-entropy is softmax minus one-hot, known as soon as the logits are), so
the full logits never exist and the chunk's logits stay in cache. Same loss and gradients as the unfused code
(tested against it, with and without Gemma's logit softcapping); on a CPU it is also faster (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy; targets of -100 (prompt or padding in finetuning) do not count."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def fusable_head(model: nn.Module) -> Optional[nn.Linear]:
    """The GPT's output head if ``linear_cross_entropy`` can stand in for it: a plain ``nn.Linear`` whose weight is a
    whole local tensor (not a LoRA or quantized layer, not an FSDP shard); else None, and the loss runs unfused."""
    head = getattr(model, "module", model).lm_head  # through Fabric's wrapper to the GPT
    if type(head) is not nn.Linear or type(head.weight) is not nn.Parameter:
        return None
    return head


def chunk_rows(vocab_size: int, device: torch.device, weight_grad: bool = False) -> int:
    """Rows of logits per chunk: about 4 MB of fp32 logits and at least 256 rows on a CPU (measured there: 2,048 rows
    x 32K vocab run 7% faster than unfused in chunks of 256, 1.4x faster with a 2K vocab); on a GPU at least 128 rows
    (one tile of a matmul) and about 64 MB of logits, or 256 MB when the head trains (``weight_grad``).

    A chunk's temporaries (its logits in the matmuls' dtype and in fp32) add to the activations at the peak of a
    step: 226 MiB for 308 rows of a 128K vocabulary in one chunk, 94 MiB in chunks of 130 (live tensor bytes of a
    Llama-3.2-1B LoRA step, counted on the CPU), so a frozen head (LoRA, QLoRA) gets small chunks. A head that trains
    adds each chunk's (vocab x n_embd) weight gradient to the sum, the same traffic whatever the chunk's rows, so it
    gets 4x larger chunks: fewer of those sums and kernel launches (pythia-160m: 12 chunks of 1,334 rows per 16K
    tokens, the size of the H200 pretraining run of 2026-11-27, instead of 49 of 333)."""
    if device.type == "cpu":
        return max(256, 2**20 // vocab_size)
    return max(128, (2**26 if weight_grad else 2**24) // vocab_size)


def linear_cross_entropy(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, softcap: Optional[float] = None, reduction: str = "mean",
    rows: Optional[int] = None,
) -> torch.Tensor:
    """``F.cross_entropy(head(hidden), targets, ignore_index=-100, reduction=reduction)`` (with
    ``tanh(z / softcap) * softcap`` applied to the logits z first when ``softcap`` is set), without the logits.

    hidden (N, C), targets (N,). ``reduction`` is "mean" (over the targets that are not -100) or "sum". ``rows``: rows
    of logits per chunk (default ``chunk_rows``)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    rows = rows or chunk_rows(head.out_features, hidden.device, weight_grad=head.weight.requires_grad and torch.is_grad_enabled())
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, softcap, reduction == "mean", rows)


def chunk_loss_and_grad(z: torch.Tensor, t: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, softcap: Optional[float], grads: bool):
    """One chunk of ``linear_cross_entropy``: from its logits z (rows, vocab), the summed cross-entropy of the rows
    that count (``keep``) and, with ``grads``, d loss / d z = (softmax - one-hot) * ``scale`` per kept row, in z's
    dtype. The arithmetic runs in fp32 (at least), in place on one (rows, vocab) buffer."""
    wide = torch.promote_types(z.dtype, torch.float32)
    compute = z.dtype
    z = z.to(wide)
    capped = None
    if softcap is not None:
        capped = torch.tanh(z / softcap)
        z = capped * softcap
    picked = z.gather(1, t).squeeze(1)  # (rows,) the targets' logits
    top = z.amax(dim=-1, keepdim=True)
    g = z.sub_(top).exp_()  # (rows, vocab) exp(z - max), in place of the logits
    norm = g.sum(dim=-1, keepdim=True)
    total = ((top.squeeze(1) + norm.squeeze(1).log() - picked) * keep).sum()  # logsumexp - target logit
    if not grads:
        return total, None
    weight_of_row = (keep * scale)[:, None]  # (rows, 1) d loss / d (row's cross-entropy)
    g.mul_(weight_of_row / norm).scatter_add_(1, t, -weight_of_row)  # (softmax - one-hot) * weight: d loss / d z
    if softcap is not None:
        g.mul_(1 - capped * capped)  # through tanh
    return total, g.to(compute)


_compiled_chunk = None


def chunk_function(device: torch.device):
    """``chunk_loss_and_grad`` as it runs on ``device``: eager on a CPU; compiled on a GPU, where its eight passes over
    a chunk's logits (about 46 bytes of memory traffic per logit with bf16 matmuls) fuse into a couple of kernels that
    read the bf16 logits and write the bf16 gradient (pythia-160m on an H200: about a sixth of a step's time went to
    those passes, by the arithmetic in benchmarks/RESULTS.md). If inductor fails, the eager function, with a warning."""
    global _compiled_chunk
    if device.type != "cuda" or _compiled_chunk is False:
        return chunk_loss_and_grad
    if _compiled_chunk is None:
        compiled = torch.compile(chunk_loss_and_grad)

        def guarded(*args):
            global _compiled_chunk
            try:
                return compiled(*args)
            except Exception as err:  # noqa: BLE001  (a compiler failure: the loss still has to run)
                warnings.warn(f"the fused loss runs uncompiled: torch.compile failed on it ({type(err).__name__}: {err})")
                _compiled_chunk = False
                return chunk_loss_and_grad(*args)

        _compiled_chunk = guarded
    return _compiled_chunk


_WIDE_OUT = [hasattr(torch.ops.aten.addmm, "dtype_out")]  # cleared if this build's CUDA kernel turns out to lack it


def wide_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    """``out = a @ b`` (or ``+=``) where a and b are narrower (bf16) than ``out`` (fp32). On CUDA one cuBLAS call
    sums the products straight into ``out`` (``addmm`` with ``out_dtype``): no bf16 product tensor, rounded and then
    added; for pythia-160m's head that temporary was 77 MB written, read and added into 155 MB per chunk. Elsewhere
    the product, then a widening add or copy."""
    if out.dtype == a.dtype:  # nothing to widen
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
        return
    if out.is_cuda and _WIDE_OUT[0]:  # bf16 / fp16 products summed in fp32
        try:
            torch.addmm(out, a, b, out.dtype, beta=1 if accumulate else 0, out=out)
            return
        except (RuntimeError, NotImplementedError):  # an older build without the kernel: the two-step way from now on
            _WIDE_OUT[0] = False
    if accumulate:
        out.add_(a @ b)
    else:
        out.copy_(a @ b)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, mean, rows):
        wide = torch.promote_types(weight.dtype, torch.float32)  # logits and sums over chunks in fp32 at least
        # the matmuls run in autocast's dtype under autocast (bf16-mixed), else the weights' (bf16-true, where Fabric
        # hands the hidden states back in fp32): each chunk of hidden states is cast to it
        device = hidden.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        w = weight.to(compute)  # cast once, not per chunk (a no-op unless autocast narrows fp32 weights)
        b = None if bias is None else bias.to(compute)
        valid = targets != -100
        safe = targets.clamp(min=0)
        scale = 1 / valid.sum().clamp(min=1).to(wide) if mean else torch.ones((), dtype=wide, device=hidden.device)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]  # a frozen head (LoRA) needs no weight gradient
        grads = need_hidden or need_weight or need_bias
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=wide) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=wide) if need_bias else None
        total = torch.zeros((), dtype=wide, device=hidden.device)
        in_place = hidden.dtype == compute == wide
        softmax_grad = chunk_function(hidden.device)
        for start in range(0, hidden.shape[0], rows):
            z = g = None  # free the last chunk's (rows x vocab) temporaries before making this chunk's
            h, t, keep = hidden[start : start + rows].to(compute), safe[start : start + rows, None], valid[start : start + rows]
            z = F.linear(h, w, b)  # (rows, vocab)
            part, g = softmax_grad(z, t, keep, scale, softcap, grads)
            total += part
            if not grads:
                continue
            if in_place:  # no (rows x C) or (vocab x C) temporary per chunk
                if need_hidden:
                    torch.mm(g, w, out=grad_hidden[start : start + rows])
                if need_weight:
                    grad_weight.addmm_(g.t(), h)
            else:  # narrower matmuls (bf16) than the hidden states or the sums of the weight gradient (fp32)
                if need_hidden:
                    wide_mm(g, w, grad_hidden[start : start + rows], accumulate=False)
                if need_weight:
                    wide_mm(g.t(), h, grad_weight, accumulate=True)
            if need_bias:
                grad_bias.add_(g.sum(0))
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scaled = [None if g is None else g * grad_output.to(g.dtype) for g in (grad_hidden, grad_weight, grad_bias)]
        return (*scaled, None, None, None, None)
