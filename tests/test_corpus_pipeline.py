"""``prepare code`` end to end on a mixed fixture (tests/corpus_fixture.py): counts per stage, metadata against git,
licenses, drop reasons, redaction, shards that decode back to the kept texts, determinism, resume after SIGKILL,
CHANGELOG between versions, opt-out exactness, the CLI."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import corpus_fixture as cf
from litgpt_clone.corpus.optout import OptOut
from litgpt_clone.corpus.pipeline import CorpusConfig, run
from litgpt_clone.data.shards import TokenShards, sha256_file
from litgpt_clone.tokenizer import Tokenizer

EXPECTED_STAGES = {  # stage: (files in, files out, drops by reason)
    "read": (32, 24, {"not_regular_file": 1, "symlink": 1, "symlink_loop": 3, "symlink_outside_root": 1, "too_large": 1, "unsafe_path": 1}),
    "decode": (24, 21, {"binary": 1, "empty": 1, "undecodable": 1}),
    "language": (21, 18, {"generated": 1, "vendor": 2}),
    "license": (18, 16, {"non_permissive": 2}),
    "optout": (16, 14, {"owner": 1, "repo": 1}),
    "filters": (14, 13, {"long_line": 1}),
    "decontaminate": (13, 12, {"benchmark": 1}),
    "pii": (12, 12, {}),
    "exact_dedup": (12, 11, {"exact_duplicate": 1}),
    "near_dedup": (11, 10, {"near_duplicate": 1}),
}
KEPT = {
    ("acme/secret-sauce", "main.py"), ("acme/widgets", "LICENSE"), ("acme/widgets", "src/app.py"),
    ("acme/widgets", "src/cafe.py"), ("acme/widgets", "src/util.py"), ("bundle", "hello.sh"), ("loose", "lib.rs"),
    ("loose", "main.go"), ("notevilcorp/y", "main.py"), ("pack", "pack.rb"),
}
DROPS = {  # (repo, path): (stage, reason)
    ("acme/widgets", "big.py"): ("read", "too_large"),
    ("acme/widgets", "logo.png"): ("decode", "binary"),
    ("acme/widgets", "blob.dat"): ("decode", "undecodable"),
    ("acme/widgets", "src/__init__.py"): ("decode", "empty"),
    ("acme/widgets", "node_modules/left/index.js"): ("language", "vendor"),
    ("acme/widgets", "dist/app.min.js"): ("language", "vendor"),
    ("acme/widgets", "proto/items_pb2.py"): ("language", "generated"),
    ("gplproj", "COPYING"): ("license", "non_permissive"),
    ("gplproj", "hello.c"): ("license", "non_permissive"),
    ("acme/secret", "main.py"): ("optout", "repo"),
    ("evilcorp/tool", "main.py"): ("optout", "owner"),
    ("acme/widgets", "src/wide.py"): ("filters", "long_line"),
    ("acme/widgets", "src/bench.py"): ("decontaminate", "benchmark"),
    ("loose", "util_copy.py"): ("exact_dedup", "exact_duplicate"),
    ("loose", "app_near.py"): ("near_dedup", "near_duplicate"),
    ("loose", "escape.py"): ("read", "symlink_outside_root"),
    ("loose", "sub/up"): ("read", "symlink_loop"),
    ("loose", "ping"): ("read", "symlink_loop"),
    ("loose", "pong"): ("read", "symlink_loop"),
    ("loose", "pipe"): ("read", "not_regular_file"),
    ("bundle", "link.sh"): ("read", "symlink"),
    ("pack", "../evil.py"): ("read", "unsafe_path"),
}
OUTPUTS = ("manifest.json", "files.jsonl", "text.jsonl", "CHANGELOG.md")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = cf.build(root / "src")
    tokenizer = cf.train_tokenizer(root / "tokenizer", [cf.APP, cf.UTIL, cf.GO, cf.RUST, cf.C, cf.SHELL, cf.RUBY, cf.MIT] * 4)
    return root, paths, tokenizer


def config_for(paths, tokenizer, **overrides) -> CorpusConfig:
    kwargs = dict(sources=cf.sources(paths), tokenizer_dir=str(tokenizer), optout=str(paths["optout"]),
                  decontaminate=[str(paths["bench"])], max_file_size=cf.MAX_FILE_SIZE, val_fraction=0.3, shard_tokens=300)
    kwargs.update(overrides)
    return CorpusConfig(**kwargs)


@pytest.fixture(scope="module")
def built(fixture):
    root, paths, tokenizer = fixture
    result = run(config_for(paths, tokenizer), root / "out_a", log=lambda _: None)
    records = [json.loads(line) for line in (result.version_dir / "files.jsonl").read_text().splitlines()]
    return result, {(r["repo"], r["path"]): r for r in records}


def test_counts_per_stage_and_drop_reasons(built):
    result, records = built
    stages = {s["stage"]: (s["files_in"], s["files_out"], s["dropped"]) for s in result.manifest["stages"]}
    assert stages == EXPECTED_STAGES
    assert {k for k, r in records.items() if r["drop_stage"] is None} == KEPT
    for key, (stage, reason) in DROPS.items():
        assert (records[key]["drop_stage"], records[key]["drop_reason"]) == (stage, reason), key
    assert records[("loose", "util_copy.py")]["duplicate_of"] == "acme/widgets/src/util.py"  # permissive copy kept
    assert records[("loose", "app_near.py")]["duplicate_of"] == "acme/widgets/src/app.py"
    assert result.manifest["empty_repositories"] == ["empty"]
    assert records[("acme/widgets", "src/bench.py")]["benchmark_match"].startswith("bench.jsonl:1 HumanEval/0: def has_close_elements")


def test_metadata_matches_git_and_sha1(built, fixture):
    _, paths, _ = fixture
    _, records = built
    head = cf.git(paths["acme"], "rev-parse", "HEAD").strip()
    for (repo, path), r in records.items():
        if repo == "acme/widgets" and r["blob_id"] is not None:
            data = (paths["acme"] / path).read_bytes()
            assert r["blob_id"] == hashlib.sha1(data).hexdigest()
            assert r["content_id"] == cf.git(paths["acme"], "hash-object", path).strip()
            assert (r["commit"], r["size"], r["source_kind"]) == (head, len(data), "git")
    loose = records[("loose", "main.go")]
    assert loose["content_id"] == cf.git(paths["loose"].parent, "hash-object", str(paths["loose"] / "main.go")).strip()
    assert loose["commit"] is None and loose["source_kind"] == "folder"
    assert records[("acme/widgets", "src/app.py")]["language"] == "Python"
    assert (records[("loose", "lib.rs")]["language"], records[("loose", "main.go")]["language"]) == ("Rust", "Go")
    assert (records[("pack", "pack.rb")]["language"], records[("bundle", "hello.sh")]["language"]) == ("Ruby", "Shell")
    assert records[("acme/widgets", "src/cafe.py")]["encoding"] not in ("utf-8", None)
    assert records[("acme/widgets", "node_modules/left/index.js")]["is_vendor"] is True
    assert records[("acme/widgets", "proto/items_pb2.py")]["is_generated"] is True


def test_licenses_propagate_and_classify(built):
    _, records = built
    for (repo, path), r in records.items():
        if r["license_type"] is None:
            continue
        if repo == "acme/widgets":
            assert (r["detected_licenses"], r["license_type"]) == (["MIT"], "permissive"), path
        elif repo == "gplproj":
            assert (r["detected_licenses"], r["license_type"]) == (["GPL-3.0-only"], "non_permissive"), path
        else:
            assert (r["detected_licenses"], r["license_type"]) == ([], "no_license"), (repo, path)


def test_redaction_and_shards_decode_to_kept_texts(built, fixture):
    result, records = built
    _, _, tokenizer_dir = fixture
    texts = [json.loads(line) for line in (result.version_dir / "text.jsonl").read_text().splitlines()]
    assert [(t["repo"], t["path"]) for t in texts] == sorted(k for k, r in records.items() if r["drop_stage"] is None)
    app = next(t["text"] for t in texts if t["path"] == "src/app.py")
    assert "<EMAIL>" in app and "jane.doe@acme-widgets.com" not in app
    assert app == cf.APP.replace("jane.doe@acme-widgets.com", "<EMAIL>")
    assert records[("acme/widgets", "src/app.py")]["pii"] == {"EMAIL": 1}
    assert not any("jane.doe@acme-widgets.com" in t["text"] for t in texts)

    tokenizer = Tokenizer(tokenizer_dir)
    manifest = result.manifest
    assert {s["split"] for s in manifest["shards"]} == {"train", "val"} and len(manifest["shards"]) > 2
    for shard in manifest["shards"]:
        assert sha256_file(result.version_dir / shard["file"]) == shard["sha256"]
    for split in ("train", "val"):
        stream = TokenShards(result.version_dir, split)  # what `pretrain --data shards` reads
        ids = stream.read(0, len(stream))
        ends = np.flatnonzero(ids == tokenizer.eos_id)
        docs = np.split(ids, ends + 1)[:-1]
        expected = [t["text"] for t in texts if t["split"] == split]
        assert [tokenizer.decode(d[:-1].tolist()) for d in docs] == expected
        assert [d[:-1].tolist() for d in docs] == [tokenizer.encode(t).tolist() for t in expected]  # the ids Tokenizer gives
        assert sum(records[(t["repo"], t["path"])]["tokens"] for t in texts if t["split"] == split) == len(stream)
    assert manifest["totals"]["tokens"] == sum(s["tokens"] for s in manifest["shards"])


def test_report_and_manifest(built):
    result, _ = built
    folder = result.version_dir
    for chart in ("languages.png", "licenses.png", "bytes_per_stage.png", "duplicate_clusters.png"):
        assert (folder / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.md").read_text()
    assert "| near_dedup | 11 | 10 |" in report and "EMAIL: 1" in report
    m = result.manifest
    assert m["corpus_version"] == 1 and m["previous_version"] is None and len(m["config_hash"]) == 64
    assert {"enry-python", "scancode", "tokenizers", "python"} <= set(m["tools"])
    assert m["outputs"]["files.jsonl"] == sha256_file(folder / "files.jsonl")
    assert not (folder / "stages").exists() and not list(folder.parent.glob("*.partial"))


def test_same_inputs_give_identical_bytes(built, fixture):
    root, paths, tokenizer = fixture
    result, _ = built
    again = run(config_for(paths, tokenizer), root / "out_b", workers=2, log=lambda _: None)  # and in 2 processes
    files = list(OUTPUTS) + [s["file"] for s in result.manifest["shards"]]
    for name in files:
        assert (again.version_dir / name).read_bytes() == (result.version_dir / name).read_bytes(), name


def test_resume_after_sigkill_matches_uninterrupted_run(built, fixture):
    root, paths, tokenizer = fixture
    result, _ = built
    out = root / "out_killed"
    (out / "cache").mkdir(parents=True)  # detections cached: the subprocess need not load ScanCode's index
    shutil.copy(root / "out_a" / "cache" / "license_detections.json", out / "cache")
    config = root / "killed.yaml"
    config.write_text(json.dumps(dict(
        sources=cf.sources(paths), out_dir=str(out), tokenizer_dir=str(tokenizer), optout=str(paths["optout"]),
        decontaminate=[str(paths["bench"])], max_file_size=cf.MAX_FILE_SIZE, val_fraction=0.3, shard_tokens=300)))
    cmd = [sys.executable, "-m", "litgpt_clone", "prepare", "code", "--config", str(config)]
    stderr = open(root / "killed.stderr", "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    read_dir = out / "v1.partial" / "stages" / "read"
    deadline = time.time() + 60
    while not list(read_dir.glob("*.jsonl")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before it was killed: {(root / 'killed.stderr').read_text()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "v1.partial").is_dir() and not (out / "v1").exists(), "the run finished before it was killed"
    done = {p.name for p in read_dir.glob("*.jsonl")}
    assert 0 < len(done) < 9  # killed between the first and the last repository
    finished = subprocess.run(cmd, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stdout and "--data shards --data.path" in finished.stdout
    assert not (out / "v1.partial").exists() and not (out / "v2").exists()
    for name in list(OUTPUTS) + [s["file"] for s in result.manifest["shards"]]:
        assert (out / "v1" / name).read_bytes() == (result.version_dir / name).read_bytes(), name


def test_changelog_and_optout_between_versions(tmp_path, fixture):
    _, paths, tokenizer = fixture
    src = tmp_path / "proj"
    src.mkdir()
    for name, text in {"a.py": "print('a')\n", "b.py": "print('b')\n", "c.go": cf.GO}.items():
        (src / name).write_text(text)
    sources = [str(src), str(paths["notevilcorp-y"]), str(paths["acme-secret-sauce"])]
    config = CorpusConfig(sources=sources)  # no tokenizer: no shards, said in the manifest
    first = run(config, tmp_path / "out", log=lambda _: None)
    assert first.manifest["shards"] == [] and first.manifest["format"] == "litgpt_clone.code_corpus"
    assert "First version: 5 files kept" in (first.version_dir / "CHANGELOG.md").read_text()
    (src / "b.py").unlink()
    (src / "d.py").write_text("print('d')\n")
    (src / "a.py").write_text("print('a, changed')\n")
    optout = tmp_path / "optout.jsonl"
    optout.write_text(json.dumps({"optout_owners": ["NotEvilCorp"], "optout_repos": []}) + "\n")
    second = run(CorpusConfig(sources=sources, optout=str(optout)), tmp_path / "out", log=lambda _: None)
    assert second.version_dir.name == "v2" and second.manifest["previous_version"] == 1
    log = (second.version_dir / "CHANGELOG.md").read_text()
    assert "Against v1: 4 files kept (v1: 5); 1 added, 2 removed, 1 changed." in log
    assert "## Added\n\n- proj/d.py\n" in log
    assert "- notevilcorp/y/main.py (dropped at optout: owner)" in log and "- proj/b.py (no longer in the sources)" in log
    assert "## Changed\n\n- proj/a.py\n" in log and "## Opted out\n\n- notevilcorp/y (1 file)\n" in log


def test_optout_removes_exactly_the_listed_names(built, tmp_path):
    _, records = built
    opted = {repo for (repo, _), r in records.items() if r["drop_stage"] == "optout"}
    assert opted == {"acme/secret", "evilcorp/tool"}  # acme/secret-sauce and notevilcorp/y stay
    registry = tmp_path / "o.jsonl"
    registry.write_text('{"optout_owners": ["Octo"], "optout_repos": ["acme/Secret"]}\n\n{"optout_repos": ["solo"]}\n')
    optout = OptOut.from_file(registry)
    verdicts = {name: optout.reason(name) for name in
                ["octo/x", "OCTO/y", "octo2/x", "xocto/x", "acme/secret", "acme/secret-sauce", "acme/secre", "acme/x", "solo", "octo"]}
    assert verdicts == {"octo/x": "owner", "OCTO/y": "owner", "octo2/x": None, "xocto/x": None, "acme/secret": "repo",
                        "acme/secret-sauce": None, "acme/secre": None, "acme/x": None, "solo": "repo", "octo": None}
    # a registry whose keys are misspelt would opt out nothing: refused, naming the line and what it has
    from litgpt_clone.corpus.optout import OptOutError

    registry.write_text('{"optout_owner": ["octo"]}\n')
    with pytest.raises(OptOutError, match=r"o.jsonl:1 is not an opt-out record \(unknown key 'optout_owner': the keys are optout_owners and optout_repos\)"):
        OptOut.from_file(registry)
    registry.write_text('{"optout_owners": [], "optout_repos": []}\n')
    with pytest.raises(OptOutError, match="opts out nothing"):
        OptOut.from_file(registry)


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    from litgpt_clone.__main__ import main

    with pytest.raises(SystemExit) as exit_help:
        main(["prepare", "code", "--help"])
    help_text = capsys.readouterr().out
    assert exit_help.value.code == 0
    assert "--filters.max_line_length" in help_text and "--license_policy" in help_text and "opt-out registry" in help_text
    with pytest.raises(SystemExit) as exit_bad:
        main(["prepare", "code", str(tmp_path / "nope"), "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_bad.value.code == 2 and err.startswith("error: source") and len(err.splitlines()) == 1
    # settings that would drop every file, fail after the whole pipeline, or name a missing file: one line at start
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("print('hi')\n")
    no_eos = cf.train_tokenizer(tmp_path / "no_eos", [cf.APP])  # failed after the whole build, with a traceback
    (no_eos / "tokenizer_config.json").write_text("{}")
    cases = [
        (["--languages", "[Pyhton]"], "error: --languages: 'Pyhton' is not a language GitHub Linguist knows (every file would be dropped)"),
        (["--languages", "[python]"], "error: --languages: 'python' is not a language GitHub Linguist knows (every file would be dropped): did you mean Python?"),
        (["--near_dedup_threshold", "1.5"], "error: --near_dedup_threshold 1.5: use a Jaccard similarity in [0, 0.997]"),
        (["--decontaminate", "[nonexist.jsonl]"], "error: --decontaminate: no file at nonexist.jsonl"),
        (["--layout", "owner/repo"], f"error: source {src} has no <owner>/<repo>/ folders, which --layout owner/repo reads"),
        (["--tokenizer_dir", str(no_eos)], f"error: the tokenizer in {no_eos} has no EOS token, which ends every document in the token shards"),
    ]
    for args, start in cases:
        with pytest.raises(SystemExit) as exit_bad:
            main(["prepare", "code", str(src), "--out_dir", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err.strip()
        assert exit_bad.value.code == 2 and err.startswith(start) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_one_build_at_a_time(tmp_path):
    from litgpt_clone.corpus.pipeline import CorpusError

    (tmp_path / "out").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.lockf(f, fcntl.LOCK_EX);"
                               " print('locked', flush=True); time.sleep(60)", str(tmp_path / "out" / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CorpusError, match="another prepare code is writing"):
            run(CorpusConfig(sources=[str(tmp_path)]), tmp_path / "out", log=lambda _: None)
    finally:
        holder.kill()
        holder.wait()


def test_token_ids_match_tokenizer_encode_with_and_without_bos(fixture, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.processors import TemplateProcessing

    from litgpt_clone.corpus.pipeline import token_ids

    _, _, tokenizer_dir = fixture
    hf = HFTokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    hf.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    texts = [cf.APP, cf.GO, "  leading spaces\n\tand tabs ünïcödé\r\n", ""]
    for folder, bos in ((tokenizer_dir, False), (tmp_path, True)):
        tokenizer = Tokenizer(folder)
        assert tokenizer.add_bos is bos
        for text in texts:
            ids = token_ids(tokenizer, text)
            assert ids.dtype == np.uint32 and ids.tolist() == tokenizer.encode(text).tolist()
        assert token_ids(tokenizer, "x").tolist()[:1] == ([tokenizer.bos_id] if bos else [tokenizer.token_to_id("x")])


def test_impossible_thresholds_and_worker_counts_are_one_line(tmp_path, capsys):
    """A negative line length or a fraction above 1 used to run (dropping every file, or none); 0 workers too."""
    from test_generate import cli_error

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    cases = [
        (["--filters.max_line_length", "-1"], "error: --filters.max_line_length is -1: it must be 1 or more"),
        (["--filters.min_alpha_fraction", "2"], "error: --filters.min_alpha_fraction is 2.0: it is a fraction, in [0, 1]"),
        (["--workers", "0"], "error: --workers 0: use 1 or more processes"),
    ]
    for args, expected in cases:
        assert cli_error(capsys, "prepare", "code", tmp_path / "src", "--out_dir", tmp_path / "out", *args) == expected
    assert not (tmp_path / "out").exists()


def test_near_dedup_thresholds_minhash_lsh_cannot_index_are_one_line(tmp_path, capsys):
    """0.998 to 1 passed the [0, 1] check, then datasketch raised "The number of bands are too small" after the read
    stage, leaving a vN.partial."""
    from test_generate import cli_error

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    for value in ("0.998", "1"):
        assert cli_error(capsys, "prepare", "code", tmp_path / "src", "--out_dir", tmp_path / "out", "--near_dedup_threshold", value) == (
            f"error: --near_dedup_threshold {float(value)}: use a Jaccard similarity in [0, 0.997]"
            " (above that MinHash-LSH over 256 permutations has fewer than two bands)")
    assert not (tmp_path / "out").exists()


def test_optout_registry_refuses_what_would_let_opted_out_code_in(tmp_path, capsys):
    """A misspelt key beside a valid one, entries that can never match, a JSON array and a non-UTF-8 file used to be
    accepted silently (or a traceback): each is one line before the build starts."""
    from test_generate import cli_error

    (tmp_path / "src" / "alice" / "lib").mkdir(parents=True)
    (tmp_path / "src" / "alice" / "lib" / "a.py").write_text("print(1)\n")
    registry = tmp_path / "o.jsonl"

    def error(text: str) -> str:
        registry.write_bytes(text.encode("latin-1"))
        return cli_error(capsys, "prepare", "code", tmp_path / "src", "--layout", "owner/repo", "--out_dir", tmp_path / "out", "--optout", registry)

    cases = [
        ('{"optout_owners": ["bob"], "optout_repo": ["alice/lib"]}', "unknown key 'optout_repo': the keys are optout_owners and optout_repos"),
        ('{"optout_owners": ["alice/lib"]}', "optout_owners entry 'alice/lib' has a '/': owners are names like octocat; put owner/repo names in optout_repos"),
        ('{"optout_owners": [null]}', "optout_owners entry null is not a name"),
        ('{"optout_repos": ["alice/lib/x"]}', "optout_repos entry 'alice/lib/x' is not an owner/repo name"),
        ('["bob"]', "it is an array, not a JSON object with optout_owners/optout_repos lists"),
    ]
    for text, problem in cases:
        assert error(text + "\n") == f"error: {registry}:1 is not an opt-out record ({problem}): fix or remove the line"
    assert error('{"optout_repos": ["lib"]}\n') == ("error: --optout: the optout_repos entry 'lib' can never match: with --layout"
                                                    " owner/repo every repository is named owner/repo; write it as <owner>/lib")
    assert error('{"optout_owners": ["b\xe9b"]}\n') == f"error: {registry} is not UTF-8 text (invalid continuation byte at byte 21): save it as UTF-8"
    assert not (tmp_path / "out").exists()


def test_out_dir_inside_a_source_is_not_read(tmp_path):
    """`prepare code . --out_dir corpus` read its own build stamp, lock, earlier versions and cache as corpus files,
    so every rebuild changed the corpus."""
    from litgpt_clone.corpus.sources import SourceError

    src = tmp_path / "proj"
    src.mkdir()
    (src / "a.py").write_text("print('a')\n")
    (src / "b.go").write_text(cf.GO)
    for version in (1, 2):
        result = run(CorpusConfig(sources=[str(src)]), src / "corpus", log=lambda _: None)
        paths = [json.loads(line)["path"] for line in (result.version_dir / "files.jsonl").read_text().splitlines()]
        assert (result.version_dir.name, paths, result.manifest["stages"][0]["files_in"]) == (f"v{version}", ["a.py", "b.go"], 2)
        assert not list((src / "corpus").glob(".v*.stages")) and not (result.version_dir / "stages").exists()
        (src / "corpus" / f".v{version}.stages" / "read").mkdir(parents=True)  # a build killed while deleting its stages
    assert "Against v1: 2 files kept (v1: 2); 0 added, 0 removed, 0 changed." in (result.version_dir / "CHANGELOG.md").read_text()
    tree = tmp_path / "tree"  # --layout owner/repo: the out_dir's vN and cache folders are not repositories
    (tree / "alice" / "lib").mkdir(parents=True)
    (tree / "alice" / "lib" / "a.py").write_text("print('a')\n")
    for _ in range(2):
        result = run(CorpusConfig(sources=[str(tree)], layout="owner/repo"), tree / "corpus", log=lambda _: None)
        assert [(r["repo"], r["path"]) for r in map(json.loads, (result.version_dir / "files.jsonl").read_text().splitlines())] == [("alice/lib", "a.py")]
    with pytest.raises(SourceError, match=r"^source .*proj is also the --out_dir: give an --out_dir outside it \(one inside a source is skipped when reading\)$"):
        run(CorpusConfig(sources=[str(src)]), src, log=lambda _: None)


def test_what_a_source_ships_in_the_out_dir_is_not_trusted(tmp_path):
    """`prepare code . --out_dir corpus` on a repository that ships corpus/: a `.lock` link made the build truncate the
    file it names, a `cache` link made it write where that points, and a license-detection cache there turned the
    repository's GPL into MIT (its files kept under the permissive policy). The committed corpus/ files were read as
    corpus files."""
    from litgpt_clone.corpus.licenses import license_parts, scancode_version
    from litgpt_clone.corpus.pipeline import CorpusError

    gpl = Path("/usr/share/common-licenses/GPL-3").read_text()
    forged = {hashlib.sha1(part.encode()).hexdigest(): ["MIT"] for part in license_parts({"COPYING": gpl}).values()}
    cache = {"corpus/cache/license_detections.json": json.dumps({"scancode": scancode_version(), "detections": forged,
                                                                 "categories": {"MIT": "Permissive"}})}
    repo = cf.git_repo(tmp_path / "proj", {"COPYING": gpl, "hello.c": cf.C, **cache})
    result = run(CorpusConfig(sources=[str(repo)]), repo / "corpus", log=lambda _: None)
    records = [json.loads(line) for line in (result.version_dir / "files.jsonl").read_text().splitlines()]
    assert [(r["path"], r["detected_licenses"], r["drop_reason"]) for r in records] == [
        ("COPYING", ["GPL-3.0-only"], "non_permissive"), ("hello.c", ["GPL-3.0-only"], "non_permissive")]

    victim, elsewhere, src = tmp_path / "victim.txt", tmp_path / "elsewhere", tmp_path / "src"
    victim.write_text("precious\n")
    elsewhere.mkdir()
    (src / "corpus" / "v1.partial").mkdir(parents=True)
    (src / "a.py").write_text("print('a')\n")
    for link, target in [(".lock", victim), ("cache", elsewhere), ("v1.partial/stages", elsewhere)]:
        (src / "corpus" / link).symlink_to(target)
        with pytest.raises(CorpusError) as err:
            run(CorpusConfig(sources=[str(src)]), src / "corpus", log=lambda _: None)
        assert str(err.value) == (f"{src / 'corpus' / link} is not a plain file or folder (a link, FIFO, socket or device):"
                                  " prepare code writes only into what it made in its --out_dir; delete it, or give another --out_dir")
        (src / "corpus" / link).unlink()
    assert victim.read_text() == "precious\n" and not list(elsewhere.iterdir())
    assert run(CorpusConfig(sources=[str(src)]), src / "corpus", log=lambda _: None).manifest["totals"]["kept"] == 1


def test_resume_starts_over_when_the_sources_changed(tmp_path, monkeypatch):
    """A build interrupted, then resumed after a new commit, mixed the old files' records with the new commit."""
    from litgpt_clone.corpus import pipeline

    repo = cf.git_repo(tmp_path / "g", {"core.py": "def one():\n    return 1\n"})
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.py").write_text("name = 'one'\n")
    config, out = CorpusConfig(sources=[str(repo), str(folder)]), tmp_path / "out"

    def interrupted_run() -> list[str]:
        logged = []
        with pytest.raises(RuntimeError, match="killed"):
            run(config, out, log=logged.append)
        return logged

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(pipeline, "dedup_stage", killed)  # interrupted after the read stage
    assert interrupted_run() == []
    assert interrupted_run() == [f"resuming {out / 'v1.partial'}"]
    changed = f"removing {out / 'v1.partial'}: the sources changed since it was started (new commits or changed files); starting over"
    (repo / "core.py").write_text("def one():\n    return 1\n\n\ndef added_after_kill():\n    return 42\n")
    cf.git(repo, "commit", "-qam", "two")
    assert interrupted_run() == [changed]
    (folder / "a.py").write_text("name = 'two'\n")  # same size
    os.utime(folder / "a.py", ns=(1, 1))
    assert interrupted_run() == [changed]
    # a partial build that came with a source (the out_dir inside it) has the right hashes, but not this user's seal
    stamp = out / "v1.partial" / "stages" / "config.json"
    stamp.write_text(json.dumps({k: v for k, v in json.loads(stamp.read_text()).items() if k != "seal"}))
    for chunk in (out / "v1.partial" / "stages" / "read").glob("*.jsonl"):
        chunk.write_text(chunk.read_text().replace("name = 'two'", "name = 'INJECTED'"))
    assert interrupted_run() == [f"removing {out / 'v1.partial'}: no build of this user started it (it came with a source or"
                                 " from elsewhere); starting over"]
    monkeypatch.undo()
    logged = []
    result = run(config, out, log=logged.append)
    assert logged == [f"resuming {out / 'v1.partial'}"]
    records = {r["path"]: r for r in map(json.loads, (result.version_dir / "files.jsonl").read_text().splitlines())}
    texts = {t["path"]: t["text"] for t in map(json.loads, (result.version_dir / "text.jsonl").read_text().splitlines())}
    head = cf.git(repo, "rev-parse", "HEAD").strip()
    assert records["core.py"]["commit"] == head and records["core.py"]["content_id"] == cf.git(repo, "rev-parse", "HEAD:core.py").strip()
    assert texts == {"core.py": "def one():\n    return 1\n\n\ndef added_after_kill():\n    return 42\n", "a.py": "name = 'two'\n"}


def test_empty_sources_and_empty_corpora_say_so(fixture, tmp_path, capsys):
    """An empty source built an empty v1 and suggested `pretrain`, which then failed with "no training tokens"."""
    from litgpt_clone.__main__ import main

    _, _, tokenizer = fixture
    (tmp_path / "empty").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "blank.py").write_text("\n")  # read, then dropped as empty
    for source, why in [("empty", "the sources have no files"), ("src", "every file was dropped (see the table above)")]:
        main(["prepare", "code", str(tmp_path / source), "--out_dir", str(tmp_path / "out"), "--tokenizer_dir", str(tokenizer)])
        out = capsys.readouterr().out
        assert out.splitlines()[-1] == f"nothing was kept: {why}, so there is nothing to train on"
        assert "next: litgpt-clone pretrain" not in out


def test_optout_is_recorded_for_repositories_dropped_earlier(tmp_path):
    """carol/notes' only file is dropped at language (no Linguist language), before the opt-out stage: the repository
    is still listed as opted out, in the CHANGELOG and in the manifest."""
    root = tmp_path / "src"
    for path, text in {"carol/notes/n.zzq": "some notes that are in no programming language\n",
                       "carol/tool2/main.py": "def h(x):\n    return x * 3 + 1\n", "dave/ok/main.py": "def k(x):\n    return x * 5 + 1\n"}.items():
        (root / path).parent.mkdir(parents=True)
        (root / path).write_text(text)
    registry = tmp_path / "optout.jsonl"
    registry.write_text('{"optout_owners": ["carol"]}\n')
    result = run(CorpusConfig(sources=[str(root)], layout="owner/repo", optout=str(registry)), tmp_path / "out", log=lambda _: None)
    records = {r["repo"]: r for r in map(json.loads, (result.version_dir / "files.jsonl").read_text().splitlines())}
    assert {repo: (r["drop_stage"], r["drop_reason"]) for repo, r in records.items()} == {
        "carol/notes": ("language", "unknown"), "carol/tool2": ("optout", "owner"), "dave/ok": (None, None)}
    assert "## Opted out\n\n- carol/notes (1 file)\n- carol/tool2 (1 file)\n" in (result.version_dir / "CHANGELOG.md").read_text()
    assert {r["name"]: r["optout"] for r in result.manifest["repositories"]} == {
        "carol/notes": "owner", "carol/tool2": "owner", "dave/ok": None}
