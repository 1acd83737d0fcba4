"""The real `litgpt-clone` CLI in a subprocess: help, config files, conversion round trip, one-line errors."""

import json
import shutil
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from litgpt_clone import GPT, Config
from litgpt_clone.checkpoints.io import CheckpointError
from litgpt_clone.config import ConfigError
from litgpt_clone.training.checkpoint import read_training_state
from test_generate import cli_error


def cli(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "litgpt_clone", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_llama")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return path, model


def test_help_lists_commands_and_docstrings():
    out = cli("--help").stdout
    for command in ("download", "convert", "models"):
        assert command in out
    out = cli("convert", "from_hf", "--help").stdout
    assert "Folder with config.json" in out and "--dtype" in out
    # the fields of --train, --eval and --lora are documented by their attribute docstrings (they had no help text)
    out = " ".join(cli("finetune", "lora", "--help").stdout.split())
    assert "--train.max_norm MAX_NORM Clip the global gradient norm to this value; None disables clipping." in out
    assert "--lora.r R Rank of the adapters." in out and "--eval.interval INTERVAL Validate every this many optimizer steps." in out


def test_models_filter():
    out = cli("models", "--filter", "Llama-3.2-1B").stdout.splitlines()
    assert out and all("llama-3.2-1b" in line.lower() for line in out)
    assert any("meta-llama/Llama-3.2-1B" in line for line in out)


def test_models_architecture_ignores_case_and_names_the_known_ones(capsys):
    from litgpt_clone.commands.models import models
    from litgpt_clone.config import ConfigError

    models(architecture="qwen3forcausallm")
    lines = capsys.readouterr().out.splitlines()
    assert lines and any(line.startswith("Qwen3-0.6B ") for line in lines) and not any("Llama" in line for line in lines)
    with pytest.raises(ConfigError, match=r"^--architecture 'Foo' is none of the registry's: .*LlamaForCausalLM, .*Qwen3ForCausalLM"):
        models(architecture="Foo")


def test_convert_round_trip_through_cli(hf_llama, tmp_path):
    hf_dir, hf_model = hf_llama
    native, back = tmp_path / "native", tmp_path / "back"
    proc = cli("convert", "from_hf", hf_dir, "--out_dir", native)
    assert f"note: {hf_dir} has no tokenizer (tokenizer.json or tokenizer.model): copy the model's tokenizer files into {native}" in proc.stderr
    assert {"lit_model.safetensors", "model_config.yaml", "config.json", "generation_config.json", "tokenizer_config.json"} <= {
        p.name for p in native.iterdir()
    }
    assert not list(native.glob(".*.tmp")), "temporary files left behind"
    again = cli("convert", "from_hf", native, "--out_dir", tmp_path / "again", check=False)  # a native folder keeps config.json
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1] == (
        f"error: {native} is already a native checkpoint (model_config.yaml): use it as it is, or export it with `convert to_hf`"
    )
    cli("convert", "to_hf", native, "--out_dir", back)
    idx = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        expected = hf_model(idx).logits
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(back)(idx).logits, expected)
        torch.testing.assert_close(GPT.from_checkpoint(native)(idx), expected)
    assert set(load_file(back / "model.safetensors")) == set(load_file(hf_dir / "model.safetensors"))


def test_an_interrupted_conversion_leaves_no_half_folder(hf_llama, tmp_path, monkeypatch):
    """Ctrl-C while the weights are written: the new folder is not there at all (it held the tokenizer files and
    config.json without weights, which the next command called a Hugging Face folder), and converting again works."""
    import litgpt_clone.checkpoints.convert as convert

    def interrupted(state, path):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(convert, "save_weights", interrupted)
        with pytest.raises(KeyboardInterrupt):
            convert.convert_hf_checkpoint(hf_llama[0], tmp_path / "native")
    assert not (tmp_path / "native").exists()
    convert.convert_hf_checkpoint(hf_llama[0], tmp_path / "native")  # (over the partial folder the first one left)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"] and (tmp_path / "native" / "lit_model.safetensors").is_file()


def test_convert_of_a_hub_snapshot_records_its_repo(hf_llama, tmp_path, monkeypatch):
    """A folder of the Hugging Face cache (models--org--name/snapshots/<commit>) converts into checkpoints/org/name
    and records the repo, as `download` does (convert to_peft names it as the adapter's base)."""
    from litgpt_clone.commands.convert import convert_from_hf
    from litgpt_clone.config import Config

    snapshot = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(hf_llama[0], snapshot)
    monkeypatch.chdir(tmp_path)
    convert_from_hf(snapshot)
    config = Config.from_checkpoint(tmp_path / "checkpoints" / "acme" / "tiny-llama")
    assert (config.name, config.hf_config) == ("tiny-llama", {"org": "acme", "name": "tiny-llama"})


