"""``report.md`` and its PNG charts (matplotlib): what each stage kept, languages, licenses, duplicates, PII, shards."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from litgpt_clone.checkpoints.io import write_atomic_text

TOP = 20


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _charts(folder: Path, manifest: dict, records: list[dict], dedup: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [r for r in records if r["drop_stage"] is None]
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=90, metadata={"Software": None})
        plt.close(fig)
        written.append(name)

    lang_bytes = Counter()
    for r in kept:
        lang_bytes[r["language"]] += r["size"]
    top = lang_bytes.most_common(TOP)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(top) + 1)))
    ax.barh([k for k, _ in top], [v / 1e6 for _, v in top], color="#4c72b0")
    ax.set_xlabel("MB kept")
    ax.set_title(f"Languages (top {len(top)} by bytes)")
    save(fig, "languages.png")

    types = Counter(r["license_type"] for r in records if r["license_type"])
    ids = Counter(i for r in kept for i in r["detected_licenses"]) or Counter({"(none detected)": 0})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    a1.bar(list(types), list(types.values()), color=["#55a868", "#c44e52", "#8172b2"][: len(types)])
    a1.set_title("license_type of files reaching the license stage")
    a1.set_ylabel("files")
    top_ids = ids.most_common(10)[::-1]
    a2.barh([k for k, _ in top_ids], [v for _, v in top_ids], color="#dd8452")
    a2.set_title("Detected licenses of kept files")
    a2.set_xlabel("files")
    save(fig, "licenses.png")

    stages = manifest["stages"]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.bar(["input"] + [s["stage"] for s in stages], [stages[0]["bytes_in"] / 1e6] + [s["bytes_out"] / 1e6 for s in stages], color="#4c72b0")
    ax.set_ylabel("MB")
    ax.set_title("Bytes of the input and after each stage")
    ax.tick_params(axis="x", rotation=45)
    save(fig, "bytes_per_stage.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    sizes = {"exact": dedup["exact_clusters"], "near": dedup["near_clusters"]}
    for label, values in sizes.items():
        if values:
            ax.hist(values, bins=range(2, max(values) + 2), alpha=0.6, label=label, align="left")
    ax.set_xlabel("copies in the cluster")
    ax.set_ylabel("clusters")
    ax.set_title("Duplicate cluster sizes")
    if any(sizes.values()):
        ax.legend()
    save(fig, "duplicate_clusters.png")
    return written


def write(folder: Path, manifest: dict, records: list[dict], dedup: dict) -> Path:
    """Write ``report.md`` and the charts into ``folder``; returns the report's path."""
    folder = Path(folder)
    charts = _charts(folder, manifest, records, dedup)
    totals, kept = manifest["totals"], [r for r in records if r["drop_stage"] is None]
    lines = [f"# Code corpus v{manifest['corpus_version']}", ""]
    lines += [f"{totals['kept']} of {totals['files']} files kept ({_mb(totals['kept_bytes'])} MB) from"
              f" {len(manifest['repositories'])} repositories; configuration hash `{manifest['config_hash'][:16]}`.", ""]
    if manifest["empty_repositories"]:
        lines += [f"Empty repositories: {', '.join(manifest['empty_repositories'])}.", ""]
    if manifest["shards"]:
        by_split = Counter()
        for shard in manifest["shards"]:
            by_split[shard["split"]] += shard["tokens"]
        lines += ["Token shards: " + ", ".join(f"{split} {n:,} tokens" for split, n in sorted(by_split.items()))
                  + f" in {len(manifest['shards'])} shards (vocab {manifest['vocab_size']}, EOS {manifest['eos_id']}).", ""]
    else:
        lines += ["No token shards: no `--tokenizer_dir` was given.", ""]

    lines += ["## Stages", "", "| stage | files in | files out | MB in | MB out | dropped |", "|---|---:|---:|---:|---:|---|"]
    for s in manifest["stages"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['files_in']} | {s['files_out']} | {_mb(s['bytes_in'])} | {_mb(s['bytes_out'])} | {dropped} |")
    lines += ["", "![bytes per stage](bytes_per_stage.png)", ""]

    lang_bytes, lang_files = Counter(), Counter()
    for r in kept:
        lang_bytes[r["language"]] += r["size"]
        lang_files[r["language"]] += 1
    lines += ["## Languages", "", "| language | files | MB |", "|---|---:|---:|"]
    lines += [f"| {k} | {lang_files[k]} | {_mb(v)} |" for k, v in lang_bytes.most_common(TOP)]
    if len(lang_bytes) > TOP:
        lines.append(f"| ({len(lang_bytes) - TOP} more) | | |")
    lines += ["", "![languages](languages.png)", ""]

    lines += ["## Licenses", "", "| license_type | files kept |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in manifest["license_types"].items()]
    ids = Counter(i for r in kept for i in r["detected_licenses"])
    if ids:
        lines += ["", "Detected licenses of kept files: " + ", ".join(f"{k} ({v})" for k, v in ids.most_common())]
    lines += ["", "![licenses](licenses.png)", ""]

    lines += ["## Duplicates", ""]
    for kind in ("exact", "near"):
        sizes = manifest["duplicate_clusters"][kind]
        lines.append(f"- {kind}: {len(sizes)} clusters, {sum(sizes) - len(sizes)} files dropped" + (f", largest {max(sizes)}" if sizes else ""))
    lines += ["", "![duplicate clusters](duplicate_clusters.png)", ""]

    lines += ["## PII redacted", ""]
    lines += [f"- {k}: {v}" for k, v in manifest["pii"].items()] or ["- none found"]
    lines += ["", f"Charts: {', '.join(charts)}. Per-file records: `files.jsonl`; redacted text: `text.jsonl`."]
    path = folder / "report.md"
    write_atomic_text(path, "\n".join(lines) + "\n")
    return path
