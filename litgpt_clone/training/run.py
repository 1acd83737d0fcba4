"""Everything around ``fit``: Fabric, the model on its devices, the optimizer, resume, and saving.

``pretrain`` calls ``run_training``; finetune methods reuse ``build_fabric``, ``build_optimizer``, ``resume_state``
and ``make_saver`` with their own choice of trainable parameters.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch
from safetensors import SafetensorError

from litgpt_clone.checkpoints.io import NATIVE_WEIGHTS
from litgpt_clone.config import Config
from litgpt_clone.data.pretrain import DataError, DataModule, Windows
from litgpt_clone.model import GPT
from litgpt_clone.parallel import Compile, checkpoint_blocks, compile_model, device_peak_flops, fabric_strategy
from litgpt_clone.tokenizer import Tokenizer
from litgpt_clone.training.args import EvalArgs, TrainArgs
from litgpt_clone.training.checkpoint import (
    full_state,
    kept_checkpoint,
    latest_checkpoint,
    load_full_state,
    read_training_state,
    step_dir,
    unwrap,
    write_checkpoint,
)
from litgpt_clone.training.fit import FitState, TrainingError, fit, instability_advice


def world_size(devices: int, num_nodes: int) -> int:
    """The number of processes, after a one-line error for a count below 1."""
    from litgpt_clone.config import ConfigError

    if devices < 1 or num_nodes < 1:
        raise ConfigError(f"--devices {devices} --num_nodes {num_nodes}: use 1 or more of each")
    return devices * num_nodes


def build_fabric(devices: int, num_nodes: int, strategy: str, precision: Optional[str], out_dir: Path, logger_name: str, resume=False):
    import lightning_fabric as L
    from lightning_fabric.loggers import CSVLogger, TensorBoardLogger

    from litgpt_clone.config import ConfigError, check_out_dir

    world_size(devices, num_nodes)
    check_launcher(devices, num_nodes)
    check_out_dir(out_dir)
    check_fresh_out_dir(out_dir, resume)
    if precision == "16-mixed" and strategy == "fsdp":
        raise ConfigError("--precision 16-mixed is not available with --strategy fsdp (FSDP2): use bf16-mixed, bf16-true or 32-true")
    if precision is None:
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if strategy == "auto" and devices * num_nodes > 1:
        strategy = "ddp"
    if logger_name == "tensorboard":
        logger = TensorBoardLogger(root_dir=Path(out_dir), name="logs")
    else:
        logger = CSVLogger(root_dir=Path(out_dir), name="logs", flush_logs_every_n_steps=1)
    return L.Fabric(
        devices=devices, num_nodes=num_nodes, strategy=fabric_strategy(strategy, devices, num_nodes), precision=precision, loggers=logger
    )


def check_fresh_out_dir(out_dir: Path, resume) -> None:
    """A run that starts fresh (``--resume false``, the default) into an out_dir holding another run's checkpoints
    wrote its step folders among that run's and its ``final/`` over that one's; killed and resumed with ``--resume
    auto`` it then continued from the other run's newest checkpoint: refused, before any work."""
    from litgpt_clone.config import ConfigError

    if resume not in (False, None) or not Path(out_dir).is_dir():
        return
    newest = latest_checkpoint(out_dir)
    earlier = [p.name for p in (newest, Path(out_dir) / "final") if p is not None and p.is_dir()]
    if earlier:
        raise ConfigError(
            f"--out_dir {out_dir} holds an earlier run ({', '.join(earlier)}): continue it with --resume auto, or give"
            " another --out_dir (or delete that one to start over in it)"
        )


