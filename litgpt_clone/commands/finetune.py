"""``litgpt-clone finetune lora|full|adapter`` and ``litgpt-clone merge_lora``.

Each method only says which parameters train and what a checkpoint holds; the loop is ``training.fit``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Literal, Optional, Union

from litgpt_clone.commands.pretrain import Precision
from litgpt_clone.config import Config, ConfigError
from litgpt_clone.data.sft import SFTData
from litgpt_clone.adapter import AdapterArgs
from litgpt_clone.lora import LoRAArgs
from litgpt_clone.parallel import Strategy
from litgpt_clone.training.args import EvalArgs, TrainArgs, with_defaults

QuantizeMode = Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8"]
FINETUNE_TRAIN = TrainArgs(
    global_batch_size=16, micro_batch_size=1, epochs=None, lr=2e-4, warmup_steps=10, min_lr=6e-5, weight_decay=0.0,
    save_interval=1000, log_interval=1,
)
FINETUNE_EVAL = EvalArgs(interval=100, max_iters=100)


def finetune_lora(
    checkpoint_dir: str,
    data: Optional[SFTData] = None,
    out_dir: Path = Path("out/finetune/lora"),
    devices: int = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    precision: Optional[Precision] = None,
    quantize: Optional[QuantizeMode] = None,
    lora: LoRAArgs = LoRAArgs(),
    train: TrainArgs = FINETUNE_TRAIN,
    eval: EvalArgs = FINETUNE_EVAL,
    optimizer: Union[str, dict] = "AdamW",
    resume: Union[bool, Literal["auto"], Path] = False,
    logger_name: Literal["csv", "tensorboard"] = "csv",
    seed: int = 1337,
    merge: bool = True,
    compile: bool = False,
) -> dict:
    """Finetune with LoRA (QLoRA with --quantize): only the low-rank adapters train.

    Step checkpoints hold the adapters (lora.safetensors + lora_config.yaml); ``final/`` also holds the merged model
    (a native checkpoint for generate/serve/convert) unless ``--merge false``.

    Args:
        checkpoint_dir: The base model: a native checkpoint folder or a hub repo id (downloaded and converted once).
        data: Instruction or chat data: ``alpaca`` (default), ``dolly``, ``json`` or ``chat`` with ``--data.path``.
        out_dir: Checkpoints and logs go here.
        devices: Devices per node.
        num_nodes: Nodes.
        strategy: ``ddp``, ``fsdp`` or ``auto``.
        precision: Default: bf16-mixed where the GPU supports it, else 32-true.
        quantize: QLoRA: keep the base weights in 4 bit (nf4, fp4, -dq with double quantization) or int8.
        lora: Rank, alpha, dropout, which projections get adapters, and an optional block range.
        train: Batch sizes, epochs or steps, learning rate schedule, intervals. The run ends at --train.max_steps,
            else --train.epochs, else --train.max_tokens (the samples' own tokens, padding not counted); with
            none of them given, after one epoch. (--train.tie_embeddings is pretrain's: the checkpoint decides.)
        eval: Validation interval and size.
        optimizer: A ``torch.optim`` class name (AdamW, SGD, ...) or class path, or ``{"class_path": ..., "init_args": {...}}``
            (also ``--optimizer SGD --optimizer.init_args.momentum 0.9``, in any order); ``lr`` and ``weight_decay`` in init_args
            set ``--train.lr`` (the schedule's peak) and ``--train.weight_decay``, as LitGPT's recipes write them.
        resume: ``auto``, a step folder, or false.
        logger_name: csv or tensorboard, under out_dir/logs.
        seed: Data order and adapter initialization (seeds Python's, NumPy's and torch's global generators, as transformers' Trainer does).
        merge: Write the merged model into ``final/``.
        compile: ``torch.compile`` each block.
    """
    hparams = with_defaults(finetune_lora, dict(locals()))
    return run_finetune("lora", hparams, lora=hparams["lora"], quantize=quantize, merge=merge)


def finetune_full(
    checkpoint_dir: str,
    data: Optional[SFTData] = None,
    out_dir: Path = Path("out/finetune/full"),
    devices: int = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    precision: Optional[Precision] = None,
    train: TrainArgs = dataclasses.replace(FINETUNE_TRAIN, lr=2e-5, min_lr=2e-6),
    eval: EvalArgs = FINETUNE_EVAL,
    optimizer: Union[str, dict] = "AdamW",
    resume: Union[bool, Literal["auto"], Path] = False,
    logger_name: Literal["csv", "tensorboard"] = "csv",
    seed: int = 1337,
    compile: bool = False,
) -> dict:
    """Finetune every weight. Each checkpoint (``step-*/``, ``final/``) is a native checkpoint.

    Args:
        checkpoint_dir: The base model: a native checkpoint folder or a hub repo id (downloaded and converted once).
        data: Instruction or chat data: ``alpaca`` (default), ``dolly``, ``json`` or ``chat`` with ``--data.path``.
        out_dir: Checkpoints and logs go here.
        devices: Devices per node.
        num_nodes: Nodes.
        strategy: ``ddp``, ``fsdp`` (shards weights, gradients and optimizer state) or ``auto``.
        precision: Default: bf16-mixed where the GPU supports it, else 32-true.
        train: Batch sizes, epochs or steps, learning rate schedule, intervals. The run ends at --train.max_steps,
            else --train.epochs, else --train.max_tokens (the samples' own tokens, padding not counted); with
            none of them given, after one epoch. (--train.tie_embeddings is pretrain's: the checkpoint decides.)
        eval: Validation interval and size.
        optimizer: A ``torch.optim`` class name (AdamW, SGD, ...) or class path, or ``{"class_path": ..., "init_args": {...}}``
            (also ``--optimizer SGD --optimizer.init_args.momentum 0.9``, in any order); ``lr`` and ``weight_decay`` in init_args
            set ``--train.lr`` (the schedule's peak) and ``--train.weight_decay``, as LitGPT's recipes write them.
        resume: ``auto``, a step folder, or false.
        logger_name: csv or tensorboard, under out_dir/logs.
        seed: Data order (seeds Python's, NumPy's and torch's global generators, as transformers' Trainer does).
        compile: ``torch.compile`` each block.
    """
    return run_finetune("full", with_defaults(finetune_full, dict(locals())))


def finetune_adapter(
    checkpoint_dir: str,
    data: Optional[SFTData] = None,
    out_dir: Path = Path("out/finetune/adapter"),
    devices: int = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    precision: Optional[Precision] = None,
    adapter: AdapterArgs = AdapterArgs(),
    train: TrainArgs = dataclasses.replace(FINETUNE_TRAIN, lr=3e-3, min_lr=3e-4, weight_decay=0.02),
    eval: EvalArgs = FINETUNE_EVAL,
    optimizer: Union[str, dict] = "AdamW",
    resume: Union[bool, Literal["auto"], Path] = False,
    logger_name: Literal["csv", "tensorboard"] = "csv",
    seed: int = 1337,
    compile: bool = False,
) -> dict:
    """Finetune with LLaMA-Adapter: learned prefix tokens in the top blocks behind zero-initialized gates.

    Step checkpoints hold the adapters (adapter.safetensors); ``final/`` is a native checkpoint with the adapters
    inside (lit_model.safetensors + adapter_config.yaml), which generate and serve load as is.

    Args:
        checkpoint_dir: The base model: a native checkpoint folder or a hub repo id (downloaded and converted once).
        data: Instruction or chat data: ``alpaca`` (default), ``dolly``, ``json`` or ``chat`` with ``--data.path``.
        out_dir: Checkpoints and logs go here.
        devices: Devices per node.
        num_nodes: Nodes.
        strategy: ``ddp``, ``fsdp`` or ``auto``.
        precision: Default: bf16-mixed where the GPU supports it, else 32-true.
        adapter: Prefix length and the first adapted block.
        train: Batch sizes, epochs or steps, learning rate schedule, intervals. The run ends at --train.max_steps,
            else --train.epochs, else --train.max_tokens (the samples' own tokens, padding not counted); with
            none of them given, after one epoch. (--train.tie_embeddings is pretrain's: the checkpoint decides.)
        eval: Validation interval and size.
        optimizer: A ``torch.optim`` class name (AdamW, SGD, ...) or class path, or ``{"class_path": ..., "init_args": {...}}``
            (also ``--optimizer SGD --optimizer.init_args.momentum 0.9``, in any order); ``lr`` and ``weight_decay`` in init_args
            set ``--train.lr`` (the schedule's peak) and ``--train.weight_decay``, as LitGPT's recipes write them.
        resume: ``auto``, a step folder, or false.
        logger_name: csv or tensorboard, under out_dir/logs.
        seed: Data order and prefix initialization (seeds Python's, NumPy's and torch's global generators, as transformers' Trainer does).
        compile: ``torch.compile`` each block.
    """
    hparams = with_defaults(finetune_adapter, dict(locals()))
    return run_finetune("adapter", hparams, adapter=hparams["adapter"])


def run_finetune(
    method: str, hparams: dict, lora: Optional[LoRAArgs] = None, quantize: Optional[str] = None, merge: bool = False,
    adapter: Optional[AdapterArgs] = None,
) -> dict:
    from litgpt_clone.checkpoints.io import NATIVE_WEIGHTS, load_state, resolve_checkpoint
    from litgpt_clone.data.sft import Alpaca
    from litgpt_clone.adapter import adapter_state, inject_adapter, load_adapter_args
    from litgpt_clone.lora import check_layers, inject_lora, lora_state, merge_into
    from litgpt_clone.model import GPT
    from litgpt_clone.quantize import parameter_count
    from litgpt_clone.tokenizer import Tokenizer
    from litgpt_clone.training.checkpoint import write_checkpoint
    from litgpt_clone.training.run import build_fabric, optimizer_spec, plain, rank_zero_first, sequence_length, train_and_save, world_size

    h = hparams
    train, eval, out_dir = h["train"], h["eval"], Path(h["out_dir"])
    if train.max_steps is None and train.epochs is None and train.max_tokens is None:
        train = dataclasses.replace(train, epochs=1)  # the default end; a given max_steps or max_tokens is not overruled
    if quantize and h["devices"] * h["num_nodes"] > 1:
        raise ConfigError(
            "QLoRA (--quantize) runs on one device: FSDP2 cannot shard bitsandbytes' packed 4-bit weights and DDP would "
            "replicate them; use --devices 1, or LoRA without --quantize on several devices"
        )
    checkpoint_dir = resolve_checkpoint(h["checkpoint_dir"])
    # what is wrong on one process is wrong on all: said once, here, before the launch starts the other processes
    train.gradient_accumulation_steps(world_size(h["devices"], h["num_nodes"]))
    _, _, train = optimizer_spec(h["optimizer"], train)  # (init_args' lr and weight_decay set the schedule's)
    # hyperparameters.yaml records the lr the run uses (a recipe's optimizer lr as train.lr), not the default epoch
    # filled in above: a rerun of the file with --train.max_tokens would train an epoch
    h["train"] = dataclasses.replace(train, epochs=h["train"].epochs)
    tokenizer = Tokenizer(checkpoint_dir)
    config = Config.from_checkpoint(checkpoint_dir)
    if train.tie_embeddings is not None:
        raise ConfigError(
            f"--train.tie_embeddings {str(train.tie_embeddings).lower()}: finetuning keeps the checkpoint's own "
            f"(tie_embeddings {str(config.tie_embeddings).lower()} in {checkpoint_dir}): drop the flag"
        )
    if method == "lora":
        check_layers(lora, config.n_layer)  # before any work
    base_adapter = load_adapter_args(checkpoint_dir) if (checkpoint_dir / "adapter_config.yaml").is_file() else None
    if method == "adapter" and base_adapter is not None and adapter.start_layer > base_adapter.start_layer:
        raise ConfigError(
            f"{checkpoint_dir} has adapters from block {base_adapter.start_layer} on: --adapter.start_layer "
            f"{adapter.start_layer} would leave the old ones below it; use --adapter.start_layer {base_adapter.start_layer} or lower"
        )
    fabric = build_fabric(h["devices"], h["num_nodes"], h["strategy"], h["precision"], out_dir, h["logger_name"], h["resume"])
    fabric.launch()
    seq_length = sequence_length(fabric, train, config)
    data = h["data"] or Alpaca()
    train_data, val_data = rank_zero_first(fabric, lambda: data.datasets(tokenizer, seq_length, h["seed"]))
    train_data.sort_groups(train.global_batch_size)  # each step's samples, shortest first: less padding per micro-batch

    fabric.seed_everything(h["seed"])
    model = GPT.from_checkpoint(checkpoint_dir)
    model.max_seq_length = seq_length
    if quantize:
        from litgpt_clone.quantize import model_memory, quantize as quantize_model

        before = model_memory(model)
        quantize_model(model, quantize, training=True)
        fabric.print(f"{quantize}: base weights {before / 2**20:.1f} MiB -> {model_memory(model) / 2**20:.1f} MiB")
    if method == "lora":
        inject_lora(model, lora)
    elif method == "adapter":
        inject_adapter(model, adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fabric.print(
        f"{config.name}: {method}, {trainable:,} trainable of {parameter_count(model):,} parameters, "
        f"{train_data.count:,} training samples, sequences up to {seq_length}"
    )
    hp = plain({**h, "data": data})
    hp["checkpoint_dir"] = str(checkpoint_dir.resolve())  # (merge_lora and --config find it from any folder)

    # a LLaMA-Adapter checkpoint as the base: its prefixes are in every lit_model.safetensors written, so is their config
    carried = {"adapter_config.yaml": plain(base_adapter)} if base_adapter is not None else {}

    def write(folder: Path, state: dict, training_state: Optional[dict]) -> None:
        if method == "full":
            write_checkpoint(folder, {NATIVE_WEIGHTS: state}, config, checkpoint_dir, hp, training_state, yamls=carried)
            return
        if method == "adapter":  # final/: the base with the adapters inside, loadable as is
            weights = {NATIVE_WEIGHTS: {**load_state(checkpoint_dir / NATIVE_WEIGHTS), **state}} if folder.name == "final" else {"adapter.safetensors": state}
            write_checkpoint(folder, weights, config, checkpoint_dir, hp, training_state, yamls={"adapter_config.yaml": plain(adapter)})
            return
        weights, yamls = {"lora.safetensors": state}, {"lora_config.yaml": plain(lora)}
        if folder.name == "final" and merge:
            weights[NATIVE_WEIGHTS] = merge_into(load_state(checkpoint_dir / NATIVE_WEIGHTS), state, config, lora)
            yamls.update(carried)
        write_checkpoint(folder, weights, config, checkpoint_dir, hp, training_state, yamls=yamls)

    return train_and_save(
        fabric, model, train_data, val_data, train, eval, h["optimizer"], h["resume"], h["compile"], out_dir, seq_length,
        write, select={"lora": lora_state, "adapter": adapter_state}.get(method),
        weights_file={"lora": "lora.safetensors", "adapter": "adapter.safetensors"}.get(method, NATIVE_WEIGHTS),
        learned_only=True,
        settings={"lora": ("lora_config.yaml", "lora", plain(lora)), "adapter": ("adapter_config.yaml", "adapter", plain(adapter))}.get(method),
    )


def merge_lora(checkpoint_dir: Path, base: Optional[str] = None, out_dir: Optional[Path] = None) -> None:
    """Fold a LoRA checkpoint into its base model and write a standard native checkpoint.

    Args:
        checkpoint_dir: The LoRA checkpoint: a folder written by ``finetune lora`` (lora.safetensors,
            lora_config.yaml, hyperparameters.yaml), as LitGPT's merge_lora names it, or a PEFT LoRA folder
            (adapter_config.json + adapter_model.safetensors, a Hub adapter say).
        base: The base checkpoint; default: the ``checkpoint_dir`` recorded in hyperparameters.yaml (a PEFT
            adapter's base_model_name_or_path, a hub repo id).
        out_dir: Where the merged checkpoint goes: a new or empty folder (or an earlier merge output, which is
            replaced); default: the LoRA checkpoint itself, which gets lit_model.safetensors beside what it holds
            (a PEFT folder is left as it is: give --out_dir).
    """
    import yaml

    from litgpt_clone.checkpoints.io import NATIVE_WEIGHTS, REPO_ID, load_state, resolve_checkpoint, save_weights, write_atomic_text
    from litgpt_clone.checkpoints.peft_format import is_peft_adapter
    from litgpt_clone.lora import merge_into
    from litgpt_clone.tokenizer import CHAT_TEMPLATE_DIR, TOKENIZER_FILES, tokenizer_files
    from litgpt_clone.training.checkpoint import write_checkpoint

    lora_dir = Path(checkpoint_dir)
    if is_peft_adapter(lora_dir):
        return merge_peft(lora_dir, base, out_dir)
    if not (lora_dir / "lora_config.yaml").is_file():
        raise ConfigError(
            f"{lora_dir} is not a LoRA checkpoint: expected {lora_dir / 'lora_config.yaml'} and lora.safetensors (`finetune lora`),"
            " or adapter_config.json and adapter_model.safetensors (PEFT)"
        )
    in_place = out_dir is None or Path(out_dir).resolve() == lora_dir.resolve()
    from litgpt_clone.config import check_out_dir

    check_out_dir(lora_dir if in_place else out_dir, "checkpoint_dir" if in_place else "--out_dir")  # (a file, read-only)
    written = {NATIVE_WEIGHTS, "model_config.yaml", "hyperparameters.yaml", "lora_config.yaml", "adapter_config.yaml", *TOKENIZER_FILES, CHAT_TEMPLATE_DIR + "/"}
    if not in_place and Path(out_dir).is_dir():  # write_checkpoint replaces the whole folder: only one of its own
        names = sorted(p.name + "/" * p.is_dir() for p in Path(out_dir).iterdir())
        if names and ("lora_config.yaml" not in names or not set(names) <= written):
            others = [n for n in names if n not in written] or names
            raise ConfigError(
                f"--out_dir {out_dir} already holds {', '.join(others[:4])}{' ...' if len(others) > 4 else ''}: merge_lora"
                " writes a whole checkpoint folder there, replacing it; give a new or empty folder (or leave --out_dir"
                f" out to add the merged weights to {lora_dir})"
            )
    hparams = yaml.safe_load((lora_dir / "hyperparameters.yaml").read_text()) if (lora_dir / "hyperparameters.yaml").is_file() else {}
    recorded = hparams.get("checkpoint_dir")
    if base is None and recorded and not REPO_ID.match(str(recorded)) and not Path(recorded).is_dir():  # moved, or relative
        relative = "" if Path(recorded).is_absolute() else " (relative to the folder that run started in)"  # (older runs)
        raise ConfigError(f"the base recorded in {lora_dir / 'hyperparameters.yaml'}, {recorded}{relative}, is not there: pass --base <the base checkpoint>")
    base_dir = resolve_checkpoint(base or recorded or "")
    lora_args = yaml.safe_load((lora_dir / "lora_config.yaml").read_text())
    args = LoRAArgs(**{**lora_args, "layers": tuple(lora_args["layers"]) if lora_args.get("layers") else None})
    config = Config.from_checkpoint(base_dir)
    if (lora_dir / "model_config.yaml").is_file():  # the model the adapters were trained on
        trained = Config.from_file(lora_dir / "model_config.yaml")
        shape = ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "vocab_size", "n_expert")
        differ = [f"{n} {getattr(trained, n)} there, {getattr(config, n)} in the base" for n in shape if getattr(trained, n) != getattr(config, n)]
        if differ:
            raise ConfigError(
                f"{lora_dir} holds adapters trained on another model than {base_dir} ({'; '.join(differ)}): "
                "give the base it was finetuned from with --base"
            )
    adapters = load_state(lora_dir / "lora.safetensors")
    merged = merge_into(load_state(base_dir / NATIVE_WEIGHTS), adapters, config, args)
    yamls = {"lora_config.yaml": lora_args}
    if (base_dir / "adapter_config.yaml").is_file():  # a LLaMA-Adapter base: its prefixes are in the merged weights
        yamls["adapter_config.yaml"] = yaml.safe_load((base_dir / "adapter_config.yaml").read_text())
    if in_place:  # the merged weights (and what a loadable checkpoint needs) join what the folder holds
        save_weights({k: v for k, v in merged.items() if not (config.tie_embeddings and k == "lm_head.weight")}, lora_dir / NATIVE_WEIGHTS)
        files = {"model_config.yaml": config.to_yaml(), **{n: yaml.safe_dump(d, sort_keys=False) for n, d in yamls.items()}}
        for name, text in files.items():
            if name != "lora_config.yaml" and not (lora_dir / name).is_file():
                write_atomic_text(lora_dir / name, text)
        for name in tokenizer_files(base_dir):
            if not (lora_dir / name).is_file():
                (lora_dir / name).parent.mkdir(exist_ok=True)
                shutil.copyfile(base_dir / name, lora_dir / name)
        print(f"merged checkpoint written to {lora_dir}")
        return
    write_checkpoint(Path(out_dir).resolve(), {NATIVE_WEIGHTS: merged}, config, base_dir, hparams, yamls=yamls)  # ("." has no name)
    print(f"merged checkpoint written to {out_dir}")


def merge_peft(peft_dir: Path, base: Optional[str], out_dir: Optional[Path]) -> None:
    """``merge_lora`` of a PEFT LoRA folder: its updates folded into the native base, written to ``out_dir``."""
    from litgpt_clone.checkpoints.io import NATIVE_WEIGHTS, load_state, resolve_checkpoint
    from litgpt_clone.checkpoints.peft_format import peft_settings, peft_updates
    from litgpt_clone.lora import merge_updates
    from litgpt_clone.config import check_out_dir
    from litgpt_clone.training.checkpoint import write_checkpoint

    if out_dir is None:
        raise ConfigError(f"{peft_dir} is a PEFT adapter, which merge_lora leaves as it is: give --out_dir for the merged checkpoint")
    check_out_dir(out_dir)
    import yaml

    earlier = Path(out_dir) / "hyperparameters.yaml"  # an earlier merge of a PEFT adapter is replaced, as merge_lora's are
    merged_before = earlier.is_file() and "peft_adapter" in (yaml.safe_load(earlier.read_text()) or {})
    if Path(out_dir).is_dir() and any(Path(out_dir).iterdir()) and not merged_before:
        raise ConfigError(f"--out_dir {out_dir} is not empty: give a new or empty folder for the merged checkpoint (or an earlier merge's)")
    named = peft_settings(peft_dir).get("base_model_name_or_path")
    if base is None and not named:
        raise ConfigError(f"{peft_dir / 'adapter_config.json'} names no base model: pass --base <the native checkpoint or hub repo id of the base>")
    base_dir = resolve_checkpoint(base or named)
    config = Config.from_checkpoint(base_dir)
    merged = merge_updates(load_state(base_dir / NATIVE_WEIGHTS), peft_updates(peft_dir, config), config)
    hparams = {"checkpoint_dir": str(base_dir.resolve()), "peft_adapter": str(peft_dir.resolve())}
    write_checkpoint(Path(out_dir).resolve(), {NATIVE_WEIGHTS: merged}, config, base_dir, hparams)
    print(f"merged checkpoint written to {out_dir}")
