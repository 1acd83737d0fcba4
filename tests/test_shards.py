"""Token shards: round trip, determinism, split, checksums."""

import json
from pathlib import Path

import numpy as np
import pytest

from litgpt_clone.data.shards import ShardError, ShardWriter, TokenShards


def write(path, docs, shard_tokens=10, vocab_size=100):
    with ShardWriter(path, vocab_size=vocab_size, eos_id=0, shard_tokens=shard_tokens) as w:
        for i, doc in enumerate(docs):
            w.add(doc, split="val" if i % 4 == 3 else "train")


def test_round_trip_determinism_and_checksums(tmp_path):
    docs = [list(range(1, 1 + (i * 7) % 13 + 1)) for i in range(20)]
    write(tmp_path / "a", docs)
    write(tmp_path / "b", docs)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and len([s for s in manifest["shards"] if s["split"] == "train"]) > 1
    for shard in manifest["shards"]:  # byte-identical output for the same input
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (tmp_path / "b" / shard["file"]).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()

    train = TokenShards(tmp_path / "a", "train")
    expected = np.concatenate([d + [0] for i, d in enumerate(docs) if i % 4 != 3])
    assert len(train) == expected.size == sum(s["tokens"] for s in manifest["shards"] if s["split"] == "train")
    np.testing.assert_array_equal(train.read(0, len(train)), expected)
    np.testing.assert_array_equal(train.read(7, 15), expected[7:22])  # crosses a shard boundary
    assert len(TokenShards(tmp_path / "a", "val")) == sum(len(d) + 1 for i, d in enumerate(docs) if i % 4 == 3)

    victim = tmp_path / "a" / manifest["shards"][0]["file"]
    victim.write_bytes(bytes([victim.read_bytes()[0] ^ 0xFF]) + victim.read_bytes()[1:])
    with pytest.raises(ShardError, match="SHA-256"):
        TokenShards(tmp_path / "a")


def test_large_vocab_and_bad_ids(tmp_path):
    write(tmp_path / "big", [[70000, 1]], vocab_size=100_000)
    assert json.loads((tmp_path / "big" / "manifest.json").read_text())["dtype"] == "uint32"
    np.testing.assert_array_equal(TokenShards(tmp_path / "big").read(0, 3), [70000, 1, 0])
    with pytest.raises(ShardError, match="out of range"):
        write(tmp_path / "bad", [[5, 100]])
    with pytest.raises(ShardError, match="manifest.json"):
        TokenShards(tmp_path / "nothing")


def test_missing_shards_name_prepare_code_and_the_newest_corpus_version(tmp_path):
    """A folder without manifest.json: the error names the command that writes shards (`prepare code`) and, for the
    corpus folder that command prints (versions v1/, v2/, ... inside), the newest version to pass instead."""
    from litgpt_clone.data.pretrain import DataError, Shards

    with pytest.raises(ShardError) as err:
        TokenShards(tmp_path / "empty")
    assert str(err.value) == f"no token shards at {tmp_path / 'empty'}: expected {tmp_path / 'empty' / 'manifest.json'} (write them with `litgpt-clone prepare code`)"
    corpus = tmp_path / "code"
    for version in (1, 2, 10):  # v10 is newer than v2 (not a string sort)
        write(corpus / f"v{version}", [[1, 2, 3]])
    (corpus / "v11.partial").mkdir()  # a build in progress: no version yet
    with pytest.raises(DataError) as err:
        Shards(corpus).streams(tokenizer=None)
    assert str(err.value) == f"no token shards at {corpus}, which holds the versions `litgpt-clone prepare code` writes: pass the newest, {corpus / 'v10'}"


def test_fingerprint_is_the_token_streams(tmp_path):
    """``TokenShards.fingerprint``: the same for the same tokens wherever they are, another for other tokens or
    another split (what a resumed run compares with the one it was trained on)."""
    docs = [list(range(1, 1 + (i * 7) % 13 + 1)) for i in range(20)]
    write(tmp_path / "a", docs)
    write(tmp_path / "b", docs)
    write(tmp_path / "c", [[5, 5]] + docs[1:])
    a, b, c = (TokenShards(tmp_path / n) for n in "abc")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert c.fingerprint != a.fingerprint and TokenShards(tmp_path / "a", "val").fingerprint != a.fingerprint


# ------------------------------------------------------------------------------------------- pretrain data modules
@pytest.fixture
def eos_tokenizer(tmp_path_factory, monkeypatch):
    """A byte-level BPE whose EOS is "</s>" (id 1): "<|endoftext|>" is text to it, as to Llama's tokenizers; and a
    private data cache."""
    from test_sft_data import _tokenizer_folder

    from litgpt_clone.tokenizer import Tokenizer

    monkeypatch.setenv("LITGPT_CLONE_CACHE", str(tmp_path_factory.mktemp("cache")))
    return Tokenizer(_tokenizer_folder(tmp_path_factory.mktemp("tok") / "tok", None))


STORIES = ["Once upon a time, Tom had a red ball.\nHe was happy.", "Lily found a kite.", "The end of the day came."]