def check_launcher(devices: int, num_nodes: int) -> None:
    """torchrun and srun start the processes themselves: a ``ConfigError`` when they started another number than
    ``--devices`` per node x ``--num_nodes`` (each process ran a training of its own into the same out_dir, or
    Lightning stopped with a traceback). Without either, several nodes get a line on how to start the others."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from litgpt_clone.config import ConfigError

    if TorchElasticEnvironment.detect():  # Lightning's order: torchrun inside a SLURM job is torchrun
        launcher, total = "torchrun", int(os.environ["WORLD_SIZE"])
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", total))
    elif SLURMEnvironment.detect():
        launcher, total = "SLURM", int(os.environ["SLURM_NTASKS"])
        nodes = int(os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or 1)
        per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE") or total // nodes)
    else:
        if num_nodes > 1 and "LOCAL_RANK" not in os.environ:  # (LOCAL_RANK: a process Lightning started on this node)
            announce_nodes(num_nodes)
        return
    if (per_node, total) != (devices, devices * num_nodes):
        nodes = max(1, total // per_node)
        raise ConfigError(
            f"{launcher} started {total} process(es) ({per_node} per node on {nodes} node(s)) but --devices {devices} "
            f"--num_nodes {num_nodes} asks for {devices * num_nodes}: pass --devices {per_node} --num_nodes {nodes}"
        )


def announce_nodes(num_nodes: int) -> None:
    """Several nodes without a launcher (Lightning's own: NODE_RANK, MASTER_ADDR, MASTER_PORT): say where this node
    waits and how to start the others, before it waits for them (silently, until they come)."""
    from lightning_fabric.plugins.environments.lightning import find_free_network_port

    from litgpt_clone.config import ConfigError

    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    what = f"--num_nodes {num_nodes} without torchrun or SLURM: node {node}"
    if node and "MASTER_PORT" not in os.environ:
        raise ConfigError(f"{what} needs MASTER_ADDR and MASTER_PORT set to the first node's address and the port its line names")
    port = os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))  # (what Lightning would pick, picked here to say it)
    address = os.environ.get("MASTER_ADDR", "127.0.0.1")
    others = "NODE_RANK=1" if num_nodes == 2 else f"NODE_RANK=1 to {num_nodes - 1}"
    print(
        f"{what} joins the first node at {address}:{port} and waits for all {num_nodes}" if node else
        f"{what} waits at {address}:{port} for the other {num_nodes - 1}: start this command on each of them with {others} "
        f"MASTER_ADDR=<this node's address> MASTER_PORT={port}, or start every node with torchrun or srun (tutorials/pretrain.md)",
        file=sys.stderr, flush=True,
    )


def rank_zero_first(fabric, build: Callable[[], Any]) -> Any:
    """``build()`` on rank 0, then on the other ranks (rank 0 writes the caches they read). When it fails on rank 0 the
    other ranks stop too, quietly: the user reads rank 0's one line, not a line per rank and each waiting rank's
    traceback from the broken collective (Fabric's ``rank_zero_first`` leaves them at a barrier rank 0 never reaches)."""
    result = on_rank_zero(fabric, build, share=False)
    return result if fabric.global_rank == 0 else build()


def on_rank_zero(fabric, work: Callable[[], Any], share: bool = True) -> Any:
    """``work()`` on rank 0 alone (what only rank 0 can judge: its own view of out_dir, the full weights it alone
    holds, the files it writes), its result handed to every rank (``share``; else the others get None). When it
    fails, rank 0 raises its error and the others stop quietly with it, instead of waiting in a collective rank 0
    never reaches."""
    if fabric.world_size == 1:
        return work()
    result, failed = None, None
    if fabric.global_rank == 0:
        try:
            result = work()
        except BaseException as error:
            failed = error
    failed_somewhere, shared = fabric.broadcast((failed is not None, result if share else None), src=0)
    if failed is not None:
        raise failed
    if failed_somewhere:
        raise SystemExit(2)
    return result if fabric.global_rank == 0 else shared


def optimizer_spec(optimizer: Union[str, dict], train: TrainArgs) -> tuple[type, dict, TrainArgs]:
    """(optimizer class, its settings, ``train``) for ``--optimizer``: a ``torch.optim`` name or a class path, or
    ``{"class_path": ..., "init_args": {...}}`` (settings beside class_path count as init_args; the CLI hands
    ``--optimizer X --optimizer.init_args.momentum 0.9`` over in this form: ``__main__.optimizer_flags``). ``lr`` and
    ``weight_decay`` in the settings, where LitGPT's recipes put them, become ``train.lr`` (the schedule's peak) and
    ``train.weight_decay`` (of the decayed group): the schedule sets every step's learning rate, and each group its
    weight decay. A ``ConfigError`` for an unknown class or setting, before any work."""
    import importlib
    import inspect

    import yaml

    from litgpt_clone.config import ConfigError

    if isinstance(optimizer, str):
        name, init_args = optimizer, {}
    else:
        extra = {k: v for k, v in optimizer.items() if k not in ("class_path", "init_args")}
        init_args = {**dict(optimizer.get("init_args") or {}), **extra}
        init_args = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in init_args.items()}  # "0.9" -> 0.9
        if "class_path" not in optimizer:
            raise ConfigError(
                f"--optimizer settings {init_args} without the optimizer: name it with --optimizer NAME "
                "(e.g. --optimizer SGD --optimizer.init_args.lr 0.1)"
            )
        name = optimizer["class_path"]
    try:
        if "." in name:  # a full class path, e.g. bitsandbytes.optim.AdamW8bit
            module, attr = name.rsplit(".", 1)
            cls = getattr(importlib.import_module(module), attr)
        else:
            cls = getattr(torch.optim, name)
        assert isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
    except (ImportError, AttributeError, AssertionError, ValueError):
        raise ConfigError(f"unknown optimizer {name!r}: use a torch.optim class name (AdamW, SGD, ...) or a full class path") from None
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "params")]
    unknown = [k for k in init_args if k not in accepted]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
        raise ConfigError(
            f"--optimizer {name} has no setting {unknown[0]!r}: it takes {', '.join(accepted)} (settings given before, "
            f"or in a recipe, stay when --optimizer names another; --optimizer '{{\"class_path\": \"{name}\"}}' drops them)"
        )
    folded = {k: float(init_args.pop(k)) for k in ("lr", "weight_decay") if k in init_args}
    return cls, init_args, dataclasses.replace(train, **folded) if folded else train


