"""``prepare code``: repositories in, a versioned corpus folder out (metadata, redacted text, token shards, report).

Stages, in order (a dropped file keeps the first reason it got and skips the later stages)::

    read → decode → identity → language → license → optout → filters → decontaminate → pii
         → exact_dedup → near_dedup → tokenize (+ shards) → metadata → manifest → CHANGELOG → report

(identity, ``blob_id`` and ``content_id``, is computed for every file that was read, binary ones included.)

Work happens in ``out_dir/vN.partial/`` with a checkpoint per step, and the folder is renamed to ``vN`` at the end,
so a run that is killed resumes where it stopped when started again with the same configuration and the same
inputs (``inputs_digest``: git commits, archives' sizes and times, folders' file sizes and times); a partial build
of another configuration, or of sources that changed since, is removed and started over:

- ``stages/read/<repo>-<chunk>.jsonl``: the per-file stages (read … pii) for ``CHUNK_FILES`` files of a repository
  (files in the order they are read, ``read_chunks``, so chunk ``i`` always holds the same files); one atomic file
  per chunk.
- ``stages/dedup.json``: exact and near-duplicate decisions over the whole corpus.
- ``stages/shards.json``: the token shards' own manifest and each file's split and token count.

The ``out_dir`` may lie inside a source, whose files can then be in it: a build writes only into plain folders and
files there (``check_own``: a link or a FIFO in their place stops it), and trusts a partial build, and the license
detections of ``out_dir/cache/``, only when they carry this user's seal (``corpus.seal``).

Every output is sorted and carries no timestamps: same inputs and configuration give byte-identical
``manifest.json``, shards, ``files.jsonl`` and ``text.jsonl``, with any number of workers: ``workers`` forked
processes run the license detections, the per-file stages, the MinHash sketches and the tokenizer (``Workers``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import stat
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from litgpt_clone.checkpoints.io import write_atomic_text
from litgpt_clone.corpus import identity, language, licenses, seal
from litgpt_clone.corpus.optout import OptOut
from litgpt_clone.corpus.sources import FileEntry, Layout, Repository, open_sources

CHUNK_FILES = 256


class CorpusError(ValueError):
    """A ``prepare code`` input or state that cannot be used; the message says what to change."""
STAGES = ("read", "decode", "language", "license", "optout", "filters", "decontaminate", "pii", "exact_dedup", "near_dedup")
"""The stages that can drop a file, in order (identity and tokenize never drop one)."""


@dataclass
class CorpusConfig:
    """Everything that decides the output (the manifest stores it and its hash); ``workers`` is not part of it."""

    sources: list[str]
    layout: Layout = "repo"
    exclude: list[str] = field(default_factory=list)
    tokenizer_dir: Optional[str] = None
    optout: Optional[str] = None
    license_policy: licenses.LicensePolicy = "permissive"
    decontaminate: list[str] = field(default_factory=list)
    max_file_size: int = 1 << 20
    val_fraction: float = 0.01
    seed: int = 42
    languages: Optional[list[str]] = None
    keep_vendor: bool = False
    keep_generated: bool = False
    near_dedup_threshold: float = 0.7
    shard_tokens: int = 1 << 24
    filters: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from litgpt_clone.corpus.filters import FilterConfig

        self.filters = asdict(FilterConfig(**self.filters))  # every threshold spelled out, so equal configs hash equal

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    def digest(self) -> str:
        """SHA-256 of the configuration and of the contents of every file it names (opt-out, decontamination,
        tokenizer), so that an edited file is a different configuration."""
        h = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode())
        for path in file_inputs(self):
            h.update(path.encode() + b"\0" + bytes.fromhex(sha256_path(Path(path))))
        return h.hexdigest()


def sha256_path(path: Path) -> str:
    from litgpt_clone.data.shards import sha256_file

    return sha256_file(path)


def file_inputs(config: CorpusConfig) -> list[str]:
    """The files the configuration points at, whose contents change the output."""
    paths = list(config.decontaminate) + ([config.optout] if config.optout else [])
    if config.tokenizer_dir:
        from litgpt_clone.tokenizer import TOKENIZER_FILES

        paths += [str(Path(config.tokenizer_dir) / n) for n in TOKENIZER_FILES if (Path(config.tokenizer_dir) / n).is_file()]
    return sorted(paths)


# --------------------------------------------------------------------------- per-file stages
@dataclass
class RepoContext:
    """What the per-file stages know about the repository a file belongs to."""

    name: str
    kind: str
    commit: Optional[str]
    commit_time: Optional[int]
    licenses: dict  # RepositoryLicenses.by_folder
    categories: dict  # SPDX id -> ScanCode category
    optout: Optional[str]


_WORKER: dict = {}


def _init_worker(config: CorpusConfig) -> None:
    """Per process: the configuration, the filter thresholds and the decontamination index (the tokenizer is
    loaded on first use)."""
    from litgpt_clone.corpus.filters import FilterConfig

    _WORKER.clear()  # nothing from an earlier run in this process, e.g. another run's tokenizer
    _WORKER["config"] = config
    _WORKER["filters"] = FilterConfig(**config.filters)
    _WORKER["decontaminator"] = None
    if config.decontaminate:
        from litgpt_clone.corpus.decontam import Decontaminator

        _WORKER["decontaminator"] = Decontaminator.from_files(config.decontaminate)


def new_record(repo: RepoContext, entry: FileEntry) -> dict:
    return dict(
        repo=repo.name, path=entry.path, source_kind=repo.kind, commit=repo.commit, commit_time=repo.commit_time, size=entry.size,
        blob_id=None, content_id=None, encoding=None, language=None, language_type=None, is_vendor=None,
        is_generated=None, detected_licenses=[], license_type=None, pii={}, drop_stage=None, drop_reason=None,
        duplicate_of=None, benchmark_match=None, split=None, tokens=None,
    )


# Each stage sets its fields on the record and returns a drop reason or None; ``process_file`` chains them, and the
# datatrove steps (extensions/datatrove) call them one by one.
def identify(record: dict, data: bytes) -> None:
    record["size"], record["blob_id"], record["content_id"] = len(data), identity.blob_id(data), identity.content_id(data)


def decode_stage(record: dict, data: bytes) -> tuple[Optional[str], Optional[str]]:
    """``(text, None)``, or ``(None, "empty" | "binary" | "undecodable")``; empty: nothing but whitespace."""
    from litgpt_clone.corpus.filters import decode

    if not data.strip():
        return None, "empty"
    text, encoding = decode(data)
    if text is None:
        return None, encoding
    record["encoding"] = encoding
    return text, None


def language_stage(record: dict, data: bytes, config: CorpusConfig) -> Optional[str]:
    lang = language.detect(record["path"], data)
    record.update(language=lang.name, language_type=lang.type, is_vendor=lang.is_vendor, is_generated=lang.is_generated)
    if lang.name is None:
        return "unknown"
    if config.languages is not None and lang.name not in config.languages:
        return "not_selected"
    if lang.is_vendor and not config.keep_vendor:
        return "vendor"
    if lang.is_generated and not config.keep_generated:
        return "generated"
    return None


def license_stage(record: dict, repo: RepoContext, policy: licenses.LicensePolicy, text: Optional[str] = None) -> Optional[str]:
    """The licenses of the file's folders and, given its ``text``, of its own ``SPDX-License-Identifier`` lines."""
    inherited = licenses.RepositoryLicenses(repo.licenses, {}, repo.categories).for_path(record["path"])
    record["detected_licenses"] = licenses.file_licenses(inherited, licenses.declared_licenses(text) if text else ())
    record["license_type"] = licenses.license_type(record["detected_licenses"], repo.categories)
    return None if licenses.allowed(record["license_type"], policy) else record["license_type"]


