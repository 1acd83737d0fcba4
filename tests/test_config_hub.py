"""Every recipe in config_hub/ parses against its command's signature, and what it sets is what the command gets."""

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from litgpt_clone.__main__ import main

HUB = Path(__file__).resolve().parents[1] / "config_hub"
RECIPES = sorted(HUB.rglob("*.yaml"))


def command_for(recipe: Path) -> list[str]:
    if recipe.parent.name == "pretrain":
        return ["pretrain"]
    return ["finetune", "full" if recipe.stem == "full" else "lora"]


def subset(expected, actual, where=""):
    """Every key of the recipe is in the printed config with the same value."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for k, v in expected.items():
            assert k in actual, f"{where}.{k} is not an argument of the command"
            subset(v, actual[k], f"{where}.{k}")
    else:
        assert expected == actual, f"{where}: recipe says {expected!r}, the command gets {actual!r}"


def test_there_are_recipes():
    names = {p.relative_to(HUB).as_posix() for p in RECIPES}
    for model in ("Llama-3.2-1B", "Llama-3-8B", "phi-2", "Qwen2.5-1.5B", "TinyLlama-1.1B"):
        assert {f"finetune/{model}/{m}.yaml" for m in ("lora", "qlora", "full")} <= names
    assert {"pretrain/demo.yaml", "pretrain/pythia-160m.yaml", "pretrain/tinyllama-1.1b.yaml"} <= names


def check_comments(recipe: Path, printed: dict) -> None:
    """Comments go stale too: the ``# Run:`` line names this file and its command, and a commented-out setting
    (``# train.lr: 0.001  (default)``) states the value the command really gets."""
    comments = [line.lstrip("#").strip() for line in recipe.read_text().splitlines() if line.startswith("#")]
    runs = [c for c in comments if c.startswith("Run:")]
    assert len(runs) == 1, f"{recipe.name}: one '# Run:' line expected"
    command = " ".join(command_for(recipe))
    expected = f"litgpt-clone {command} --config {recipe.relative_to(HUB.parent).as_posix()}"
    assert runs[0].removeprefix("Run:").strip() == expected, f"{recipe}: the Run line should read {expected!r}"
    for comment in comments:
        key, sep, value = comment.partition(":")
        if sep and "." in key and " " not in key:  # a dotted setting
            node = printed
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{recipe.name}: comment names {key}, not an argument"
                node = node[part]
            assert yaml.safe_load(value.split("(")[0]) == node, f"{recipe.name}: comment says {key}: {value}, the command gets {node!r}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(HUB).as_posix())
def test_recipe_parses_and_applies(recipe):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([*command_for(recipe), "--config", str(recipe), "--print_config"])
    assert exit_.value.code in (0, None), out.getvalue()
    printed = yaml.safe_load(out.getvalue())
    subset(yaml.safe_load(recipe.read_text()), printed, recipe.name)
    check_comments(recipe, printed)
    if recipe.parent.name != "pretrain":  # the model a recipe names is one we know
        from litgpt_clone.config import find_config

        find_config(printed["checkpoint_dir"])
    elif printed["model_name"] is not None:
        from litgpt_clone.config import find_config

        find_config(printed["model_name"])
    else:  # the demo's recipe: a model_config file the demo writes
        assert printed["model_config"] is not None


def test_the_command_line_overrides_a_recipe_wherever_it_stands():
    """`finetune lora <checkpoint> --config recipe.yaml` trains <checkpoint>, not the recipe's (the recipe, read where
    it stood, replaced it); `--checkpoint_dir`, the key --print_config writes, works as a flag too; and so for
    pretrain's model name and any flag typed before --config."""
    recipe = str(HUB / "finetune" / "Qwen2.5-1.5B" / "lora.yaml")

    def printed(*argv) -> dict:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main([*argv, "--print_config"])
        return yaml.safe_load(out.getvalue())

    assert yaml.safe_load(Path(recipe).read_text())["checkpoint_dir"] == "Qwen/Qwen2.5-1.5B"
    for argv in (["finetune", "lora", "Qwen/Qwen2.5-0.5B", "--config", recipe], ["finetune", "lora", "--config", recipe, "Qwen/Qwen2.5-0.5B"],
                 ["finetune", "lora", "--config", recipe, "--checkpoint_dir", "Qwen/Qwen2.5-0.5B"], ["finetune", "--checkpoint_dir=Qwen/Qwen2.5-0.5B", "--config", recipe]):
        assert printed(*argv)["checkpoint_dir"] == "Qwen/Qwen2.5-0.5B", argv
    got = printed("finetune", "lora", "--train.lr", "0.5", "--config", recipe)
    assert got["train"]["lr"] == 0.5 and got["checkpoint_dir"] == "Qwen/Qwen2.5-1.5B"
    pythia = str(HUB / "pretrain" / "pythia-160m.yaml")
    assert printed("pretrain", "pythia-14m", "--config", pythia)["model_name"] == "pythia-14m"


@pytest.mark.parametrize("command, name, title", [(["finetune", "lora"], "json", "Your own instruction data"), (["pretrain"], "text", "Plain text")])
def test_data_help_takes_the_short_names_that_data_takes(command, name, title):
    """``--data.help json`` lists the --data.* options of the module ``--data json`` picks (it wanted the class name)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*command, "--data.help", name])
    assert done.value.code == 0 and title in out.getvalue() and "--data.path" in out.getvalue()