def build_optimizer(model: torch.nn.Module, optimizer: Union[str, dict], train: TrainArgs, fused: bool) -> torch.optim.Optimizer:
    """Weight decay on matrices and embeddings, none on norms and biases; only parameters that require grad.
    ``fused``: AdamW/Adam as one fused kernel per step (CPU and CUDA; 2% of a small CPU model's step)."""
    cls, init_args, train = optimizer_spec(optimizer, train)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    defaults: dict[str, Any] = {"lr": train.lr}
    if cls in (torch.optim.AdamW, torch.optim.Adam):
        defaults.update(betas=(train.beta1, train.beta2), fused=fused)
    return cls(groups, **{**defaults, **init_args})


def flops_per_token(model: GPT, seq_length: int) -> float:
    """Model FLOPs per trained token: 6N (matmul weights, embedding lookup excluded) + 12 * layers * width * T."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - (0 if c.tie_embeddings else model.transformer.wte.weight.numel())
    return 6 * n + 12 * c.n_layer * c.n_head * c.head_size * seq_length


def sequence_length(fabric, train: TrainArgs, config: Config) -> int:
    """``--train.max_seq_length``, at most the model's block_size (said in a note when it is cut: ``max_tokens``
    counts steps in sequences of this length); the block_size by default."""
    seq_length = min(train.max_seq_length or config.block_size, config.block_size)
    if seq_length < (train.max_seq_length or 0):
        fabric.print(f"note: --train.max_seq_length {train.max_seq_length} is beyond the model's block_size: sequences of {seq_length}")
    return seq_length


def run_training(
    fabric,
    config: Config,
    tokenizer: Tokenizer,
    data: DataModule,
    out_dir: Path,
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: Union[str, dict],
    resume: Union[bool, Literal["auto"], Path],
    seed: int,
    compile: Compile,
    initial_checkpoint_dir: Optional[Path],
    hparams: dict,
) -> dict:
    out_dir = Path(out_dir)
    seq_length = sequence_length(fabric, train, config)
    train_stream, val_stream = rank_zero_first(fabric, lambda: data.streams(tokenizer))
    if train_stream.vocab_size > config.vocab_size:
        raise DataError(f"the data holds token ids up to {train_stream.vocab_size - 1}, beyond the model's vocab_size {config.vocab_size}")
    train_data = Windows(train_stream, seq_length, seed)
    val_data = Windows(val_stream, seq_length, seed, shuffle=False) if val_stream is not None and len(val_stream) > seq_length else None

    fabric.seed_everything(seed)  # the same on every rank: identical initial weights everywhere
    model = GPT(config)
    model.init_weights()
    yamls = {}
    if initial_checkpoint_dir is not None:
        from litgpt_clone.adapter import inject_adapter, load_adapter_args
        from litgpt_clone.checkpoints.io import load_state

        if (Path(initial_checkpoint_dir) / "adapter_config.yaml").is_file():  # a LLaMA-Adapter final/: its prefixes train on
            adapter = load_adapter_args(initial_checkpoint_dir)
            inject_adapter(model, adapter, freeze=False)
            yamls["adapter_config.yaml"] = plain(adapter)  # every checkpoint carries them, so it loads back
        weights = Path(initial_checkpoint_dir) / NATIVE_WEIGHTS
        load_full_state(model, None, load_state(weights), None, where=str(weights))
        if config.tie_embeddings:
            model.lm_head.weight = model.transformer.wte.weight
    model.max_seq_length = seq_length
    fabric.print(
        f"{config.name or 'model'}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{len(train_stream):,} training tokens, sequences of {seq_length}, {fabric.world_size} process(es)"
    )
    hparams = plain(hparams)

    def write(folder: Path, model_sd: dict, training_state: Optional[dict]) -> None:
        write_checkpoint(folder, {NATIVE_WEIGHTS: model_sd}, config, tokenizer.checkpoint_dir, hparams, training_state, yamls=yamls)

    return train_and_save(fabric, model, train_data, val_data, train, eval, optimizer, resume, compile, out_dir, seq_length, write)


def train_and_save(
    fabric, model: GPT, train_data, val_data, train: TrainArgs, eval: EvalArgs, optimizer: Union[str, dict], resume,
    compile: Compile, out_dir: Path, seq_length: int, write, select=None, weights_file: str = NATIVE_WEIGHTS,
    learned_only: bool = False, settings: Optional[tuple[str, str, dict]] = None,
) -> dict:
    """Shared by pretrain and every finetune method: memory savers, Fabric setup, optimizer over the parameters that
    require grad, resume, ``fit``, and saving through ``write(folder, state, training_state)`` on rank 0, where
    ``state`` is ``select(full model state)`` (all of it by default). ``learned_only``: logits only where targets
    are not -100 (finetuning data, whose prompts and padding have none). ``settings``: (YAML file name, flag
    group, its values), e.g. ``("lora_config.yaml", "lora", {...})``, that a checkpoint to resume must hold too."""
    flops = flops_per_token(model, seq_length)
    if train.activation_checkpointing:
        checkpoint_blocks(model)
    compile_model(model, compile)
    model = fabric.setup(model)
    opt = fabric.setup_optimizers(build_optimizer(model, optimizer, train, fused=True))
    data = getattr(train_data, "fingerprint", None)
    lock = on_rank_zero(fabric, lambda: lock_out_dir(out_dir), share=False)
    try:
        state = resume_state(fabric, model, opt, out_dir, resume, weights_file, settings, data)
        start = state.step
        save = make_saver(fabric, model, opt, out_dir, write, select, advice=instability_advice(train), data=data)
        summary = fit(
            fabric, model, opt, train_data, val_data, train, eval, state, seq_length, save,
            flops_per_token=flops, peak_flops=device_peak_flops(fabric.device, str(fabric._precision.precision)),
            learned_only=learned_only, kept=lambda: kept_checkpoint(out_dir),
        )
        if start and state.step == start and on_rank_zero(fabric, lambda: not (out_dir / "final").is_dir()):
            save(state, True)  # resumed at the end, with no final/: the run was killed while writing it
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        raise TrainingError(
            f"out of memory with micro_batch_size {train.micro_batch_size} x max_seq_length {seq_length}: lower "
            "--train.micro_batch_size (the global batch stays the same), --train.max_seq_length, or use "
            "--train.activation_checkpointing true / --strategy fsdp"
        ) from err
    finally:
        if lock is not None:
            lock.close()  # (the kernel also lets go of it when the process ends, however it ends)
    summary["checkpoint"] = str(out_dir / "final")
    return summary


def lock_out_dir(out_dir: Path):
    """An exclusive lock on ``out_dir/.lock`` for the run (the open file; None where the file system has no locks):
    a second run into the same out_dir resumed from the first one's checkpoints and wrote over its step folders, both
    ending "successfully". Rank 0 holds it; the kernel releases it when the process ends, killed or not."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise TrainingError(f"another run is training into {out_dir} (it holds {out_dir / '.lock'}): wait for it to end, or give another --out_dir") from None
    except OSError:  # (a file system without flock, some network mounts: run unlocked, as before)
        handle.close()
        return None
    return handle