def decontaminate_stage(record: dict, text: str, decontaminator) -> Optional[str]:
    record["benchmark_match"] = decontaminator.contaminated(text) if decontaminator is not None else None
    return "benchmark" if record["benchmark_match"] is not None else None


def pii_stage(record: dict, text: str) -> str:
    from litgpt_clone.corpus.pii import redact

    redacted, counts = redact(text)
    record["pii"] = dict(sorted(counts.items()))
    return redacted


def process_file(task: tuple) -> tuple[dict, Optional[str]]:
    """The per-file stages (read … pii) of one file: its metadata record and, if kept, its redacted text."""
    from litgpt_clone.corpus.filters import drop_reason

    repo, entry, data = task
    config, record = _WORKER["config"], new_record(repo, entry)

    def drop(stage: str, reason: str) -> tuple[dict, None]:
        record["drop_stage"], record["drop_reason"] = stage, reason
        return record, None

    if entry.skip or isinstance(data, OSError):
        return drop("read", entry.skip or f"unreadable:{data}")
    identify(record, data)
    text, reason = decode_stage(record, data)
    if reason:
        return drop("decode", reason)
    steps = (
        ("language", lambda: language_stage(record, data, config)),
        ("license", lambda: license_stage(record, repo, config.license_policy, text)),
        ("optout", lambda: repo.optout),
        ("filters", lambda: drop_reason(text, entry.path, record["language"], _WORKER["filters"])),
        ("decontaminate", lambda: decontaminate_stage(record, text, _WORKER["decontaminator"])),
    )
    for stage, step in steps:
        if reason := step():
            return drop(stage, reason)
    return record, pii_stage(record, text)


