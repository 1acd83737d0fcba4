"""Everything around ``fit``: Fabric, the model on its devices, the optimizer, resume, and saving.

``pretrain`` calls ``run_training``; finetune methods reuse ``build_fabric``, ``build_optimizer``, ``resume_state``
and ``make_saver`` with their own choice of trainable parameters.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch

from litgpt_clone.config import Config
from litgpt_clone.data.pretrain import DataError, DataModule, Windows
from litgpt_clone.model import GPT
from litgpt_clone.parallel import Compile, checkpoint_blocks, compile_model, device_peak_flops, fabric_strategy
from litgpt_clone.tokenizer import Tokenizer
from litgpt_clone.training.args import EvalArgs, TrainArgs
from litgpt_clone.training.checkpoint import (
    full_state,
    latest_checkpoint,
    load_full_state,
    read_training_state,
    step_dir,
    unwrap,
    write_checkpoint,
)
from litgpt_clone.training.fit import FitState, TrainingError, fit


def world_size(devices: int, num_nodes: int) -> int:
    """The number of processes, after a one-line error for a count below 1."""
    from litgpt_clone.config import ConfigError

    if devices < 1 or num_nodes < 1:
        raise ConfigError(f"--devices {devices} --num_nodes {num_nodes}: use 1 or more of each")
    return devices * num_nodes


def build_fabric(devices: int, num_nodes: int, strategy: str, precision: Optional[str], out_dir: Path, logger_name: str):
    import lightning as L
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    from litgpt_clone.config import check_out_dir

    world_size(devices, num_nodes)
    check_out_dir(out_dir)
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


def rank_zero_first(fabric, build: Callable[[], Any]) -> Any:
    """``build()`` on rank 0, then on the other ranks (rank 0 writes the caches they read). When it fails on rank 0 the
    other ranks stop too, quietly: the user reads rank 0's one line, not a line per rank and each waiting rank's
    traceback from the broken collective (Fabric's ``rank_zero_first`` leaves them at a barrier rank 0 never reaches)."""
    if fabric.world_size == 1:
        return build()
    result, failed = None, None
    if fabric.global_rank == 0:
        try:
            result = build()
        except BaseException as error:
            failed = error
    if fabric.broadcast(failed is not None, src=0):
        if failed is not None:
            raise failed
        raise SystemExit(2)
    return result if fabric.global_rank == 0 else build()


def optimizer_spec(optimizer: Union[str, dict], train: TrainArgs) -> tuple[type, dict, TrainArgs]:
    """(optimizer class, its settings, ``train``) for ``--optimizer``: a ``torch.optim`` name or a class path, or
    ``{"class_path": ..., "init_args": {...}}`` (also as ``--optimizer.class_path X --optimizer.init_args.momentum
    0.9``, which jsonargparse hands over flattened and as text). ``lr`` and ``weight_decay`` in the settings, where
    LitGPT's recipes put them, become ``train.lr`` (the schedule's peak) and ``train.weight_decay`` (of the decayed
    group): the schedule sets every step's learning rate, and each group its weight decay. A ``ConfigError`` for an
    unknown class or setting, before any work."""
    import importlib
    import inspect

    import yaml

    from litgpt_clone.config import ConfigError

    if isinstance(optimizer, str):
        name, init_args = optimizer, {}
    else:
        if "class_path" not in optimizer:
            raise ConfigError(
                f"--optimizer settings {dict(optimizer)} without the optimizer: name it with --optimizer.class_path "
                "(e.g. --optimizer.class_path SGD --optimizer.init_args.lr 0.1)"
            )
        name = optimizer["class_path"]
        extra = {k: v for k, v in optimizer.items() if k not in ("class_path", "init_args")}
        init_args = {**dict(optimizer.get("init_args") or {}), **extra}
        init_args = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in init_args.items()}  # "0.9" -> 0.9
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
        raise ConfigError(f"--optimizer {name} has no setting {unknown[0]!r}: it takes {', '.join(accepted)}")
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
    seq_length = min(train.max_seq_length or config.block_size, config.block_size)
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
        load_full_state(model, None, load_state(Path(initial_checkpoint_dir) / "model.safetensors"), None)
        if config.tie_embeddings:
            model.lm_head.weight = model.transformer.wte.weight
    model.max_seq_length = seq_length
    fabric.print(
        f"{config.name or 'model'}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{len(train_stream):,} training tokens, sequences of {seq_length}, {fabric.world_size} process(es)"
    )
    hparams = plain(hparams)

    def write(folder: Path, model_sd: dict, training_state: Optional[dict]) -> None:
        write_checkpoint(folder, {"model.safetensors": model_sd}, config, tokenizer.checkpoint_dir, hparams, training_state, yamls=yamls)

    return train_and_save(fabric, model, train_data, val_data, train, eval, optimizer, resume, compile, out_dir, seq_length, write)


