"""``prepare code``'s stages as datatrove pipeline steps; each wraps the function the CLI pipeline runs.

A ``Document`` is one file: ``text`` is its decoded text (redacted once ``PIIRedactor`` ran), ``id`` is
``repo/path``, ``media[0].media_bytes`` holds the file's bytes (Linguist looks at them; ``PIIRedactor`` replaces
them by the redacted text in the file's encoding, so no step or writer after it sees a secret), and
``metadata["record"]`` is the same per-file record ``prepare code`` writes to files.jsonl. ``metadata["repo"]``
carries what the reader learned about the repository (its licenses by folder, their ScanCode categories).

Every step that drops files (the reader, the filters, the dedup steps) counts them in its stats as
``dropped_<reason>`` and writes them to its ``exclusion_writer`` when it has one: the document with the record's
``drop_stage``/``drop_reason`` (and ``duplicate_of``) set, the record files.jsonl keeps for a dropped file (a file
dropped when read has no text, and no bytes).

Arguments are checked when a step is built (``CorpusError``, one line), as ``prepare code`` checks its options
before it reads anything: a typo fails at once, not in every task after the sources were read.

The reader shards repositories over tasks (repository ``i`` goes to task ``i % world_size``). The two dedup steps
see one task's documents, so with several tasks duplicates in different tasks are kept (they log a warning): run
them with ``tasks=1`` (or after merging) for corpus-wide dedup. The shard writer writes one folder per task and
the last task to finish lists them all in ``out_dir/manifest.json``, which ``pretrain`` reads.
"""

from __future__ import annotations

import contextlib
import json
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional, Sequence, Union

from datatrove.data import Document, DocumentsPipeline, Media, MediaType
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.stats import TimingStats
from loguru import logger

from litgpt_clone.corpus import licenses
from litgpt_clone.corpus import pipeline as corpus
from litgpt_clone.corpus.filters import FilterConfig
from litgpt_clone.corpus.optout import OptOut
from litgpt_clone.corpus.pipeline import CorpusError
from litgpt_clone.corpus.sources import Layout, check_layout, open_sources


def _record(doc: Document) -> dict:
    return doc.metadata["record"]


def _set_drop(record: dict, stage: str, reason: str) -> str:
    record["drop_stage"], record["drop_reason"] = stage, reason
    return reason


def _drop(doc: Document, stage: str, reason: Optional[str]) -> Union[bool, tuple[bool, str]]:
    """A filter's answer: keep, or drop with ``reason`` (set on the record first, for the exclusion writer)."""
    if reason is None:
        return True
    return False, _set_drop(_record(doc), stage, reason)


def _exclude(step: PipelineStep, writer, doc: Document, reason: str, rank: int) -> None:
    """What ``BaseFilter`` does with a dropped document, for the steps that are not filters: count it, write it."""
    step.stat_update("dropped", f"dropped_{reason.split(':')[0]}")  # (unreadable:<error> counts as unreadable)
    if writer is not None:
        doc.metadata["filter_reason"] = reason
        writer.write(doc, rank)


def _writing(writer):
    """The exclusion writer opened for the step's run (datatrove's writers close their files on exit)."""
    return writer if writer is not None else contextlib.nullcontext()