# --------------------------------------------------------------------------- the read stage, per repository
def _chunks(entries: list, size: int) -> Iterator[tuple[int, list]]:
    for start in range(0, max(len(entries), 1), size):
        yield start // size, entries[start : start + size]


def repo_key(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:16]


def _license_texts(repo: Repository) -> dict[str, str]:
    """The decoded texts of the repository's license and README files, by path (``--exclude``d ones too: leaving a
    file out of the corpus does not take its license away from the others)."""
    from litgpt_clone.corpus.filters import decode

    files = sorted(repo.entries + repo.excluded, key=lambda e: e.path)
    wanted = [e for e in files if not e.skip and licenses.license_text(e.path, "") is not None]
    texts = {}
    for entry, data in zip(wanted, repo.read(wanted)):
        if isinstance(data, bytes) and (text := decode(data)[0]) is not None:
            texts[entry.path] = text
    return texts


def _repo_context(repo: Repository, optout: Optional[OptOut], cache: licenses.DetectionCache,
                  texts: Optional[dict[str, str]] = None) -> RepoContext:
    """The repository's licenses (from ``texts``, default: its license files) and opt-out verdict."""
    found = licenses.RepositoryLicenses.detect(_license_texts(repo) if texts is None else texts, cache)
    cache.save()
    reason = optout.reason(repo.name) if optout else None
    return RepoContext(repo.name, repo.kind, repo.commit, repo.commit_time, found.by_folder, found.categories, reason)


def read_chunks(repo: Repository) -> Iterator[tuple[int, list[FileEntry]]]:
    """The repository's files in chunks of ``CHUNK_FILES``, in the order they are read (``Repository.read_order``:
    an archive's in member order, so that a compressed archive is decompressed once, not once per chunk)."""
    return _chunks([repo.entries[i] for i in repo.read_order()], CHUNK_FILES)


def _archive_order(repos: list[Repository]) -> list[Repository]:
    """The repositories of one archive in the order the archive holds them (the others as they are)."""
    return sorted(repos, key=lambda r: (r.source, min((e.offset or 0 for e in r.entries), default=0)))