def train_and_save(
    fabric, model: GPT, train_data, val_data, train: TrainArgs, eval: EvalArgs, optimizer: Union[str, dict], resume,
    compile: Compile, out_dir: Path, seq_length: int, write, select=None, weights_file: str = "model.safetensors",
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
    state = resume_state(fabric, model, opt, out_dir, resume, weights_file, settings)
    save = make_saver(fabric, model, opt, out_dir, write, select)
    try:
        summary = fit(
            fabric, model, opt, train_data, val_data, train, eval, state, seq_length, save,
            flops_per_token=flops, peak_flops=device_peak_flops(fabric.device, str(fabric._precision.precision)),
            learned_only=learned_only,
        )
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        raise TrainingError(
            f"out of memory with micro_batch_size {train.micro_batch_size} x max_seq_length {seq_length}: lower "
            "--train.micro_batch_size (the global batch stays the same), --train.max_seq_length, or use "
            "--train.activation_checkpointing true / --strategy fsdp"
        ) from err
    summary["checkpoint"] = str(out_dir / "final")
    return summary


def out_of_memory(err: BaseException) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; the CPU allocator raises a ``RuntimeError`` saying it "can't allocate
    memory"."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def resume_state(fabric, model, optimizer, out_dir: Path, resume, weights_file: str = "model.safetensors", settings=None) -> FitState:
    if resume is False or resume is None:
        return FitState()
    folder = latest_checkpoint(out_dir) if resume in ("auto", True) else Path(resume)
    if folder is None and resume is True:  # LitGPT's --resume true: the newest checkpoint, which must be there
        raise TrainingError(f"--resume true: no checkpoint in {out_dir} to resume from: use --resume auto to start fresh when there is none")
    if folder is None:
        fabric.print(f"no checkpoint to resume in {out_dir}: starting fresh")
        return FitState()
    if not (folder / "training_state.pt").is_file():
        raise TrainingError(f"{folder} has no training_state.pt: pass a step-* folder written by pretrain/finetune")
    from litgpt_clone.checkpoints.io import load_state

    saved = read_training_state(folder)
    check_same_model(folder, unwrap(model).config)
    if settings is not None:
        check_same_settings(folder, *settings)
    load_full_state(model, optimizer, load_state(folder / weights_file), saved["optimizer"], strict=weights_file == "model.safetensors")
    torch.set_rng_state(saved["rng"])
    fabric.print(f"resumed from {folder} at step {saved['fit']['step']}")
    return FitState(**saved["fit"])


def check_same_model(folder: Path, config) -> None:
    """``TrainingError`` when the checkpoint to resume was written for a model of another shape (the run's
    --model_config changed, or --out_dir holds another run)."""
    from litgpt_clone.config import Config

    saved = Config.from_file(folder / "model_config.yaml")
    shape = ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "vocab_size", "mlp_class_name", "n_expert")
    differ = [f"{name} {getattr(saved, name)} there, {getattr(config, name)} here" for name in shape if getattr(saved, name) != getattr(config, name)]
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


def make_saver(fabric, model, optimizer, out_dir: Path, write, select=None):
    """``save(state, final)``: every rank gathers the full state, rank 0 writes ``step-N/`` (and ``final/``)."""

    def save(state: FitState, final: bool) -> None:
        model_sd, optim_sd = full_state(model, optimizer, learned_only=select is not None)
        if not all(torch.isfinite(t).all() for t in model_sd.values()):
            raise TrainingError(
                f"weights are no longer finite at step {state.step}: the last good checkpoint is kept in {out_dir}; "
                "lower --train.lr, raise --train.warmup_steps or set --train.max_norm"
            )
        if fabric.global_rank == 0:
            model_sd = select(model_sd) if select else model_sd
            training_state = {"optimizer": optim_sd, "fit": dataclasses.asdict(state), "rng": torch.get_rng_state()}
            write(step_dir(out_dir, state.step), model_sd, training_state)
            if final:
                write(out_dir / "final", model_sd, None)
        fabric.barrier()

    return save


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
