"""A corpus version's ``manifest.json`` and ``CHANGELOG.md``, and how versions are numbered.

``out_dir/vN`` is a complete version; ``N`` is one more than the highest complete version. ``manifest.json`` is the
token shards' manifest (``litgpt_clone.data.shards``, so ``pretrain --data shards --data.path out_dir/vN`` reads it)
with the corpus facts beside the shard list: the sources and what each gave (commit, file count, a digest of its
paths and content ids), the configuration and its hash, the SHA-256 of every file the configuration points at,
tool and library versions, counts per stage, totals per language and license, and the SHA-256 of ``files.jsonl``,
``text.jsonl`` and ``CHANGELOG.md``. Nothing in it depends on the time or the machine's paths beyond the sources as
given, so the same inputs and configuration give a byte-identical manifest.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections import Counter
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Optional

from litgpt_clone.checkpoints.io import write_atomic_text
from litgpt_clone.data.shards import FORMAT, VERSION, sha256_file

CORPUS_FORMAT = "litgpt_clone.code_corpus"
TOOLS = ("litgpt_clone", "enry-python", "license-expression", "detect-secrets", "charset-normalizer", "datasketch",
         "rensa", "pyahocorasick", "tokenizers", "tiktoken", "sentencepiece", "numpy")


def next_version(out_dir: Path) -> tuple[int, Optional[int]]:
    """``(N, previous)``: the version to build and the latest complete one (None when there is none)."""
    out_dir = Path(out_dir)
    done = sorted(int(m.group(1)) for p in out_dir.glob("v*") if (m := re.fullmatch(r"v(\d+)", p.name)) and p.is_dir())
    previous = done[-1] if done else None
    return (previous or 0) + 1, previous


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = package_version(name)
        except PackageNotFoundError:
            continue
    return out


def stage_counts(records: list[dict]) -> list[dict]:
    """Per stage: files and bytes coming in and going out, and the drops by reason."""
    from litgpt_clone.corpus.pipeline import STAGES

    rows, alive = [], list(records)
    for stage in STAGES:
        dropped = [r for r in alive if r["drop_stage"] == stage]
        out = [r for r in alive if r["drop_stage"] != stage]
        rows.append(dict(
            stage=stage, files_in=len(alive), files_out=len(out), bytes_in=sum(r["size"] or 0 for r in alive),
            bytes_out=sum(r["size"] or 0 for r in out), dropped=dict(sorted(Counter(r["drop_reason"] for r in dropped).items())),
        ))
        alive = out
    return rows


def _repositories(repos, records: list[dict], opted_out: dict[str, str]) -> list[dict]:
    by_repo: dict[str, list[dict]] = {}
    for r in records:
        by_repo.setdefault(r["repo"], []).append(r)
    out = []
    for repo in repos:
        h = hashlib.sha256()
        for r in by_repo.get(repo.name, []):
            h.update(f"{r['path']}\0{r['content_id'] or r['drop_reason']}\n".encode("utf-8", errors="surrogateescape"))
        out.append(dict(name=repo.name, source=repo.source, kind=repo.kind, commit=repo.commit,
                        files=len(repo.entries), digest=h.hexdigest(), optout=opted_out.get(repo.name)))
    return out


def build(config, digest: str, version: int, previous: Optional[int], repos, records: list[dict], dedup: dict,
          shards: Optional[dict], folder: Path, opted_out: Optional[dict[str, str]] = None) -> dict:
    """The manifest of the version being written in ``folder`` (its files.jsonl, text.jsonl, CHANGELOG.md exist).
    ``opted_out``: repository name -> the opt-out registry's reason ("owner" / "repo"), recorded per repository
    (``optout``, null when not opted out) whatever stage its files were dropped at."""
    from litgpt_clone.corpus.pipeline import file_inputs
    from litgpt_clone.corpus.licenses import BLUE_OAK_VERSION, scancode_version

    kept = [r for r in records if r["drop_stage"] is None]
    languages = Counter(r["language"] for r in kept)
    manifest = dict(shards["shards"]) if shards else dict(format=CORPUS_FORMAT, shards=[], note="no --tokenizer_dir: no token shards")
    tools = tool_versions()
    tools["scancode"] = scancode_version()
    tools["blueoak-list"] = BLUE_OAK_VERSION  # the Blue Oak Council license list bundled as blueoak_list.json
    manifest.update(
        corpus_version=version,
        previous_version=previous,
        config=config.to_dict(),
        config_hash=digest,
        inputs={path: sha256_file(Path(path)) for path in file_inputs(config)},
        repositories=_repositories(repos, records, opted_out or {}),
        empty_repositories=sorted(r.name for r in repos if not r.entries),
        stages=stage_counts(records),
        totals=dict(
            files=len(records), kept=len(kept), kept_bytes=sum(r["size"] for r in kept),
            tokens=sum(r["tokens"] or 0 for r in kept) if shards else None,
            splits=dict(sorted(Counter(r["split"] for r in kept).items())),
        ),
        languages=dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        license_types=dict(sorted(Counter(r["license_type"] for r in kept).items())),
        pii=dict(sorted(sum((Counter(r["pii"]) for r in kept), Counter()).items())),
        duplicate_clusters={"exact": dedup["exact_clusters"], "near": dedup["near_clusters"]},
        tools=tools,
        outputs={name: sha256_file(folder / name) for name in ("CHANGELOG.md", "files.jsonl", "text.jsonl")},
    )
    if not shards:
        manifest.update(format=CORPUS_FORMAT)
    else:
        manifest.update(format=FORMAT, version=VERSION)
    return manifest


def write(folder: Path, manifest: dict) -> None:
    write_atomic_text(Path(folder) / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def load_records(version_dir: Path) -> list[dict]:
    path = Path(version_dir) / "files.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def changelog(version: int, previous: Optional[int], previous_records: Optional[list[dict]], records: list[dict],
              opted_out: Optional[dict[str, str]] = None) -> str:
    """Markdown: files added, removed (with why), changed, and the repositories opted out, against ``previous``.
    ``opted_out`` (repository name -> reason) lists a repository even when all its files were dropped at an earlier
    stage (license, language, ...); without it, the repositories of the files dropped at ``optout``."""
    now = {(r["repo"], r["path"]): r for r in records}
    # (not from ``now``: an archive's path can also name members skipped after the one kept: links, duplicates)
    kept_now = {(r["repo"], r["path"]): r for r in records if r["drop_stage"] is None}
    names = set(opted_out) if opted_out is not None else {r["repo"] for r in records if r["drop_stage"] == "optout"}
    files = Counter(r["repo"] for r in records)
    opted = {name: files[name] for name in names}
    lines = [f"# v{version}", ""]
    if previous_records is None:
        lines += [f"First version: {len(kept_now)} files kept of {len(records)} read.", ""]
    else:
        before = {(r["repo"], r["path"]): r for r in previous_records if r["drop_stage"] is None}
        added = sorted(set(kept_now) - set(before))
        removed = sorted(set(before) - set(kept_now))
        changed = sorted(k for k in set(kept_now) & set(before) if kept_now[k]["content_id"] != before[k]["content_id"])
        lines += [f"Against v{previous}: {len(kept_now)} files kept (v{previous}: {len(before)}); {len(added)} added,"
                  f" {len(removed)} removed, {len(changed)} changed.", ""]
        lines += ["## Added", ""] + ([f"- {repo}/{path}" for repo, path in added] or ["- none"]) + [""]
        lines += ["## Removed", ""]
        for key in removed:
            r = now.get(key)
            why = "no longer in the sources" if r is None else f"dropped at {r['drop_stage']}: {r['drop_reason']}"
            lines.append(f"- {key[0]}/{key[1]} ({why})")
        lines += ([] if removed else ["- none"]) + [""]
        lines += ["## Changed", ""] + ([f"- {repo}/{path}" for repo, path in changed] or ["- none"]) + [""]
    lines += ["## Opted out", ""]
    lines += [f"- {repo} ({count} files)" if count != 1 else f"- {repo} (1 file)" for repo, count in sorted(opted.items())] or ["- none"]
    if opted and previous is not None:
        lines += ["", f"Versions before v{version} may still hold files of these repositories: delete them and use this one."]
    return "\n".join(lines) + "\n"
