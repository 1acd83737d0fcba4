"""``litgpt-clone pretrain``: train a model from scratch (or continue from a checkpoint) on token streams."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional, Union

from litgpt_clone.config import Config, ConfigError
from litgpt_clone.data.pretrain import DataError, DataModule, Text
from litgpt_clone.parallel import Compile, Strategy
from litgpt_clone.tokenizer import Tokenizer
from litgpt_clone.training.args import EvalArgs, TrainArgs, with_defaults

Precision = Literal["bf16-mixed", "bf16-true", "16-mixed", "32-true"]


def pretrain(
    model_name: Optional[str] = None,
    model_config: Optional[Path] = None,
    data: Optional[DataModule] = None,
    tokenizer_dir: Optional[Path] = None,
    out_dir: Path = Path("out/pretrain"),
    devices: int = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    precision: Optional[Precision] = None,
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),
    optimizer: Union[str, dict] = "AdamW",
    resume: Union[bool, Literal["auto"], Path] = False,
    initial_checkpoint_dir: Optional[Path] = None,
    logger_name: Literal["csv", "tensorboard"] = "csv",
    seed: int = 42,
    compile: Compile = False,
) -> dict:
    """Pretrain a model on text or token shards, on one device or many (DDP, FSDP2), one node or many.

    Args:
        model_name: A registry name (``litgpt-clone models``) whose architecture is trained from scratch.
        model_config: A model_config.yaml instead of a registry name (e.g. to change vocab_size or sizes).
        data: Where tokens come from: ``text`` (--data.path file or folder), ``shards`` (--data.path with a
            manifest.json, as written by ``prepare code``), ``tinystories`` or ``openwebtext``.
        tokenizer_dir: Folder with the tokenizer (tokenizer.json or tokenizer.model); copied into every checkpoint.
        out_dir: Checkpoints (``step-*/``, ``final/``) and logs (``logs/``) go here; with several nodes, a folder every
            node sees (rank 0 writes the checkpoints, every rank reads the one it resumes from).
        devices: Devices per node.
        num_nodes: Nodes; launch with torchrun or srun (see README "Several GPUs and nodes").
        strategy: ``ddp`` replicates the model; ``fsdp`` shards it (FSDP2, one unit per block); ``auto`` picks DDP
            for several devices.
        precision: Default: bf16-mixed where the GPU supports it, else 32-true.
        train: Batch sizes, length, learning rate schedule, clipping, checkpoint and log intervals.
        eval: Validation interval and size.
        optimizer: A ``torch.optim`` class name (AdamW, SGD, ...) or class path, or ``{"class_path": ..., "init_args": {...}}``
            (also ``--optimizer SGD --optimizer.init_args.momentum 0.9``, in any order); ``lr`` and ``weight_decay`` in init_args
            set ``--train.lr`` (the schedule's peak) and ``--train.weight_decay``, as LitGPT's recipes write them.
        resume: ``auto`` continues from the newest complete checkpoint in out_dir (or starts fresh), a path resumes
            from that checkpoint, false starts fresh.
        initial_checkpoint_dir: Start from these weights (continued pretraining of a converted checkpoint); the model
            is the checkpoint's, so give no model name or --model_config with it.
        logger_name: Where metrics go besides the console: csv or tensorboard, under out_dir/logs.
        seed: Same on every rank: initialization and data order (seeds Python's, NumPy's and torch's global generators, as transformers' Trainer does).
        compile: ``torch.compile``: ``true`` (= ``blocks``) compiles each block, one graph shared by all layers
            (fastest to compile, works with every strategy); ``model`` compiles the whole model in one graph (faster
            steps, slower to compile; not with --strategy fsdp).
    """
    hparams = with_defaults(pretrain, dict(locals()))  # the arguments, before any other name is bound here
    train, eval = hparams["train"], hparams["eval"]  # (dicts from Python laid over the defaults)
    from litgpt_clone.training.run import build_fabric, optimizer_spec, run_training, world_size

    if model_name is None and model_config is None and initial_checkpoint_dir is None:
        raise ConfigError("pretrain needs a model: a registry name, --model_config <yaml> or --initial_checkpoint_dir")
    if initial_checkpoint_dir is not None:  # the model first: an unknown name or a missing file is the first error
        if model_name is not None or model_config is not None:
            given = f"--model_config {model_config}" if model_config is not None else f"the model name {model_name}"
            raise ConfigError(
                f"--initial_checkpoint_dir {initial_checkpoint_dir} brings its own model (its model_config.yaml): drop {given}"
            )
        if Path(initial_checkpoint_dir).is_dir():  # a Hugging Face folder, weights under their old name: one line each
            from litgpt_clone.checkpoints.io import resolve_checkpoint

            resolve_checkpoint(initial_checkpoint_dir)
        config = Config.from_checkpoint(initial_checkpoint_dir)
        if train.tie_embeddings is not None and train.tie_embeddings != config.tie_embeddings:  # one matrix dropped, or a random head
            raise ConfigError(
                f"--train.tie_embeddings {str(train.tie_embeddings).lower()}: the model of --initial_checkpoint_dir "
                f"{initial_checkpoint_dir} has tie_embeddings {str(config.tie_embeddings).lower()} (its model_config.yaml): drop the flag"
            )
    elif model_config is not None:
        config = Config.from_file(model_config)
    else:
        config = Config.from_name(model_name)
    if tokenizer_dir is None and initial_checkpoint_dir is None:
        raise ConfigError("pretrain needs --tokenizer_dir (a folder with tokenizer.json or tokenizer.model)")
    if compile == "model" and strategy == "fsdp":
        raise ConfigError("--compile model (one graph for the whole model) is not set up with --strategy fsdp: use --compile true, which compiles each block")
    # what is wrong on one process is wrong on all: said once, here, before the launch starts the other processes
    train.gradient_accumulation_steps(world_size(devices, num_nodes))
    _, _, train = optimizer_spec(optimizer, train)  # (init_args' lr and weight_decay set the schedule's)
    hparams["train"] = train  # hyperparameters.yaml records what the run uses (--optimizer.init_args.lr as train.lr)
    tokenizer = Tokenizer(tokenizer_dir or initial_checkpoint_dir)
    if tokenizer.vocab_size > config.vocab_size:
        fix = (f"leave --tokenizer_dir out to use {initial_checkpoint_dir}'s own tokenizer" if initial_checkpoint_dir is not None
               else "use a model config with vocab_size >= the tokenizer's (e.g. --model_config with vocab_size set)")
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}: {fix}")
    fabric = build_fabric(devices, num_nodes, strategy, precision, out_dir, logger_name, resume)
    fabric.launch()
    if train.tie_embeddings is not None:
        config = dataclasses.replace(config, tie_embeddings=train.tie_embeddings)
    data = data or Text()
    data.skip = (Path(out_dir),)  # the run's checkpoints and logs are no data, also where --data.path holds --out_dir
    return run_training(
        fabric, config, tokenizer, data, out_dir, train, eval, optimizer, resume, seed, compile,
        initial_checkpoint_dir, hparams,
    )