def out_of_memory(err: BaseException) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; the CPU allocator raises a ``RuntimeError`` saying it "can't allocate
    memory"."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def resume_state(
    fabric, model, optimizer, out_dir: Path, resume, weights_file: str = NATIVE_WEIGHTS, settings=None, data: Optional[str] = None
) -> FitState:
    """The ``FitState`` of the checkpoint ``--resume`` names, its weights, optimizer and random states loaded (a fresh
    one without). ``data``: the training data's ``fingerprint``, which the checkpoint's must equal (its data position
    counts samples of that stream: on another one the run would skip or repeat data, silently)."""
    if resume is False or resume is None:
        return FitState()
    # rank 0 picks the checkpoint (it writes them, so its out_dir is the run's) and every rank loads that one: ranks that
    # each picked from their own view of an out_dir not shared by all nodes trained a mix of resumed and fresh replicas
    folder = on_rank_zero(fabric, lambda: checkpoint_to_resume(fabric, out_dir, resume, unwrap(model).config, settings))
    if folder is None:
        return FitState()
    from litgpt_clone.checkpoints.io import load_state

    if fabric.world_size > 1:
        readable = all((folder / name).is_file() for name in ("training_state.pt", weights_file))
        unable = [rank for rank, ok in enumerate(gather(fabric, readable)) if not ok]
        if unable:  # said by rank 0, raised on every rank: all stop together
            if len(unable) == fabric.world_size and not (folder / weights_file).is_file():
                load_state(folder / weights_file)  # no rank has them: what the folder holds instead (the old name)
            raise TrainingError(
                f"rank{'s' * (len(unable) > 1)} {', '.join(map(str, unable))} cannot read {folder}, the checkpoint rank 0 resumes from: --out_dir must be "
                "on a filesystem every node sees (rank 0 writes the checkpoints)"
            )
    saved = read_training_state(folder)
    if data is not None and saved.get("data", data) != data:  # (checkpoints written before it was saved: not checked)
        raise TrainingError(
            f"{folder} was trained on another data stream: its data position counts samples of its own, and this run's "
            "differs (other data or --data.* settings, --seed, --train.max_seq_length, or, finetuning, "
            "--train.global_batch_size, which orders each step's samples); resume with the same ones, or give another --out_dir"
        )
    load_full_state(model, optimizer, load_state(folder / weights_file), saved["optimizer"], strict=weights_file == NATIVE_WEIGHTS,
                    where=str(folder / weights_file))
    fabric.print(f"resumed from {folder} at step {saved['fit']['step']}")
    restore_rng(fabric, saved["rng"], folder)
    return FitState(**saved["fit"])


