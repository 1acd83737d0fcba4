"""LoRA adapters in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), both ways.

An adapter is held here as its updates: for each adapted layer, ``A`` (R, in) and ``B`` (out, R) with the scale
folded into ``B``, so that the layer computes ``base(x) + x @ A.T @ B.T``, and where ``B`` may be nonzero (each part's
rows and columns: a B trained from zeros can still be zero anywhere). ``lora_updates`` reads them from a
``finetune lora`` folder (one (r, in) ``A`` per adapted part of the fused qkv, side by side), ``peft_updates`` from
a PEFT folder written by ``peft``'s ``save_pretrained`` (the adapters on the Hub, what vLLM's ``--lora-modules``
loads).

Native layers and the modules of the Hugging Face export pair up as the weight converter pairs them
(``weight_pairs``: our fused ``attn.qkv`` is ``q_proj; k_proj; v_proj``, or GPT-NeoX's ``query_key_value``
interleaved per group; Phi-3's ``gate_up_proj`` is our ``fc_1; fc_2``), and an update crosses a pair the way a
weight does: the pair's ``B``s are stacked as one weight, each in its own columns (their ``A``s stacked alike),
the stack is converted like a weight, and each module on the other side keeps the columns its rows use. No rows
are mixed, so the updates carry over exactly, for every family the converter knows.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from litgpt_clone.checkpoints.arch import ARCHS, Arch, get_arch
from litgpt_clone.checkpoints.convert import stacked_to_hf, stacked_to_native, weight_pairs
from litgpt_clone.checkpoints.io import CheckpointError, load_state, save_weights, write_atomic_text
from litgpt_clone.config import Config

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class Update:
    A: torch.Tensor
    """(R, in)."""
    B: torch.Tensor
    """(out, R), the scale alpha / r included."""
    used: torch.Tensor
    """(out, R) bools: True where B belongs to a part (its rows and its columns); elsewhere B is zero by design."""


Updates = dict[str, Update]  # layer or module name -> its update


def is_peft_adapter(folder: Path) -> bool:
    return (Path(folder) / PEFT_CONFIG).is_file()


def linear_shapes(config: Config) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every linear layer of the native model (built on the meta device)."""
    from litgpt_clone.model import GPT

    with torch.device("meta"):
        model = GPT(config)
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def lora_updates(folder: Path, config: Config) -> Updates:
    """The updates of a ``finetune lora`` folder (lora.safetensors + lora_config.yaml) for a model of ``config``."""
    from litgpt_clone.lora import load_lora_args

    return state_updates(load_state(Path(folder) / "lora.safetensors"), load_lora_args(folder), config, f"the LoRA weights in {folder}")


def state_updates(state: dict[str, torch.Tensor], args, config: Config, what: str = "the LoRA weights") -> Updates:
    """The updates of LoRA weights as ``finetune lora`` saves them (``lora_state``), trained with ``args``
    (``LoRAArgs``); ``what`` names them in the one-line error for weights of another model."""
    from litgpt_clone.lora import targets
    from litgpt_clone.model import GPT

    with torch.device("meta"):
        model = GPT(config)
    layers, out = dict(model.named_modules()), {}
    for layer, slices in targets(model, args).items():
        module = layers[layer]
        parts = sorted(slices, key=slices.get)
        A, B = [], torch.zeros(module.out_features, args.r * len(parts))
        used = torch.zeros(B.shape, dtype=torch.bool)
        for i, part in enumerate(parts):
            (start, end), a, b = slices[part], state.get(f"{layer}.lora_A.{part}"), state.get(f"{layer}.lora_B.{part}")
            if a is None or b is None or a.shape != (args.r, module.in_features) or b.shape != (end - start, args.r):
                raise CheckpointError(
                    f"{what} do not fit this model at {layer} ({part}): trained on another base model, they go with"
                    " the checkpoint they were trained from"
                )
            A.append(a.float())
            B[start:end, i * args.r : (i + 1) * args.r] = b.float() * (args.alpha / args.r)
            used[start:end, i * args.r : (i + 1) * args.r] = True
        out[layer] = Update(torch.cat(A), B, used)
    return out


