"""`litgpt_clone.checkpoints.download` against a local stand-in for the Hugging Face Hub (tests/hub_standin.py).

huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE into `huggingface_hub.constants` when it
is imported, so every download runs in a fresh interpreter whose environment is set with monkeypatch first.
An interpreter costs ~2 s (importing litgpt_clone imports torch), so calls that share an environment are batched
into one interpreter and interpreters with different environments run side by side.
"""

import hashlib
import re
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hub_standin import HubStandin

from litgpt_clone.checkpoints.download import select_files, weight_files

REPO_ROOT = Path(__file__).resolve().parents[1]

_RUNNER = r"""
import json, sys
from litgpt_clone.checkpoints.download import DownloadError, download
for kwargs in json.loads(sys.argv[1]):
    try:
        print(json.dumps({"path": str(download(**kwargs))}), flush=True)
    except DownloadError as e:
        print(json.dumps({"error": str(e)}), flush=True)
"""

TOKENIZER = {
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
    "tokenizer_config.json": b'{"bos_token": "<s>"}',
    "special_tokens_map.json": b'{"bos_token": "<s>", "eos_token": "</s>"}',
}


def _weights(tag: str, n: int = 3000) -> bytes:
    return hashlib.sha256(tag.encode()).digest() * (n // 32)


# ---------------------------------------------------------------------- environment and interpreters
def set_hf_env(monkeypatch, hf_home: Path, endpoint=None, offline=False, token=None) -> Path:
    """A clean Hugging Face environment in os.environ (no stray HF_* variables), for the next interpreter."""
    for key in list(os.environ):
        if key.startswith("HF_") or key in ("TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # a port nothing listens on unless a stand-in is running: the real hub is never contacted
    monkeypatch.setenv("HF_ENDPOINT", endpoint or "http://127.0.0.1:9")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(REPO_ROOT) not in paths:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), *filter(None, paths)]))
    return Path(hf_home)


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    """hf_env(endpoint=..., hf_home=..., offline=..., token=...) sets the environment; returns HF_HOME."""

    def set_env(endpoint=None, hf_home=tmp_path / "hf_home", offline=False, token=None):
        return set_hf_env(monkeypatch, hf_home, endpoint, offline, token)

    set_env()
    return set_env


