"""The ``litgpt-clone`` command line: a nested dict of command functions handed to jsonargparse.

Each function's signature is its command line and its docstring is its ``--help``. Every command takes
``--config file.yaml`` and ``--print_config``. Errors that a user can fix print one line, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from litgpt_clone.commands.chat import chat
from litgpt_clone.commands.convert import convert_from_hf, convert_to_hf, convert_to_peft
from litgpt_clone.commands.download import download
from litgpt_clone.commands.evaluate import evaluate_perplexity, evaluate_tasks
from litgpt_clone.commands.finetune import finetune_adapter, finetune_full, finetune_lora, merge_lora
from litgpt_clone.commands.generate import generate
from litgpt_clone.commands.models import models
from litgpt_clone.commands.pretrain import pretrain
from litgpt_clone.commands.prepare import prepare_code
from litgpt_clone.commands.serve import serve

COMMANDS = {
    "download": download,
    "convert": {
        "_help": "Convert checkpoints between Hugging Face and native formats.", "from_hf": convert_from_hf, "to_hf": convert_to_hf,
        "to_peft": convert_to_peft,
    },
    "models": models,
    "pretrain": pretrain,
    "finetune": {
        "_help": "Finetune a checkpoint: lora (the default; QLoRA with --quantize), full or adapter.",
        "lora": finetune_lora, "full": finetune_full, "adapter": finetune_adapter,
    },
    "merge_lora": merge_lora,
    "generate": generate,
    "chat": chat,
    "serve": serve,
    "evaluate": {"_help": "Evaluate a checkpoint: `evaluate [checkpoint] --tasks a,b` (= `evaluate tasks`) runs lm-eval tasks, `evaluate perplexity` scores text files.", "tasks": evaluate_tasks, "perplexity": evaluate_perplexity},
    "prepare": {"_help": "Build datasets: `prepare code` makes a versioned code corpus with token shards.", "code": prepare_code},
}

OPTIONAL_POSITIONALS = {"pretrain": "--model_name"}
FINETUNE_METHODS = ("lora", "full", "adapter")
"""Commands whose first bare word is an optional argument (``pretrain pythia-14m``), which jsonargparse cannot
express: it is rewritten to the flag."""
REPEATABLE = ("--stop",)
"""List flags that may be given several times, each adding one item."""
LITGPT_NAMES = {
    "--train.lr_warmup_steps": "--train.warmup_steps",
    "--lora_r": "--lora.r", "--lora_alpha": "--lora.alpha", "--lora_dropout": "--lora.dropout", "--lora_query": "--lora.query",
    "--lora_key": "--lora.key", "--lora_value": "--lora.value", "--lora_projection": "--lora.projection",
    "--lora_mlp": "--lora.mlp", "--lora_head": "--lora.head",
    "--sys_prompt": "--system",
    "--pretrained_checkpoint_dir": "--base",
    "finetune_lora": "finetune lora", "finetune_full": "finetune full", "finetune_adapter": "finetune adapter",
    "convert_to_litgpt": "convert from_hf", "convert_from_litgpt": "convert to_hf", "download list": "models",
    "litgpt.data.TextFiles": "text",
}
"""LitGPT's names (flags and recipe keys, commands, data modules) for what is called otherwise here: an error about
one names ours. (A data module whose class name is ours in another case, ``litgpt.data.JSON``, needs no entry.)"""


def data_aliases(command: str) -> dict[str, str]:
    """``--data text`` -> ``--data Text``: short lowercase names of the data modules for jsonargparse's class names."""
    if command == "finetune":
        from litgpt_clone.data.sft import SFT_DATA_MODULES as modules
    else:
        from litgpt_clone.data.pretrain import DATA_MODULES as modules
    return {name: cls.__name__ for name, cls in modules.items()}