def checkpoint_to_resume(fabric, out_dir: Path, resume, config, settings) -> Optional[Path]:
    """The checkpoint ``--resume`` names (None: start fresh), after checking it belongs to this run."""
    folder = latest_checkpoint(out_dir) if resume in ("auto", True) else Path(resume)
    if folder is None and resume is True:  # LitGPT's --resume true: the newest checkpoint, which must be there
        raise TrainingError(f"--resume true: no checkpoint in {out_dir} to resume from: use --resume auto to start fresh when there is none")
    if folder is None:
        fabric.print(f"no checkpoint to resume in {out_dir}: starting fresh")
        return None
    if not (folder / "training_state.pt").is_file():
        raise TrainingError(f"{folder} has no training_state.pt: pass a step-* folder written by pretrain/finetune")
    check_same_model(folder, config)
    if settings is not None:
        check_same_settings(folder, *settings)
    return folder


def rng_states(fabric) -> list[dict]:
    """Every rank's random generator states (CPU, and its GPU's), in rank order; call it on every rank. Each rank
    draws its own dropout masks, so each needs its own state back to resume exactly."""
    own = {"cpu": torch.get_rng_state()}
    if fabric.device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(fabric.device)
    return gather(fabric, own)


def gather(fabric, value: Any) -> list:
    """``value`` (small and picklable) of every rank, in rank order; call it on every rank."""
    if fabric.world_size == 1:
        return [value]
    values = [None] * fabric.world_size
    torch.distributed.all_gather_object(values, value)
    return values