def module_name(arch: Arch, name: str) -> str:
    """The name transformers' model in memory gives the module a checkpoint calls ``name`` (``Arch.module_names``):
    the name a PEFT adapter uses."""
    for prefix, renamed in arch.module_names.items():
        if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
            return renamed + name[len(prefix) :]
    return name


def _cross(updates: list[Optional[Update]], rows: list[int], convert) -> list[Optional[Update]]:
    """The updates of one side of a pair (None: a module without one; ``rows``: each module's out_features) -> the
    other side's, ``convert`` mapping the stacked rows across as the weight converter maps a weight."""
    A = torch.cat([u.A for u in updates if u is not None])
    B, used = torch.zeros(sum(rows), A.size(0)), torch.zeros(sum(rows), A.size(0), dtype=torch.bool)
    row = col = 0
    for u, n in zip(updates, rows):
        if u is not None:
            rank = u.A.size(0)
            B[row : row + n, col : col + rank], used[row : row + n, col : col + rank] = u.B, u.used
            col += rank
        row += n
    out = []
    for b, mask in zip(convert(B), convert(used)):
        cols = mask.any(0).nonzero().squeeze(1)  # the columns of parts with rows here (none: no update)
        out.append(Update(A[cols], b[:, cols], mask[:, cols]) if len(cols) else None)
    return out


def to_hf_updates(updates: Updates, config: Config, arch: Optional[Arch] = None) -> Updates:
    """Native layer updates -> updates of the modules of the model's transformers form (``arch``, default the
    config's architecture; the multimodal Gemma 3 for a LoRA of its text half), by their names in memory."""
    arch = arch or get_arch(config.architecture)
    return {module_name(arch, name): u for name, u in _carry(updates, config, arch, to_hf=True).items()}


def from_hf_updates(updates: Updates, config: Config) -> Updates:
    """Updates of transformers module names -> native layer updates (the inverse of ``to_hf_updates``). The names may
    be those of the model in memory or of its checkpoint (GPT-NeoX's ``lm_head`` or ``embed_out``), of the config's
    architecture or of another that converts to it (``model.language_model.layers.*`` of a multimodal Gemma 3)."""
    own = get_arch(config.architecture)  # (which registers every family)
    archs = [own, *(a for a in ARCHS.values() if a is not own and a.native_architecture == config.architecture)]
    for arch in archs:
        names = {module_name(arch, h): h for _, hfs in weight_pairs(arch, config) for h in hfs}
        names.update({h: h for h in names.values()})
        if all(k in names for k in updates):
            return _carry({names[k]: u for k, u in updates.items()}, config, arch, to_hf=False)
    return _carry(updates, config, own, to_hf=False)  # (it names the first module of another model)


def _carry(updates: Updates, config: Config, arch: Arch, to_hf: bool) -> Updates:
    shapes, out, left = linear_shapes(config), {}, set(updates)
    for natives, hfs in weight_pairs(arch, config):
        src, dst = (natives, hfs) if to_hf else (hfs, natives)
        if not left.intersection(src):
            continue
        if to_hf and ".mlp.experts." in natives[0]:
            raise CheckpointError("the adapters adapt MoE experts, which transformers fuses into one tensor per layer (PEFT cannot target them): merge them with `merge_lora` and export the merged model with `convert to_hf`")
        if natives[0] not in shapes or ".mlp.experts." in natives[0]:
            raise CheckpointError(f"the adapter adapts {sorted(left.intersection(hfs))[0]}, which is not a linear layer litgpt-clone can adapt: merge it with peft (merge_and_unload) and convert the merged model")
        rows = [shapes[n][1] for n in natives]
        if to_hf:
            convert = lambda t: stacked_to_hf(t, natives, len(hfs), arch, config)  # noqa: E731
        else:  # the rows of each HF module: the native rows, stacked and mapped across as a weight would be
            rows = [t.size(0) for t in stacked_to_hf(torch.empty(sum(rows), 1, device="meta"), natives, len(hfs), arch, config)]
            convert = lambda t: stacked_to_native(t, natives, arch, config)  # noqa: E731
            for name, n in zip(hfs, rows):
                u, features = updates.get(name), shapes[natives[0]][0]
                if u is not None and (u.A.size(1), u.B.size(0)) != (features, n):
                    raise CheckpointError(
                        f"the adapter's {name} maps {u.A.size(1)} features to {u.B.size(0)}, this model's {features} to {n}:"
                        " it is an adapter of another model"
                    )
        for name, update in zip(dst, _cross([updates.get(n) for n in src], rows, convert)):
            if update is not None:
                out[name] = update
        left -= set(src)
    if left and to_hf:
        raise CheckpointError(f"no Hugging Face module corresponds to the adapted {sorted(left)[0]} of {config.architecture}")
    if left:
        raise CheckpointError(f"the adapter adapts {sorted(left)[0]}, which {config.architecture} has no linear layer for: is it an adapter of another model?")
    return out