def _one_of(step: str, name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise CorpusError(f"{step}({name}={value!r}): use one of {', '.join(choices)}")


class CodeRepositoryReader(PipelineStep):
    """Read git repositories (HEAD), folders and archives; decode, identify and detect repository licenses.

    ``skip``: folders never read, wherever they are inside a source: the pipeline's own output, exclusion and
    logging folders when a source holds them (``sources=["."]``), which would otherwise become corpus files and
    change at every run (``code_corpus_pipeline`` adds its ``out_dir`` and ``exclusion_dir``)."""

    name = "🗂 code repositories"
    type = "📖 - READER"

    def __init__(self, sources: list[str], layout: Layout = "repo", max_file_size: int = 1 << 20,
                 license_cache: Optional[str] = None, exclude: Sequence[str] = (), skip: Sequence[str] = (),
                 exclusion_writer=None, chunk_files: int = corpus.CHUNK_FILES) -> None:
        super().__init__()
        self.sources, self.layout, self.max_file_size = [str(s) for s in sources], layout, max_file_size
        self.exclude, self.skip = list(exclude), [str(s) for s in skip]
        self.license_cache, self.chunk_files, self.exclusion_writer = license_cache, chunk_files, exclusion_writer
        _one_of("CodeRepositoryReader", "layout", layout, typing.get_args(Layout))
        if not self.sources:
            raise CorpusError("CodeRepositoryReader: no sources given: name a git repository, folder or archive")
        for source in self.sources:
            if not Path(source).exists():
                raise CorpusError(f"CodeRepositoryReader: source {source} does not exist: give a git repository, folder or tar/zip archive")
            check_layout(source, layout)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """The task's repositories' files, kept ones yielded. The step's time is what it spends listing, reading,
        detecting licenses and decoding (not the later steps' time while they hold a yielded document), one
        sample per task."""
        if data:
            yield from data
        own_time = TimingStats()
        with own_time:
            cache = licenses.DetectionCache(Path(self.license_cache) if self.license_cache else None)
            repos = open_sources(self.sources, self.layout, self.max_file_size, self.exclude, skip=[Path(s) for s in self.skip])
        with _writing(self.exclusion_writer) as writer:
            for i, repo in enumerate(repos):
                if i % world_size != rank:
                    continue
                with own_time:
                    context = corpus._repo_context(repo, None, cache)
                for start in range(0, len(repo.entries), self.chunk_files):
                    with own_time:
                        docs = self._chunk(repo, context, repo.entries[start : start + self.chunk_files])
                    for doc, reason in docs:
                        if reason is None:
                            self.stat_update("documents")
                            yield doc
                        else:
                            _exclude(self, writer, doc, reason, rank)
        self.stats.time_stats.update(own_time.total, unit="task")

    def _chunk(self, repo, context: corpus.RepoContext, chunk: list) -> list[tuple[Document, Optional[str]]]:
        readable = [e for e in chunk if not e.skip]
        contents = dict(zip((e.path for e in readable), repo.read(readable)))
        return [self._document(context, entry, contents.get(entry.path)) for entry in chunk]

    @staticmethod
    def _document(context: corpus.RepoContext, entry, data) -> tuple[Document, Optional[str]]:
        """The file as a document and, when the read or decode stage drops it (as ``process_file`` does), why."""
        record = corpus.new_record(context, entry)
        name = f"{context.name}/{entry.path}"
        doc = Document(text="", id=name, metadata={"record": record, "repo": asdict(context)})
        if entry.skip or isinstance(data, OSError):
            return doc, _set_drop(record, "read", entry.skip or f"unreadable:{data}")
        corpus.identify(record, data)
        doc.media = [Media(id=name, type=MediaType.DOCUMENT, url=name, media_bytes=data)]
        text, reason = corpus.decode_stage(record, data)
        if reason:
            return doc, _set_drop(record, "decode", reason)
        doc.text = text
        return doc, None


class LanguageFilter(BaseFilter):
    """Linguist language (enry); drops unknown languages, languages not selected, vendored and generated files."""

    name = "🔤 Linguist language"

    def __init__(self, languages: Optional[list[str]] = None, keep_vendor: bool = False, keep_generated: bool = False,
                 exclusion_writer=None) -> None:
        from litgpt_clone.corpus import language

        super().__init__(exclusion_writer)
        for name in languages or []:
            if not language.known(name):  # it would drop every file
                raise CorpusError(f"LanguageFilter(languages=[{name!r}]): not a language GitHub Linguist knows: use Linguist's"
                                  " names, e.g. Python, C++, JavaScript")
        self.config = corpus.CorpusConfig(sources=[], languages=languages, keep_vendor=keep_vendor, keep_generated=keep_generated)

    def filter(self, doc: Document):
        return _drop(doc, "language", corpus.language_stage(_record(doc), doc.media[0].media_bytes, self.config))


class LicensePolicyFilter(BaseFilter):
    """Propagate the repository's licenses to the file, add its own ``SPDX-License-Identifier`` lines, classify them,
    apply the policy."""

    name = "⚖️ license policy"

    def __init__(self, policy: licenses.LicensePolicy = "permissive", exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        _one_of("LicensePolicyFilter", "policy", policy, typing.get_args(licenses.LicensePolicy))  # a typo must not mean permissive
        self.policy = policy

    def filter(self, doc: Document):
        context = corpus.RepoContext(**doc.metadata["repo"])
        return _drop(doc, "license", corpus.license_stage(_record(doc), context, self.policy, doc.text))


class OptOutFilter(BaseFilter):
    """Drop the files of the owners and repositories in an opt-out registry (JSONL)."""

    name = "🙅 opt-out"

    def __init__(self, registry: Union[str, Path], exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        self.optout = OptOut.from_file(registry)

    def filter(self, doc: Document):
        return _drop(doc, "optout", self.optout.reason(_record(doc)["repo"]))


class CodeQualityFilter(BaseFilter):
    """The Stack v2 content filters (line lengths, alphabetic fraction, auto-generated markers, encoded data).

    ``config``: a ``FilterConfig``, or a dict of some of its thresholds (``prepare code``'s ``--filters.*``:
    ``{"max_line_length": 500}``); the others keep The Stack v2's values."""

    name = "🧹 content filters"

    def __init__(self, config: Union[FilterConfig, dict, None] = None, exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        if isinstance(config, dict):
            known = [f.name for f in fields(FilterConfig)]
            if unknown := sorted(set(config) - set(known)):
                raise CorpusError(f"CodeQualityFilter: unknown threshold {unknown[0]!r}: use FilterConfig's fields ({', '.join(known)})")
            config = FilterConfig(**config)
        self.config = config or FilterConfig()

    def filter(self, doc: Document):
        from litgpt_clone.corpus.filters import drop_reason

        record = _record(doc)
        return _drop(doc, "filters", drop_reason(doc.text, record["path"], record["language"], self.config))


class DecontaminationFilter(BaseFilter):
    """Drop files that contain a benchmark string (JSONL records or text lines of the given files).

    The files are read when the step is built, so that a missing or unusable one stops the pipeline before it
    starts, and again in each task (the index is not sent to the tasks)."""

    name = "🧪 decontamination"

    def __init__(self, paths: list[str], exclusion_writer=None) -> None:
        from litgpt_clone.corpus.decontam import Decontaminator

        super().__init__(exclusion_writer)
        self.paths = [str(p) for p in paths]
        for path in self.paths:
            if not Path(path).is_file():
                raise CorpusError(f"DecontaminationFilter: no file at {path}: give JSONL or text files of benchmark strings")
        Decontaminator.from_files(self.paths)
        self._decontaminator = None

    def filter(self, doc: Document):
        if self._decontaminator is None:
            from litgpt_clone.corpus.decontam import Decontaminator

            self._decontaminator = Decontaminator.from_files(self.paths)
        return _drop(doc, "decontaminate", corpus.decontaminate_stage(_record(doc), doc.text, self._decontaminator))


class PIIRedactor(PipelineStep):
    """Replace emails, keys, passwords and public IP addresses; counts go to ``record["pii"]``. The file's bytes
    (``media[0].media_bytes``) become the redacted text in the file's encoding: the original bytes would hand the
    secrets to any writer that saves media bytes, or step that reads them."""

    name = "🕵 PII redaction"
    type = "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            record = _record(doc)
            with self.track_time():
                redacted = corpus.pii_stage(record, doc.text)
                if redacted != doc.text:
                    for media in doc.media:  # (the redactions are ASCII: every encoding that decoded the file has them)
                        media.media_bytes = redacted.encode(record["encoding"])
                doc.text = redacted
            for kind, count in record["pii"].items():
                self.stat_update(kind, value=count)
            yield doc


class _Barrier(PipelineStep):
    """A step that needs every document of the task before it can let one through (dedup)."""

    type = "🫂 - DEDUP"

    def __init__(self, exclusion_writer=None) -> None:
        super().__init__()
        self.exclusion_writer = exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size > 1:
            logger.warning(f"{self.name}: task {rank} of {world_size} sees only its own repositories' files, so duplicates in"
                           " different tasks are all kept: run the dedup steps with tasks=1 for corpus-wide dedup")
        docs = list(data or [])
        records = [_record(d) for d in docs]
        with self.track_time(unit="task"):
            dropped = self.duplicates(records, [d.text for d in docs])
        with _writing(self.exclusion_writer) as writer:
            for i, doc in enumerate(docs):
                if i in dropped:
                    records[i]["duplicate_of"] = dropped[i]
                    _exclude(self, writer, doc, _set_drop(records[i], self.stage, self.reason), rank)
                else:
                    yield doc


class ExactDedupFilter(_Barrier):
    """Exact duplicates by content id; keeps the permissive, then newest, then first-by-path copy."""

    name = "🎯 exact dedup"
    stage, reason = "exact_dedup", "exact_duplicate"

    def duplicates(self, records: list[dict], texts: list[str]) -> dict[int, str]:
        return corpus.exact_duplicates(records, list(range(len(records))))[0]


class NearDedupFilter(_Barrier):
    """Near duplicates (MinHash-LSH on word 5-grams, verified by exact Jaccard), same keep policy."""

    name = "🎯 near dedup"
    stage, reason = "near_dedup", "near_duplicate"

    def __init__(self, threshold: float = 0.7, seed: int = 42, exclusion_writer=None) -> None:
        from litgpt_clone.corpus.dedup import MAX_NEAR_DEDUP_THRESHOLD

        super().__init__(exclusion_writer)
        if not 0 <= threshold <= MAX_NEAR_DEDUP_THRESHOLD:
            raise CorpusError(f"NearDedupFilter(threshold={threshold}): use a Jaccard similarity in [0, {MAX_NEAR_DEDUP_THRESHOLD}]"
                              " (above that MinHash-LSH over 256 permutations has fewer than two bands)")
        self.threshold, self.seed = threshold, seed

    def duplicates(self, records: list[dict], texts: list[str]) -> dict[int, str]:
        return corpus.near_duplicates(records, texts, list(range(len(records))), self.threshold, self.seed)[0]


class TokenShardWriter(PipelineStep):
    """Tokenize and write ``litgpt_clone`` token shards (``pretrain --data shards`` reads them), with the manifest
    ``prepare code`` writes (vocab size, EOS, ``vocabulary_sha256``: ``pretrain`` refuses another tokenizer); a
    split by a stable hash of each file's blob id.

    With one task the shards go to ``out_dir``. With several, task ``r`` writes ``out_dir/<r:05d>/`` and the last
    task to finish writes ``out_dir/manifest.json`` listing every task's shards in task order (``merge_task_shards``),
    so ``pretrain --data.path out_dir`` reads them all."""

    name = "🔢 token shards"
    type = "💽 - WRITER"

    def __init__(self, out_dir: Union[str, Path], tokenizer_dir: Union[str, Path], val_fraction: float = 0.01, seed: int = 42,
                 shard_tokens: int = 1 << 24) -> None:
        from litgpt_clone.tokenizer import Tokenizer

        super().__init__()
        self.out_dir, self.tokenizer_dir = Path(out_dir), str(tokenizer_dir)
        self.val_fraction, self.seed, self.shard_tokens = val_fraction, seed, shard_tokens
        if not Path(tokenizer_dir).is_dir():
            raise CorpusError(f"TokenShardWriter: tokenizer_dir {tokenizer_dir} is not a folder: give a checkpoint or tokenizer folder")
        if Tokenizer(tokenizer_dir).eos_id is None:
            raise CorpusError(f"TokenShardWriter: the tokenizer in {tokenizer_dir} has no EOS token to end documents: give one that has")
        if not 0 <= val_fraction < 1:
            raise CorpusError(f"TokenShardWriter(val_fraction={val_fraction}): use a fraction in [0, 1)")

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from litgpt_clone.data.shards import ShardWriter
        from litgpt_clone.tokenizer import Tokenizer

        tokenizer = Tokenizer(self.tokenizer_dir)
        folder = self.out_dir if world_size == 1 else self.out_dir / f"{rank:05d}"
        if world_size > 1:  # until this task has written its shards again, no merged manifest may list its old ones
            (folder / "manifest.json").unlink(missing_ok=True)
            (self.out_dir / "manifest.json").unlink(missing_ok=True)
        writer = ShardWriter(folder, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, shard_tokens=self.shard_tokens,
                             extra={"vocabulary_sha256": tokenizer.vocabulary_digest()})
        for doc in data or []:
            record = _record(doc)
            with self.track_time():
                record["split"] = corpus.split_of(record["blob_id"], self.val_fraction, self.seed)
                ids = corpus.token_ids(tokenizer, doc.text)
                writer.add(ids, split=record["split"])
            record["tokens"] = len(ids) + 1
            self.stat_update("tokens", value=record["tokens"])
            yield doc
        writer.close()
        if world_size > 1:
            merge_task_shards(self.out_dir, world_size)


def merge_task_shards(out_dir: Path, tasks: int) -> Optional[dict]:
    """Write ``out_dir/manifest.json`` listing the shards of the task folders ``out_dir/00000`` ... in task order,
    once every task folder has its manifest; None (nothing written) while one has not.

    Each task calls it when it finishes, after writing its own manifest, so the last task to finish sees them all;
    two finishing at once write the same bytes (atomically)."""
    from litgpt_clone.checkpoints.io import write_atomic_text

    manifests = []
    for rank in range(tasks):
        path = Path(out_dir) / f"{rank:05d}" / "manifest.json"
        if not path.is_file():
            return None
        manifests.append(json.loads(path.read_text()))
    merged = {key: value for key, value in manifests[0].items() if key != "shards"}
    merged["shards"] = [dict(shard, file=f"{rank:05d}/{shard['file']}") for rank, m in enumerate(manifests) for shard in m["shards"]]
    write_atomic_text(Path(out_dir) / "manifest.json", json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged
