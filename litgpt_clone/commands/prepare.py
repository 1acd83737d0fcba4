"""``litgpt-clone prepare code``: build a versioned code corpus (The Stack v2 style) from repositories."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from litgpt_clone.corpus.filters import FilterConfig
from litgpt_clone.corpus.pipeline import CorpusError


def prepare_code(
    sources: Union[str, list[str]],
    out_dir: Path = Path("data/code"),
    tokenizer_dir: Optional[Path] = None,
    optout: Optional[Path] = None,
    license_policy: Literal["permissive", "strict", "all"] = "permissive",
    decontaminate: Optional[list[Path]] = None,
    layout: Literal["repo", "owner/repo"] = "repo",
    exclude: Optional[list[str]] = None,
    max_file_size: int = 1 << 20,
    val_fraction: float = 0.01,
    seed: int = 42,
    languages: Optional[list[str]] = None,
    keep_vendor: bool = False,
    keep_generated: bool = False,
    near_dedup_threshold: float = 0.7,
    shard_tokens: int = 1 << 24,
    workers: int = 1,
    filters: FilterConfig = FilterConfig(),
) -> None:
    """Build the next version ``out_dir/vN`` of a code corpus: metadata, redacted text, token shards and a report.

    Each version also holds its manifest and CHANGELOG.

    Stages: read → decode/binary → identity (blob_id, content_id) → language (Linguist via enry) → licenses
    (ScanCode) and policy → opt-out → filters → decontamination → PII redaction → exact dedup → near dedup
    (MinHash-LSH, verified by exact Jaccard; a file is dropped only as the near duplicate of a kept one) → tokenize
    → token shards. An interrupted run resumes when started again with the same options.

    Args:
        sources: A git repository (its HEAD commit), a folder or a tar/zip archive; several as a list:
            ``'[repo1, folder2, archive.tar.gz]'``.
        out_dir: Folder of the corpus versions; this run writes ``out_dir/vN`` (N = last version + 1). It may be
            inside a source folder (``prepare code . --out_dir corpus``): it is then skipped when the source is read,
            a cache or partial build there is used only if one of your own builds wrote it, and links there stop the build.
        tokenizer_dir: Checkpoint or tokenizer folder (tokenizer.json or tokenizer.model) to write token shards
            with; without it no shards are written.
        optout: JSONL opt-out registry (records with ``optout_owners`` and ``optout_repos`` lists of owner and
            ``owner/repo`` names); any other key, or a name that can never match, stops the build with one line.
        license_policy: ``permissive`` keeps permissive and no-license files (The Stack v2), ``strict`` only
            permissive ones, ``all`` every file.
        decontaminate: Files of benchmark solutions/prompts (JSONL: every string field; other files: every line);
            files that contain one of 50 or more characters are dropped. Each file must be UTF-8 and hold such a
            string.
        layout: ``repo``: each source is one repository; ``owner/repo``: a folder or archive holds
            ``<owner>/<repo>/`` folders (git repositories among them are read through git).
        exclude: Shell-style patterns of paths inside a repository to leave out (a file is left out when its path
            or a folder above it matches; ``*`` also matches ``/``), e.g. ``'[site-packages, "*__pycache__"]'``.
            Excluded license files still give their repository its licenses.
        max_file_size: Files larger than this many bytes are skipped unread.
        val_fraction: Fraction of files (chosen by a stable hash of their blob id and the seed) in the val split.
        seed: Seed of the split hash and of MinHash.
        languages: Keep only these Linguist languages (e.g. ``'[Python, C]'``); default all.
        keep_vendor: Keep files Linguist calls vendored (``node_modules/``, ``third_party/``, ...).
        keep_generated: Keep files Linguist calls generated (minified, protobuf output, lock files, ...).
        near_dedup_threshold: Files whose Jaccard similarity is at least this are near duplicates; at most
            ``MAX_NEAR_DEDUP_THRESHOLD`` (0.997: MinHash-LSH over 256 permutations needs two bands or more).
        shard_tokens: Tokens per shard file.
        workers: Processes for license detection, the per-file stages, MinHash sketches and tokenization (the
            output does not depend on it).
        filters: Thresholds of the content filters (e.g. ``--filters.max_line_length 1000``).
    """
    from dataclasses import asdict

    from litgpt_clone.config import check_out_dir
    from litgpt_clone.corpus.decontam import Decontaminator
    from litgpt_clone.corpus.dedup import MAX_NEAR_DEDUP_THRESHOLD
    from litgpt_clone.corpus.optout import OptOut
    from litgpt_clone.corpus.pipeline import CorpusConfig, run
    from litgpt_clone.corpus.sources import check_layout

    source_list = [sources] if isinstance(sources, str) else list(sources)
    if not source_list:
        raise CorpusError("no sources given: name a git repository, folder or archive")
    for source in source_list:
        if not Path(source).exists():
            raise CorpusError(f"source {source} does not exist: give a git repository, folder or tar/zip archive")
        check_layout(source, layout)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise CorpusError(f"--tokenizer_dir {tokenizer_dir} is not a folder: give a checkpoint or tokenizer folder")
    if workers < 1:
        raise CorpusError(f"--workers {workers}: use 1 or more processes")
    check_out_dir(out_dir)
    if not 0 <= val_fraction < 1:
        raise CorpusError(f"--val_fraction {val_fraction} must be in [0, 1)")
    if not 0 <= near_dedup_threshold <= MAX_NEAR_DEDUP_THRESHOLD:
        raise CorpusError(f"--near_dedup_threshold {near_dedup_threshold}: use a Jaccard similarity in [0, {MAX_NEAR_DEDUP_THRESHOLD}]"
                          " (above that MinHash-LSH over 256 permutations has fewer than two bands)")
    for path in decontaminate or []:
        if not Path(path).is_file():
            raise CorpusError(f"--decontaminate: no file at {path}")
    Decontaminator.from_files(decontaminate or [])  # read now: an unusable file stops the build before it starts
    if optout is not None:
        registry = OptOut.from_file(optout)  # the same for the registry
        if layout == "owner/repo" and (solo := sorted(r for r in registry.repos if "/" not in r)):
            raise CorpusError(f"--optout: the optout_repos entry {solo[0]!r} can never match: with --layout owner/repo every"
                              f" repository is named owner/repo; write it as <owner>/{solo[0]}")
    from litgpt_clone.corpus import language

    for name in languages or []:
        if not language.known(name):
            fixed = next((n for n in (name.capitalize(), name.upper(), name.title()) if language.known(n)), None)
            hint = f"did you mean {fixed}?" if fixed else "use Linguist's names, e.g. Python, C++, JavaScript, Jupyter Notebook"
            raise CorpusError(f"--languages: {name!r} is not a language GitHub Linguist knows (every file would be dropped): {hint}")
    config = CorpusConfig(
        sources=[str(s) for s in source_list], layout=layout, exclude=list(exclude or []), tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None,
        optout=str(optout) if optout else None, license_policy=license_policy,
        decontaminate=[str(p) for p in decontaminate or []], max_file_size=max_file_size, val_fraction=val_fraction,
        seed=seed, languages=languages, keep_vendor=keep_vendor, keep_generated=keep_generated,
        near_dedup_threshold=near_dedup_threshold, shard_tokens=shard_tokens, filters=asdict(filters),
    )
    result = run(config, out_dir, workers=workers)
    print(summary(result))


def summary(result) -> str:
    """What the run did, where it is, and the command that trains on it."""
    m, folder = result.manifest, result.version_dir
    lines = [f"corpus v{m['corpus_version']} in {folder}", "", f"{'stage':<14}{'files in':>10}{'files out':>11}  dropped"]
    for s in m["stages"]:
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items())
        lines.append(f"{s['stage']:<14}{s['files_in']:>10}{s['files_out']:>11}  {dropped}")
    lines += ["", f"kept {m['totals']['kept']} files ({m['totals']['kept_bytes'] / 1e6:.2f} MB); metadata {folder / 'files.jsonl'},"
                  f" text {folder / 'text.jsonl'}", f"report {result.report}"]
    if not m["totals"]["kept"]:
        why = "every file was dropped (see the table above)" if m["stages"][0]["files_in"] else "the sources have no files"
        lines.append(f"nothing was kept: {why}, so there is nothing to train on")
    elif m["config"]["tokenizer_dir"]:
        lines += [f"token shards: {len(m['shards'])} files, {m['totals']['tokens']:,} tokens in {folder}",
                  f"next: litgpt-clone pretrain <model_name> --tokenizer_dir {m['config']['tokenizer_dir']} --data shards"
                  f" --data.path {folder}"]
    else:
        lines.append("no token shards (no --tokenizer_dir); rerun with --tokenizer_dir <checkpoint> to write them")
    return "\n".join(lines)
