"""Token shards: the on-disk format ``pretrain --data shards`` reads and ``prepare code`` writes.

A dataset folder holds ``manifest.json`` and flat binary shards of token ids (``uint16`` when the vocabulary fits,
else ``uint32``), little-endian. Each document is its tokens followed by the EOS id, so a shard is a plain
concatenation readable with ``numpy.memmap``. The manifest lists each shard with its split, token and document
counts and SHA-256, plus the tokenizer facts a reader must agree with (vocab size, EOS id and, from the writers
here, ``vocabulary_sha256``: ``Tokenizer.vocabulary_digest``)::

    {"format": "litgpt_clone.token_shards", "version": 1, "dtype": "uint16", "eos_id": 0, "vocab_size": 2048,
     "shards": [{"file": "train-00000.bin", "split": "train", "tokens": 1048576, "documents": 812,
                 "sha256": "..."}], ...}

Shards and the manifest are written atomically (temporary name, then rename); the manifest last, so a folder
with a manifest is complete. Same documents in the same order give byte-identical shards and manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from litgpt_clone.checkpoints.io import write_atomic, write_atomic_text

FORMAT = "litgpt_clone.token_shards"
VERSION = 1


class ShardError(RuntimeError):
    """A dataset folder that cannot be read; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    return read_shard(path)[0]


def read_shard(path: Path, dtype: Optional[np.dtype] = None) -> tuple[str, int]:
    """The SHA-256 of a file and, with ``dtype``, the largest token id in it (-1 when empty), in one read."""
    h, largest, step = hashlib.sha256(), -1, (1 << 20) - (1 << 20) % (dtype.itemsize if dtype is not None else 1)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(step), b""):
            h.update(block)
            if dtype is not None and len(block) >= dtype.itemsize:
                largest = max(largest, int(np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize).max()))
    return h.hexdigest(), largest