def _pattern(patterns: dict, module: str, default):
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: the first key that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


UNSUPPORTED = {
    "use_dora": "DoRA", "lora_bias": "a LoRA bias", "modules_to_save": "fully trained modules (modules_to_save)",
    "fan_in_fan_out": "Conv1D layers (fan_in_fan_out)", "layer_replication": "layer_replication",
    "trainable_token_indices": "trained token embeddings", "target_parameters": "parameters as targets (MoE experts)",
    "alora_invocation_tokens": "activated LoRA (aLoRA: adapters from an invocation sequence on)",
    "use_qalora": "QALoRA", "use_bdlora": "block-diagonal LoRA", "kasa_config": "KaSA", "arrow_config": "Arrow routing",
    "monteclora_config": "MonteCLoRA",
}
"""adapter_config.json settings whose adapters compute something else than ``x @ A.T @ B.T * scale`` on every token."""


def peft_settings(folder: Path) -> dict:
    """The adapter_config.json of a PEFT folder, refused in one line where it is unreadable or not a plain LoRA."""
    path = Path(folder) / PEFT_CONFIG
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({err}): fetch the adapter again") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path} is not an adapter config (a JSON object): fetch the adapter again")
    if settings.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{folder} is a PEFT {settings.get('peft_type')} adapter: only LoRA adapters are supported")
    for key, what in UNSUPPORTED.items():
        if settings.get(key):
            raise CheckpointError(f"{folder} uses {what}, which litgpt-clone's LoRA layers do not have: merge it with peft (merge_and_unload) and convert the merged model")
    if settings.get("bias", "none") != "none":
        raise CheckpointError(f"{folder} trains biases (bias={settings['bias']!r}), which litgpt-clone's LoRA layers do not have: merge it with peft (merge_and_unload) and convert the merged model")
    return settings


def peft_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a PEFT folder: adapter_model.safetensors, else the pickled adapter_model.bin of older adapters
    (read with ``weights_only``, as vLLM reads it)."""
    from litgpt_clone.checkpoints.io import torch_load

    path = Path(folder) / PEFT_WEIGHTS
    if path.is_file():
        return load_state(path)
    if (Path(folder) / "adapter_model.bin").is_file():
        return torch_load(Path(folder) / "adapter_model.bin", "save it again with safetensors (peft's save_pretrained)")
    raise CheckpointError(f"no {path} (nor adapter_model.bin): fetch the adapter again")


def peft_updates(folder: Path, config: Config) -> Updates:
    """Native layer updates of a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    folder = Path(folder)
    settings = peft_settings(folder)
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in peft_weights(folder).items():
        if re.search(r"\.base_layer\.(weight|bias)$", key):  # the head's or embedding's own, which peft saves beside adapters of them
            if tensor.size(0) != config.vocab_size:
                raise CheckpointError(
                    f"{folder} holds {key} of {tensor.size(0)} rows, this model's vocabulary has {config.vocab_size}: the"
                    " adapter was made for a resized vocabulary; merge it with peft (merge_and_unload) and convert the merged model"
                )
            continue  # (a copy of the base's: peft's save_embedding_layers)
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_[AB])(?:\.[^.]+)?\.weight", key)
        if embedding := re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_embedding_[AB].*", key):
            raise CheckpointError(f"{folder} adapts the embedding {embedding[1]}, which litgpt-clone's LoRA does not: merge it with peft (merge_and_unload) and convert the merged model")
        if not match:
            raise CheckpointError(f"{folder} holds {key}, which is not a LoRA A or B weight: only plain LoRA is supported; merge it with peft (merge_and_unload) and convert the merged model")
        pieces.setdefault(match[1], {})[match[2]] = tensor.float()
    if not pieces:
        raise CheckpointError(f"{folder} holds no LoRA weights: it would leave the model as it is; fetch the adapter again")
    r, alpha = settings.get("r", 8), settings.get("lora_alpha", 8)
    updates = {}
    for module, ab in pieces.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{folder} has {module}.{next(iter(ab))} without its {({'lora_A', 'lora_B'} - set(ab)).pop()}")
        rank = _pattern(settings.get("rank_pattern") or {}, module, r)
        if (ab["lora_A"].size(0), ab["lora_B"].size(1)) != (rank, rank):
            raise CheckpointError(f"{folder}'s {module} has rank {ab['lora_A'].size(0)}, but its adapter_config.json says r {rank}: the two do not belong together")
        scale = _pattern(settings.get("alpha_pattern") or {}, module, alpha) / (math.sqrt(rank) if settings.get("use_rslora") else rank)
        updates[module] = Update(ab["lora_A"], ab["lora_B"] * scale, torch.ones(ab["lora_B"].shape, dtype=torch.bool))
    return from_hf_updates(updates, config)


