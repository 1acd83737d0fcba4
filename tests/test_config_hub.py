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
    assert {"pretrain/pythia-160m.yaml", "pretrain/tinyllama-1.1b.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(HUB).as_posix())
def test_recipe_parses_and_applies(recipe):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([*command_for(recipe), "--config", str(recipe), "--print_config"])
    assert exit_.value.code in (0, None), out.getvalue()
    printed = yaml.safe_load(out.getvalue())
    subset(yaml.safe_load(recipe.read_text()), printed, recipe.name)
    if recipe.parent.name != "pretrain":  # the model a recipe names is one we know
        from litgpt_clone.config import find_config

        find_config(printed["checkpoint_dir"])
    else:
        from litgpt_clone.config import find_config

        find_config(printed["model_name"])