def stream(shards) -> list[int]:
    return shards.read(0, len(shards)).tolist() if shards is not None else []


def test_tinystories_splits_stories_and_ends_each_with_eos(tmp_path, eos_tokenizer):
    """The V2 files separate stories by "<|endoftext|>" lines: each story (stripped) is a document followed by the
    tokenizer's EOS, whether or not the tokenizer knows that string (it was one document, the separators trained as
    text: '<', '|', 'end', ...)."""
    from litgpt_clone.data.pretrain import TinyStories

    tok = eos_tokenizer
    assert tok.token_to_id("<|endoftext|>") is None and tok.eos_id == 1
    path = tmp_path / "TinyStoriesV2-GPT4-train.txt"
    path.write_text("\n<|endoftext|>\n".join(STORIES) + "\n")
    train, val = TinyStories(path).streams(tok)
    expected = [t for story in STORIES for t in [*tok.encode(story, bos=False).tolist(), 1]]
    assert stream(train) + stream(val) == expected and expected.count(1) == 3  # (the last 1% of tokens: validation)
    assert "<|endoftext|>" not in tok.decode(expected, skip_special_tokens=False)


def test_tinystories_folder_reads_the_train_and_valid_files_only(tmp_path, eos_tokenizer):
    """A local copy of the dataset repo: TinyStoriesV2-GPT4-train.txt is the training stream and -valid.txt the
    validation stream; the V1 files and the README are not data. A folder without the train file is one line."""
    from litgpt_clone.data.pretrain import DataError, TinyStories

    tok, repo = eos_tokenizer, tmp_path / "TinyStories"
    repo.mkdir()
    (repo / "TinyStoriesV2-GPT4-train.txt").write_text("\n<|endoftext|>\n".join(STORIES[:2]) + "\n")
    (repo / "TinyStoriesV2-GPT4-valid.txt").write_text(STORIES[2] + "\n<|endoftext|>\n")
    (repo / "TinyStories-train.txt").write_text("A V1 story.\n")
    (repo / "README.md").write_text("# Dataset card\n")
    train, val = TinyStories(repo).streams(tok)
    encode = lambda stories: [t for s in stories for t in [*tok.encode(s, bos=False).tolist(), 1]]  # noqa: E731
    assert stream(train) == encode(STORIES[:2]) and stream(val) == encode(STORIES[2:])

    (repo / "TinyStoriesV2-GPT4-train.txt").unlink()
    with pytest.raises(DataError) as err:
        TinyStories(repo).streams(tok)
    assert str(err.value) == f"no TinyStoriesV2-GPT4-train.txt in {repo}: pass that file, or the folder that holds it, as --data.path"


def test_text_folder_skips_the_runs_out_dir_and_the_cache(tmp_path, eos_tokenizer, monkeypatch):
    """``--data text --data.path .`` in a project folder that also holds the run's --out_dir and the tokenized cache:
    neither is data (``pretrain`` sets ``skip`` to its --out_dir); a data folder that is the --out_dir itself is one
    line."""
    from litgpt_clone.data.pretrain import DataError, Text

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "a.py").write_text("print('a')\n")
    (project / "notes.md").write_text("notes\n")
    for written in ("out/step-00000003/tokenizer_config.json", "out/logs/version_0/metrics.csv", "cache/text/x/manifest.json"):
        (project / written).parent.mkdir(parents=True, exist_ok=True)
        (project / written).write_text("{}\n")
    monkeypatch.setenv("LITGPT_CLONE_CACHE", str(project / "cache"))
    text = Text(project, val_fraction=0)
    text.skip = (project / "out",)
    assert text.files() == [project / "notes.md", project / "src" / "a.py"]
    train, _ = text.streams(eos_tokenizer)
    assert len(train) == len(eos_tokenizer.encode("notes\n", bos=False)) + len(eos_tokenizer.encode("print('a')\n", bos=False)) + 2
    text.skip = (project,)
    with pytest.raises(DataError, match=f"^--data.path {project} is where this run writes: give an --out_dir outside it"):
        text.files()
    inner = Text(project / "src")  # the data folder inside --out_dir: the run writes beside it
    inner.skip = (project,)
    assert inner.files() == [project / "src" / "a.py"]