def test_transformers_refuses_a_native_folder_and_the_old_weights_name_says_rename(hf_llama, tmp_path, capsys):
    """A native folder keeps the original config.json; its weights were model.safetensors, which transformers loaded
    into a randomly initialised model (unknown tensor names, one warning). Now transformers finds no weights it
    reads, and a folder written under the old name says how to rename it. Converting into a folder that holds an
    earlier export removes its Hugging Face weights, which transformers would load instead, and the reverse."""
    import shutil

    hf_dir, hf_model = hf_llama
    native = tmp_path / "native"
    cli("convert", "from_hf", hf_dir, "--out_dir", native)
    with pytest.raises(OSError, match="no file named model.safetensors, or pytorch_model.bin, found in directory"):
        AutoModelForCausalLM.from_pretrained(native)
    old = tmp_path / "old ckpt"
    shutil.copytree(native, old)
    (old / "lit_model.safetensors").rename(old / "model.safetensors")
    rename = (f"{old / 'model.safetensors'} holds native weights under the name earlier versions gave them: rename it to"
              f" lit_model.safetensors (mv '{old / 'model.safetensors'}' '{old / 'lit_model.safetensors'}')")
    with pytest.raises(CheckpointError) as err:
        GPT.from_checkpoint(old)
    assert str(err.value) == rename
    (old / "lora.safetensors").write_bytes(b"")  # a LoRA final/ of then: merged weights beside the adapters
    with pytest.raises(CheckpointError) as err:
        GPT.from_checkpoint(old)
    assert str(err.value) == rename  # (it said "holds LoRA weights only: merge them first")
    (old / "lora.safetensors").unlink()
    # every command says it, before any work (serve printed "Serving model" and two worker tracebacks)
    for command in (["serve", old], ["convert", "from_hf", old, "--out_dir", tmp_path / "x"], ["pretrain", "--initial_checkpoint_dir", old]):
        assert cli_error(capsys, *command) == f"error: {rename}", command
    from litgpt_clone.commands.evaluate import newest_checkpoint

    with pytest.raises(CheckpointError, match="holds native weights under the name earlier versions gave them"):
        newest_checkpoint(tmp_path)  # the newest checkpoint under it has the old name (not "no checkpoint")
    assert cli_error(capsys, "pretrain", "--initial_checkpoint_dir", hf_dir).startswith(f"error: {hf_dir} is a Hugging Face folder: convert it")
    # one folder never holds both formats: transformers would load the other one's weights (a stale export's
    # pytorch_model.bin beside a conversion); removing them deleted a trained checkpoint exported over by mistake
    export = tmp_path / "export"
    cli("convert", "to_hf", native, "--out_dir", export)
    torch.save(load_file(export / "model.safetensors"), export / "pytorch_model.bin")
    before = sorted(p.name for p in export.iterdir())
    assert cli_error(capsys, "convert", "from_hf", hf_dir, "--out_dir", export) == (
        f"error: {export} holds Hugging Face weights (model.safetensors, pytorch_model.bin), which transformers would"
        " load from it instead of this conversion: give another --out_dir (or delete them)")
    assert sorted(p.name for p in export.iterdir()) == before
    cli("convert", "from_hf", hf_dir, "--out_dir", old)  # converting again over the old name replaces it
    assert sorted(p.name for p in old.glob("*safetensors*")) == ["lit_model.safetensors"]
    assert cli_error(capsys, "convert", "to_hf", native, "--out_dir", old) == (
        f"error: {old} is a native checkpoint (model_config.yaml, lit_model.safetensors): exporting into it would leave"
        " two models in one folder; give another --out_dir")
    assert (old / "lit_model.safetensors").is_file() and not (old / "model.safetensors").exists()


def test_files_are_readable_by_others_and_default_export_sits_beside(hf_llama, tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the files must still get the umask's usual 0644, so a shared
    checkpoint folder is readable. `convert to_hf` without --out_dir writes <checkpoint>_hf next to the checkpoint."""
    hf_dir, _ = hf_llama
    native = tmp_path / "models" / "native"
    cli("convert", "from_hf", hf_dir, "--out_dir", native)
    subprocess.run(["bash", "-c", f"umask 022 && cd {tmp_path} && {sys.executable} -m litgpt_clone convert to_hf models/native"], check=True)
    export = tmp_path / "models" / "native_hf"
    assert (export / "config.json").is_file() and not (tmp_path / "native_hf").exists()
    for path in [*native.iterdir(), *export.iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, f"{path.name}: {oct(path.stat().st_mode & 0o777)}"


def test_closed_pipe_is_not_an_error():
    """`litgpt-clone models | head -1`: when the reader goes away, no traceback and exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "litgpt_clone", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command has printed anything: its first write hits a closed pipe
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""


def test_config_file_and_print_config(hf_llama, tmp_path):
    hf_dir, _ = hf_llama
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"hf_dir: {hf_dir}\nout_dir: {tmp_path / 'from_recipe'}\ndtype: bfloat16\n")
    printed = cli("convert", "from_hf", "--config", recipe, "--print_config").stdout
    assert "dtype: bfloat16" in printed and str(hf_dir) in printed
    cli("convert", "from_hf", "--config", recipe)
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "from_recipe" / "lit_model.safetensors").values())
    bad = cli("convert", "from_hf", hf_dir, "--dtpye", "float16", check=False)
    assert bad.returncode != 0 and "dtpye" in bad.stderr


