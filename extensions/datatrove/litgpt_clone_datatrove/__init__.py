"""``prepare code``'s stages as datatrove pipeline steps (see README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from litgpt_clone.corpus.filters import FilterConfig
from litgpt_clone_datatrove.steps import (
    CodeQualityFilter,
    CodeRepositoryReader,
    DecontaminationFilter,
    ExactDedupFilter,
    LanguageFilter,
    LicensePolicyFilter,
    NearDedupFilter,
    OptOutFilter,
    PIIRedactor,
    TokenShardWriter,
    merge_task_shards,
)


def code_corpus_pipeline(sources: list[str], out_dir: Union[str, Path], tokenizer_dir: Optional[str] = None,
                         optout: Optional[str] = None, decontaminate: Optional[list[str]] = None,
                         license_policy: str = "permissive", layout: str = "repo", max_file_size: int = 1 << 20,
                         val_fraction: float = 0.01, seed: int = 42, filters: Union[FilterConfig, dict, None] = None,
                         license_cache: Optional[str] = None, near_dedup_threshold: float = 0.7, shard_tokens: int = 1 << 24,
                         exclude: Sequence[str] = (), languages: Optional[list[str]] = None, keep_vendor: bool = False,
                         keep_generated: bool = False, skip: Sequence[str] = (), exclusion_dir: Optional[str] = None) -> list:
    """The steps of ``litgpt-clone prepare code`` in its order, for a datatrove executor; the arguments are the
    CLI's options (``filters``: a ``FilterConfig`` or a dict of its thresholds, as ``--filters.*``).

    ``out_dir`` receives the token shards (with ``tokenizer_dir``). ``skip``: more folders the reader never enters,
    e.g. the executor's ``logging_dir`` when a source holds it (``out_dir`` and ``exclusion_dir`` are always skipped).
    ``exclusion_dir``: every dropped file's document, with its record (``drop_stage``, ``drop_reason``,
    ``duplicate_of``), is written as JSONL to ``exclusion_dir/<stage>/<rank>.jsonl`` (datatrove's ``JsonlWriter``).
    Bad arguments raise ``CorpusError`` here, before anything runs."""
    def excluded(stage: str):
        if exclusion_dir is None:
            return None
        from datatrove.pipeline.writers import JsonlWriter

        return JsonlWriter(str(Path(exclusion_dir) / stage), compression=None)

    skip = [*skip, str(out_dir), *([exclusion_dir] if exclusion_dir else [])]
    steps = [
        CodeRepositoryReader(sources, layout=layout, max_file_size=max_file_size, license_cache=license_cache, exclude=exclude,
                             skip=skip, exclusion_writer=excluded("read")),
        LanguageFilter(languages, keep_vendor, keep_generated, exclusion_writer=excluded("language")),
        LicensePolicyFilter(license_policy, exclusion_writer=excluded("license")),
    ]
    if optout:
        steps.append(OptOutFilter(optout, exclusion_writer=excluded("optout")))
    steps.append(CodeQualityFilter(filters, exclusion_writer=excluded("filters")))
    if decontaminate:
        steps.append(DecontaminationFilter(decontaminate, exclusion_writer=excluded("decontaminate")))
    steps += [PIIRedactor(), ExactDedupFilter(exclusion_writer=excluded("exact_dedup")),
              NearDedupFilter(near_dedup_threshold, seed, exclusion_writer=excluded("near_dedup"))]
    if tokenizer_dir:
        steps.append(TokenShardWriter(out_dir, tokenizer_dir, val_fraction=val_fraction, seed=seed, shard_tokens=shard_tokens))
    return steps


__all__ = [
    "CodeQualityFilter", "CodeRepositoryReader", "DecontaminationFilter", "ExactDedupFilter", "LanguageFilter",
    "LicensePolicyFilter", "NearDedupFilter", "OptOutFilter", "PIIRedactor", "TokenShardWriter", "code_corpus_pipeline",
    "merge_task_shards",
]
