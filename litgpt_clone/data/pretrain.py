"""Data for pretraining: where token streams come from and how training windows are drawn from them.

Every data module turns its source into token shards (``litgpt_clone.data.shards``) once and hands back a train
and a validation stream. ``Windows`` cuts a stream into fixed windows and visits them in an order fixed by the seed,
so the sample at any global index is known without state: the data position in a checkpoint is a single number.

``--data text|shards|tinystories|openwebtext`` selects a module by its ``name``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from litgpt_clone.data.shards import ShardError, ShardWriter, TokenShards
from litgpt_clone.tokenizer import Tokenizer

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".html", ".tex")


class DataError(RuntimeError):
    """Missing, empty or unusable data; the message names the path and the fix."""


def check_val_fraction(val_fraction: float, of: str = "tokens") -> None:
    if not 0 <= val_fraction < 1:
        raise DataError(f"--data.val_fraction {val_fraction}: use a share of the {of} in [0, 1)")


def cache_root() -> Path:
    return Path(os.environ.get("LITGPT_CLONE_CACHE", Path.home() / ".cache" / "litgpt_clone"))


class DataModule:
    """A source of train and validation token streams for ``pretrain``.

    ``skip``: folders never read as data, set by ``pretrain`` to the run's own ``--out_dir`` (its checkpoints and
    logs must not become training data when it lies inside ``--data.path``). Not a flag: it is the run's, not the
    data's.
    """

    name = ""
    skip: tuple[Path, ...] = ()

    def streams(self, tokenizer: Tokenizer) -> tuple[TokenShards, Optional[TokenShards]]:
        raise NotImplementedError


# ----------------------------------------------------------------------------- modules
class Text(DataModule):
    """Plain text: one file, or every text file under a folder (each file one document). Tokenized once, cached."""

    name = "text"

    def __init__(self, path: Optional[Path] = None, val_fraction: float = 0.05) -> None:
        """
        Args:
            path: A text file or a folder of text files (.txt, .md, .py, ... in any case, searched recursively;
                hidden files and folders such as .git and .venv, the run's --out_dir and the tokenized cache are not
                read where they lie inside it). Bytes that are not UTF-8 are read as U+FFFD (the files are counted).
            val_fraction: Share of the tokens (the last ones) held out for validation.
        """
        check_val_fraction(val_fraction)
        self.path = Path(path) if path is not None else None
        self.val_fraction = val_fraction

    def files(self) -> list[Path]:
        """The text files, sorted; in a folder, none under ``skip`` or the tokenized cache (``cache_root``), which
        may lie inside it (``--data.path .`` in a project folder): a run's checkpoints, logs or cache read as text
        would change the data between a run and its resumption."""
        if self.path is None:
            raise DataError("--data text needs --data.path <file or folder of text files>")
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise DataError(f"no data at {self.path}: pass a text file or a folder of text files as --data.path")
        root = self.path.resolve()
        # (an --out_dir around the data folder writes beside the data, not into it: nothing to skip then)
        skip = [s for s in (Path(p).resolve() for p in (*self.skip, cache_root())) if s.is_relative_to(root)]
        if root in skip:
            raise DataError(f"--data.path {self.path} is where this run writes: give an --out_dir outside it (or in a subfolder of it)")
        files = sorted(  # (hidden files and folders, such as .git and .venv, are not data)
            p for p in root.rglob("*")
            if p.suffix.lower() in TEXT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.is_file() and (real := p.resolve()).is_relative_to(root) and not any(real.is_relative_to(s) for s in skip)
        )
        if not files:
            raise DataError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {self.path}")
        return files

    def streams(self, tokenizer: Tokenizer) -> tuple[TokenShards, Optional[TokenShards]]:
        files = self.files()
        out = cache_root() / "text" / files_key(files, tokenizer, f"{self.val_fraction}")
        if not (out / "manifest.json").is_file():
            tokenize_documents(read_texts(files), tokenizer, out, self.val_fraction)
        return open_streams(out, cached=True)


class Shards(DataModule):
    """Token shards written by ``prepare code`` (or any ``ShardWriter``)."""

    name = "shards"

    def __init__(self, path: Optional[Path] = None) -> None:
        """
        Args:
            path: A folder with manifest.json and its shards (e.g. ``data/code/v1``).
        """
        self.path = Path(path) if path is not None else None

    def streams(self, tokenizer: Tokenizer) -> tuple[TokenShards, Optional[TokenShards]]:
        if self.path is None:
            raise DataError("--data shards needs --data.path <folder with manifest.json>")
        train, val = open_streams(self.path)
        vocabulary = train.manifest.get("vocabulary_sha256")  # (older shards lack it: their vocab size and EOS must do)
        digest = tokenizer.vocabulary_digest()
        if train.eos_id not in tokenizer.stop_ids or train.vocab_size > tokenizer.vocab_size or vocabulary not in (None, digest):
            raise DataError(
                f"the shards in {self.path} were made with another tokenizer (vocab {train.vocab_size}, EOS {train.eos_id}"
                f"{f', vocabulary {vocabulary[:12]}' if vocabulary else ''}) than {tokenizer.checkpoint_dir} (vocab {tokenizer.vocab_size},"
                f" EOS {tokenizer.eos_id}, vocabulary {digest[:12]}): pass the same --tokenizer_dir"
            )
        return train, val


class TinyStories(DataModule):
    """TinyStories (roneneldan/TinyStories on the Hugging Face hub, the GPT-4 V2 files), downloaded once.

    The files separate stories by ``<|endoftext|>`` lines: each story is one document (its text stripped, then the
    tokenizer's EOS), as LitGPT's TinyStories module encodes them, whatever the tokenizer's own special tokens.
    """

    name = "tinystories"
    TRAIN, VALID, SEPARATOR = "TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt", "<|endoftext|>"

    def __init__(self, path: Optional[Path] = None) -> None:
        """
        Args:
            path: A local copy of TinyStoriesV2-GPT4-train.txt, or a folder holding it (and
                TinyStoriesV2-GPT4-valid.txt, the validation split, where it is there; no other file of the folder is
                read). Default: download the train file from the hub. Without the valid file the last 1% of the
                train file's tokens is the validation split.
        """
        self.path = Path(path) if path is not None else None

    def streams(self, tokenizer: Tokenizer) -> tuple[TokenShards, Optional[TokenShards]]:
        train, valid = self.path or hub_file("roneneldan/TinyStories", self.TRAIN, self.name), None
        if train.is_dir():
            train, valid = train / self.TRAIN, train / self.VALID
            if not train.is_file():
                raise DataError(f"no {self.TRAIN} in {self.path}: pass that file, or the folder that holds it, as --data.path")
            valid = valid if valid.is_file() else None
        elif not train.is_file():
            raise DataError(f"no file at {train}: pass {self.TRAIN} (or a folder holding it) as --data.path")
        files = [train, *([valid] if valid else [])]
        out = cache_root() / "tinystories" / files_key(files, tokenizer, "stories")
        if not (out / "manifest.json").is_file():
            tokenize_documents(self.stories(train), tokenizer, out, 0.01, self.stories(valid) if valid else None)
        return open_streams(out, cached=True)

    @classmethod
    def stories(cls, path: Path):
        """The stories of ``path``: the text between separators, stripped, read a line at a time (the train file is
        2 GB)."""
        lines = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                *ends, rest = line.split(cls.SEPARATOR)
                for end in ends:  # a separator closes the story
                    yield "".join([*lines, end]).strip()
                    lines = []
                lines.append(rest)
        yield "".join(lines).strip()


class OpenWebText(DataModule):
    """OpenWebText (Skylion007/openwebtext on the hub), through the ``datasets`` library, tokenized once."""

    name = "openwebtext"

    def __init__(self, path: Optional[Path] = None, val_fraction: float = 0.0005) -> None:
        """
        Args:
            path: A local folder of OpenWebText text files; default: download from the hub with ``datasets``.
            val_fraction: Share of the tokens held out for validation.
        """
        check_val_fraction(val_fraction)
        self.path = Path(path) if path is not None else None
        self.val_fraction = val_fraction

    def streams(self, tokenizer: Tokenizer) -> tuple[TokenShards, Optional[TokenShards]]:
        if self.path is not None:
            text = Text(self.path, self.val_fraction)
            text.skip = self.skip
            return text.streams(tokenizer)
        out = cache_root() / "openwebtext" / tokenizer.fingerprint()[:16]
        if not (out / "manifest.json").is_file():
            try:
                import datasets

                dataset = datasets.load_dataset("Skylion007/openwebtext", split="train")
            except Exception as err:  # offline, or the hub refused: say how to use a local copy
                raise DataError(
                    f"could not download openwebtext ({type(err).__name__}): point --data.path at a local folder of its text files"
                ) from err
            tokenize_documents((row["text"] for row in dataset), tokenizer, out, self.val_fraction)
        return open_streams(out, cached=True)


DATA_MODULES = {cls.name: cls for cls in (Text, Shards, TinyStories, OpenWebText)}


# ----------------------------------------------------------------------------- helpers
def hub_file(repo_id: str, filename: str, name: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset"))
    except Exception as err:  # offline, no network, or the hub refused
        raise DataError(
            f"could not download {filename} from {repo_id} ({type(err).__name__}): download it elsewhere and pass "
            f"--data {name} --data.path <local copy>"
        ) from err


def files_key(files: list[Path], tokenizer: Tokenizer, options: str) -> str:
    """The cache entry of ``files`` (names, sizes, modification times) tokenized with ``tokenizer`` and ``options``."""
    key = hashlib.sha256()
    for f in files:
        st = f.stat()
        key.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    key.update(tokenizer.fingerprint().encode() + f"|{options}".encode())
    return key.hexdigest()[:16]


def tokenize_documents(docs, tokenizer: Tokenizer, out: Path, val_fraction: float, val_docs=None) -> None:
    """Tokenize documents (EOS after each) into shards at ``out``; the last ``val_fraction`` of tokens is validation,
    or, when given, the documents ``val_docs``."""
    if tokenizer.eos_id is None:
        raise DataError(f"the tokenizer in {tokenizer.checkpoint_dir} has no EOS token to separate documents")
    eos = np.array([tokenizer.eos_id], dtype=np.int32)

    def stream(docs) -> np.ndarray:
        parts = [p for doc in docs for p in (tokenizer.encode(doc, bos=False).numpy().astype(np.int32), eos) if doc]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    train = stream(docs)
    if not train.size:
        raise DataError("the data is empty: no tokens after tokenization")
    if val_docs is not None:
        val = stream(val_docs)
    else:
        n_val = int(round(train.size * val_fraction))
        train, val = train[: train.size - n_val], train[train.size - n_val :]
    for stale in out.parent.glob(f"{out.name}.partial-*"):  # left by runs killed while writing, a day or more ago
        if time.time() - stale.stat().st_mtime > 86400:
            shutil.rmtree(stale, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)  # a folder of this process's own: others may tokenize the same data
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    with ShardWriter(tmp, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, extra={"source": "text", "vocabulary_sha256": tokenizer.vocabulary_digest()}) as writer:
        writer.add(train, split="train", eos=False)  # the stream carries its own EOS ids
        if val.size:
            writer.add(val, split="val", eos=False)
    try:
        os.replace(tmp, out)  # the cache entry appears complete or not at all
    except OSError:  # another process (a second run, the ranks of another node) wrote the same entry first: use that
        if not (out / "manifest.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def read_texts(files: list[Path]) -> Iterator[str]:
    """Each file's text; bytes that are not UTF-8 become U+FFFD, and the files that had such bytes are said once."""
    undecodable = []
    for f in files:
        data = f.read_bytes()
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError:
            undecodable.append(f.name)
            yield data.decode("utf-8", errors="replace")
    if undecodable:
        shown = ", ".join(undecodable[:3]) + (", ..." if len(undecodable) > 3 else "")
        print(f"note: {len(undecodable)} of {len(files)} text files are not UTF-8 ({shown}): their undecodable bytes are read as U+FFFD")


def open_streams(path: Path, cached: bool = False) -> tuple[TokenShards, Optional[TokenShards]]:
    """The train and validation streams of a shard folder; ``cached``: a cache entry of tokenized data, which the
    error for a broken one says to delete (the next run tokenizes the data again)."""
    fix = f"delete {path} (a cache entry: the next run tokenizes the data again)" if cached else "rebuild the dataset"
    try:
        train = TokenShards(path, "train", fix=fix)
        val = TokenShards(path, "val", fix=fix)
    except ShardError as err:
        raise DataError(str(err)) from err
    if len(train) == 0:
        raise DataError(f"no training tokens in {path}")
    return train, (val if len(val) else None)


class Windows:
    """Fixed windows of ``seq_length + 1`` tokens over a stream, visited in a seeded order, epoch after epoch."""

    def __init__(self, stream: TokenShards, seq_length: int, seed: int, shuffle: bool = True) -> None:
        self.stream, self.seq_length, self.seed, self.shuffle = stream, seq_length, seed, shuffle
        self.count = (len(stream) - 1) // seq_length
        if self.count == 0:
            raise DataError(f"{len(stream)} tokens are fewer than one sequence of {seq_length + 1}: lower --train.max_seq_length")
        self._epoch, self._order = -1, None

    @property
    def fingerprint(self) -> str:
        """What decides the window at each sample index: the stream's tokens, the window length, the order's seed.
        A resumed run compares it with the checkpoint's, whose data position means nothing on another stream."""
        return hashlib.sha256(f"{self.stream.fingerprint}|{self.seq_length}|{self.seed}|{self.shuffle}".encode()).hexdigest()

    def window(self, index: int) -> torch.Tensor:
        """The window at global sample ``index`` (wrapping into later epochs, each with its own order)."""
        epoch, pos = divmod(index, self.count)
        if self.shuffle:
            if epoch != self._epoch:
                self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.count)
            pos = int(self._order[pos])
        return torch.from_numpy(self.stream.read(pos * self.seq_length, self.seq_length + 1))

    def batch(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (size, seq_length) for samples ``start .. start + size``."""
        rows = torch.stack([self.window(start + i) for i in range(size)])  # (size, T + 1)
        return rows[:, :-1], rows[:, 1:]