def read_stage(repos: list[Repository], config: CorpusConfig, stage_dir: Path, cache: licenses.DetectionCache,
               workers: "Workers", progress=None) -> None:
    """Run the per-file stages over every repository, one checkpoint file per chunk of files.

    First the license texts of every repository still to do are detected, spread over the worker processes
    (ScanCode takes ~0.1-10 s a text; the cache answers the ones seen before)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    optout = OptOut.from_file(config.optout) if config.optout else None
    pending = []
    for repo in _archive_order(repos):
        chunks = [(i, c) for i, c in read_chunks(repo) if not (stage_dir / f"{repo_key(repo.name)}-{i:05d}.jsonl").exists()]
        if chunks:
            pending.append((repo, chunks, _license_texts(repo)))
    cache.detect_all((part for *_, texts in pending for part in licenses.license_parts(texts).values()),
                     workers.mapper(chunksize=1))
    cache.save()

    def write(name: str, size: int, results: Callable[[], list]) -> None:
        lines = [json.dumps({"record": r, "text": t}, sort_keys=True, ensure_ascii=False) for r, t in results()]
        write_atomic_text(stage_dir / name, "".join(line + "\n" for line in lines))
        if progress is not None:
            progress.update(size)

    working = None  # the chunk the workers are on: while they are, this process reads the next one
    for repo, chunks, license_texts in pending:
        context = _repo_context(repo, optout, cache, license_texts)
        for index, chunk in chunks:
            readable = [e for e in chunk if not e.skip]
            data = dict(zip((e.path for e in readable), repo.read(readable)))
            started = (f"{repo_key(repo.name)}-{index:05d}.jsonl", len(chunk),
                       workers.submit(process_file, [(context, e, data.get(e.path)) for e in chunk]))
            if working is not None:
                write(*working)
            working = started
    if working is not None:
        write(*working)


def load_read_stage(repos: list[Repository], stage_dir: Path) -> tuple[list[dict], list[Optional[str]]]:
    """The records and texts of the read stage, repository by repository, each repository's in path order."""
    records, texts = [], []
    for repo in repos:
        items = []
        for index, _ in read_chunks(repo):
            with open(stage_dir / f"{repo_key(repo.name)}-{index:05d}.jsonl", encoding="utf-8") as f:
                items += [json.loads(line) for line in f]
        in_path_order = [None] * len(items)
        for position, item in zip(repo.read_order(), items):
            in_path_order[position] = item
        records += [item["record"] for item in in_path_order]
        texts += [item["text"] for item in in_path_order]
    return records, texts


# --------------------------------------------------------------------------- dedup over the whole corpus
def keep_rank(record: dict) -> tuple:
    """Which copy of duplicates is kept: permissive first, then the newest commit, then repository and path."""
    return (record["license_type"] != "permissive", -(record["commit_time"] or 0), record["repo"], record["path"])


def _name(record: dict) -> str:
    return f"{record['repo']}/{record['path']}"


def exact_duplicates(records: list[dict], alive: list[int]) -> tuple[dict[int, str], list[int]]:
    """Among ``records[i]`` for ``i`` in ``alive``: ``({dropped index: kept copy's name}, cluster sizes)`` of the
    files with the same ``content_id``; the copy kept is the first by ``keep_rank``."""
    groups: dict[str, list[int]] = {}
    for i in alive:
        groups.setdefault(records[i]["content_id"], []).append(i)
    dropped, sizes = {}, []
    for members in groups.values():
        if len(members) > 1:
            keeper = min(members, key=lambda i: keep_rank(records[i]))
            sizes.append(len(members))
            dropped.update({i: _name(records[keeper]) for i in members if i != keeper})
    return dropped, sorted(sizes)