def rewrite(argv: list[str]) -> list[str]:
    """Spellings jsonargparse cannot express: ``pretrain <name>``, ``finetune <checkpoint>`` (= ``finetune lora``),
    ``evaluate [checkpoint]`` (= ``evaluate tasks``), ``--data <short name>``, a repeated ``--stop``."""
    argv = list(argv)
    if len(argv) >= 2 and argv[0] in OPTIONAL_POSITIONALS and not argv[1].startswith("-"):
        argv[1:2] = [OPTIONAL_POSITIONALS[argv[0]], argv[1]]
    if len(argv) >= 2 and argv[0] == "finetune" and argv[1] not in FINETUNE_METHODS and argv[1] not in ("-h", "--help"):
        argv.insert(1, "lora")
    if len(argv) >= 2 and argv[0] == "evaluate" and argv[1] not in ("tasks", "perplexity", "-h", "--help"):
        argv.insert(1, "tasks")  # `evaluate [checkpoint] --tasks a,b` is `evaluate tasks`, whose checkpoint is optional
    if argv[:2] == ["evaluate", "tasks"] and len(argv) >= 3 and not argv[2].startswith("-"):
        argv[2:3] = ["--checkpoint_dir", argv[2]]
    if argv[:2] == ["prepare", "code"]:  # `prepare code a b c`: the bare words before the first flag are the sources
        n = next((i for i, a in enumerate(argv[2:]) if a.startswith("-")), len(argv) - 2)
        if n > 1:
            argv[2 : 2 + n] = [json.dumps(argv[2 : 2 + n])]
    for flag in REPEATABLE:  # `--stop A --stop B` appends, as users of other CLIs expect, not "last one wins"
        if sum(a == flag or a.startswith(flag + "=") for a in argv) > 1:
            argv = [flag + "+" + a[len(flag):] if a == flag or a.startswith(flag + "=") else a for a in argv]
    argv = optimizer_flags(config_first(argv))
    aliases = data_aliases(argv[0] if argv else "")
    for i, arg in enumerate(argv):  # (--data.help NAME lists a module's --data.* options)
        if arg in ("--data", "--data.help") and i + 1 < len(argv) and argv[i + 1] in aliases:
            argv[i + 1] = aliases[argv[i + 1]]
        elif arg.startswith(("--data=", "--data.help=")) and arg.partition("=")[2] in aliases:
            argv[i] = arg.partition("=")[0] + "=" + aliases[arg.partition("=")[2]]
    return argv


def config_first(argv: list[str]) -> list[str]:
    """``--config`` files go first, whatever their place: the command line overrides the recipe (a checkpoint typed
    before ``--config`` lost to the recipe's ``checkpoint_dir``). A positional ``checkpoint_dir`` may also be given as
    ``--checkpoint_dir``, the key ``--print_config`` writes."""
    import inspect

    depth, level = 0, COMMANDS
    while isinstance(level, dict) and depth < len(argv) and argv[depth] in level:
        level, depth = level[argv[depth]], depth + 1
    configs, positional, rest, i = [], [], [], depth
    while i < len(argv):
        word = argv[i]
        name, _, value = word.partition("=")
        takes = not value and i + 1 < len(argv)  # `--flag value` (else `--flag=value`)
        if name in ("--config", "--checkpoint_dir") and (value or takes):
            value = value or argv[i + 1]
            i += 1 if word != name else 2
            if name == "--config":
                configs += ["--config", value]
                continue
            parameter = inspect.signature(level).parameters.get("checkpoint_dir") if callable(level) else None
            if parameter is not None and parameter.default is inspect.Parameter.empty:
                positional.append(value)
                continue
            rest += [name, value]
            continue
        rest.append(word)
        i += 1
    return argv[:depth] + configs + positional + rest


def optimizer_flags(argv: list[str]) -> list[str]:
    """``--optimizer NAME``, ``--optimizer.class_path NAME`` and ``--optimizer.init_args.KEY VALUE`` (or
    ``--optimizer.KEY``), in any order and over a recipe's ``optimizer:``, as one ``--optimizer``: jsonargparse keeps
    only the last of a name and settings (``--optimizer.init_args.lr 0.05 --optimizer SGD`` trained at the default
    lr). A name keeps the settings given before it; a whole value (JSON, a recipe's mapping) replaces them. The
    result is ``{"class_path": NAME, KEY: VALUE, ...}`` (a ``class_path``/``init_args`` mapping over a recipe's one
    is a crash in jsonargparse), or the bare name."""
    import yaml

    def value(text: str):
        try:
            return json.loads(text)  # (1e-8 is a number here; YAML reads it as text)
        except ValueError:
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError:
                return text

    def whole(given) -> tuple:  # (name, settings) of an --optimizer value or a recipe's optimizer:
        if not isinstance(given, dict):
            return str(given), {}
        extra = {k: v for k, v in given.items() if k not in ("class_path", "init_args")}
        return given.get("class_path"), {**dict(given.get("init_args") or {}), **extra}

    flags = [i for i, a in enumerate(argv) if a.partition("=")[0] == "--optimizer" or a.startswith("--optimizer.")]
    if not flags:
        return argv
    name, settings = None, {}
    for i, word in enumerate(argv[:-1]):  # the recipes' optimizer first (their --config went first)
        if word == "--config" and Path(argv[i + 1]).is_file():
            try:
                recipe = yaml.safe_load(Path(argv[i + 1]).read_text())
            except (yaml.YAMLError, UnicodeDecodeError):
                continue  # (jsonargparse says what is wrong with it)
            if isinstance(recipe, dict) and recipe.get("optimizer") is not None:
                name, settings = whole(recipe["optimizer"])
    rest, i = argv[: flags[0]], flags[0]
    while i < len(argv):
        flag, eq, text = argv[i].partition("=")
        if flag != "--optimizer" and not flag.startswith("--optimizer."):
            rest.append(argv[i])
            i += 1
            continue
        if not eq and i + 1 == len(argv):
            return argv  # a flag without its value: jsonargparse's error
        text, i = (text, i + 1) if eq else (argv[i + 1], i + 2)
        key = flag[len("--optimizer.") :] if flag != "--optimizer" else ""
        key = key[len("init_args.") :] if key.startswith("init_args.") else key
        if key == "" and isinstance(value(text), dict):
            name, settings = whole(value(text))
        elif key in ("", "class_path"):
            name = text
        elif key == "init_args" and isinstance(value(text), dict):
            settings = {**settings, **value(text)}
        else:
            settings = {**settings, key: value(text)}
    spec = json.dumps({**({"class_path": name} if name else {}), **settings}) if settings or not name else name
    return rest[: flags[0]] + ["--optimizer", spec] + rest[flags[0] :]


