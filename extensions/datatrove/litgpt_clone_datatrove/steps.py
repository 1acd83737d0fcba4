"""``prepare code``'s stages as datatrove pipeline steps; each wraps the function the CLI pipeline runs.

A ``Document`` is one file: ``text`` is its decoded text (redacted once ``PIIRedactor`` ran), ``id`` is
``repo/path``, ``media[0].media_bytes`` holds the file's bytes (Linguist looks at them), and
``metadata["record"]`` is the same per-file record ``prepare code`` writes to files.jsonl. ``metadata["repo"]``
carries what the reader learned about the repository (its licenses by folder, their ScanCode categories).

Dropped files are counted in each step's stats as ``dropped_<reason>`` and, for the filters, written to an
``exclusion_writer`` when one is given (with the record's ``drop_stage``/``drop_reason`` set).

The reader shards repositories over tasks (repository ``i`` goes to task ``i % world_size``). The two dedup steps
and the shard writer see one task's documents: run them with ``tasks=1`` (or after merging), as here, for
corpus-wide dedup.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, Union

from datatrove.data import Document, DocumentsPipeline, Media, MediaType
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from litgpt_clone.corpus import licenses
from litgpt_clone.corpus import pipeline as corpus
from litgpt_clone.corpus.filters import FilterConfig
from litgpt_clone.corpus.optout import OptOut
from litgpt_clone.corpus.sources import Layout, open_sources


def _record(doc: Document) -> dict:
    return doc.metadata["record"]


def _drop(doc: Document, stage: str, reason: Optional[str]) -> Union[bool, tuple[bool, str]]:
    if reason is None:
        return True
    _record(doc)["drop_stage"], _record(doc)["drop_reason"] = stage, reason
    return False, reason


class CodeRepositoryReader(PipelineStep):
    """Read git repositories (HEAD), folders and archives; decode, identify and detect repository licenses."""

    name = "🗂 code repositories"
    type = "📖 - READER"

    def __init__(self, sources: list[str], layout: Layout = "repo", max_file_size: int = 1 << 20,
                 license_cache: Optional[str] = None, exclude: Sequence[str] = (), chunk_files: int = corpus.CHUNK_FILES) -> None:
        super().__init__()
        self.sources, self.layout, self.max_file_size = [str(s) for s in sources], layout, max_file_size
        self.exclude = list(exclude)
        self.license_cache, self.chunk_files = license_cache, chunk_files

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        cache = licenses.DetectionCache(Path(self.license_cache) if self.license_cache else None)
        for i, repo in enumerate(open_sources(self.sources, self.layout, self.max_file_size, self.exclude)):
            if i % world_size != rank:
                continue
            context = corpus._repo_context(repo, None, cache)
            for start in range(0, len(repo.entries), self.chunk_files):
                chunk = repo.entries[start : start + self.chunk_files]
                readable = [e for e in chunk if not e.skip]
                contents = dict(zip((e.path for e in readable), repo.read(readable)))
                for entry in chunk:
                    with self.track_time():
                        doc = self._document(context, entry, contents.get(entry.path))
                    if doc is not None:
                        self.stat_update("documents")
                        yield doc

    def _document(self, context: corpus.RepoContext, entry, data) -> Optional[Document]:
        record = corpus.new_record(context, entry)
        if entry.skip or isinstance(data, OSError):
            self.stat_update(f"dropped_{entry.skip or 'unreadable'}")
            return None
        corpus.identify(record, data)
        text, reason = corpus.decode_stage(record, data)
        if reason:
            self.stat_update(f"dropped_{reason}")
            return None
        name = f"{context.name}/{entry.path}"
        return Document(text=text, id=name, media=[Media(id=name, type=MediaType.DOCUMENT, url=entry.path, media_bytes=data)],
                        metadata={"record": record, "repo": asdict(context)})


class LanguageFilter(BaseFilter):
    """Linguist language (enry); drops unknown languages, languages not selected, vendored and generated files."""

    name = "🔤 Linguist language"

    def __init__(self, languages: Optional[list[str]] = None, keep_vendor: bool = False, keep_generated: bool = False,
                 exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        self.config = corpus.CorpusConfig(sources=[], languages=languages, keep_vendor=keep_vendor, keep_generated=keep_generated)

    def filter(self, doc: Document):
        return _drop(doc, "language", corpus.language_stage(_record(doc), doc.media[0].media_bytes, self.config))


class LicensePolicyFilter(BaseFilter):
    """Propagate the repository's licenses to the file, add its own ``SPDX-License-Identifier`` lines, classify them,
    apply the policy."""

    name = "⚖️ license policy"

    def __init__(self, policy: licenses.LicensePolicy = "permissive", exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
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
    """The Stack v2 content filters (line lengths, alphabetic fraction, auto-generated markers, encoded data)."""

    name = "🧹 content filters"

    def __init__(self, config: Optional[FilterConfig] = None, exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        self.config = config or FilterConfig()

    def filter(self, doc: Document):
        from litgpt_clone.corpus.filters import drop_reason

        record = _record(doc)
        return _drop(doc, "filters", drop_reason(doc.text, record["path"], record["language"], self.config))


class DecontaminationFilter(BaseFilter):
    """Drop files that contain a benchmark string (JSONL records or text lines of the given files)."""

    name = "🧪 decontamination"

    def __init__(self, paths: list[str], exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        self.paths = [str(p) for p in paths]
        self._decontaminator = None

    def filter(self, doc: Document):
        if self._decontaminator is None:
            from litgpt_clone.corpus.decontam import Decontaminator

            self._decontaminator = Decontaminator.from_files(self.paths)
        return _drop(doc, "decontaminate", corpus.decontaminate_stage(_record(doc), doc.text, self._decontaminator))


class PIIRedactor(PipelineStep):
    """Replace emails, keys, passwords and public IP addresses; counts go to ``record["pii"]``."""

    name = "🕵 PII redaction"
    type = "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                doc.text = corpus.pii_stage(_record(doc), doc.text)
            for kind, count in _record(doc)["pii"].items():
                self.stat_update(kind, value=count)
            yield doc


class _Barrier(PipelineStep):
    """A step that needs every document of the task before it can let one through (dedup)."""

    type = "🫂 - DEDUP"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data or [])
        records = [_record(d) for d in docs]
        with self.track_time(unit="task"):
            dropped = self.duplicates(records, [d.text for d in docs])
        for i, doc in enumerate(docs):
            if i in dropped:
                records[i].update(drop_stage=self.stage, drop_reason=self.reason, duplicate_of=dropped[i])
                self.stat_update(f"dropped_{self.reason}")
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

    def __init__(self, threshold: float = 0.7, seed: int = 42) -> None:
        super().__init__()
        self.threshold, self.seed = threshold, seed

    def duplicates(self, records: list[dict], texts: list[str]) -> dict[int, str]:
        return corpus.near_duplicates(records, texts, list(range(len(records))), self.threshold, self.seed)[0]


class TokenShardWriter(PipelineStep):
    """Tokenize and write ``litgpt_clone`` token shards (``pretrain --data shards`` reads them); a split by a
    stable hash of each file's blob id. One folder per task (``out_dir`` itself when there is one task)."""

    name = "🔢 token shards"
    type = "💽 - WRITER"

    def __init__(self, out_dir: Union[str, Path], tokenizer_dir: Union[str, Path], val_fraction: float = 0.01, seed: int = 42,
                 shard_tokens: int = 1 << 24) -> None:
        super().__init__()
        self.out_dir, self.tokenizer_dir = Path(out_dir), str(tokenizer_dir)
        self.val_fraction, self.seed, self.shard_tokens = val_fraction, seed, shard_tokens

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from litgpt_clone.data.shards import ShardWriter
        from litgpt_clone.tokenizer import Tokenizer

        tokenizer = Tokenizer(self.tokenizer_dir)
        folder = self.out_dir if world_size == 1 else self.out_dir / f"{rank:05d}"
        writer = ShardWriter(folder, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, shard_tokens=self.shard_tokens)
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