def read_updates(folder: Path, config: Config) -> Updates:
    """The updates of a ``finetune lora`` folder or a PEFT LoRA folder."""
    folder = Path(folder)
    if is_peft_adapter(folder):
        return peft_updates(folder, config)
    if not (folder / "lora.safetensors").is_file() or not (folder / "lora_config.yaml").is_file():
        raise CheckpointError(
            f"{folder} is not a LoRA adapter: expected lora.safetensors and lora_config.yaml (`finetune lora`) or"
            f" {PEFT_CONFIG} and {PEFT_WEIGHTS} (PEFT)"
        )
    return lora_updates(folder, config)


def base_arch(lora_dir: Path, config: Config) -> Optional[Arch]:
    """The transformers architecture of the base a ``finetune lora`` folder was trained from (its config.json, which a
    conversion keeps), where it is another than the config's that converts to it: the multimodal Gemma 3 of a LoRA of
    its text half, whose module names the adapter must use. None otherwise."""
    import yaml

    hparams = Path(lora_dir) / "hyperparameters.yaml"
    base = (yaml.safe_load(hparams.read_text()) or {}).get("checkpoint_dir") if hparams.is_file() else None
    original = Path(str(base)) / "config.json" if base else None
    if original is None or not original.is_file():
        return None
    names = json.loads(original.read_text()).get("architectures") or [""]
    get_arch(config.architecture)  # (registers every family)
    arch = ARCHS.get(names[0])
    return arch if arch is not None and arch.native_architecture == config.architecture else None


def write_peft(
    updates: Updates, config: Config, out_dir: Path, scale: float, base_model: Optional[str], dropout: float = 0.0,
    arch: Optional[Arch] = None,
) -> None:
    """Write native layer updates (all of one ``scale``, alpha / r) as a PEFT LoRA folder for the model's Hugging Face
    export. Every module gets the largest rank, smaller ones padded with zero rows and columns (which add nothing):
    a fused HF module takes the ranks of all its parts (GPT-NeoX's ``query_key_value`` adapted on query and value has
    rank 2r), so the folder needs no ``rank_pattern`` (which vLLM does not read); ``lora_alpha`` keeps the scale."""
    hf = to_hf_updates(updates, config, arch)
    rank = max(u.A.size(0) for u in hf.values())
    tensors = {}
    for module, update in sorted(hf.items()):
        a, b = update.A, update.B
        pad = rank - a.size(0)
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.nn.functional.pad(a, (0, 0, 0, pad)).contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = (torch.nn.functional.pad(b, (0, pad)) / scale).contiguous()
    alpha = scale * rank
    settings = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": int(alpha) if alpha == int(alpha) else alpha, "lora_dropout": dropout, "bias": "none",
        "fan_in_fan_out": False, "target_modules": sorted(hf), "use_rslora": False, "use_dora": False, "inference_mode": True,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(tensors, out_dir / PEFT_WEIGHTS)
    write_atomic_text(out_dir / PEFT_CONFIG, json.dumps(settings, indent=2) + "\n")