def restore_rng(fabric, saved: Union[torch.Tensor, list], folder: Path) -> None:
    """This rank's own states from ``rng_states``. A checkpoint from before per-rank states holds one CPU state: every
    rank gets it, as it did then. A rank beyond the saved ones (resuming with more processes) starts from a state
    derived from the seed and its rank, so its random draws differ from an uninterrupted run's."""
    states = saved if isinstance(saved, list) else [{"cpu": saved}] * fabric.world_size
    rank = fabric.global_rank
    if rank >= len(states):
        torch.manual_seed(torch.initial_seed() + rank)  # (seed_everything set the same seed on every rank)
        return
    torch.set_rng_state(states[rank]["cpu"])
    if "cuda" in states[rank] and fabric.device.type == "cuda":
        torch.cuda.set_rng_state(states[rank]["cuda"], fabric.device)
    if len(states) != fabric.world_size:
        fabric.print(
            f"note: {folder} was saved by {len(states)} process(es) and this run has {fabric.world_size}: random draws "
            "(dropout) differ from an uninterrupted run's from here on"
        )


def check_same_model(folder: Path, config) -> None:
    """``TrainingError`` when the checkpoint to resume was written for another model: another shape, or another
    computation of the same shapes (``rope_base``, ``parallel_residual``, ``tie_embeddings``, ...; the run's
    --model_config or --train.tie_embeddings changed, or --out_dir holds another run)."""
    from litgpt_clone.config import Config

    saved = Config.from_file(folder / "model_config.yaml")
    unrelated = ("name", "hf_config", "architecture", "block_size", "rope_recompute_at_switch")  # (how generation runs)
    names = [f.name for f in dataclasses.fields(Config) if f.name not in unrelated]  # what the network computes
    show = lambda v: str(v).lower() if isinstance(v, bool) else v  # as a flag or YAML writes it
    differ = [f"{name} {show(getattr(saved, name))} there, {show(getattr(config, name))} here" for name in names if getattr(saved, name) != getattr(config, name)]
    if differ:
        raise TrainingError(f"{folder} holds another model ({'; '.join(differ)}): resume with the model it was trained with, or give another --out_dir")