def near_duplicates(records: list[dict], texts: list[str], alive: list[int], threshold: float, seed: int,
                    mapper: Optional[Callable] = None) -> tuple[dict[int, str], list[int]]:
    """Among ``alive``: near duplicates by MinHash-LSH on the texts, verified by exact Jaccard, as
    ``({dropped index: kept twin's name}, group sizes)``. Files are taken in ``keep_rank`` order and one is dropped
    when a file kept before it has Jaccard >= ``threshold`` with it (not transitive: see ``corpus.dedup``); a
    group is a kept file and the files dropped as its near duplicates. ``mapper`` spreads the MinHash sketches
    over processes."""
    from litgpt_clone.corpus.dedup import find_near_duplicates

    order = sorted(alive, key=lambda i: keep_rank(records[i]))
    docs = ((str(i), texts[i]) for i in order)  # keys are the records' positions, as strings
    twins = find_near_duplicates(docs, threshold=threshold, seed=seed, mapper=mapper)
    dropped = {int(k): _name(records[int(twin)]) for k, twin in twins.items()}
    return dropped, sorted(n + 1 for n in Counter(twins.values()).values())


def dedup_stage(records: list[dict], texts: list[Optional[str]], config: CorpusConfig, mapper: Optional[Callable] = None) -> dict:
    """Exact duplicates, then near duplicates among the rest, over the whole corpus; returns the decisions
    ``{"dropped": {index: [stage, kept copy]}, "exact_clusters": [sizes], "near_clusters": [group sizes]}``."""
    alive = [i for i, r in enumerate(records) if r["drop_stage"] is None]
    exact, exact_sizes = exact_duplicates(records, alive)
    alive = [i for i in alive if i not in exact]
    near, near_sizes = near_duplicates(records, texts, alive, config.near_dedup_threshold, config.seed, mapper)
    dropped = {**{i: ["exact_dedup", k] for i, k in exact.items()}, **{i: ["near_dedup", k] for i, k in near.items()}}
    return {"dropped": {str(i): dropped[i] for i in sorted(dropped)}, "exact_clusters": exact_sizes, "near_clusters": near_sizes}


# --------------------------------------------------------------------------- split and tokens
def split_of(blob_id: str, val_fraction: float, seed: int) -> str:
    """"val" for a stable ~``val_fraction`` of files (by a hash of the seed and the blob id), else "train"."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{blob_id}".encode()).digest()[:8], "big")
    return "val" if h < val_fraction * 2**64 else "train"


@functools.lru_cache(maxsize=4)
def _tiktoken(tokenizer_json: str):
    from litgpt_clone.corpus.fast_bpe import tiktoken_encoding

    return tiktoken_encoding(Path(tokenizer_json))


def token_ids(tokenizer, text: str) -> np.ndarray:
    """``tokenizer.encode(text)`` (BOS as the checkpoint says, no EOS) as a uint32 array, faster for tokenizer.json.

    A plain byte-level BPE tokenizer.json (GPT-2's kind, the demo's) is encoded by ``tiktoken`` (``corpus.fast_bpe``:
    the same ids, ~3.8x faster); any other by ``tokenizers``' ``encode_batch_fast`` on the one text: the same ids as
    ``encode`` without computing character offsets, ~20% less time on code. One text per call keeps the work on one
    core (parallelism comes from ``--workers``)."""
    if tokenizer.backend != "huggingface":
        return tokenizer.encode(text).numpy().astype(np.uint32)
    fast = _tiktoken(str(tokenizer.checkpoint_dir / "tokenizer.json"))
    if fast is not None:
        ids = fast.encode(text, allowed_special="all")
    else:
        ids = tokenizer._hf.encode_batch_fast([text], add_special_tokens=False)[0].ids  # Tokenizer.encode, less offsets
    if tokenizer.add_bos:
        ids = [tokenizer.bos_id, *ids]
    return np.asarray(ids, dtype=np.uint32)


def encode(text: str) -> np.ndarray:
    """Token ids of ``text`` with the configured tokenizer (loaded once per process), as a uint32 array."""
    from litgpt_clone.tokenizer import Tokenizer

    if "tokenizer" not in _WORKER:
        _WORKER["tokenizer"] = Tokenizer(_WORKER["config"].tokenizer_dir)
    return token_ids(_WORKER["tokenizer"], text)


def shard_tokenizer(tokenizer_dir: str):
    """The tokenizer in ``tokenizer_dir``, or ``CorpusError`` when it has no EOS token: the token shards end every
    document with it. ``run`` checks this when the build starts."""
    from litgpt_clone.tokenizer import Tokenizer

    tokenizer = Tokenizer(tokenizer_dir)
    if tokenizer.eos_id is None:
        raise CorpusError(f"the tokenizer in {tokenizer_dir} has no EOS token, which ends every document in the token"
                          " shards: give a --tokenizer_dir whose tokenizer has one (its eos_token)")
    return tokenizer


def shard_stage(kept: list[int], records: list[dict], texts: list[Optional[str]], config: CorpusConfig, out_dir: Path,
                imap: Callable) -> dict:
    """Tokenize the kept files (``imap(fn, tasks)``: results in order, e.g. from worker processes) and write them as
    token shards into ``out_dir``; returns the shards' manifest and ``{index: tokens}``."""
    from tqdm import tqdm

    from litgpt_clone.data.shards import ShardWriter

    tokenizer = shard_tokenizer(config.tokenizer_dir)
    tokens = {}
    writer = ShardWriter(out_dir, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, shard_tokens=config.shard_tokens,
                         extra={"vocabulary_sha256": tokenizer.vocabulary_digest()})
    with tqdm(total=len(kept), desc="tokenize", unit="file", disable=None) as progress:
        for i, ids in zip(kept, imap(encode, (texts[i] for i in kept))):
            writer.add(ids, split=records[i]["split"])
            tokens[str(i)] = len(ids) + 1  # with the EOS that ends the document
            progress.update()
    manifest = writer.close()
    (out_dir / "manifest.json").unlink()  # the version's manifest.json is written last, with these shards in it
    return {"shards": manifest, "tokens": tokens}


