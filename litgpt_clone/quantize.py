"""Weight-only quantization of a built model: swap its ``nn.Linear`` layers for bitsandbytes ones, in place.

Modes (``QUANTIZE_MODES``):

- ``bnb.nf4`` / ``bnb.fp4``: 4-bit weights (``bnb.nn.Linear4bit``, NormalFloat4 or FP4 code), one fp32 absmax per
  block of 64 weights: about 0.56 bytes per weight.
- ``bnb.nf4-dq`` / ``bnb.fp4-dq``: the same with "double quantization" (``compress_statistics``): the absmax
  values are quantized again to 8 bits, about 0.52 bytes per weight.
- ``bnb.int8``: LLM.int8() weights (``bnb.nn.Linear8bitLt`` with ``has_fp16_weights=False``), one int8 per weight
  plus one fp32 scale per output row; input columns with values above 6.0 (outlier features) are multiplied in
  float16, the paper's and transformers' default threshold.

The weights the model already holds are quantized where they are (CPU or GPU), or on the way to ``device``: a model
loaded on the CPU in full precision and quantized onto a GPU holds one full-precision weight on the GPU at a time
(``LLM.load`` does this), where quantizing it on the GPU needs the whole full-precision model there first. Biases are
kept as they are.
All five modes also run on CPU (bitsandbytes 0.50 ships CPU kernels for them), so a quantized model can be built
and tested without a GPU; Lightning Fabric's ``BitsandbytesPrecision`` refuses CPU, so it is not used here.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch
import torch.nn as nn

QUANTIZE_MODES = ("bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8")

_CPU_PACK_BLOCK, _BLOCKSIZE = 32, 64
"""On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight at its first inference call, which needs
out_features to be a multiple of 32 and in_features one of the quantization block (64); other layers (an expert of
width 48, an MoE router over 8 experts) keep the plain layout (the repack failed on them: "shape '[64, 0]' is invalid")."""


def quantize(
    model: nn.Module, mode: str, skip: tuple[str, ...] = ("lm_head", "gate"), compute_dtype: Optional[torch.dtype] = None,
    training: bool = False, device: Union[torch.device, str, None] = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (weights already loaded) by its bitsandbytes version; returns ``model``.

    Args:
        model: A built model, e.g. ``GPT.from_checkpoint(dir)``; its Linear weights are quantized on their device.
        mode: One of ``QUANTIZE_MODES``.
        skip: Layers to keep in full precision, by qualified name: an entry matches a Linear whose name equals it,
            ends with ``.<entry>`` (``"gate"`` keeps every MoE router) or lies under it (``"transformer.h.0"``).
            The default keeps the head and the MoE routers, as vLLM and transformers do: a router is a few thousand
            weights, and rounding them sends tokens to other experts.
            A weight shared with another module (a head tied to the embedding) is always kept, so tying holds.
        compute_dtype: 4-bit modes: the dtype the matmul runs in (default: the input's). int8 ignores it: its
            matmul takes float16 inputs (others are cast, and bitsandbytes says so once) and returns the input's
            dtype.
        training: The model will train around these layers (QLoRA): 4-bit weights keep one layout on a CPU. (With
            AVX512-BF16, bitsandbytes repacks them in place at the first call without gradients, for a faster
            inference kernel; a validation pass did it mid-run, and the training steps after it computed other numbers
            than a run without that validation, so a resumed run did not repeat the uninterrupted one.)
        device: Where the quantized weights go (default: where each Linear's weights are). Each weight is copied
            there and quantized there, one at a time; the rest of the model (biases, embeddings, norms, skipped
            layers) stays where it is: ``model.to(device)`` moves it after.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")

    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1

    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear  # exactly nn.Linear: already-quantized layers and subclasses are left alone
        and not any(name == s or name.endswith("." + s) or name.startswith(s + ".") for s in skip)
        and counts[id(module.weight)] == 1
    ]
    for name, linear in targets:
        if linear.weight.device.type == "meta":
            raise ValueError(f"{name} has no weights yet (meta device): load the checkpoint before quantizing")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        where = linear.weight.device if device is None else torch.device(device)
        quantized = _int8_linear(linear, where) if mode == "bnb.int8" else _4bit_linear(linear, mode, compute_dtype, where, training)
        setattr(parent, child, quantized)
    return model


def _4bit_linear(linear: nn.Linear, mode: str, compute_dtype: Optional[torch.dtype], device: torch.device, training: bool = False) -> nn.Module:
    import bitsandbytes as bnb

    quant_type, double = mode.removeprefix("bnb.").removesuffix("-dq"), mode.endswith("-dq")
    q = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=False, compute_dtype=compute_dtype,
        compress_statistics=double, quant_type=quant_type, device="meta",
    )
    # Params4bit quantizes on its first move to a real device (copying the weight there first); `module=q` hands the
    # quant state to the layer
    q.weight = bnb.nn.Params4bit(
        linear.weight.data, requires_grad=False, compress_statistics=double, quant_type=quant_type, module=q
    ).to(device)
    q.bias = linear.bias
    if training or linear.out_features % _CPU_PACK_BLOCK or linear.in_features % _BLOCKSIZE:
        q.support_avx512bf16_for_cpu = False
    return q.train(linear.training)


class _OnceEach(logging.Filter):
    """Lets each distinct "inputs will be cast to float16" notice of bitsandbytes' int8 matmul through once: it
    logs one on every call of every layer whose input is not float16 (fp32/bf16 models), thousands per answer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("MatMul8bitLt: inputs will be cast"):
            return True
        first = message not in self.seen
        self.seen.add(message)
        return first


_INT8_NOTICES = _OnceEach()


def _int8_linear(linear: nn.Linear, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_NOTICES)  # adding it twice is a no-op

    q = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=False, has_fp16_weights=False, threshold=6.0, device="meta"
    )
    # LLM.int8() weights: row-wise absmax scaling to int8, the layout Int8Params makes when it quantizes itself (from
    # the weights in fp16, as it does: from fp32 about 1 code in 130 rounds the other way, and transformers' int8
    # models would differ from ours), on `device` as Int8Params does on its move there
    weight = linear.weight.data.to(device=device, dtype=torch.float16).contiguous()
    int8_weight, row_scale, _ = bnb.functional.int8_vectorwise_quant(weight)
    q.weight = bnb.nn.Int8Params(
        int8_weight, requires_grad=False, has_fp16_weights=False, CB=int8_weight, SCB=row_scale
    )
    q.bias = linear.bias
    return q.train(linear.training)


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model`` as it was before quantizing: a 4-bit weight holds two values per stored byte (its
    ``quant_state`` keeps the real shape), so ``numel()`` would count it as half."""
    state = lambda p: getattr(p, "quant_state", None)  # noqa: E731
    return sum(state(p).shape.numel() if state(p) is not None else p.numel() for p in model.parameters())


def model_memory(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers, plus the quantization statistics bitsandbytes keeps beside
    them (4-bit absmax and code tables, int8 row scales). Shared tensors count once; meta tensors count zero."""
    seen: set[int] = set()
    total = 0

    def add(t) -> None:
        nonlocal total
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()

    for t in [*model.parameters(), *model.buffers()]:
        add(t)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)  # 4-bit: QuantState, with a nested one for "-dq"
        for qs in (state, getattr(state, "state2", None)):
            for attr in ("absmax", "code", "offset"):
                add(getattr(qs, attr, None))
        add(getattr(weight, "SCB", None))  # int8 row scales, moved to module.state at the first forward
        add(getattr(getattr(module, "state", None), "SCB", None))
    return total