def start_downloads(cwd: Path, *calls: dict) -> subprocess.Popen:
    """Run download(**call) for each call in one fresh interpreter, with os.environ as it is now."""
    return subprocess.Popen(
        [sys.executable, "-c", _RUNNER, json.dumps(list(calls))],
        cwd=cwd,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(proc: subprocess.Popen) -> list:
    """One {"path": ...} or {"error": ...} per call given to start_downloads."""
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{stdout}\n{stderr}"
    return [json.loads(line) for line in stdout.strip().splitlines()]


def snapshot_files(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def expect_snapshot(result: dict, hf_home: Path, hub: HubStandin, repo_id: str) -> Path:
    """The result is the snapshot folder of the hub's current commit, in the standard cache under HF_HOME."""
    assert "path" in result, result
    path = Path(result["path"])
    org, name = repo_id.split("/")
    assert path == hf_home / "hub" / f"models--{org}--{name}" / "snapshots" / hub.commit_sha(repo_id)
    return path


# ---------------------------------------------------------------------- file selection (no network)
def test_select_files_prefers_safetensors_and_skips_other_formats():
    files = [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja", "added_tokens.json", "README.md", ".gitattributes",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "consolidated.safetensors",
        "original/consolidated.00.pth", "original/params.json", "onnx/model.onnx", "onnx/model.safetensors",
        "model-q4.gguf", "training_args.bin",
    ]  # fmt: skip
    assert select_files(files) == sorted(
        [
            "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja", "added_tokens.json",
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        ]
    )  # fmt: skip
    bins = ["config.json", "vocab.json", "merges.txt", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "training_args.bin", "rng_state_0.bin", "original/consolidated.00.pth"]  # fmt: skip
    assert select_files(bins) == ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"]
    assert weight_files(["config.json", "consolidated.safetensors", "original/model.safetensors", "m.gguf"]) == []


def test_only_the_weights_convert_reads_are_selected():
    """Variants (model.fp16.safetensors), adapters and trainer state next to the weights are not fetched: convert
    (like transformers) reads model.safetensors, else the index and the shards it names."""
    extras = ["config.json", "model.safetensors", "model.fp16.safetensors", "adapter_model.safetensors", "pytorch_model.bin"]
    assert weight_files(extras) == ["model.safetensors"]
    sharded = ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors", "adapter_model.safetensors"]
    assert weight_files(sharded) == ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    # once the index is read, its shard names win, whatever they are
    assert weight_files(sharded, shards=["w-1.safetensors"]) == ["model.safetensors.index.json", "w-1.safetensors"]
    assert weight_files(["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "training_args.bin"]) == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert weight_files(["adapter_model.safetensors", "model.fp16.safetensors"]) == []


# ---------------------------------------------------------------------- online downloads, one interpreter
ST_REPO = {
    "config.json": b'{"model_type": "llama"}',
    "generation_config.json": b'{"do_sample": false}',
    **TOKENIZER,
    "model.safetensors": _weights("st"),
    "pytorch_model.bin": _weights("bin"),
    "original/consolidated.00.pth": _weights("pth"),
    "original/params.json": b"{}",
    "onnx/model.onnx": _weights("onnx"),
    "README.md": b"# card",
    ".gitattributes": b"*.safetensors filter=lfs",
}
BIN_REPO = {
    "config.json": b'{"model_type": "gpt2"}',
    "vocab.json": b"{}",
    "merges.txt": b"#version: 0.2",
    "pytorch_model.bin": _weights("bin"),
    "training_args.bin": b"trainer state",
    "flax_model.msgpack": _weights("flax"),
}


# shards named by the index (not model-*-of-*), next to fp16 variant shards and an adapter
INDEX = {"metadata": {}, "weight_map": {"a.weight": "weights-a.safetensors", "b.weight": "weights-b.safetensors"}}
SHARDED_REPO = {
    "config.json": b'{"model_type": "llama"}',
    **TOKENIZER,
    "model.safetensors.index.json": json.dumps(INDEX).encode(),
    "weights-a.safetensors": _weights("a"),
    "weights-b.safetensors": _weights("b"),
    "model.fp16-00001-of-00001.safetensors": _weights("fp16"),
    "adapter_model.safetensors": _weights("adapter"),
}

ESCAPE_INDEX = {"metadata": {}, "weight_map": {"a.weight": "weights-a.safetensors", "b.weight": "/home/victim/private/model.safetensors"}}
"""An index naming a file elsewhere on the user's disk: download fetched the rest, and convert read that file."""


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    """Download, with convert=False, a safetensors repo (also into an --out_dir, and by its registry name), a
    .bin-only repo, a sharded repo, a GGUF-only repo and a missing repo.

    The stand-in is stopped afterwards, so the cache under ``hf_home`` is also the warm cache of the offline test.
    """
    tmp = tmp_path_factory.mktemp("online")
    with pytest.MonkeyPatch.context() as mp, HubStandin(missing_status=404) as hub:
        hub.add_repo("acme/tiny-llama", {**ST_REPO, "model.fp16.safetensors": _weights("fp16"), "adapter_model.safetensors": _weights("ad")})
        hub.add_repo("acme/old-gpt", BIN_REPO)
        hub.add_repo("acme/sharded", SHARDED_REPO)
        hub.add_repo("acme/gguf-only", {"config.json": b"{}", "model-q4.gguf": _weights("gguf")})
        hub.add_repo("EleutherAI/pythia-14m", ST_REPO)
        hub.add_repo("acme/escape", {**SHARDED_REPO, "model.safetensors.index.json": json.dumps(ESCAPE_INDEX).encode()})
        hf_home = set_hf_env(mp, tmp / "hf_home", endpoint=hub.endpoint)
        calls = {
            "safetensors": dict(repo_id="acme/tiny-llama", convert=False),
            "bin": dict(repo_id="acme/old-gpt", convert=False, revision="main"),
            "sharded": dict(repo_id="acme/sharded", convert=False),
            "no_weights": dict(repo_id="acme/gguf-only", convert=False),
            "missing": dict(repo_id="acme/tiny-lama", convert=False),
            "local_dir": dict(repo_id="acme/old-gpt", convert=False, out_dir=str(tmp / "mycopy")),
            "registry_name": dict(repo_id="pythia-14m", convert=False),
            "escape": dict(repo_id="acme/escape", convert=False),
        }
        out = dict(zip(calls, results(start_downloads(tmp, *calls.values()))))
    assert not (tmp / "checkpoints").exists()  # convert=False converts nothing
    return hub, hf_home, out


# (1)
def test_downloads_only_safetensors_config_and_tokenizer(online):
    hub, hf_home, out = online
    path = expect_snapshot(out["safetensors"], hf_home, hub, "acme/tiny-llama")
    wanted = ["config.json", "generation_config.json", *TOKENIZER, "model.safetensors"]
    assert snapshot_files(path) == {name: ST_REPO[name] for name in wanted}
    # nothing else was even requested (not model.fp16.safetensors or adapter_model.safetensors either); the weights came from the "CDN", which never sees the Authorization header
    assert hub.requested_files("acme/tiny-llama") == set(wanted)
    assert [r.authorization for r in hub.requests if r.server == "cdn" and "acme/tiny-llama" in r.path] == [None]


# (2)
def test_bin_only_repo_downloads_the_bin(online):
    hub, hf_home, out = online
    path = expect_snapshot(out["bin"], hf_home, hub, "acme/old-gpt")
    wanted = ["config.json", "vocab.json", "merges.txt", "pytorch_model.bin"]
    assert snapshot_files(path) == {name: BIN_REPO[name] for name in wanted}


def test_sharded_repo_downloads_the_shards_its_index_names(online):
    hub, hf_home, out = online
    path = expect_snapshot(out["sharded"], hf_home, hub, "acme/sharded")
    wanted = ["config.json", *TOKENIZER, "model.safetensors.index.json", "weights-a.safetensors", "weights-b.safetensors"]
    assert snapshot_files(path) == {name: SHARDED_REPO[name] for name in wanted}
    assert hub.requested_files("acme/sharded") == set(wanted)  # not the fp16 shard, not the adapter


def test_convert_false_with_out_dir_downloads_into_it(online):
    """Like `hf download --local-dir`: the files are in --out_dir (huggingface_hub's own local_dir download, with its
    .cache/huggingface metadata), and that folder is printed."""
    hub, hf_home, out = online
    path = Path(out["local_dir"]["path"])
    assert path.name == "mycopy"
    files = {k: v for k, v in snapshot_files(path).items() if not k.startswith(".cache/")}
    assert files == {name: BIN_REPO[name] for name in ["config.json", "vocab.json", "merges.txt", "pytorch_model.bin"]}


def test_a_registry_name_downloads_its_repo(online):
    """`download pythia-14m` fetches EleutherAI/pythia-14m, as `generate pythia-14m` does (it was refused as not
    a repo id)."""
    hub, hf_home, out = online
    path = expect_snapshot(out["registry_name"], hf_home, hub, "EleutherAI/pythia-14m")
    assert (path / "model.safetensors").read_bytes() == ST_REPO["model.safetensors"]


def test_repo_without_weights_is_one_clear_line(online):
    hub, hf_home, out = online
    message = out["no_weights"]["error"]
    assert "no Hugging Face model weights" in message and "model-q4.gguf" in message and "\n" not in message
    assert hub.requested_files("acme/gguf-only") == set()
    assert not (hf_home / "hub" / "models--acme--gguf-only" / "snapshots").exists()


def test_an_index_naming_a_path_outside_the_repo_is_refused(online, tmp_path):
    """A hub repo's index is the repo author's: a shard named by an absolute or ../ path made download (then convert
    from_hf on the folder) read that local file into the checkpoint. Shards are plain file names beside the index."""
    hub, hf_home, out = online
    assert out["escape"] == {"error": (
        "acme/escape's model.safetensors.index.json names the shard '/home/victim/private/model.safetensors', which is not a "
        "file name beside it (a path elsewhere on this disk would be read into the checkpoint): use a checkpoint whose index "
        "names its own shard files")}
    assert hub.requested_files("acme/escape") == {"model.safetensors.index.json"}  # nothing fetched after the index
    from litgpt_clone.checkpoints.io import CheckpointError, hf_weight_files

    victim = tmp_path / "victim.safetensors"  # a file beside the folder: `convert from_hf` of a folder read it
    victim.write_bytes(_weights("victim"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "weights-a.safetensors").write_bytes(_weights("a"))
    for shard in ("../victim.safetensors", str(victim), "..", "sub/../../victim.safetensors"):
        index = {"weight_map": {"a.weight": "weights-a.safetensors", "b.weight": shard}}
        (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=rf"index.json names the shard {re.escape(repr(shard))}, which is not a file name beside it"):
            hf_weight_files(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "weights-a.safetensors"}}))
    assert hf_weight_files(tmp_path / "hf") == [tmp_path / "hf" / "weights-a.safetensors"]


def test_a_pickle_torch_refuses_names_what_it_refused_not_how_to_switch_the_check_off(tmp_path):
    """torch's message for a refused pickle opens with advice to retry with weights_only=False (which runs the file's
    code); the line names the refusal itself (an unsupported opcode or global) and the fix, safetensors."""
    import pickle

    from litgpt_clone.checkpoints.io import CheckpointError, torch_load

    with open(tmp_path / "legacy.bin", "wb") as f:  # a plain pickle (not torch's zip), protocol 4 as pickle.dump writes it
        pickle.dump({"x": 1}, f, protocol=4)
    torch.save({"payload": os.getcwd}, tmp_path / "zip.bin")
    for name, refused in (("legacy.bin", "Unsupported operand 149"), ("zip.bin", "GLOBAL posix.getcwd")):
        with pytest.raises(CheckpointError) as err:
            torch_load(tmp_path / name, "use a safetensors checkpoint", mmap=name == "zip.bin")
        line = str(err.value)
        assert line.startswith(f"{tmp_path / name} cannot be read safely (UnpicklingError: ") and refused in line, line
        assert line.endswith("): use a safetensors checkpoint") and "\n" not in line and "weights_only" not in line, line


# (4)
EXPECT_MISSING = "acme/tiny-lama was not found on the hub (check the spelling; private repos need --access_token)"


def test_missing_repo(online):
    message = online[2]["missing"]["error"]
    assert message.startswith(EXPECT_MISSING) and "\n" not in message


def test_missing_repo_through_the_cli_when_the_hub_says_401(hf_env, tmp_path):
    # the real hub answers 401 (not 404) to anonymous requests for unknown repos
    with HubStandin(missing_status=401) as hub:
        hf_env(endpoint=hub.endpoint)
        proc = subprocess.run(
            [sys.executable, "-m", "litgpt_clone", "download", "acme/tiny-lama", "--convert", "false"],
            cwd=tmp_path,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=120,
        )
    # one line on stderr, no traceback, exit status 2
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith(f"error: {EXPECT_MISSING}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert any(r.path.startswith("/api/models/acme/tiny-lama") for r in hub.requests)


def test_repo_without_config_is_refused_before_its_weights_download(hf_env, tmp_path):
    with HubStandin() as hub:
        hub.add_repo("acme/weights-only", {**TOKENIZER, "model.safetensors": _weights("w")})
        hf_env(endpoint=hub.endpoint)
        (result,) = results(start_downloads(tmp_path, dict(repo_id="acme/weights-only", convert=False)))
        assert result["error"] == ("acme/weights-only has no config.json at the top level: it is not a transformers checkpoint,"
                                   " which is what litgpt-clone converts")
        assert hub.requested_files("acme/weights-only") == set()


def test_an_out_dir_inside_a_file_is_refused_before_the_download(hf_env, tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    with HubStandin() as hub:
        hub.add_repo("acme/tiny-llama", ST_REPO)
        hf_env(endpoint=hub.endpoint)
        proc = subprocess.run([sys.executable, "-m", "litgpt_clone", "download", "acme/tiny-llama", "--out_dir", "notes.txt/llama"],
                              cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr == (
            f"error: --out_dir notes.txt/llama cannot be created: {tmp_path / 'notes.txt'} is a file\n"), proc.stderr
        assert hub.requests == []


def test_a_mistyped_local_folder_says_which_folders_are_there(hf_env, tmp_path):
    """`generate out/lorra` (meaning out/lora) reads as a repo id too: when the hub has no such repo (or cannot be
    reached) and out/ is a local folder, the line says what out/ holds, not only what the hub said."""
    (tmp_path / "out" / "lora").mkdir(parents=True)
    with HubStandin() as hub:
        hf_env(endpoint=hub.endpoint)
        proc = subprocess.run([sys.executable, "-m", "litgpt_clone", "generate", "out/lorra", "--prompt", "Hi"], cwd=tmp_path,
                              env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == (
        "error: no folder out/lorra (out holds lora), and out/lorra was not found on the hub (check the spelling; private repos"
        " need --access_token)\n"
    ), proc.stderr
    # without a network (the hub unreachable, offline) the line names the local folder first too: out/final of a run
    # killed before its end is the usual case
    for offline in (False, True):
        hf_home = hf_env(offline=offline)
        proc = subprocess.run([sys.executable, "-m", "litgpt_clone", "generate", "out/final", "--prompt", "Hi"], cwd=tmp_path,
                              env=dict(os.environ), capture_output=True, text=True, timeout=120)
        reason = "HF_HUB_OFFLINE=1 and" if offline else "the hub at http://127.0.0.1:9 cannot be reached (ConnectError) and"
        fix = "download it once online, or unset HF_HUB_OFFLINE" if offline else "check your network and retry"
        assert proc.returncode == 2 and proc.stderr == (
            f"error: no folder out/final (out holds lora), and {reason} out/final is not in the cache at {hf_home / 'hub'}: {fix}\n"
        ), proc.stderr


def test_a_broken_cached_file_is_fetched_again(hf_env, tmp_path):
    """huggingface_hub returns a cached file unchecked, so a blob cut short stayed broken however often download
    ran (and the error said to download it again). A cached file whose size differs from the hub's listing is
    fetched again; one that is corrupt at the right size is replaced by --force_download."""
    weights = ST_REPO["model.safetensors"]
    with HubStandin() as hub:
        hub.add_repo("acme/tiny-llama", ST_REPO)
        hf_env(endpoint=hub.endpoint)
        call = dict(repo_id="acme/tiny-llama", convert=False)
        (first,) = results(start_downloads(tmp_path, call))
        cached = Path(first["path"]) / "model.safetensors"
        blob = cached.resolve()

        def cdn_gets() -> int:
            return sum(r.server == "cdn" and r.method == "GET" for r in hub.requests)

        blob.write_bytes(weights[:1000])  # truncated
        before = cdn_gets()
        assert results(start_downloads(tmp_path, call)) == [first]
        assert cached.read_bytes() == weights and cdn_gets() == before + 1

        blob.write_bytes(b"\0" * len(weights))  # corrupt, right size: kept by a plain download, replaced when forced
        before = cdn_gets()
        proc = start_downloads(tmp_path, call)
        assert results(proc) == [first] and cached.read_bytes() == b"\0" * len(weights) and cdn_gets() == before
        assert results(start_downloads(tmp_path, {**call, "force_download": True})) == [first]
        assert cached.read_bytes() == weights and cdn_gets() == before + 1


# ---------------------------------------------------------------------- (3) gated
def test_gated_repo_needs_the_token(hf_env, tmp_path):
    files = {"config.json": b"{}", **TOKENIZER, "model.safetensors": _weights("gated")}
    repo = dict(repo_id="acme/gated-7b", convert=False)
    with HubStandin() as hub:
        hub.add_repo("acme/gated-7b", files)
        hub.gate("acme/gated-7b", "hf_right")
        # no token, a wrong one, then the right one as --access_token
        home_a = hf_env(endpoint=hub.endpoint)
        with_arg = start_downloads(tmp_path, repo, {**repo, "access_token": "hf_wrong"}, {**repo, "access_token": "hf_right"})
        # the right token from HF_TOKEN, in another cache
        home_b = hf_env(endpoint=hub.endpoint, hf_home=tmp_path / "home_b", token="hf_right")
        with_env = start_downloads(tmp_path, repo)
        no_token, wrong_token, ok_arg = results(with_arg)
        (ok_env,) = results(with_env)

    for result in (no_token, wrong_token):
        message = result["error"]
        assert message.startswith("acme/gated-7b is gated: accept its license on https://huggingface.co/acme/gated-7b")
        assert "--access_token" in message and "HF_TOKEN" in message and "\n" not in message
    assert snapshot_files(expect_snapshot(ok_arg, home_a, hub, "acme/gated-7b")) == files
    assert snapshot_files(expect_snapshot(ok_env, home_b, hub, "acme/gated-7b")) == files
    # files were only served to the right token
    assert {r.authorization for r in hub.requests if r.method == "GET" and "/resolve/" in r.path} == {"Bearer hf_right"}
    resolves = [r for r in hub.requests if "/resolve/" in r.path]
    assert {r.authorization for r in resolves} == {None, "Bearer hf_wrong", "Bearer hf_right"}


# ---------------------------------------------------------------------- (5) offline
def test_offline_uses_the_warm_cache_and_explains_a_cold_one(online, hf_env, tmp_path):
    hub, hf_home, out = online  # the stand-in that served these downloads is stopped
    port = int(hub.endpoint.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    path = Path(out["safetensors"]["path"])
    before = snapshot_files(path)
    n_requests = len(hub.requests)

    hf_env(endpoint=hub.endpoint, hf_home=hf_home, offline=True)
    # warm: the snapshot downloaded online; cold: a repo this cache never saw; --force_download, which needs the hub
    offline = start_downloads(tmp_path, dict(repo_id="acme/tiny-llama", convert=False), dict(repo_id="acme/other", convert=False),
                              dict(repo_id="acme/tiny-llama", convert=False, force_download=True))
    # not offline, but the hub cannot be reached: the cached snapshot is used as well
    hf_env(endpoint=hub.endpoint, hf_home=hf_home)
    unreachable = start_downloads(tmp_path, dict(repo_id="acme/tiny-llama", convert=False))

    warm, cold, force = results(offline)
    assert warm == out["safetensors"]
    assert force["error"] == "HF_HUB_OFFLINE=1, and --force_download needs the hub"
    assert cold["error"] == (
        f"HF_HUB_OFFLINE=1 and acme/other is not in the cache at {hf_home / 'hub'}: "
        "download it once online, or unset HF_HUB_OFFLINE"
    )
    assert results(unreachable) == [out["safetensors"]]
    assert snapshot_files(path) == before and len(hub.requests) == n_requests


# ---------------------------------------------------------------------- (6) download + convert
def _tiny_llama_files(tmp_path: Path) -> dict:
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    out = tmp_path / "hf_model"
    transformers.LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 128)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_download_and_convert(hf_env, tmp_path):
    pytest.importorskip("litgpt_clone.checkpoints.convert", reason="the converter is not written yet")
    files = _tiny_llama_files(tmp_path)
    assert "model.safetensors" in files and "config.json" in files
    with HubStandin() as hub:
        hub.add_repo("acme/tiny-llama", files)
        hf_home = hf_env(endpoint=hub.endpoint)
        out_dir = tmp_path / "out" / "tiny"
        (result,) = results(start_downloads(tmp_path, dict(repo_id="acme/tiny-llama", out_dir=str(out_dir))))
        # a folder holding Hugging Face weights (`download --convert false --out_dir` there) is refused before any
        # request (convert refuses it: transformers would load those from it), not after the whole download
        held = tmp_path / "held"
        held.mkdir()
        (held / "model.safetensors").write_bytes(files["model.safetensors"])
        asked = len(hub.requests)
        from litgpt_clone.checkpoints.download import DownloadError, download

        with pytest.raises(DownloadError, match=rf"^{re.escape(str(held))}, where acme/tiny-llama's converted checkpoint goes, holds"
                           r" Hugging Face weights \(model.safetensors\)"):
            download("acme/tiny-llama", out_dir=held)
        assert len(hub.requests) == asked
        # another revision goes into a folder of its own (it replaced the main branch's conversion, which the repo id
        # then stood for), cast with --dtype as LitGPT's download does; the model is named after the repo
        sha = hub.commit_sha("acme/tiny-llama")
        (pinned, bad) = results(start_downloads(tmp_path, dict(repo_id="acme/tiny-llama", revision=sha, dtype="bfloat16"),
                                                dict(repo_id="acme/tiny-llama", dtype="int8")))
        assert bad == {"error": "--dtype int8: use one of float32, bfloat16, float16"}
    assert Path(result["path"]) == out_dir
    assert (out_dir / "lit_model.safetensors").is_file()
    assert (out_dir / "model_config.yaml").is_file()
    from safetensors.torch import load_file

    assert pinned["path"] == f"checkpoints/acme/tiny-llama@{sha}"
    weights = load_file(tmp_path / pinned["path"] / "lit_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16} and {t.dtype for t in load_file(out_dir / "lit_model.safetensors").values()} == {torch.float32}
    assert yaml.safe_load((tmp_path / pinned["path"] / "model_config.yaml").read_text())["name"] == "tiny-llama"
    # the Hugging Face files stay in the cache
    snapshot = hf_home / "hub" / "models--acme--tiny-llama" / "snapshots" / hub.commit_sha("acme/tiny-llama")
    assert (snapshot / "model.safetensors").read_bytes() == files["model.safetensors"]


# ---------------------------------------------------------------------- a repo id wherever a checkpoint goes
def test_repo_id_where_a_checkpoint_dir_goes(hf_env, tmp_path):
    """`convert to_hf <repo id>` downloads and converts into checkpoints/<repo id> once; later uses (also offline,
    with no hub at all) load that folder."""
    files = _tiny_llama_files(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "litgpt_clone", "convert", "to_hf", "acme/tiny-llama", "--out_dir", "exported"]
    with HubStandin() as hub:
        hub.add_repo("acme/tiny-llama", files)
        hf_env(endpoint=hub.endpoint)
        proc = subprocess.run(cmd, cwd=work, env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert (work / "checkpoints" / "acme" / "tiny-llama" / "model_config.yaml").is_file()
        assert (work / "exported" / "config.json").is_file()
        downloads = len(hub.requests)
    hf_env(offline=True)
    code = "from litgpt_clone import GPT; import torch; print(GPT.from_checkpoint('acme/tiny-llama')(torch.tensor([[1, 2, 3]])).shape)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "torch.Size([1, 3, 128])"
    assert len(hub.requests) == downloads
    # a conversion that lost its weights is converted again (from the cache: still offline), not reported as broken
    (work / "checkpoints" / "acme" / "tiny-llama" / "lit_model.safetensors").unlink()
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "torch.Size([1, 3, 128])", proc.stderr
    assert (work / "checkpoints" / "acme" / "tiny-llama" / "lit_model.safetensors").is_file()


def test_a_name_that_is_not_a_repo_id_is_one_line_before_any_request(tmp_path):
    """``download phi`` (a bare name, or a path) is not looked up on the hub at all: one line says what a repo id is."""
    from litgpt_clone.checkpoints.download import DownloadError, download

    for wrong in ("checkpoints/acme/tiny", "acme/", "acme/..", "EleutherAI/..", "../x", "acme/-x", "acme--x/y"):
        with pytest.raises(DownloadError) as err:
            download(wrong, out_dir=tmp_path / "out")
        assert str(err.value) == f"{wrong!r} is not a hub repo id: use <org>/<name>, e.g. meta-llama/Llama-3.2-1B"
    # a name the registry does not know (registry names download their repo): the closest repos of the registry
    with pytest.raises(DownloadError) as err:
        download("pythia-14", out_dir=tmp_path / "out")
    assert str(err.value) == ("'pythia-14' is not a hub repo id: use <org>/<name>, e.g. meta-llama/Llama-3.2-1B. Closest: "
                              "EleutherAI/pythia-14m, EleutherAI/pythia-1.4b, EleutherAI/pythia-1b, EleutherAI/pythia-31m, EleutherAI/pythia-12b.")
    assert not (tmp_path / "out").exists()


def test_a_revision_that_is_a_path_is_one_line_before_any_request(tmp_path, monkeypatch):
    """`--revision ../../x` made the default out_dir checkpoints/<repo>@../../x, a folder outside checkpoints/ (and
    `org/..` the folder checkpoints/org/..: "File exists"); git names no branch or tag so."""
    from litgpt_clone.checkpoints.download import DownloadError, download

    monkeypatch.chdir(tmp_path)
    for revision in ("../../x", "/etc", "v1/../../.."):
        with pytest.raises(DownloadError) as err:
            download("acme/tiny", revision=revision)
        assert str(err.value) == f"--revision {revision!r} is not a valid revision: use a branch, tag or commit hash"
    assert list(tmp_path.iterdir()) == []