# --------------------------------------------------------------------------- the whole run
@dataclass
class Result:
    version_dir: Path
    manifest: dict
    report: Path


class Workers:
    """``map``/``imap`` of a function over tasks: in this process (``workers <= 1``), or in a pool of ``workers``
    forked processes started on first use, so that what this process loaded before (ScanCode's license index) is
    shared with them."""

    def __init__(self, workers: int, config: CorpusConfig) -> None:
        self.workers, self.config, self.pool = workers, config, None
        if workers <= 1:
            _init_worker(config)

    def map(self, fn: Callable, tasks: list, chunksize: int = 8) -> list:
        if self.workers <= 1:
            return [fn(t) for t in tasks]
        return self._pool().map(fn, tasks, chunksize=chunksize)

    def submit(self, fn: Callable, tasks: list, chunksize: int = 8) -> Callable[[], list]:
        """Start ``map(fn, tasks)``; returns the function that waits for its results."""
        if self.workers <= 1:
            results = [fn(t) for t in tasks]
            return lambda: results
        return self._pool().map_async(fn, tasks, chunksize=chunksize).get

    def imap(self, fn: Callable, tasks: Iterable, chunksize: int = 4) -> Iterator:
        """``map`` that yields the results in order as they come, the processes working ahead."""
        if self.workers <= 1:
            return map(fn, tasks)
        return self._pool().imap(fn, tasks, chunksize=chunksize)

    def mapper(self, chunksize: int) -> Callable:
        """``map`` with this ``chunksize``, as a ``mapper(fn, tasks)``."""
        return lambda fn, tasks: self.map(fn, tasks, chunksize)

    def _pool(self):
        if self.pool is None:
            from litgpt_clone.corpus import dedup, filters, pii  # noqa: F401  imported once here, not in every worker

            self.pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=_init_worker, initargs=(self.config,))
        return self.pool

    def close(self, finished: bool) -> None:
        if self.pool is not None:
            self.pool.close() if finished else self.pool.terminate()  # Ctrl-C: stop the workers too; the checkpoints stay
            self.pool.join()


