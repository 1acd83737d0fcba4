"""``litgpt-clone convert from_hf|to_hf``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint


def default_name(hf_dir: Path) -> str:
    """The folder's name, or ``org/name`` for a snapshot of the Hugging Face cache (whose folder name is a commit)."""
    repo = hf_dir.resolve().parent.parent.name
    if hf_dir.resolve().parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return hf_dir.name


def convert_from_hf(hf_dir: Path, out_dir: Optional[Path] = None, dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None) -> None:
    """Convert a Hugging Face checkpoint folder into a native litgpt_clone checkpoint.

    Args:
        hf_dir: Folder with config.json and safetensors (single or sharded) or .bin weights (or the model.pth of
            `litgpt convert_from_litgpt`).
        out_dir: Where to write the native checkpoint; default ``checkpoints/<folder name>``, and
            ``checkpoints/<org>/<name>`` for a snapshot in the Hugging Face cache (``models--org--name/snapshots/<sha>``).
        dtype: Cast the weights; default keeps the stored dtype.
    """
    name = default_name(Path(hf_dir))
    out_dir = out_dir or Path("checkpoints") / name
    repo_id = name if "/" in name else None  # a hub snapshot: the repo is recorded, as `download` records it
    convert_hf_checkpoint(hf_dir, out_dir, dtype=dtype, name=repo_id and repo_id.split("/")[1], repo_id=repo_id)
    print(f"native checkpoint written to {out_dir}")
    if not any((Path(out_dir) / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        print(f"note: {hf_dir} has no tokenizer (tokenizer.json or tokenizer.model): copy the model's tokenizer files into"
              f" {out_dir} before generating with it", file=sys.stderr)


def convert_to_hf(checkpoint_dir: str, out_dir: Optional[Path] = None, max_shard_size: str = "5GB") -> None:
    """Export a native checkpoint as a Hugging Face folder (``AutoModelForCausalLM.from_pretrained`` loads it).

    Args:
        checkpoint_dir: Native checkpoint folder (model_config.yaml + lit_model.safetensors), or a hub repo id
            (downloaded and converted into checkpoints/<repo_id> on first use).
        out_dir: Where to write model.safetensors (+ index when sharded), config.json and tokenizer files;
            default ``<checkpoint_dir>_hf`` beside the checkpoint (``checkpoints/<repo_id>_hf`` for a repo id).
        max_shard_size: Largest safetensors shard, e.g. "5GB" or "500MB".
    """
    if out_dir is None:  # beside the checkpoint; a repo id's checkpoint is checkpoints/<repo_id>
        folder = Path(checkpoint_dir) if Path(checkpoint_dir).is_dir() else Path("checkpoints") / checkpoint_dir
        out_dir = folder.parent / f"{folder.name}_hf"
    convert_to_hf_checkpoint(checkpoint_dir, out_dir, max_shard_size=max_shard_size)
    print(f"Hugging Face checkpoint written to {out_dir}")


def convert_to_peft(checkpoint_dir: Path, out_dir: Optional[Path] = None, base_model: Optional[str] = None) -> None:
    """Export a LoRA checkpoint of ``finetune lora`` as a PEFT adapter folder (adapter_config.json +
    adapter_model.safetensors) for the base model's Hugging Face export: ``peft.PeftModel.from_pretrained`` and vLLM's
    ``--lora-modules`` load it, and ``serve --adapters`` takes it back.

    Args:
        checkpoint_dir: A folder written by ``finetune lora`` (lora.safetensors, lora_config.yaml, model_config.yaml):
            a step checkpoint or final/.
        out_dir: Where the adapter goes; default ``<checkpoint_dir>_peft`` beside the checkpoint.
        base_model: The adapter config's ``base_model_name_or_path``: the hub repo id or the folder of the base's
            Hugging Face export (``convert to_hf``); default: the hub repo the base was downloaded from.
    """
    from litgpt_clone.checkpoints.io import CheckpointError
    from litgpt_clone.checkpoints.peft_format import base_arch, lora_updates, write_peft
    from litgpt_clone.config import Config, check_out_dir
    from litgpt_clone.lora import load_lora_args

    lora_dir = Path(checkpoint_dir)
    missing = [n for n in ("lora.safetensors", "lora_config.yaml", "model_config.yaml") if not (lora_dir / n).is_file()]
    if missing:
        raise CheckpointError(f"{lora_dir} is not a LoRA checkpoint of `finetune lora`: it has no {', '.join(missing)}")
    out_dir = Path(out_dir) if out_dir is not None else lora_dir.parent / f"{lora_dir.resolve().name}_peft"
    check_out_dir(out_dir)
    if any((out_dir / n).is_file() for n in ("model_config.yaml", "lora_config.yaml", "config.json")):
        raise CheckpointError(f"{out_dir} holds a checkpoint: give an --out_dir of its own for the adapter")
    config, args = Config.from_file(lora_dir / "model_config.yaml"), load_lora_args(lora_dir)
    if base_model is None and config.hf_config.get("org") and config.hf_config.get("name"):
        base_model = f"{config.hf_config['org']}/{config.hf_config['name']}"
    arch = base_arch(lora_dir, config)  # (the multimodal Gemma 3 whose text half was finetuned names its modules otherwise)
    write_peft(lora_updates(lora_dir, config), config, out_dir, args.alpha / args.r, base_model, args.dropout, arch)
    print(f"PEFT adapter written to {out_dir} (base model: {base_model or 'not set'})")
    if base_model is None:
        print(
            f"note: the base model was not downloaded from the hub, so {out_dir / 'adapter_config.json'} names none: pass"
            " --base_model <repo id or the folder of `convert to_hf <base>`> (peft's PeftModel.from_pretrained(model, folder)"
            " needs none)", file=sys.stderr,
        )
