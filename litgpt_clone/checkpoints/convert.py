"""Hugging Face checkpoints <-> native checkpoints, driven by the ``Arch`` tables of each family."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch

from litgpt_clone.checkpoints.arch import Arch, get_arch
from litgpt_clone.checkpoints.io import (
    NATIVE_WEIGHTS,
    CheckpointError,
    copy_atomic,
    fsync_folder,
    hf_weight_files,
    holds_native_weights,
    litgpt_checkpoint,
    load_state,
    native_keys,
    resolve_checkpoint,
    read_hf_weights,
    save_hf_weights,
    save_weights,
    write_atomic_text,
)
from litgpt_clone.config import Config, ConfigError, check_out_dir
from litgpt_clone.tokenizer import tokenizer_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def config_from_hf(hf: dict) -> dict:
    """``Config`` keyword arguments for a config.json dict of an architecture we implement."""
    names = hf.get("architectures") or []
    if not names:
        raise ConfigError("config.json has no 'architectures' entry: it is not a transformers causal-LM checkpoint")
    arch = get_arch(names[0])
    hf = {**arch.hf_defaults, **hf}
    if arch.check:
        arch.check(hf)
    name = (hf.get("_name_or_path") or "").rstrip("/").split("/")[-1] or hf.get("model_type", "")
    try:
        mapped = arch.config_from_hf(hf)
    except KeyError as err:  # a key every checkpoint of this architecture has
        raise ConfigError(f"config.json has no {err.args[0]!r}, which every {arch.name} config has: is it the checkpoint's own config.json?") from None
    return {**mapped, "architecture": arch.native_architecture or arch.name, "name": name}


def config_to_hf(config: Config) -> dict:
    arch = get_arch(config.architecture)
    return {"architectures": [arch.name], "model_type": arch.model_type, **arch.extra_hf, **arch.config_to_hf(config)}


# --------------------------------------------------------------------------- weight maps
def weight_pairs(arch: Arch, config: Config) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Concrete (native modules, HF modules) pairs for every layer and expert."""
    for native, hf in arch.top.items():
        yield (native,), (hf,)
    table = arch.layer(config) if callable(arch.layer) else arch.layer
    for l in range(config.n_layer):
        for natives, hfs in table:
            for e in range(config.n_expert) if "{e}" in natives[0] else [0]:
                yield (
                    tuple(f"transformer.h.{l}." + n.format(e=e) for n in natives),
                    tuple(arch.layer_prefix.format(l=l) + h.format(e=e) for h in hfs),
                )


def suffixes(natives: tuple[str, ...], config: Config) -> tuple[str, ...]:
    """The tensors of a module pair that convert: a tied head's weight is the embedding's (Phi keeps the head's own
    bias even then)."""
    return ("bias",) if natives == ("lm_head",) and config.tie_embeddings else ("weight", "bias")


def split_parts(t: torch.Tensor, n: int, config: Config) -> tuple[torch.Tensor, ...]:
    """Undo a dim-0 concatenation of n parts: q/k/v sizes for three, halves for two."""
    if n == 1:
        return (t,)
    if n == 2:
        return t.chunk(2)
    hs, G = config.head_size, config.n_query_groups
    return t.split((config.n_head * hs, G * hs, G * hs))


def grouped_to_qkv(t: torch.Tensor, config: Config) -> torch.Tensor:
    """(G * (q_per_kv + 2) * hs, ...) interleaved per key/value group -> [q; k; v]."""
    G, hs = config.n_query_groups, config.head_size
    q_per_kv = config.n_head // G
    t = t.reshape(G, q_per_kv + 2, hs, *t.shape[1:])
    q, k, v = t[:, :q_per_kv], t[:, q_per_kv], t[:, q_per_kv + 1]
    return torch.cat([q.reshape(-1, *t.shape[3:]), k.reshape(-1, *t.shape[3:]), v.reshape(-1, *t.shape[3:])])


def qkv_to_grouped(t: torch.Tensor, config: Config) -> torch.Tensor:
    G, hs = config.n_query_groups, config.head_size
    q, k, v = split_parts(t, 3, config)
    rest = t.shape[1:]
    groups = torch.cat([q.reshape(G, -1, hs, *rest), k.reshape(G, 1, hs, *rest), v.reshape(G, 1, hs, *rest)], dim=1)
    return groups.reshape(-1, *rest)