def _stages(repos: list[Repository], config: CorpusConfig, partial: Path, cache: licenses.DetectionCache, workers: Workers):
    """read … pii per file, dedup over the corpus, split, tokens: each step skipped when its checkpoint exists."""
    from tqdm import tqdm

    with tqdm(total=sum(len(r.entries) for r in repos), desc="read+annotate", unit="file", disable=None) as progress:
        read_stage(repos, config, partial / "stages" / "read", cache, workers, progress)
    records, texts = load_read_stage(repos, partial / "stages" / "read")

    dedup_file = partial / "stages" / "dedup.json"
    if not dedup_file.is_file():
        write_atomic_text(dedup_file, json.dumps(dedup_stage(records, texts, config, workers.mapper(chunksize=1)), sort_keys=True) + "\n")
    dedup = json.loads(dedup_file.read_text())
    for index, (stage, keeper) in dedup["dropped"].items():
        record = records[int(index)]
        record["drop_stage"], record["duplicate_of"] = stage, keeper
        record["drop_reason"] = "exact_duplicate" if stage == "exact_dedup" else "near_duplicate"
    kept = [i for i, r in enumerate(records) if r["drop_stage"] is None]
    for i in kept:
        records[i]["split"] = split_of(records[i]["blob_id"], config.val_fraction, config.seed)

    shards = None
    if config.tokenizer_dir:
        shards_file = partial / "stages" / "shards.json"
        if not shards_file.is_file():
            result = shard_stage(kept, records, texts, config, partial, workers.imap)
            write_atomic_text(shards_file, json.dumps(result, sort_keys=True) + "\n")
        shards = json.loads(shards_file.read_text())
        for index, count in shards["tokens"].items():
            records[int(index)]["tokens"] = count
    return records, texts, dedup, shards


