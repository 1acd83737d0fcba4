"""Training checkpoints: native checkpoint folders plus the state needed to resume exactly.

``out_dir/step-00000100/`` holds ``lit_model.safetensors``, ``model_config.yaml``, the tokenizer files,
``hyperparameters.yaml`` (what ``generate``, ``convert to_hf`` and ``finetune`` read) and ``training_state.pt``
(optimizer, step, data position, RNG). A checkpoint is written into ``.step-00000100.tmp/`` and renamed when
complete, so a crash while saving leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
import yaml

from litgpt_clone.checkpoints.io import check_keys, fsync_folder, save_weights, torch_load, write_atomic, write_atomic_text
from litgpt_clone.config import Config
from litgpt_clone.tokenizer import tokenizer_files

STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"step-{step:08d}"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself under Fabric's wrapper (FSDP2 shards it in place; DDP's wrapper holds the same parameters)."""
    return getattr(model, "module", model)


def full_state(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], learned_only: bool = False) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state dicts, for plain, DDP and FSDP2 models alike. Call it on every
    rank; only rank 0 is sure to get them: with several processes the others may get empty dicts (torch's
    ``full_state_dict`` with ``cpu_offload`` gathers onto rank 0 alone), so whatever is decided from them is
    decided on rank 0. ``learned_only``: of the model, only the parameters that train (LoRA's, an adapter's)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    model = unwrap(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=learned_only)
    learned = [(name, p) for name, p in model.named_parameters() if p.requires_grad] if learned_only else []
    if learned_only and not any(isinstance(p, DTensor) for _, p in learned):
        # not sharded: the parameters as they are. (get_model_state_dict maps every key of model.state_dict() to a module
        # attribute, and a QLoRA model's bitsandbytes int8 layers write keys, SCB and weight_format, that are not.)
        model_sd = {name: p.detach().to("cpu", copy=True) for name, p in learned}
    else:
        model_sd = get_model_state_dict(model, options=options)
    return model_sd, get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else {}


def load_full_state(
    model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], model_sd: dict, optim_sd: Optional[dict], strict: bool = True,
    where: str = "the checkpoint",
) -> None:
    """Load full state dicts into a plain, DDP or FSDP2 model (``strict=False`` for a part, e.g. LoRA weights). With
    ``strict``, a ``CheckpointError`` naming ``where`` (the weights file) when its tensors are not the model's: torch's
    own strict check never fires for full state dicts (it fills the missing keys from the model first, so a layer
    missing from the file trained on from its random initialization)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    model = unwrap(model)
    if strict:
        check_keys(model_sd, model, where)
    options = StateDictOptions(full_state_dict=True, strict=strict and not getattr(model.config, "tie_embeddings", False))
    if optimizer is None or optim_sd is None:
        set_model_state_dict(model, model_sd, options=options)
    else:
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=options)


def write_checkpoint(
    folder: Path, weights: dict[str, dict], config: Config, tokenizer_dir: Optional[Path], hparams: dict,
    training_state: Optional[dict] = None, yamls: Optional[dict[str, dict]] = None,
) -> Path:
    """Write a complete checkpoint folder atomically (temporary folder, then rename). Call on one rank only.

    ``weights`` maps file names to state dicts (``{"lit_model.safetensors": ...}`` for a native checkpoint, LoRA adds
    ``lora.safetensors``); ``yamls`` adds YAML files (``lora_config.yaml``).
    """
    folder = Path(folder)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    if old.is_dir() and not folder.exists():  # killed between the two renames below: the earlier folder comes back
        old.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_files(tmp, weights, config, tokenizer_dir, hparams, training_state, yamls)
    except Exception:  # a full disk: the partial folder goes, not to fill it further (a kill leaves it: it never counts)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():  # re-saving the same step (e.g. "final"): the old one is renamed aside and deleted only once
        folder.rename(old)  # the new one is in place (no deleting while neither is there)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    fsync_folder(folder.parent)  # the rename survives a power loss
    return folder


def write_files(
    tmp: Path, weights: dict[str, dict], config: Config, tokenizer_dir: Optional[Path], hparams: dict,
    training_state: Optional[dict], yamls: Optional[dict[str, dict]],
) -> None:
    """The files of a checkpoint, into the temporary folder ``tmp``."""
    for name, state in weights.items():
        if config.tie_embeddings:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        save_weights(state, tmp / name)
    write_atomic_text(tmp / "model_config.yaml", config.to_yaml())
    write_atomic_text(tmp / "hyperparameters.yaml", yaml.safe_dump(hparams, sort_keys=False))
    for name, data in (yamls or {}).items():
        write_atomic_text(tmp / name, yaml.safe_dump(data, sort_keys=False))
    if tokenizer_dir is not None:
        for name in tokenizer_files(tokenizer_dir):
            (tmp / name).parent.mkdir(exist_ok=True)
            shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
    if training_state is not None:
        write_atomic(tmp / "training_state.pt", lambda path: save_torch(training_state, path))


def save_torch(obj, path: Path) -> None:
    """``torch.save``, whose failed writes (a full disk) stay the ``OSError`` they are: torch's own file writer turns
    them into a ``RuntimeError`` that does not say why ("unexpected pos ...")."""
    with open(path, "wb") as f:
        errors = []

        def write(data) -> int:
            try:
                return f.write(data)
            except OSError as err:
                errors.append(err)
                raise

        try:
            torch.save(obj, SimpleNamespace(write=write, flush=f.flush))
        except RuntimeError:
            if errors:
                raise errors[0] from None
            raise


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    """The newest complete ``step-*`` folder with a training state (partial ``.tmp`` folders never count)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    found = sorted(p for p in out_dir.iterdir() if STEP_DIR.match(p.name) and (p / "training_state.pt").is_file())
    return found[-1] if found else None


def kept_checkpoint(out_dir: Path) -> str:
    """What a run that stops leaves to resume from, for its error line."""
    newest = latest_checkpoint(out_dir)
    return f"the last good checkpoint is {newest}" if newest else f"no checkpoint was saved in {out_dir} before it"


def read_training_state(folder: Path) -> dict:
    return torch_load(Path(folder) / "training_state.pt", "resume from another step-* folder, or start fresh with --resume false")