def litgpt_hint(name: str, command, prefix: str = "--") -> str:
    """`` (did you mean --lora.r? --lora_r is LitGPT's name)`` for a LitGPT flag or recipe key (``lora_r``) whose
    replacement ``command`` takes, else ''."""
    import inspect

    ours = LITGPT_NAMES.get("--" + name, "")[2:]
    if not ours or not callable(command) or ours.split(".")[0] not in inspect.signature(command).parameters:
        return ""
    return f" (did you mean {prefix}{ours}? {prefix}{name} is LitGPT's name)"


def unknown_data(name: str, modules: dict) -> str:
    """The error for a ``--data`` (or YAML ``data:``) that names no module: which one of ours to use, and how."""
    ours = LITGPT_NAMES.get(name) or name.rsplit(".", 1)[-1].lower()  # litgpt.data.JSON -> json
    if ours not in modules:
        classes = ", ".join(cls.__name__ for cls in modules.values())
        return f"unknown --data {name}: use one of {', '.join(modules)} (in a YAML, class_path: {classes})"
    yaml_form = f"`data: {{class_path: {modules[ours].__name__}, init_args: {{...}}}}` in a YAML"
    if name == ours:  # a short name in a YAML: those are the command line's
        return f"unknown data module {name}: the short name is for the command line (--data {name}); write {yaml_form}"
    return f"unknown data module {name}: use {ours} (--data {ours}, or {yaml_form})"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message already says what to do."""
    from litgpt_clone.chat_template import ChatTemplateError
    from litgpt_clone.checkpoints.download import DownloadError
    from litgpt_clone.checkpoints.io import CheckpointError
    from litgpt_clone.config import ConfigError
    from litgpt_clone.data.pretrain import DataError
    from litgpt_clone.generate import GenerationError
    from litgpt_clone.training.fit import TrainingError
    from litgpt_clone.commands.prepare import CorpusError
    from litgpt_clone.corpus.optout import OptOutError
    from litgpt_clone.corpus.sources import SourceError
    from litgpt_clone.evaluate import EvaluationError
    from litgpt_clone.commands.serve import ServeError

    return (ConfigError, CheckpointError, DownloadError, FileNotFoundError, PermissionError, DataError, TrainingError, GenerationError, ChatTemplateError, CorpusError, OptOutError, SourceError, EvaluationError, ServeError)


def parser_message(message: str, command=None) -> str:
    """jsonargparse's message on a value it rejected, often several lines, as one: the flag, the value and what the
    flag takes (the whole message, joined, where it has another shape). A flag or key that ``command`` (the function)
    does not take gets ours where it is LitGPT's name (``LITGPT_NAMES``)."""
    keys = re.findall(r'Parser key "([^"]+)":', message)  # nested for a class's own arguments: data, val_fraction
    value = re.search(r"(?:Got value|Given value): (.*)", message)
    no_module = r"Expected a dot import path string|class_path '[^']*':\s*(No module named|module .* has no attribute)|does not correspond to a subclass"
    if keys == ["data"] and value and re.search(no_module, message):  # a --data (data: class_path) of no module
        if "litgpt_clone.data.sft." in message:
            from litgpt_clone.data.sft import SFT_DATA_MODULES as modules
        else:
            from litgpt_clone.data.pretrain import DATA_MODULES as modules
        given = re.search(r"'class_path': '([^']*)'", value.group(1))  # (a YAML's data: mapping)
        return unknown_data(given.group(1) if given else value.group(1).strip(), modules)
    if message.startswith("unrecognized arguments:"):  # --lora_r 4
        return message + "".join(litgpt_hint(flag, command) for flag in re.findall(r"(?:^|\s)--([\w.]+)", message))
    if unknown := re.fullmatch(r"(?:Group '(\w+)' does not accept option|Subcommand '\w+' does not accept option|Option) '([\w.]+)'.*", message):
        return message + litgpt_hint(".".join(k for k in unknown.groups() if k), command, prefix="")  # a YAML's lora_r
    if keys and (unknown := re.search(r"class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message)):  # --data.pth
        import difflib
        import importlib
        import inspect

        module, name = unknown.group(1).rsplit(".", 1)
        options = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
        close = difflib.get_close_matches(unknown.group(2), options, n=1)
        hint = f"did you mean --{keys[0]}.{close[0]}? " if close else ""
        return f"--{keys[0]}.{unknown.group(2)}: --{keys[0]} {name} has no such option ({hint}it takes {', '.join(options)})"
    if keys and value:
        flag = f"--{'.'.join(keys)} {value.group(1).strip()}"
        if choices := re.search(r"Literal\[([^\]]*)\]", message):
            return f"{flag}: use one of {', '.join(c.strip().strip(chr(39) + chr(34)) for c in choices.group(1).split(','))}"
        if expected := re.search(r"Expected a <class '(\w+)'>", message):
            return f"{flag}: expected {'an' if expected.group(1)[0] in 'aeiou' else 'a'} {expected.group(1)}"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def own_parser_error(function, args: list[str]) -> str | None:
    """The error of ``function``'s own parser on ``args``. For a command two levels down, jsonargparse's check of
    unknown keys looks the key up one level too high and fails on a plain ``KeyError`` of the parent command's name
    (its own verdicts are ``NSKeyError``s)."""
    from jsonargparse import auto_parser

    try:
        auto_parser(function, exit_on_error=False).parse_args(args)
    except argparse.ArgumentError as err:
        return str(err)
    return None


def other_rank() -> bool:
    """Whether this is a process of a multi-process run other than global rank 0. Training raises its errors on every
    rank alike (or on rank 0, the others stopping with it: ``training.run.on_rank_zero``), so rank 0 says them."""
    dist = sys.modules.get("torch.distributed")  # not imported: no process group
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() != 0
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) != "0"  # torchrun, srun: before the process group


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # --train.*, --lora.*: their fields' docstrings

    from litgpt_clone.host_memory import keep_freed_memory

    keep_freed_memory()  # reuse freed host memory instead of faulting in fresh pages every step (see host_memory.py)
    argv = sys.argv[1:] if argv is None else argv
    for typed in (" ".join(argv[:2]), " ".join(argv[:1])):  # `litgpt-clone finetune_lora`, `download list`
        if typed in LITGPT_NAMES and not typed.startswith("-"):
            print(f"error: `litgpt-clone {typed}` is LitGPT's command: here it is `litgpt-clone {LITGPT_NAMES[typed]}`", file=sys.stderr)
            raise SystemExit(2)
    args = rewrite(argv)
    try:
        CLI(COMMANDS, args=args, prog="litgpt-clone", exit_on_error=False)
    except argparse.ArgumentError as err:  # jsonargparse's verdict on the command line, on one line with the way out
        command, level = ["litgpt-clone"], COMMANDS
        for word in args:  # the (sub)command the error is about, for the pointer to its --help
            if not isinstance(level, dict) or word not in level:
                break
            command.append(word)
            level = level[word]
        message = str(err)
        if type(err.__cause__) is KeyError and callable(level):  # an unknown key of `finetune lora`, `evaluate tasks`:
            message = own_parser_error(level, args[len(command) - 1 :]) or message  # jsonargparse says only 'finetune'
        print(f"error: {parser_message(message, level)} (`{' '.join(command)} --help` lists the options)", file=sys.stderr)
        raise SystemExit(2)
    except user_errors() as err:
        if os.environ.get("LITGPT_CLONE_TRACEBACK"):
            raise
        if not other_rank():  # the other processes of a run stop with the same status: one line, not one per process
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    except ValueError as err:  # jsonargparse wraps what a --data (Union-typed) class raised while it was built
        first = re.search(r"Union subtypes.*?Errors:\s*\n\s*- ([^\n]+)", str(err), re.DOTALL)
        if first is None or os.environ.get("LITGPT_CLONE_TRACEBACK"):
            raise
        print(f"error: {first.group(1).strip()}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback (training resumes from its last checkpoint with --resume auto)
        if not other_rank():
            print("\ninterrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)  # now: a SystemExit would wait for worker threads (a download's went on to the end of its files)
    except BrokenPipeError:  # `litgpt-clone models | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush goes nowhere


if __name__ == "__main__":
    main()