def test_sharded_export_loads_in_transformers(hf_llama, tmp_path):
    hf_dir, hf_model = hf_llama
    cli("convert", "from_hf", hf_dir, "--out_dir", tmp_path / "native")
    cli("convert", "to_hf", tmp_path / "native", "--out_dir", tmp_path / "sharded", "--max_shard_size", "20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")(idx).logits, hf_model(idx).logits)
    cli("convert", "from_hf", tmp_path / "sharded", "--out_dir", tmp_path / "native2")  # sharded input converts too
    a, b = load_file(tmp_path / "native" / "lit_model.safetensors"), load_file(tmp_path / "native2" / "lit_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_over_an_earlier_export_leaves_only_the_new_weights(hf_llama, tmp_path):
    """`convert to_hf` into a folder that holds an earlier export: the earlier weight files go (as with
    `save_pretrained`), so transformers and `convert from_hf` load the new model whichever of the two was sharded."""
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint

    hf_dir, hf_model = hf_llama
    first, second = convert_hf_checkpoint(hf_dir, tmp_path / "a"), tmp_path / "b"
    state = load_file(first / "lit_model.safetensors")
    (second).mkdir()
    for name in ("model_config.yaml", "tokenizer_config.json", "generation_config.json"):
        (second / name).write_bytes((first / name).read_bytes())
    from safetensors.torch import save_file

    save_file({k: v * 0.5 for k, v in state.items()}, second / "lit_model.safetensors")  # another model of the same shape
    idx = torch.randint(0, 64, (1, 8))
    out = tmp_path / "export"
    for model, shard in ((first, "5GB"), (second, "20KB"), (first, "5GB")):
        convert_to_hf_checkpoint(model, out, max_shard_size=shard)
        weights = sorted(p.name for p in out.iterdir() if p.name.startswith("model"))
        if shard == "5GB":
            assert weights == ["model.safetensors"]
        else:
            assert "model.safetensors" not in weights and len(weights) > 2 and "model.safetensors.index.json" in weights
        with torch.no_grad():
            torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(out)(idx).logits, GPT.from_checkpoint(model)(idx))
    assert not torch.allclose(GPT.from_checkpoint(first)(idx), GPT.from_checkpoint(second)(idx))
    # killed between two shards of a sharded re-export: the folder held new and old shards under the old index, and
    # transformers loaded that mix silently; what it reads first now goes first, so it refuses the folder
    from litgpt_clone.checkpoints import io

    convert_to_hf_checkpoint(second, out, max_shard_size="20KB")
    written, save_weights = [], io.save_weights

    def killed_at_the_second(state, path):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        save_weights(state, path)

    io.save_weights = killed_at_the_second
    try:
        with pytest.raises(KeyboardInterrupt):
            io.save_hf_weights(native_to_hf(first), out, max_shard_size="20KB")
    finally:
        io.save_weights = save_weights
    with pytest.raises(OSError, match="no file named model.safetensors"):
        AutoModelForCausalLM.from_pretrained(out)


def native_to_hf(folder) -> dict:
    from litgpt_clone.checkpoints.convert import native_to_hf_weights

    return native_to_hf_weights(load_file(folder / "lit_model.safetensors"), Config.from_checkpoint(folder))


def test_snapshot_with_consolidated_weights_converts_through_its_index(hf_llama, tmp_path):
    """A full hub snapshot (Mistral v0.3 keeps consolidated.safetensors beside its shards): the index says which files
    are the model's, as transformers reads it."""
    from safetensors.torch import save_file

    hf_dir, hf_model = hf_llama
    cli("convert", "from_hf", hf_dir, "--out_dir", tmp_path / "native")
    cli("convert", "to_hf", tmp_path / "native", "--out_dir", tmp_path / "snapshot", "--max_shard_size", "20KB")
    save_file({"layers.0.attention.wq.weight": torch.zeros(32, 32)}, tmp_path / "snapshot" / "consolidated.safetensors")
    cli("convert", "from_hf", tmp_path / "snapshot", "--out_dir", tmp_path / "back")
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_checkpoint(tmp_path / "back")(idx), hf_model(idx).logits)
    (tmp_path / "snapshot" / "model-00002-of-{:05d}.safetensors".format(len(list((tmp_path / "snapshot").glob("model-*"))))).unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-\d+\.safetensors is missing \(model.safetensors.index.json names it\)"):
        from litgpt_clone.checkpoints.io import read_hf_weights

        read_hf_weights(tmp_path / "snapshot")