def stacked_to_native(t: torch.Tensor, natives: tuple[str, ...], arch: Arch, config: Config) -> tuple[torch.Tensor, ...]:
    """The HF modules' tensors of a ``weight_pairs`` pair, stacked along dim 0 -> the native modules' tensors."""
    if arch.grouped_qkv and natives[0].endswith("attn.qkv"):
        t = grouped_to_qkv(t, config)
    return split_parts(t, len(natives), config)


def stacked_to_hf(t: torch.Tensor, natives: tuple[str, ...], n_hf: int, arch: Arch, config: Config) -> tuple[torch.Tensor, ...]:
    """The native modules' tensors of a pair, stacked along dim 0 -> the ``n_hf`` HF modules' tensors."""
    if arch.grouped_qkv and natives[0].endswith("attn.qkv"):
        t = qkv_to_grouped(t, config)
    return split_parts(t, n_hf, config)


def hf_to_native_weights(hf: dict[str, torch.Tensor], config: Config, arch: Arch, dtype: Optional[torch.dtype] = None) -> dict:
    """Native state dict from the tensors of an ``arch`` checkpoint (the architecture named in its config.json)."""
    out, used = {}, set()
    for natives, hfs in weight_pairs(arch, config):
        for suffix in suffixes(natives, config):
            keys = [f"{h}.{suffix}" for h in hfs]
            present = [k in hf for k in keys]
            if not any(present):
                continue
            if not all(present):
                raise CheckpointError(f"checkpoint has {keys[present.index(True)]} but not {keys[present.index(False)]}")
            t = torch.cat([hf[k] for k in keys]) if len(keys) > 1 else hf[keys[0]]
            for name, part in zip(natives, stacked_to_native(t, natives, arch, config)):
                out[f"{name}.{suffix}"] = part.to(dtype) if dtype else part
            used.update(keys)
    ignore = [re.compile(p) for p in arch.ignore] + ([re.compile(r"^lm_head\.weight$")] if config.tie_embeddings else [])
    unused = sorted(k for k in hf if k not in used and not any(p.match(k) for p in ignore))
    if unused:
        raise CheckpointError(f"tensors {unused[:4]}{' ...' if len(unused) > 4 else ''} do not map to {arch.name}: is config.json the one that came with these weights?")
    return out