def check_same_settings(folder: Path, filename: str, group: str, values: dict) -> None:
    """``TrainingError`` when the checkpoint to resume was trained with other ``--<group>.*`` values (its
    ``filename``, e.g. lora_config.yaml): other shapes fail to load, other targets would start fresh mid-run."""
    import yaml

    path = Path(folder) / filename
    saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(saved, dict):
        raise TrainingError(f"{folder} has no {filename}: it was not written by this method; give another --out_dir")
    show = lambda v: str(v).lower() if isinstance(v, bool) else v  # as the flag is typed
    differ = [f"--{group}.{k} {show(saved.get(k))} there, {show(v)} here" for k, v in values.items() if saved.get(k) != v]
    if differ:
        raise TrainingError(
            f"{folder} was trained with other {group} settings ({'; '.join(differ)}): resume with the same --{group}.* "
            "values, or give another --out_dir"
        )


def make_saver(fabric, model, optimizer, out_dir: Path, write, select=None, advice: str = "lower --train.lr", data: Optional[str] = None):
    """``save(state, final)``: every rank gathers the full state, rank 0 checks it and writes ``step-N/`` (and
    ``final/``); when the weights are not finite or the writing fails (a full disk), every rank stops with rank 0's
    ``TrainingError``. ``advice``: what to change when the weights are not finite. ``data``: the training data's
    fingerprint, kept in the training state for ``resume_state``."""

    def save(state: FitState, final: bool) -> None:
        model_sd, optim_sd = full_state(model, optimizer, learned_only=select is not None)
        rng = rng_states(fabric)

        def check_and_write() -> None:  # on rank 0, the one that holds the full weights (see full_state)
            if not all(torch.isfinite(t).all() for t in model_sd.values()):
                raise TrainingError(f"weights are no longer finite at step {state.step}: {kept_checkpoint(out_dir)}; {advice}")
            weights = select(model_sd) if select else model_sd
            folder = step_dir(out_dir, state.step)
            try:
                write(folder, weights, {"optimizer": optim_sd, "fit": dataclasses.asdict(state), "rng": rng, "data": data})
                if final:
                    folder = out_dir / "final"
                    write(folder, weights, None)
            except (OSError, SafetensorError) as err:  # (safetensors raises its own error for a full disk)
                raise saving_failed(err, state.step, folder, out_dir) from err

        on_rank_zero(fabric, check_and_write)  # (also the barrier: the others go on once it is written)

    return save


def saving_failed(err: Exception, step: int, folder: Path, out_dir: Path) -> TrainingError:
    """One line for a checkpoint that could not be written (a full disk, mostly): what, where, and what is left."""
    full = getattr(err, "errno", None) == errno.ENOSPC or f"(os error {errno.ENOSPC})" in str(err)  # safetensors: in its text
    newest = latest_checkpoint(out_dir)
    return TrainingError(
        f"{'no space left on device' if full else getattr(err, 'strerror', None) or err} while saving step {step} to {folder}: "
        + (f"the last complete checkpoint is {newest}: free some space and rerun with --resume auto to continue from it"
           if newest else "no checkpoint is complete yet: free some space or give another --out_dir")
    )


def plain(value):
    """Arguments as YAML-friendly values (paths as strings, dataclasses and data modules as dicts)."""
    if dataclasses.is_dataclass(value):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k) if isinstance(k, Path) else k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(getattr(value, "name", None), str) and hasattr(value, "__dict__"):
        # a data module: its constructor's arguments in the class_path/init_args form --config reads back
        import inspect

        names = [n for n in inspect.signature(type(value).__init__).parameters if n != "self" and hasattr(value, n)]
        return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "init_args": {n: plain(getattr(value, n)) for n in names}}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