def test_bad_shard_size_is_one_line_and_writes_nothing(hf_llama, tmp_path):
    hf_dir, _ = hf_llama
    cli("convert", "from_hf", hf_dir, "--out_dir", tmp_path / "native")
    line = one_line_error(cli("convert", "to_hf", tmp_path / "native", "--out_dir", tmp_path / "out", "--max_shard_size", "lots", check=False))
    assert line.startswith("error: max_shard_size 'lots' is not a size (") and line.endswith("): use one such as 5GB or 500MB")
    assert not (tmp_path / "out").exists()


def test_bin_checkpoint_converts(hf_llama, tmp_path):
    hf_dir, hf_model = hf_llama
    (tmp_path / "bin").mkdir()  # transformers 5 writes only safetensors: write the older .bin format ourselves
    (tmp_path / "bin" / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(load_file(hf_dir / "model.safetensors"), tmp_path / "bin" / "pytorch_model.bin")
    cli("convert", "from_hf", tmp_path / "bin", "--out_dir", tmp_path / "native")
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_checkpoint(tmp_path / "native")(idx), hf_model(idx).logits)


def test_a_bin_saved_before_torch_1_6_converts(hf_llama, tmp_path):
    """A pytorch_model.bin in the pickle format of torch < 1.6 (not a zip, which mmap cannot read) converts, still
    weights-only, as transformers loads it; it was refused as "cannot be read safely"."""
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint

    hf_dir, hf_model = hf_llama
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(load_file(hf_dir / "model.safetensors"), tmp_path / "bin" / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    convert_hf_checkpoint(tmp_path / "bin", tmp_path / "native")
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_checkpoint(tmp_path / "native")(idx), hf_model(idx).logits)


def test_a_pickle_that_names_code_is_refused_in_one_line(hf_llama, tmp_path):
    """A .bin (or a training state) whose pickle names a Python function, as a planted payload does: torch's
    weights-only load refuses it, and the user reads one line, not torch's advice to retry with weights_only=False."""
    hf_dir, _ = hf_llama
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save({**load_file(hf_dir / "model.safetensors"), "payload": os.getcwd}, tmp_path / "bin" / "pytorch_model.bin")
    line = one_line_error(cli("convert", "from_hf", tmp_path / "bin", "--out_dir", tmp_path / "native", check=False))
    assert "pytorch_model.bin cannot be read safely (UnpicklingError:" in line and "getcwd" in line and "weights_only" not in line
    assert line.endswith("use a safetensors checkpoint") and not (tmp_path / "native").exists()
    (tmp_path / "step-00000002").mkdir()
    torch.save({"fit": {}, "rng": os.getcwd}, tmp_path / "step-00000002" / "training_state.pt")
    with pytest.raises(CheckpointError, match=r"training_state.pt cannot be read safely \(UnpicklingError: .*getcwd.*\): resume from another"):
        read_training_state(tmp_path / "step-00000002")


# ----------------------------------------------------------------------------- bad input: one line, with the fix
def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_unknown_model_name_suggests_closest():
    with pytest.raises(ConfigError) as err:
        Config.from_name("Lama-3.2-1B")
    assert "Llama-3.2-1B" in str(err.value) and "litgpt-clone models" in str(err.value)
    with pytest.raises(ConfigError):
        GPT.from_name("not-a-model-at-all", device="meta")