def inputs_digest(repos: list[Repository]) -> str:
    """SHA-256 of what the sources hold (``Repository.fingerprint``: commits, archive and file sizes and times)."""
    listing = [[r.name, r.kind, r.source, r.fingerprint()] for r in repos]
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def run(config: CorpusConfig, out_dir: Path, workers: int = 1, log: Callable[[str], None] = print) -> Result:
    """Build the next version of the corpus in ``out_dir`` (resuming an interrupted build of the same config and
    inputs). ``out_dir`` may be inside a source folder: it is not read.

    One build at a time per ``out_dir``: a POSIX lock on ``out_dir/.lock``, released when the process ends however
    it ends (and not inherited by the worker processes)."""
    if config.tokenizer_dir:
        shard_tokenizer(config.tokenizer_dir)  # before anything is done, not after the whole build
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        return _run_locked(config, out_dir, workers, log)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold the lock on ``out_dir/.lock``, a file opened without following a link, waiting on a FIFO or truncating
    it: a source holding the out_dir can ship ``.lock`` as a link, and opening it for writing truncated the file it
    names."""
    path = out_dir / ".lock"
    check_own(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as err:  # a folder, or something put in its place since it was checked
        raise CorpusError(f"cannot open {path} ({err.strerror}): delete it, or give another --out_dir") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CorpusError(f"another prepare code is writing to {out_dir}: wait for it to finish, or give another --out_dir") from None
        yield
    finally:
        os.close(fd)


def check_own(path: Path) -> None:
    """``CorpusError`` when ``path`` (and what is under it) is anything but plain folders and files. A build writes
    only into folders it made; a link there (``corpus/cache`` naming a folder elsewhere, shipped by a source the
    out_dir lies in) would have it write or delete outside the out_dir, a FIFO would hang it."""
    todo = [str(path)]
    while todo:  # (not recursive: a source can nest folders deeper than Python's stack)
        current = todo.pop()
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            with os.scandir(current) as items:
                todo += [item.path for item in items]
        elif not stat.S_ISREG(mode):
            raise CorpusError(f"{current} is not a plain file or folder (a link, FIFO, socket or device): prepare code"
                              " writes only into what it made in its --out_dir; delete it, or give another --out_dir")


def _run_locked(config: CorpusConfig, out_dir: Path, workers: int, log: Callable[[str], None]) -> Result:
    from litgpt_clone.corpus import manifest as manifest_lib
    from litgpt_clone.corpus import report as report_lib

    repos = open_sources(config.sources, config.layout, config.max_file_size, config.exclude, skip=[out_dir])
    for scratch in out_dir.glob(".v*.stages"):  # what a build killed while deleting its stages left
        shutil.rmtree(scratch, ignore_errors=True)
    version, previous = manifest_lib.next_version(out_dir)
    partial, final = out_dir / f"v{version}.partial", out_dir / f"v{version}"
    for own in (partial, out_dir / "cache"):
        check_own(own)
    if os.path.lexists(final):  # a file or a dangling link (``next_version`` counts folders): the rename at the end fails
        raise CorpusError(f"{final} is not the folder of an earlier version: delete it, or give another --out_dir")
    digest, inputs = config.digest(), inputs_digest(repos)
    stamp = partial / "stages" / "config.json"
    if partial.exists():
        started = seal.read_sealed(stamp)
        if not started:  # (a partial build shipped in a source would give the records it likes)
            log(f"removing {partial}: no build of this user started it (it came with a source or from elsewhere); starting over")
            shutil.rmtree(partial)
        elif started.get("config_hash") != digest:
            log(f"removing {partial}: it was started with another configuration")
            shutil.rmtree(partial)
        elif started.get("inputs_hash") != inputs:
            log(f"removing {partial}: the sources changed since it was started (new commits or changed files); starting over")
            shutil.rmtree(partial)
        else:
            log(f"resuming {partial}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp_data = seal.sealed({"config": config.to_dict(), "config_hash": digest, "inputs_hash": inputs})
    write_atomic_text(stamp, json.dumps(stamp_data, indent=2, sort_keys=True) + "\n")

    cache = licenses.DetectionCache(out_dir / "cache" / "license_detections.json")
    pool = Workers(workers, config)
    finished = False
    try:
        records, texts, dedup, shards = _stages(repos, config, partial, cache, pool)
        finished = True
    finally:
        pool.close(finished)
    kept = [i for i, r in enumerate(records) if r["drop_stage"] is None]

    files_text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    write_atomic_text(partial / "files.jsonl", files_text)
    text_lines = (
        json.dumps({"repo": records[i]["repo"], "path": records[i]["path"], "blob_id": records[i]["blob_id"],
                    "split": records[i]["split"], "text": texts[i]}, sort_keys=True, ensure_ascii=False) + "\n"
        for i in kept
    )
    write_atomic_text(partial / "text.jsonl", "".join(text_lines))

    previous_records = manifest_lib.load_records(out_dir / f"v{previous}") if previous else None
    optout = OptOut.from_file(config.optout) if config.optout else None
    opted_out = {repo.name: reason for repo in repos if optout and (reason := optout.reason(repo.name))}
    write_atomic_text(partial / "CHANGELOG.md", manifest_lib.changelog(version, previous, previous_records, records, opted_out))
    manifest = manifest_lib.build(config, digest, version, previous, repos, records, dedup, shards, partial, opted_out)
    report = report_lib.write(partial, manifest, records, dedup)
    manifest_lib.write(partial, manifest)  # last: a folder with manifest.json is complete
    scratch = out_dir / f".v{version}.stages"  # out of the folder first: a kill while deleting it (a large corpus's
    partial.joinpath("stages").rename(scratch)  # texts, a while) left it inside the published version for good
    partial.rename(final)
    shutil.rmtree(scratch)
    return Result(final, manifest, final / report.name)
