"""Reading and writing checkpoint files: atomic writes, safetensors first, ``torch.load`` only with ``weights_only``."""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file



NATIVE_WEIGHTS = "lit_model.safetensors"
"""The weights of a native folder (beside ``model_config.yaml``). Not ``model.safetensors``: transformers reads that
name in a folder with a config.json (which a converted folder keeps) and made a randomly initialised model of these
tensors, whose names it does not know, with only a warning; now it says the folder has no weights it can read."""

REPO_ID = re.compile(r"^(?!.*(?:\.\.|--))\w(?:[\w.\-]*\w)?/\w(?:[\w.\-]*\w)?$")
"""``org/name`` as the hub spells them: each part starts and ends with a letter, digit or ``_``, and ``..`` and ``--``
appear nowhere (``huggingface_hub.utils.validate_repo_id``'s rules); so ``./x``, ``../x`` and ``org/..`` are paths, not
repo ids (``org/..`` made ``download`` try to create ``checkpoints/org/..``)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and the fix."""


# --------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
"""The process's umask, read once at import (reading it means setting it, which is not thread-safe later)."""


def write_atomic(path: Path, write) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp (and safetensors) make it 0600: give it a new file's usual mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: without it a power loss can undo the rename after the file's data is
    on disk (best effort: some file systems cannot open a folder for it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_atomic(src: Path, path: Path) -> None:
    """``shutil.copyfile`` through ``write_atomic``: a killed copy never leaves a truncated file under ``path``."""
    import shutil

    write_atomic(path, lambda tmp: shutil.copyfile(src, tmp))


def write_atomic_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """One safetensors file; tensors that share memory (tied embeddings) are stored once by the caller."""
    state = {k: v.contiguous() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the tied output head (it is the embedding)."""
    state = model.state_dict()
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def hf_shards(state: dict[str, torch.Tensor], max_shard_size: str | int = "5GB"):
    """How ``state`` splits into safetensors files of at most ``max_shard_size`` (``huggingface_hub``'s plan)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    try:
        return split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    except ValueError as err:
        raise CheckpointError(f"max_shard_size {max_shard_size!r} is not a size ({err}): use one such as 5GB or 500MB") from None


HF_SHARD = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$")


def save_hf_weights(state: dict[str, torch.Tensor], out_dir: Path, max_shard_size: str | int = "5GB") -> None:
    """``model.safetensors``, or shards and their index above ``max_shard_size``; then, as ``save_pretrained`` does, the
    weight files and index of an earlier export into ``out_dir`` are removed (transformers would load those instead)."""
    split = hf_shards(state, max_shard_size)
    index = out_dir / "model.safetensors.index.json"
    if split.is_sharded:  # what transformers reads first goes first: a kill while the shards are replaced one by one
        (out_dir / "model.safetensors").unlink(missing_ok=True)  # leaves a folder it refuses, not one mixing two models
        index.unlink(missing_ok=True)
    for filename, names in split.filename_to_tensors.items():
        save_weights({n: state[n] for n in names}, out_dir / filename)
    if split.is_sharded:
        write_atomic_text(index, json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, indent=2) + "\n")
    else:
        index.unlink(missing_ok=True)
    for old in out_dir.iterdir():
        if HF_SHARD.match(old.name) and old.name not in split.filename_to_tensors:
            old.unlink()


# --------------------------------------------------------------------------- reading
def load_state(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        old = path.parent / "model.safetensors"
        if path.name == NATIVE_WEIGHTS and native_keys(old):  # (before the adapter checks: a LoRA final/ merged then)
            raise CheckpointError(
                f"{old} holds native weights under the name earlier versions gave them: rename it to {NATIVE_WEIGHTS} "
                f"(mv {shlex.quote(str(old))} {shlex.quote(str(path))})"
            )
        if (path.parent / "lora.safetensors").is_file():
            raise CheckpointError(f"{path.parent} holds LoRA weights only: merge them first with `litgpt-clone merge_lora {path.parent}`")
        if (path.parent / "adapter.safetensors").is_file():  # a `finetune adapter` step-* folder
            raise CheckpointError(
                f"{path.parent} holds LLaMA-Adapter weights only (a step checkpoint, which has no merge): use the run's "
                "final/ folder, the base model with the adapters inside"
            )
        raise CheckpointError(f"no weights at {path}: convert the checkpoint first (litgpt-clone convert from_hf)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({err}): {fetch_again(path, 'convert or download it again')}") from err


def fetch_again(path: Path, otherwise: str) -> str:
    """How to replace a broken file: for one in a snapshot of the Hugging Face cache
    (``models--org--name/snapshots/<commit>/``), ``download --force_download``, since a plain download keeps a cached
    file whose size is right; ``otherwise`` for any other file."""
    parts = Path(path).absolute().parts
    if len(parts) >= 4 and parts[-3] == "snapshots" and parts[-4].startswith("models--"):
        repo = parts[-4].removeprefix("models--").replace("--", "/")
        return f"fetch it again with `litgpt-clone download {repo} --force_download true`"
    return otherwise


HF_WEIGHTS = (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json"))
"""A Hugging Face folder's weights, in the order transformers looks for them: (single file, index of shards)."""


def hf_weight_files(hf_dir: Path) -> list[Path]:
    """The weight files of a Hugging Face folder, as ``from_pretrained`` picks them: the single file, else the files the
    index names; without either, shards named as transformers names them (``download.weight_files``)."""
    for single, index in HF_WEIGHTS:
        if (hf_dir / single).is_file():
            return [hf_dir / single]
        if (hf_dir / index).is_file():
            names = index_shards(hf_dir / index)
            missing = [n for n in names if not (hf_dir / n).is_file()]
            if missing:
                raise CheckpointError(f"{hf_dir / missing[0]} is missing ({index} names it): download the checkpoint again")
            return [hf_dir / n for n in names]
    from litgpt_clone.checkpoints.download import weight_files

    names = weight_files(p.name for p in hf_dir.iterdir() if p.is_file())
    if not names and (hf_dir / "model.pth").is_file():  # what `litgpt convert_from_litgpt` writes: Hugging Face names
        return [hf_dir / "model.pth"]
    return [hf_dir / n for n in names if not n.endswith(".json")]


def index_shards(index: Path, label: Optional[str] = None, fix: str = "download the checkpoint again") -> list[str]:
    """The shard files a weight index (``model.safetensors.index.json``) maps the tensors to, each a plain file name
    beside the index: the index comes from whoever made the checkpoint, and an absolute or ``../`` name read a file
    from elsewhere on the user's disk into the converted model (``hf_hub_download`` refuses such names too).
    ``label`` names the index in the one-line ``CheckpointError`` (default: its path); ``fix`` ends the one for a file
    that is not an index."""
    label = label or str(index)
    try:
        names = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{label} is not a weight index ({type(err).__name__}: {err}): {fix}") from None
    for name in names:
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise CheckpointError(
                f"{label} names the shard {name!r}, which is not a file name beside it (a path elsewhere on this disk "
                "would be read into the checkpoint): use a checkpoint whose index names its own shard files"
            )
    return names


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face folder (``hf_weight_files``): safetensors, else ``.bin`` read with ``weights_only``."""
    hf_dir = Path(hf_dir)
    files = hf_weight_files(hf_dir)
    if not files:
        raise CheckpointError(f"no weights in {hf_dir}: expected model.safetensors, model-*.safetensors, pytorch_model*.bin or model.pth")
    state = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(load_state(f))
            continue
        # mmap reads only the zip format of torch >= 1.6; older files (still loaded weights-only) are read whole
        state.update(torch_load(f, "use a safetensors checkpoint", mmap=zipfile.is_zipfile(f)))
    return state


def read_settings(path: Path, cls):
    """``cls(**fields)`` from a settings file a finetune run wrote beside its weights (``lora_config.yaml``,
    ``adapter_config.yaml``); one that is not such a mapping is one ``CheckpointError`` line."""
    import yaml

    try:
        saved = yaml.safe_load(Path(path).read_text())
        if not isinstance(saved, dict):
            raise TypeError(f"it holds a {type(saved).__name__}, not a mapping of settings")
        return cls(**saved)
    except (yaml.YAMLError, TypeError, ValueError) as err:
        why = " ".join(str(err).split())[:200]  # (YAML's messages span lines)
        raise CheckpointError(f"{path} is not a valid {Path(path).name} ({why}): the finetune run writes it; restore that file") from None


def torch_load(path: Path, fix: str, **kwargs):
    """``torch.load`` of a file that may come from anyone: tensors and plain containers only (``weights_only``). A
    file it refuses (a pickle that names other Python objects, as a planted payload does) or cannot read is one
    ``CheckpointError`` line ending with ``fix``, not torch's page of advice (which suggests ``weights_only=False``)."""
    import warnings

    try:
        with warnings.catch_warnings():  # (torch warns of a pickle protocol it may not read, then says what it refused)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as err:  # torch raises many kinds for a bad pickle or zip
        raise CheckpointError(f"{path} cannot be read safely ({type(err).__name__}: {refusal(err)[:200]}): {fix}") from None


def refusal(err: Exception) -> str:
    """What ``torch.load`` refused, in its first sentence (``Unsupported operand 149``, ``Trying to load unsupported
    GLOBAL posix.system ...``): torch wraps that in a page whose advice is to set ``weights_only=False``, which runs
    whatever code the file holds, and keeps the refusal itself as the wrapper's context."""
    if str(err).startswith("Weights only load failed") and err.__context__ is not None:
        err = err.__context__
    first = (str(err).strip().splitlines() or [""])[0]
    return re.split(r"(?<=\.)\s", first, maxsplit=1)[0]


def check_keys(state: dict, model: torch.nn.Module, where: str) -> None:
    """A ``CheckpointError`` naming ``where`` unless ``state`` holds exactly the model's tensors (a tied output head
    may be left out: it is the embedding)."""
    expected = model.state_dict()
    tied = getattr(model.config, "tie_embeddings", False)
    missing = [k for k in expected if k not in state and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{where} does not match model_config.yaml: missing {missing[:3]}, unexpected {unexpected[:3]}")
    wrong = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if wrong:  # (the same names, another size: a model_config.yaml of another model beside these weights)
        raise CheckpointError(f"{where} does not match model_config.yaml: wrong shape {wrong[:3]}")


def load_weights(model: torch.nn.Module, checkpoint_dir: Path, device="cpu", dtype: Optional[torch.dtype] = None) -> None:
    """Load ``lit_model.safetensors`` into a model built on the meta device (or anywhere), then place it on ``device``."""
    state = load_state(Path(checkpoint_dir) / NATIVE_WEIGHTS)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    check_keys(state, model, f"{checkpoint_dir}/{NATIVE_WEIGHTS}")
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(model.config, "tie_embeddings", False):
        model.lm_head.weight = model.transformer.wte.weight
    model.reset_rope(torch.device(device))  # the tables of a model built on the meta device hold no data yet
    model.to(device)


# --------------------------------------------------------------------------- locating
def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a safetensors file (its header only; [] for a file that is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception:  # noqa: BLE001  (a broken file is reported where its weights are read)
        return []


def native_keys(path: Path) -> bool:
    """Whether ``path`` is a safetensors file of native tensor names (``transformer.h.0...``)."""
    return any(key.startswith("transformer.") for key in safetensors_keys(path))


def holds_native_weights(folder: Path) -> bool:
    """Whether ``folder`` holds native weights, under their name or the one earlier versions gave them."""
    return (folder / NATIVE_WEIGHTS).is_file() or native_keys(folder / "model.safetensors")


def litgpt_checkpoint(path: Path) -> str:
    """How to bring over a LitGPT checkpoint folder (``lit_model.pth``, LitGPT's ``model_config.yaml``)."""
    config = "" if (path / "config.json").is_file() else f", put the model's config.json from its hub repo into {path}"
    return (
        f"{path} is a LitGPT checkpoint (lit_model.pth): bring it over with `litgpt convert_from_litgpt {path} {path}` "
        f"(it writes model.pth, the weights under Hugging Face names){config}, then `litgpt-clone convert from_hf {path}`"
    )


def resolve_checkpoint(path_or_repo: str | Path, checkpoints_root: Path = Path("checkpoints")) -> Path:
    """A native checkpoint folder for a path or a hub repo id (downloaded and converted on first use)."""
    path = Path(path_or_repo)
    native = holds_native_weights(path)
    if (path / "lit_model.pth").is_file() and not native:  # LitGPT's model_config.yaml is not ours
        raise CheckpointError(litgpt_checkpoint(path))
    if (path / "model_config.yaml").is_file():
        if not (path / NATIVE_WEIGHTS).is_file():  # what it holds instead (LoRA weights only, the old name, nothing)
            load_state(path / NATIVE_WEIGHTS)  # said here, before a command starts its work (serve's workers)
        return path
    if native:
        raise CheckpointError(f"{path} holds native weights but no model_config.yaml: put back the model_config.yaml written with them")
    if path.is_dir() and (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is a Hugging Face folder: convert it once with `litgpt-clone convert from_hf {path} --out_dir checkpoints/<name>`"
        )
    if (path / "adapter_config.json").is_file():  # (what a vLLM user hands over with a LoRA request)
        raise CheckpointError(
            f"{path} is a PEFT adapter, not a model: merge it into its base (litgpt-clone merge_lora {path} --out_dir <folder>)"
            f" or serve it over the base (serve <base> --adapters name={path})"
        )
    if path.exists():
        raise CheckpointError(f"{path} is not a checkpoint: expected {path / 'model_config.yaml'} and {NATIVE_WEIGHTS}")
    repo = str(path_or_repo)
    if REPO_ID.match(repo):
        local = checkpoints_root / repo
        if (local / "model_config.yaml").is_file() and holds_native_weights(local):
            return resolve_checkpoint(local)  # (the old name: the line saying to rename it; a conversion that lost its
            # weights is downloaded and converted again)
        from litgpt_clone.checkpoints.download import DownloadError, download

        try:
            return download(repo, out_dir=local)
        except DownloadError as err:  # (not found, or no network: out/final read as a repo id when out/ exists)
            if not path.parent.is_dir():
                raise
            here = sorted(p.name for p in path.parent.iterdir() if p.is_dir())  # a mistyped folder (out/lorra), likely
            raise CheckpointError(f"no folder {path} ({path.parent} holds {', '.join(here[:8]) or 'no folders'}), and {err}") from None
    raise CheckpointError(
        f"no checkpoint at {path}: pass a folder with model_config.yaml and {NATIVE_WEIGHTS}, or a hub repo id (org/name)"
    )