def test_truncated_safetensors(hf_llama, tmp_path):
    hf_dir, _ = hf_llama
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((hf_dir / "config.json").read_text())
    data = (hf_dir / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    line = one_line_error(cli("convert", "from_hf", broken, "--out_dir", tmp_path / "out", check=False))
    assert "model.safetensors" in line and "corrupt or truncated" in line
    # a truncated native checkpoint fails the same way on load
    cli("convert", "from_hf", hf_dir, "--out_dir", tmp_path / "native")
    weights = tmp_path / "native" / "lit_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        GPT.from_checkpoint(tmp_path / "native")


def test_a_file_or_a_broken_config_json_is_one_line(hf_llama, tmp_path, capsys):
    """`convert from_hf` of a file read the file as config.json, and a config.json that is not JSON was a
    JSONDecodeError traceback. A broken file in a snapshot of the hub cache says how to fetch it again: a plain
    `download` keeps a cached file (it used to say "download it again", which changed nothing)."""
    import shutil

    (tmp_path / "afile").write_text("")
    assert cli_error(capsys, "convert", "from_hf", tmp_path / "afile", "--out_dir", tmp_path / "out") == (
        f"error: {tmp_path / 'afile'} is not a folder: give the Hugging Face checkpoint folder (config.json and the weights)")
    bad = tmp_path / "badjson"
    shutil.copytree(hf_llama[0], bad)
    (bad / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],\n')
    assert cli_error(capsys, "convert", "from_hf", bad, "--out_dir", tmp_path / "out") == (
        f"error: {bad / 'config.json'} is not valid JSON (Expecting property name enclosed in double quotes: line 2 column 1"
        " (char 40)): download the checkpoint again")
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(bad, snapshot)
    fix = "fetch it again with `litgpt-clone download acme/tiny --force_download true`"
    assert cli_error(capsys, "convert", "from_hf", snapshot, "--out_dir", tmp_path / "out").endswith(f"(char 40)): {fix}")
    shutil.copy(hf_llama[0] / "config.json", snapshot / "config.json")
    (snapshot / "model.safetensors").write_bytes(b"\0" * 64)  # corrupt, as a cached blob can be
    line = cli_error(capsys, "convert", "from_hf", snapshot, "--out_dir", tmp_path / "out")
    assert line.startswith(f"error: {snapshot / 'model.safetensors'} is corrupt or truncated (") and line.endswith(f": {fix}")
    assert not (tmp_path / "out").exists()


def test_to_hf_checks_the_weights_against_model_config_yaml(hf_llama, tmp_path, capsys):
    """A model_config.yaml that does not fit the weights beside it fails `to_hf` with the line from_hf and
    GPT.from_checkpoint give, before anything is written (it was a split_with_sizes traceback)."""
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint

    native = convert_hf_checkpoint(hf_llama[0], tmp_path / "native")
    config = Config.from_checkpoint(native)
    (native / "model_config.yaml").write_text(Config.from_dict({**config.to_dict(), "n_query_groups": 4}).to_yaml())
    assert cli_error(capsys, "convert", "to_hf", native, "--out_dir", tmp_path / "hf") == (
        f"error: {native / 'lit_model.safetensors'} does not match model_config.yaml: weights do not fit the LlamaForCausalLM"
        " config: wrong shape ['transformer.h.0.attn.qkv.weight', 'transformer.h.1.attn.qkv.weight']")
    assert not (tmp_path / "hf").exists()
    # loading it was a page of load_state_dict's size mismatches (a convert killed between its two files leaves this)
    with pytest.raises(CheckpointError) as err:
        GPT.from_checkpoint(native)
    assert str(err.value) == (f"{native}/lit_model.safetensors does not match model_config.yaml: wrong shape"
                              " ['transformer.h.0.attn.qkv.weight', 'transformer.h.1.attn.qkv.weight']")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    line = one_line_error(cli("convert", "from_hf", tmp_path, check=False))
    assert "BertForMaskedLM" in line and "LlamaForCausalLM" in line


def test_missing_checkpoint_names_expected_files(tmp_path):
    with pytest.raises(CheckpointError, match="model_config.yaml"):
        GPT.from_checkpoint(tmp_path / "nowhere")
    line = one_line_error(cli("convert", "to_hf", tmp_path / "nowhere", "--out_dir", tmp_path / "x", check=False))
    assert "model_config.yaml" in line


def test_values_the_parser_rejects_are_one_line_naming_the_flag_and_what_it_takes(tmp_path, capsys):
    """jsonargparse's own verdicts (a value outside a Literal, a word for a number, a missing argument, an unknown
    flag) were a page of usage and a message over several lines; now one line with the flag, the value, what it
    takes and which --help lists the options."""
    from litgpt_clone.__main__ import main

    cases = [
        (["finetune", "lora", str(tmp_path), "--strategy", "foo"],
         "error: --strategy foo: use one of auto, ddp, fsdp (`litgpt-clone finetune lora --help` lists the options)"),
        (["pretrain", "pythia-14m", "--precision", "8-true"],  # Optional[Literal]: jsonargparse lists the Union's errors
         "error: --precision 8-true: use one of bf16-mixed, bf16-true, 16-mixed, 32-true (`litgpt-clone pretrain --help` lists the options)"),
        (["generate", str(tmp_path), "--max_new_tokens", "many"],
         "error: --max_new_tokens many: expected an int (`litgpt-clone generate --help` lists the options)"),
        (["download"], "error: the following arguments are required: download.repo_id (`litgpt-clone download --help` lists the options)"),
        (["models", "--family", "x"], "error: unrecognized arguments: --family x (`litgpt-clone models --help` lists the options)"),
    ]
    for args, expected in cases:
        assert cli_error(capsys, *args) == expected
    with pytest.raises(SystemExit) as err:
        main(["finetune", "lora", "--help"])
    assert err.value.code == 0 and "--lora.r" in capsys.readouterr().out


def test_converting_into_the_folder_it_reads_is_refused_and_changes_nothing(hf_llama, tmp_path, capsys):
    """Converting into the folder being read would leave both formats in one folder under one config.json; both
    commands stopped half-way on a SameFileError traceback from a file copy instead."""
    import shutil

    hf_dir = tmp_path / "hf"
    shutil.copytree(hf_llama[0], hf_dir)
    cli("convert", "from_hf", hf_dir, "--out_dir", tmp_path / "native")
    for command, folder in (("from_hf", hf_dir), ("to_hf", tmp_path / "native")):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert cli_error(capsys, "convert", command, folder, "--out_dir", f"{folder}/") == (
            f"error: convert {command} would write into {folder}, the folder it reads: give --out_dir another folder")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_out_dir_that_cannot_be_written_is_one_line_before_any_work(hf_llama, tmp_path, capsys):
    """An --out_dir inside a file (or a folder the user may not write) failed with an OSError traceback after the
    conversion had read the weights; a --out_dir the kernel refuses (root may not create folders in /sys either) is
    one line too."""
    (tmp_path / "notes.txt").write_text("a file")
    assert cli_error(capsys, "convert", "from_hf", hf_llama[0], "--out_dir", tmp_path / "notes.txt" / "native") == (
        f"error: --out_dir {tmp_path / 'notes.txt' / 'native'} cannot be created: {tmp_path / 'notes.txt'} is a file")
    proc = cli("convert", "from_hf", hf_llama[0], "--out_dir", "/sys/kernel/litgpt_clone_test", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "/sys/kernel" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # the line names the flag, and comes before any work (download fetched the model first); as root the kernel
    # refuses what the permission bits allow, which only creating the folder finds out (and it is removed again)
    for command in (["convert", "from_hf", hf_llama[0]], ["download", "acme/tiny"]):
        line = cli_error(capsys, *command, "--out_dir", "/proc/litgpt_clone_test/native")
        assert line in ("error: --out_dir /proc/litgpt_clone_test/native cannot be created (No such file or directory): give a folder you"
                        " can write to", "error: --out_dir /proc/litgpt_clone_test/native is not writable (/proc denies it): give a folder"
                        " you can write to"), line
    from litgpt_clone.config import check_out_dir

    check_out_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()


def test_export_carries_the_special_token_ids_and_no_stale_tokenizer_files(hf_llama, tmp_path):
    """config.json of an export names bos/eos/pad ids as the original did (transformers' generate ran past EOS when the
    export had no generation_config.json), and converting into a folder that holds another conversion leaves none of
    its tokenizer files (a stale chat_template.jinja was read before the new tokenizer_config.json's template)."""
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint

    hf_dir, _ = hf_llama
    original = json.loads((hf_dir / "config.json").read_text())
    native = convert_hf_checkpoint(hf_dir, tmp_path / "native")
    exported = json.loads((convert_to_hf_checkpoint(native, tmp_path / "hf") / "config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"]) == (original["bos_token_id"], original["eos_token_id"]) == (1, 2)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").generation_config.eos_token_id in ([1, 2], 2)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((hf_dir / name).read_bytes())
    (native / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")  # as Qwen 3 ships its template
    convert_to_hf_checkpoint(native, tmp_path / "hf")
    assert (tmp_path / "hf" / "chat_template.jinja").is_file()
    convert_hf_checkpoint(other, tmp_path / "native")  # another model, with no tokenizer or generation files
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == ["config.json", "lit_model.safetensors", "model_config.yaml"]


def test_snapshot_default_out_dir_and_a_native_folder_without_its_config(hf_llama, tmp_path):
    """`convert from_hf <hub cache snapshot>` wrote to checkpoints/<commit sha>; a native folder that lost
    model_config.yaml was called a Hugging Face folder, with advice (convert from_hf) that then failed."""
    import shutil

    snapshot = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(hf_llama[0], snapshot)
    assert cli("convert", "from_hf", snapshot, cwd=tmp_path).stdout == "native checkpoint written to checkpoints/acme/tiny-llama\n"
    native = tmp_path / "checkpoints" / "acme" / "tiny-llama"
    (native / "model_config.yaml").unlink()
    proc = cli("generate", native, "--prompt", "Hi", check=False)
    assert proc.returncode == 2 and proc.stderr == f"error: {native} holds native weights but no model_config.yaml: put back the model_config.yaml written with them\n"


def test_an_unknown_key_of_a_command_two_levels_down_is_named(tmp_path, capsys):
    """A recipe key that `finetune lora` or `evaluate tasks` does not take printed `error: 'finetune'`: jsonargparse
    looks the key up one level too high and reports the parent command's name. It names the key now, as the
    one-level commands' messages do."""
    (tmp_path / "f.yaml").write_text("checkpoint_dir: x\nlora:\n  rr: 2\n")
    (tmp_path / "e.yaml").write_text("checkpoint_dir: x\ntasks: x\nbatch_sizee: 2\n")
    (tmp_path / "g.yaml").write_text("num_sampels: 2\n")
    lora = "error: Group 'lora' does not accept option 'rr' (`litgpt-clone finetune lora --help` lists the options)"
    assert cli_error(capsys, "finetune", "lora", "--config", tmp_path / "f.yaml") == lora
    assert cli_error(capsys, "finetune", "--config", tmp_path / "f.yaml") == lora  # (finetune = finetune lora)
    assert cli_error(capsys, "evaluate", "tasks", "--config", tmp_path / "e.yaml") == (
        "error: Option 'batch_sizee' is not accepted (`litgpt-clone evaluate tasks --help` lists the options)"
    )
    assert cli_error(capsys, "generate", "x", "--config", tmp_path / "g.yaml") == (  # one level down: as it was
        "error: Subcommand 'generate' does not accept option 'num_sampels' (`litgpt-clone generate --help` lists the options)"
    )
    assert cli_error(capsys, "finetune", "lora", "x", "--lora.rr", "2") == (
        "error: unrecognized arguments: --lora.rr 2 (`litgpt-clone finetune lora --help` lists the options)"
    )


def test_litgpt_names_point_to_ours(tmp_path, capsys):
    """LitGPT's flags, recipe keys, commands and data modules that are called otherwise here were refused without
    naming ours (`unrecognized arguments: --lora_r 4`, `invalid choice`, a LitGPT `data:` block "expected a
    NoneType"); each names ours now, from one table. A flag with no counterpart, or one whose counterpart the command
    does not take, keeps the plain error; LitGPT's `merge_lora --checkpoint_dir` is accepted."""
    help_ = lambda command: f"(`litgpt-clone {command} --help` lists the options)"  # noqa: E731
    cases = [
        (["finetune", "lora", "x", "--train.lr_warmup_steps", "10"], "error: unrecognized arguments: --train.lr_warmup_steps 10 (did you "
         f"mean --train.warmup_steps? --train.lr_warmup_steps is LitGPT's name) {help_('finetune lora')}"),
        (["finetune", "lora", "x", "--lora_r", "4", "--lora_query", "true"], "error: unrecognized arguments: --lora_r 4 --lora_query true "
         "(did you mean --lora.r? --lora_r is LitGPT's name) (did you mean --lora.query? --lora_query is LitGPT's name) "
         f"{help_('finetune lora')}"),
        (["generate", "x", "--sys_prompt", "Be terse."], "error: unrecognized arguments: --sys_prompt Be terse. (did you mean --system? "
         f"--sys_prompt is LitGPT's name) {help_('generate')}"),
        (["merge_lora", "x", "--pretrained_checkpoint_dir", "y"], "error: unrecognized arguments: --pretrained_checkpoint_dir y (did you "
         f"mean --base? --pretrained_checkpoint_dir is LitGPT's name) {help_('merge_lora')}"),
        (["finetune", "lora", "x", "--train.max_time", "100"], f"error: unrecognized arguments: --train.max_time 100 {help_('finetune lora')}"),
        (["finetune", "lora", "x", "--eval.evaluate_example", "first"],
         f"error: unrecognized arguments: --eval.evaluate_example first {help_('finetune lora')}"),
        (["pretrain", "--lora_r", "4"], f"error: unrecognized arguments: --lora_r 4 {help_('pretrain')}"),  # no --lora there
        (["finetune_lora", "x"], "error: `litgpt-clone finetune_lora` is LitGPT's command: here it is `litgpt-clone finetune lora`"),
        (["finetune_adapter", "x"], "error: `litgpt-clone finetune_adapter` is LitGPT's command: here it is `litgpt-clone finetune adapter`"),
        (["convert_to_litgpt", "x"], "error: `litgpt-clone convert_to_litgpt` is LitGPT's command: here it is `litgpt-clone convert from_hf`"),
        (["convert_from_litgpt", "x", "y"], "error: `litgpt-clone convert_from_litgpt` is LitGPT's command: here it is `litgpt-clone convert to_hf`"),
        (["download", "list"], "error: `litgpt-clone download list` is LitGPT's command: here it is `litgpt-clone models`"),
        # the data modules of a LitGPT recipe's data: block, or given by class path
        (["pretrain", "--data", "litgpt.data.TextFiles"], "error: unknown data module litgpt.data.TextFiles: use text (--data text, "
         f"or `data: {{class_path: Text, init_args: {{...}}}}` in a YAML) {help_('pretrain')}"),
    ]
    for args, expected in cases:
        assert cli_error(capsys, *args) == expected
    recipes = {
        "lora_r: 8\n": "error: Option 'lora_r' is not accepted (did you mean lora.r? lora_r is LitGPT's name)",
        "train:\n  lr_warmup_steps: 10\n": "error: Group 'train' does not accept option 'lr_warmup_steps' (did you mean "
                                           "train.warmup_steps? train.lr_warmup_steps is LitGPT's name)",
        "eval:\n  max_new_tokens: 10\n": "error: Group 'eval' does not accept option 'max_new_tokens'",
        "data:\n  class_path: litgpt.data.JSON\n  init_args:\n    json_path: data.json\n": "error: unknown data module "
            "litgpt.data.JSON: use json (--data json, or `data: {class_path: JSON, init_args: {...}}` in a YAML)",
        "data:\n  class_path: litgpt.data.Alpaca2k\n": "error: unknown --data litgpt.data.Alpaca2k: use one of alpaca, dolly, json, "
            "chat (in a YAML, class_path: Alpaca, Dolly, JSON, Chat)",
        "data: json\n": "error: unknown data module json: the short name is for the command line (--data json); write "
                        "`data: {class_path: JSON, init_args: {...}}` in a YAML",
    }
    for text, expected in recipes.items():
        (tmp_path / "recipe.yaml").write_text("checkpoint_dir: x\n" + text)
        assert cli_error(capsys, "finetune", "lora", "--config", tmp_path / "recipe.yaml") == f"{expected} {help_('finetune lora')}"
    # LitGPT's merge_lora names the LoRA folder checkpoint_dir, a flag as generate's is
    assert cli_error(capsys, "merge_lora", "--checkpoint_dir", tmp_path / "nope") == (
        f"error: {tmp_path / 'nope'} is not a LoRA checkpoint: expected {tmp_path / 'nope' / 'lora_config.yaml'} and lora.safetensors"
        " (`finetune lora`), or adapter_config.json and adapter_model.safetensors (PEFT)"
    )


def test_a_litgpt_checkpoint_says_how_to_bring_it_over_and_its_export_converts(hf_llama, tmp_path, capsys):
    """A LitGPT folder (lit_model.pth beside LitGPT's model_config.yaml) failed on LitGPT's config keys ("unknown
    model config keys [...] did you mean ..."), and the model.pth that `litgpt convert_from_litgpt` writes (the
    weights under Hugging Face names) was "no weights". Every command now says it is a LitGPT checkpoint and how to
    bring it over, and from_hf reads model.pth: the two steps it names give the Hugging Face model's logits."""
    from litgpt_clone import LLM

    hf_dir, hf_model = hf_llama
    lit = tmp_path / "lit"  # what `litgpt download` or a LitGPT finetune leaves
    lit.mkdir()
    (lit / "config.json").write_text((hf_dir / "config.json").read_text())
    (lit / "model_config.yaml").write_text("name: Llama-3.2-1B\ngelu_approximate: none\nlm_head_bias: false\n")
    torch.save({"transformer.wte.weight": torch.zeros(64, 32)}, lit / "lit_model.pth")
    expected = (
        f"error: {lit} is a LitGPT checkpoint (lit_model.pth): bring it over with `litgpt convert_from_litgpt {lit} {lit}` "
        f"(it writes model.pth, the weights under Hugging Face names), then `litgpt-clone convert from_hf {lit}`"
    )
    for command in (["generate", lit, "--prompt", "Hi"], ["chat", lit], ["serve", lit], ["finetune", "lora", lit], ["evaluate", lit, "--tasks", "x"],
                    ["convert", "to_hf", lit], ["convert", "from_hf", lit, "--out_dir", tmp_path / "n"]):
        assert cli_error(capsys, *command) == expected
    with pytest.raises(CheckpointError, match="is a LitGPT checkpoint"):
        LLM.load(lit)
    (lit / "config.json").unlink()
    assert cli_error(capsys, "generate", lit) == expected.replace(
        "Face names), then", f"Face names), put the model's config.json from its hub repo into {lit}, then"
    )
    # `litgpt convert_from_litgpt lit lit`, then from_hf
    (lit / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(load_file(hf_dir / "model.safetensors"), lit / "model.pth")
    cli("convert", "from_hf", lit, "--out_dir", tmp_path / "native")
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_checkpoint(tmp_path / "native")(idx), hf_model(idx).logits)
    (lit / "lit_model.pth").unlink()  # model.pth and config.json alone (convert_from_litgpt into a folder of its own)
    (lit / "model_config.yaml").unlink()
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint

    convert_hf_checkpoint(lit, tmp_path / "native2")
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_checkpoint(tmp_path / "native2")(idx), hf_model(idx).logits)
