"""The argument groups of ``pretrain`` and ``finetune`` (``--train.*``, ``--eval.*``). Attribute docstrings are --help."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import types
import typing
from dataclasses import dataclass
from typing import Callable, Optional

from litgpt_clone.config import ConfigError, at_least


@dataclass
class TrainArgs:
    global_batch_size: int = 64
    """Sequences per optimizer step, over all devices; gradient accumulation makes up the difference."""
    micro_batch_size: int = 4
    """Sequences per forward/backward on one device."""
    max_tokens: Optional[int] = None
    """Stop after this many training tokens (global); rounded up to whole optimizer steps."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (wins over epochs and max_tokens)."""
    epochs: Optional[float] = None
    """Stop after this many passes over the training samples (wins over max_tokens)."""
    max_seq_length: Optional[int] = None
    """Tokens per training sequence; default: the model's block_size."""
    lr: float = 3e-4
    """Peak learning rate, reached after warmup."""
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr`` over this many optimizer steps (a run of fewer steps never reaches ``lr``)."""
    min_lr: float = 3e-5
    """The cosine decay from ``lr`` goes down to this at ``max_steps`` (the last step, counted from 0, runs just above it)."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to weight matrices and embeddings only (never to norms or biases)."""
    beta1: float = 0.9
    """AdamW beta1 (with the default ``--optimizer AdamW``)."""
    beta2: float = 0.95
    """AdamW beta2 (with the default ``--optimizer AdamW``)."""
    max_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this value; None disables clipping."""
    save_interval: Optional[int] = 1000
    """Save a checkpoint every this many optimizer steps (and at the end); None saves only at the end."""
    log_interval: int = 1
    """Log every this many optimizer steps."""
    tie_embeddings: Optional[bool] = None
    """Override the model config's ``tie_embeddings``."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward: less memory, about a third more compute."""

    def __post_init__(self) -> None:
        at_least(1, "train", global_batch_size=self.global_batch_size, micro_batch_size=self.micro_batch_size,
                 log_interval=self.log_interval, max_tokens=self.max_tokens, max_steps=self.max_steps, save_interval=self.save_interval)
        at_least(2, "train", max_seq_length=self.max_seq_length)
        at_least(0, "train", warmup_steps=self.warmup_steps, min_lr=self.min_lr, weight_decay=self.weight_decay)
        at_least(0, "train", above=True, lr=self.lr, epochs=self.epochs, max_norm=self.max_norm)

    def gradient_accumulation_steps(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.micro_batch_size > self.global_batch_size:
            raise ConfigError(
                f"--train.micro_batch_size {self.micro_batch_size} is larger than --train.global_batch_size "
                f"{self.global_batch_size}: lower the micro batch or raise the global batch"
            )
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"--train.global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size x devices = "
                f"{self.micro_batch_size} x {world_size}: pick sizes that divide"
            )
        return self.global_batch_size // per_step


@dataclass
class EvalArgs:
    interval: int = 100
    """Validate every this many optimizer steps."""
    max_iters: int = 20
    """Validation batches (of ``micro_batch_size`` per device) per validation."""
    initial_validation: bool = False
    """Validate once before training."""
    final_validation: bool = True
    """Validate once after training."""

    def __post_init__(self) -> None:
        at_least(1, "eval", interval=self.interval, max_iters=self.max_iters)


def with_defaults(command: Callable, hparams: dict) -> dict:
    """A command's arguments with each settings group given as a dict from Python (``train=dict(max_steps=2)``) laid
    over the command's own default for that group, as ``--train.max_steps 2`` is on the command line (finetune's
    defaults are not TrainArgs' pretraining ones: warmup 10, not 100). A whole ``TrainArgs(...)`` replaces it. Each
    argument is then checked against its annotation, as the command line checks it: from Python, an unknown
    ``strategy`` ran as "auto" and ``data="json"`` failed deep inside the run."""
    defaults = inspect.signature(command).parameters
    hparams = {
        k: dataclasses.replace(defaults[k].default, **v) if isinstance(v, dict) and dataclasses.is_dataclass(defaults[k].default) else v
        for k, v in hparams.items()
    }
    for name, hint in typing.get_type_hints(command).items():
        if name in hparams and not fits(hparams[name], hint):
            raise ConfigError(f"{command.__name__}(): {name} is {hparams[name]!r:.80}, not {described(hint)}")
    return hparams


def fits(value, hint) -> bool:
    """Whether ``value`` is what the annotation ``hint`` allows (a path may be a string, a float an int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Literal:
        return value in args and type(value) in {type(a) for a in args}
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return any(fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is not None:  # dict[str, int], tuple[int, int], ...
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str or issubclass(hint, pathlib.PurePath):  # (a folder given as a Path or a string: both work)
        return isinstance(value, (str, pathlib.PurePath))
    return isinstance(value, hint)


def described(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return " or ".join(described(a) for a in args)
    if hint is type(None):
        return "None"
    name = str(getattr(hint, "__name__", hint))
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}" + (f" (e.g. {', '.join(n + '(...)' for n in ours[:4])})" if (ours := kinds(hint)) else "")


def kinds(cls) -> list[str]:
    """The names of litgpt_clone's concrete subclasses of ``cls`` (those without subclasses of their own)."""
    subclasses = getattr(cls, "__subclasses__", list)() if isinstance(cls, type) else []
    return [n for c in subclasses for n in (kinds(c) or ([c.__name__] if c.__module__.startswith("litgpt_clone") else []))]