def native_to_hf_weights(state: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    arch = get_arch(config.architecture)
    out = {}
    for natives, hfs in weight_pairs(arch, config):
        for suffix in suffixes(natives, config):
            keys = [f"{n}.{suffix}" for n in natives]
            if keys[0] not in state:
                continue
            t = torch.cat([state[k] for k in keys]) if len(keys) > 1 else state[keys[0]]
            for name, part in zip(hfs, stacked_to_hf(t, natives, len(hfs), arch, config)):
                out[f"{name}.{suffix}"] = part.contiguous()
    return out


# --------------------------------------------------------------------------- folders
def copy_aux_files(src: Path, dst: Path) -> None:
    """Tokenizer and generation files travel with the weights; those an earlier conversion left in ``dst`` that
    ``src`` does not have go (a stale chat_template.jinja or tokenizer.json would be read before the new files)."""
    wanted = tokenizer_files(src)
    for name in set(tokenizer_files(dst)) - set(wanted):
        (dst / name).unlink()
    for name in wanted:
        (dst / name).parent.mkdir(exist_ok=True)
        copy_atomic(src / name, dst / name)


def special_token_ids(checkpoint_dir: Path) -> dict:
    """config.json's ``bos_token_id``/``eos_token_id``/``pad_token_id`` for an export: those of the Hugging Face
    config.json the checkpoint was converted from, else the tokenizer's (transformers' generate stops on them when
    there is no generation_config.json)."""
    original = checkpoint_dir / "config.json"
    if original.is_file():
        hf = json.loads(original.read_text())
        return {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}
    if not any((checkpoint_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return {}
    from litgpt_clone.tokenizer import Tokenizer

    tokenizer = Tokenizer(checkpoint_dir)
    return {k: v for k, v in (("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id)) if v is not None}


HF_WEIGHT_NAME = re.compile(r"^(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin|(model\.safetensors|pytorch_model\.bin)\.index\.json)$")


def hf_weights_in(folder: Path) -> list[str]:
    """The Hugging Face weight files in ``folder`` (what transformers loads from it), not counting native weights
    under their old name ``model.safetensors``."""
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if HF_WEIGHT_NAME.match(p.name))
    return [n for n in names if not (n == "model.safetensors" and native_keys(folder / n))]


def check_destination(source: Path, out_dir: Path, command: str) -> None:
    """``--out_dir`` must be a folder that can be written (``check_out_dir``) and not the one being read: the folder
    would hold both formats, one config.json for two sets of weights (a file copy failed first, with a SameFileError
    traceback)."""
    check_out_dir(out_dir)
    if out_dir.resolve() == source.resolve():
        raise CheckpointError(f"{command} would write into {source}, the folder it reads: give --out_dir another folder")


def main_dtype(state: dict) -> torch.dtype:
    """The floating-point dtype that most of ``state``'s bytes are in."""
    size: dict = {}
    for t in state.values():
        if t.is_floating_point():
            size[t.dtype] = size.get(t.dtype, 0) + t.numel() * t.element_size()
    return max(size, key=size.get) if size else torch.float32


def convert_hf_checkpoint(
    hf_dir: Path, out_dir: Path, dtype: Optional[str] = None, name: Optional[str] = None, repo_id: Optional[str] = None
) -> Path:
    """Convert a Hugging Face checkpoint folder into a native one.

    Args:
        hf_dir: Folder with ``config.json`` and ``*.safetensors`` (or ``*.bin``) weights, single or sharded.
        out_dir: Where the native checkpoint is written (``lit_model.safetensors``, ``model_config.yaml``, the
            tokenizer files, and config.json as it came).
        dtype: Cast the weights to ``float32``, ``bfloat16`` or ``float16``; default keeps the stored dtype (weights
            stored in several, bf16 with fp32 norms say, take config.json's ``dtype``/``torch_dtype``, else the one
            most bytes have, as transformers loads them in one).
        name: The model's name in model_config.yaml (``download`` gives the repo's); default: config.json's.
        repo_id: The hub repo the weights came from (``download`` gives it), recorded as the config's ``hf_config``
            (``convert to_peft`` names it as the base model of an adapter).
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if hf_dir.exists() and not hf_dir.is_dir():  # (its config.json would be read from the file itself)
        raise CheckpointError(f"{hf_dir} is not a folder: give the Hugging Face checkpoint folder (config.json and the weights)")
    check_destination(hf_dir, out_dir, "convert from_hf")
    if stale := hf_weights_in(out_dir):
        raise CheckpointError(
            f"{out_dir} holds Hugging Face weights ({', '.join(stale[:3])}), which transformers would load from it instead"
            " of this conversion: give another --out_dir (or delete them)"
        )
    if (hf_dir / "lit_model.pth").is_file():  # LitGPT's: its Hugging Face weights (`litgpt download`) or model.pth
        if not (hf_dir / "config.json").is_file() or not hf_weight_files(hf_dir):  # (`litgpt convert_from_litgpt`) are read
            raise CheckpointError(litgpt_checkpoint(hf_dir))
    elif (hf_dir / "model_config.yaml").is_file() and holds_native_weights(hf_dir):
        resolve_checkpoint(hf_dir)  # (under the old name: the line saying to rename it)
        raise CheckpointError(f"{hf_dir} is already a native checkpoint (model_config.yaml): use it as it is, or export it with `convert to_hf`")
    config = Config.from_hf_config(hf_dir)
    if name:
        config = dataclasses.replace(config, name=name)
    if repo_id:
        config = dataclasses.replace(config, hf_config=dict(zip(("org", "name"), repo_id.split("/", 1))))
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    hf = json.loads((hf_dir / "config.json").read_text())
    arch = get_arch(hf["architectures"][0])
    state = hf_to_native_weights(read_hf_weights(hf_dir), config, arch, DTYPES.get(dtype))
    if dtype is None and len({t.dtype for t in state.values() if t.is_floating_point()}) > 1:  # (one dtype, as transformers)
        stated = DTYPES.get(str(hf.get("dtype") or hf.get("torch_dtype") or (hf.get("text_config") or {}).get("dtype")))
        state = {k: t.to(stated or main_dtype(state)) if t.is_floating_point() else t for k, t in state.items()}
    check_against_model(state, config)
    # a new folder is written beside itself and renamed when complete: an interrupted conversion (Ctrl-C) left its
    # tokenizer files and config.json without weights, which the next command took for a Hugging Face folder
    final, fresh = out_dir, not out_dir.exists()
    if fresh:
        out_dir = out_dir.with_name(f".{out_dir.name}.partial")
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_aux_files(hf_dir, out_dir)
    if (hf_dir / "config.json").is_file():
        copy_atomic(hf_dir / "config.json", out_dir / "config.json")
    save_weights(state, out_dir / NATIVE_WEIGHTS)
    write_atomic_text(out_dir / "model_config.yaml", config.to_yaml())
    if native_keys(out_dir / "model.safetensors"):  # an earlier conversion's weights under their old name
        (out_dir / "model.safetensors").unlink()
    if fresh:
        out_dir.rename(final)
        fsync_folder(final.parent)
    return final


def convert_to_hf_checkpoint(checkpoint_dir: Path, out_dir: Path, max_shard_size: str = "5GB") -> Path:
    """Export a native checkpoint as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` loads.

    Args:
        checkpoint_dir: A native checkpoint folder (``model_config.yaml`` + ``lit_model.safetensors``), or a hub repo id
            (downloaded and converted on first use).
        out_dir: Where ``model.safetensors`` (sharded with an index above ``max_shard_size``), ``config.json``,
            the tokenizer files and ``generation_config.json`` are written.
        max_shard_size: Largest safetensors shard, e.g. ``"5GB"`` or ``"500MB"``, or a number of bytes.
    """
    checkpoint_dir, out_dir = resolve_checkpoint(checkpoint_dir), Path(out_dir)
    check_destination(checkpoint_dir, out_dir, "convert to_hf")
    if (out_dir / "model_config.yaml").is_file() or (out_dir / NATIVE_WEIGHTS).is_file():
        raise CheckpointError(
            f"{out_dir} is a native checkpoint (model_config.yaml, {NATIVE_WEIGHTS}): exporting into it would leave two"
            " models in one folder; give another --out_dir"
        )
    if (checkpoint_dir / "adapter_config.yaml").is_file():
        raise ConfigError(f"{checkpoint_dir} carries LLaMA-Adapter prefixes, which transformers models have no place for")
    config = Config.from_checkpoint(checkpoint_dir)
    state = load_state(checkpoint_dir / NATIVE_WEIGHTS)
    try:  # the check from_hf runs: weights of another model fail here in one line, not in the middle of a split
        check_against_model(state, config)
    except CheckpointError as err:
        raise CheckpointError(f"{checkpoint_dir / NATIVE_WEIGHTS} does not match model_config.yaml: {err}") from None
    hf_config = {**config_to_hf(config), **special_token_ids(checkpoint_dir)}
    dtype = main_dtype(state)  # (the first tensor's was fp32 for bf16 weights with fp32 norms)
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    size = int(max_shard_size) if str(max_shard_size).strip().isdigit() else max_shard_size  # (bytes, as save_pretrained takes)
    save_hf_weights(native_to_hf_weights(state, config), out_dir, size)  # first: it checks max_shard_size
    copy_aux_files(checkpoint_dir, out_dir)
    write_atomic_text(out_dir / "config.json", json.dumps(hf_config, indent=2) + "\n")
    return out_dir


def check_against_model(state: dict[str, torch.Tensor], config: Config) -> None:
    """Every parameter of a model built from ``config`` is present with the right shape, and nothing else."""
    from litgpt_clone.model import GPT

    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        detail = "; ".join(
            f"{label} {names[:3]}" for label, names in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if names
        )
        raise CheckpointError(f"weights do not fit the {config.architecture} config: {detail}")