def test_a_run_whose_out_dir_is_inside_the_data_resumes_on_the_same_stream(tmp_path):
    """`pretrain --data text --data.path proj --out_dir proj/out`, killed after its checkpoint at step 3 and resumed:
    the checkpoint's files (tokenizer.json, metrics.csv, ...) are not read as data, so the resumed run trains on the
    same tokens and repeats the uninterrupted run's losses (it trained on 57K more tokens of its own files)."""
    import shutil
    import sysconfig

    import yaml
    from test_pretrain import MODEL, losses, pretrain

    from litgpt_clone.demo import train_tokenizer

    setup = tmp_path / "setup"  # what test_pretrain's fixture holds: a tokenizer and the tiny model
    train_tokenizer(setup / "tok", [Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py"], vocab_size=512)
    (setup / "model.yaml").write_text(yaml.safe_dump(MODEL))
    project = tmp_path / "proj"
    shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / "json", project, ignore=shutil.ignore_patterns("__pycache__"))
    out = project / "out"
    args = ["--data.path", project, "--train.max_steps", "6", "--train.save_interval", "3", "--train.global_batch_size", "4",
            "--train.micro_batch_size", "4", "--train.max_seq_length", "32", "--eval.interval", "100"]
    first = pretrain(setup, out, *args)
    uninterrupted = losses(out)
    shutil.rmtree(out / "step-00000006")
    shutil.rmtree(out / "final")
    second = pretrain(setup, out, *args, "--resume", "auto")
    assert "resumed from" in second.stdout
    tokens = [line for line in first.stdout.splitlines() + second.stdout.splitlines() if "training tokens" in line]
    assert len(tokens) == 2 and tokens[0] == tokens[1], tokens
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6] and losses(out) == uninterrupted


def test_a_malformed_shard_folder_is_one_line(tmp_path):
    """Hand-made or damaged folders ended in a KeyError, TypeError, ValueError, JSONDecodeError or, for ids past the
    vocabulary, an IndexError mid-training (a device-side assert on a GPU): each is one ShardError naming the file."""
    import hashlib

    def broken(name, change):
        folder = tmp_path / name
        write(folder, [[1, 2, 3], [4, 5]], shard_tokens=100)
        manifest = json.loads((folder / "manifest.json").read_text())
        if change(folder, manifest) is not False:  # (False: the change wrote manifest.json itself)
            (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    def rewrite(folder, manifest, data: bytes):  # a shard with other bytes, its SHA-256 updated to match
        (folder / manifest["shards"][0]["file"]).write_bytes(data)
        manifest["shards"][0]["sha256"] = hashlib.sha256(data).hexdigest()

    cases = {
        "truncated": (lambda f, m: (f / "manifest.json").write_text('{"format": ') and False, r"manifest.json cannot be read \(JSONDecodeError: "),
        "no_eos": (lambda f, m: m.pop("eos_id"), r"manifest.json is malformed \(eos_id is None\): rebuild the dataset"),
        "dtype": (lambda f, m: m.update(dtype="uint16x"), r"malformed \(dtype is 'uint16x' \(not uint16 or uint32\)\)"),
        "odd": (lambda f, m: rewrite(f, m, b"\x01\x00\x02"), r"holds 3 bytes, not whole uint16 token ids: rebuild the dataset"),
        "past_vocab": (lambda f, m: rewrite(f, m, np.array([1, 700, 0], dtype=np.uint16).tobytes()), r"holds token id 700, past the manifest's vocab_size 100"),
    }
    for name, (change, message) in cases.items():
        folder = broken(name, change)
        with pytest.raises(ShardError, match=message):
            TokenShards(folder, "train")


def test_two_processes_tokenizing_the_same_text_both_get_the_cache_entry(tmp_path, eos_tokenizer):
    """Two runs (or the ranks of another node, with a cache of their own) tokenizing the same new data: the second's
    rename onto the entry the first wrote failed with "Directory not empty", a traceback per rank."""
    from litgpt_clone.data.pretrain import open_streams, tokenize_documents

    out = tmp_path / "cache" / "text" / "entry"
    out.parent.mkdir(parents=True)
    for _ in range(2):
        tokenize_documents(["one document", "and another"], eos_tokenizer, out, 0.0)
    train, _ = open_streams(out, cached=True)
    assert stream(train) == [*eos_tokenizer.encode("one document", bos=False).tolist(), eos_tokenizer.eos_id,
                             *eos_tokenizer.encode("and another", bos=False).tolist(), eos_tokenizer.eos_id]
    assert sorted(p.name for p in out.parent.iterdir()) == ["entry"]  # no .partial left
    (out / "manifest.json").write_text("{")  # a cache entry cut short (a full disk): the line says to delete it
    from litgpt_clone.data.pretrain import DataError

    with pytest.raises(DataError, match=rf"cannot be read .*: delete {out} \(a cache entry: the next run tokenizes the data again\)$"):
        open_streams(out, cached=True)


def test_text_folders_leave_hidden_folders_out_and_say_which_files_are_not_utf8(tmp_path, eos_tokenizer, capsys):
    """A project folder's .venv and .git were training data, NOTES.TXT was skipped for its upper-case suffix, and a
    Latin-1 file was trained as U+FFFD without a word."""
    from litgpt_clone.data.pretrain import Text

    for name, data in {".git/info.json": b"{}", ".venv/lib/site.py": b"x = 1", "NOTES.TXT": b"notes", "latin1.txt": "caf\u00e9".encode("latin-1"),
                       "main.py": b"print(1)"}.items():
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(data)
    text = Text(tmp_path / "data", val_fraction=0)
    assert [p.name for p in text.files()] == ["NOTES.TXT", "latin1.txt", "main.py"]
    text.streams(eos_tokenizer)
    assert capsys.readouterr().out == "note: 1 of 3 text files are not UTF-8 (latin1.txt): their undecodable bytes are read as U+FFFD\n"
