"""Parallelism and memory savers, applied to a built ``GPT`` from outside (the model never knows about them).

- ``fabric_strategy``: Fabric's strategy for ``--strategy auto|ddp|fsdp``. ``fsdp`` is FSDP2 through Fabric's
  ``ModelParallelStrategy``: ``parallelize`` shards every Block with ``fully_shard``, then the root.
- ``checkpoint_blocks``: activation checkpointing of every Block.
- ``compile_model``: ``torch.compile`` per Block (``compile_blocks``) or of the whole GPT, in place (checkpoint keys
  do not change).

Multi-node runs use Fabric's launchers: ``torchrun --nnodes N --nproc-per-node G -m litgpt_clone pretrain ...
--devices G --num_nodes N``, or ``srun`` under SLURM (Fabric reads the SLURM environment), with an ``--out_dir`` on a
filesystem every node sees (rank 0 writes the checkpoints).
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from torch import nn

from litgpt_clone.model import GPT

Strategy = Literal["auto", "ddp", "fsdp"]
Compile = Union[bool, Literal["blocks", "model"]]


def parallelize(model: GPT, device_mesh) -> GPT:
    """FSDP2: one ``fully_shard`` unit per Block, then the rest (embedding, final norm, head) at the root."""
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def fabric_strategy(strategy: Strategy, devices: int, num_nodes: int):
    if strategy == "fsdp":
        from lightning_fabric.strategies import ModelParallelStrategy

        return ModelParallelStrategy(parallelize_fn=parallelize, data_parallel_size=devices * num_nodes, tensor_parallel_size=1)
    if strategy == "ddp":
        return "ddp"
    return "auto"


def checkpoint_blocks(model: GPT) -> None:
    """Recompute each Block's activations in backward instead of keeping them."""
    from torch.utils.checkpoint import checkpoint

    for block in model.transformer.h:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def compile_model(model: GPT, how: Compile) -> None:
    """``true``/``blocks``: one compiled graph per Block, shared by all layers (fastest to compile; composes with
    FSDP2's per-Block sharding). ``model``: the whole GPT in one graph (embedding, blocks, final norm: faster steps
    where the code between blocks counts; the pretrain command refuses it with FSDP2). On CPU, inductor builds
    each graph's wrapper in C++ (``cpp_wrapper``): the per-call Python around the kernels counts there."""
    options = compile_options(next(model.parameters()).device.type)
    if how == "model":
        model.compile(options=options)
    elif how:
        compile_blocks(model, options)


def compile_options(device_type: str) -> dict:
    """Inductor options for a graph that runs on ``device_type``: on CPU its wrapper is built in C++ (the per-call
    Python around the kernels counts there). Shared by training (``compile_model``) and generation's decode step."""
    return {"cpp_wrapper": True} if device_type == "cpu" else {}


def compile_blocks(model: nn.Module, options: dict) -> None:
    """Compile each Block in place (``nn.Module.compile``): repeated blocks share one compiled graph."""
    for block in model.transformer.h:
        block.compile(options=options)


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense bf16/fp16 peak FLOP/s of the GPU (for MFU); None where unknown (CPU)."""
    return gpu_peak_flops(torch.cuda.get_device_name(device), precision) if device.type == "cuda" else None


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` (as ``torch.cuda.get_device_name`` gives it) at ``precision``."""
    table = {  # the first name found in ``name`` counts: the PCIe and NVL H100s before the SXM one
        "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
        "L4": 121e12, "4090": 165e12,
    }
    peak = next((v for k, v in table.items() if k in name), None)
    if peak is not None and "32" in precision:
        peak /= 2  # tf32 tensor cores run at half the bf16 rate
    return peak