class ShardWriter:
    """Append documents (lists of ids); a shard is closed every ``shard_tokens`` tokens (at a document boundary).

    ``with ShardWriter(out, vocab_size=..., eos_id=...) as w: w.add(ids, split="train")`` writes the manifest on exit.
    """

    def __init__(self, out_dir: Path, vocab_size: int, eos_id: int, shard_tokens: int = 1 << 24, extra: Optional[dict] = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
        self.vocab_size, self.eos_id, self.shard_tokens = vocab_size, eos_id, shard_tokens
        self.extra = extra or {}
        self.shards: list[dict] = []
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._counts: dict[str, list[int]] = {}  # split -> [tokens, documents] in the open buffer

    def add(self, ids: Iterable[int], split: str = "train", eos: bool = True) -> None:
        """Append one document and its EOS (``eos=False`` appends ids that already carry their separators)."""
        doc = np.concatenate([np.asarray(ids, dtype=np.int64).reshape(-1), [self.eos_id] if eos else []]).astype(np.int64)
        if doc.size and (doc.min() < 0 or doc.max() >= self.vocab_size):
            raise ShardError(f"token id out of range [0, {self.vocab_size}): the tokenizer does not match vocab_size")
        self._buffers.setdefault(split, []).append(doc.astype(self.dtype))
        counts = self._counts.setdefault(split, [0, 0])
        counts[0] += doc.size
        counts[1] += 1
        if counts[0] >= self.shard_tokens:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if not self._buffers.get(split):
            return
        data = np.concatenate(self._buffers.pop(split))
        tokens, documents = self._counts.pop(split)
        name = f"{split}-{sum(s['split'] == split for s in self.shards):05d}.bin"
        write_atomic(self.out_dir / name, lambda tmp: data.tofile(tmp))
        self.shards.append(dict(file=name, split=split, tokens=int(tokens), documents=int(documents), sha256=sha256_file(self.out_dir / name)))

    def close(self) -> dict:
        for split in sorted(self._buffers):
            self._flush(split)
        manifest = dict(
            format=FORMAT, version=VERSION, dtype=np.dtype(self.dtype).name, eos_id=self.eos_id, vocab_size=self.vocab_size,
            shards=self.shards, **self.extra,
        )
        write_atomic_text(self.out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return manifest

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()


def missing_shards(path: Path) -> str:
    """What to say for a folder without manifest.json; for the corpus folder of ``prepare code`` (versions ``v1/``,
    ``v2/``, ... inside), which version to pass instead."""
    versions = [int(p.name[1:]) for p in path.glob("v*") if p.name[1:].isdigit() and (p / "manifest.json").is_file()]
    if versions:
        return f"no token shards at {path}, which holds the versions `litgpt-clone prepare code` writes: pass the newest, {path / f'v{max(versions)}'}"
    return f"no token shards at {path}: expected {path / 'manifest.json'} (write them with `litgpt-clone prepare code`)"


DTYPES = ("uint16", "uint32")


def read_manifest(manifest_path: Path, fix: str) -> dict:
    """``manifest.json`` checked for what a reader relies on; a ShardError naming the file, the fault and ``fix``."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # (truncated by a full disk, say)
        raise ShardError(f"{manifest_path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:120]}): {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{manifest_path} is not a {FORMAT} manifest")
    shards = manifest.get("shards")
    fields = {"file": str, "split": str, "sha256": str}
    faults = [f"{key} is {manifest.get(key)!r:.40}" for key in ("eos_id", "vocab_size")
              if not isinstance(manifest.get(key), int) or isinstance(manifest.get(key), bool) or manifest.get(key) < 0]
    faults += [] if manifest.get("dtype") in DTYPES else [f"dtype is {manifest.get('dtype')!r:.40} (not {' or '.join(DTYPES)})"]
    if not isinstance(shards, list) or not all(isinstance(s, dict) and all(isinstance(s.get(k), t) for k, t in fields.items()) for s in shards):
        faults.append("shards is not a list of {file, split, sha256, ...} entries")
    if faults:
        raise ShardError(f"{manifest_path} is malformed ({'; '.join(faults)}): {fix}")
    return manifest


class TokenShards:
    """Memory-mapped shards of one split, as one long token stream. ``fix``: what the errors tell the user to do
    about a broken folder (a cache entry's reader says to delete it)."""

    def __init__(self, path: Path, split: str = "train", verify: bool = True, fix: str = "rebuild the dataset") -> None:
        self.path, self.split = Path(path), split
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise ShardError(missing_shards(self.path))
        self.manifest = read_manifest(manifest_path, fix)
        self.eos_id, self.vocab_size = self.manifest["eos_id"], self.manifest["vocab_size"]
        dtype = np.dtype(self.manifest["dtype"])
        self.arrays = []
        for shard in self.manifest["shards"]:
            if shard["split"] != split:
                continue
            file = self.path / shard["file"]
            if not file.is_file():
                raise ShardError(f"shard {file} listed in the manifest is missing: {fix}")
            if file.stat().st_size % dtype.itemsize:
                raise ShardError(f"shard {file} holds {file.stat().st_size} bytes, not whole {dtype.name} token ids: {fix}")
            if verify:  # (one read of the file for both)
                digest, largest = read_shard(file, dtype)
                if digest != shard["sha256"]:
                    raise ShardError(f"shard {file} does not match its SHA-256 in the manifest: it is corrupt; {fix}")
                if largest >= self.vocab_size:
                    raise ShardError(f"shard {file} holds token id {largest}, past the manifest's vocab_size {self.vocab_size}: {fix}")
            self.arrays.append(np.memmap(file, dtype=dtype, mode="r") if file.stat().st_size else np.zeros(0, dtype=dtype))
        self.offsets = np.cumsum([0] + [a.size for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of this split's shards as the manifest lists them (names, token counts, SHA-256): the same for
        the same token stream, wherever it is stored, so a resumed run can tell that its data changed."""
        shards = [[s["file"], s["tokens"], s["sha256"]] for s in self.manifest["shards"] if s["split"] == self.split]
        return hashlib.sha256(json.dumps([self.manifest["dtype"], shards]).encode()).hexdigest()

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream (crossing shard boundaries), as int64."""
        out, end = [], start + length
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < end and i < len(self.arrays):
            lo = start - int(self.offsets[i])
            take = min(end - start, self.arrays[i].size - lo)
            out.append(np.asarray(self.arrays[i][lo : lo + take], dtype=np.int64))
            start += take
            i += 1
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
