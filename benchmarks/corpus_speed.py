"""Speed of ``prepare code``'s stages (MB/s) on a source tree, side by side with datatrove's own equivalents.

Every stage runs on the same files in one process, timed on its own (input MB / seconds of that stage), then the
whole pipeline runs end to end in fresh ``litgpt-clone prepare code`` processes (a cold license cache, so the
ScanCode index load is in the time; ``--workers 1`` and ``--workers N``). When datatrove is installed, its
equivalents run on the same texts:

- reader: datatrove's ``JsonlReader`` over a JSONL of the decoded files (datatrove has no git/folder-of-code reader;
  ours reads the files themselves from disk), against our read stage;
- PII: ``PIIFormatter`` (email and IP regexes), against ``corpus.pii.redact`` (emails, IPs, secrets confirmed with
  detect-secrets: more work);
- MinHash: ``MinhashDedupSignature`` → ``Buckets`` → ``Cluster`` → ``Filter`` with 25 bands x 10 rows, word 5-grams
  on a ``\\w+`` word split (the same shingles as ours; datatrove's default English tokenizer needs spaCy), SHA-1
  shingle hashes (its xxhash path needs xxhash<4; this venv has 4.x), against
  ``corpus.dedup.near_duplicate_clusters`` (256 permutations, candidates verified by exact Jaccard);
- tokenizer: ``DocumentTokenizer`` (its ``.ds`` format, shuffling off) with the same tokenizer.json, against our
  ``Tokenizer.encode`` + ``ShardWriter``.

Usage (from the repo root)::

    .venv/bin/python benchmarks/corpus_speed.py --tokenizer_dir demo_out/hf            # the Python stdlib
    .venv/bin/python benchmarks/corpus_speed.py --source path/to/repo --exclude node_modules --workers 2
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def row(name: str, mb: float, seconds: float, note: str = "") -> dict:
    return dict(stage=name, mb=round(mb, 2), seconds=round(seconds, 3), mb_per_s=round(mb / seconds, 2) if seconds else None, note=note)


def ours(args, tmp: Path) -> tuple[list[dict], list[str], list[str]]:
    from litgpt_clone.corpus import filters, identity, language, licenses, pii
    from litgpt_clone.corpus.decontam import Decontaminator
    from litgpt_clone.corpus.dedup import near_duplicate_clusters
    from litgpt_clone.corpus.pipeline import exact_duplicates
    from litgpt_clone.corpus.sources import open_sources
    from litgpt_clone.data.shards import ShardWriter
    from litgpt_clone.tokenizer import Tokenizer

    rows = []

    def read_all():
        files = []
        for repo in open_sources([args.source], "repo", args.max_file_size, args.exclude):
            readable = [e for e in repo.entries if not e.skip]
            files += [(e.path, d) for e, d in zip(readable, repo.read(readable)) if isinstance(d, bytes)]
        return files

    files, t = timed(read_all)
    total_mb = sum(len(d) for _, d in files) / 1e6
    rows.append(row("read (list + read files)", total_mb, t, f"{len(files)} files"))

    decoded, t = timed(lambda: [(p, d, filters.decode(d)[0]) for p, d in files])
    rows.append(row("decode", total_mb, t))
    _, t = timed(lambda: [(identity.blob_id(d), identity.content_id(d)) for _, d in files])
    rows.append(row("identity (2x SHA-1)", total_mb, t))
    texts = [(p, d, text) for p, d, text in decoded if text is not None and d.strip()]
    text_mb = sum(len(d) for _, d, _ in texts) / 1e6
    langs, t = timed(lambda: [language.detect(p, d).name for p, d, _ in texts])
    rows.append(row("language (enry)", text_mb, t))

    license_texts = [licenses.license_text(p, text) for p, _, text in texts]
    license_texts = [x for x in license_texts if x]
    _, t_load = timed(lambda: licenses.detect("MIT License"))  # loads ScanCode's index
    rows.append(row("license index load (once per process, skipped on a cache hit)", 0, t_load))
    _, t = timed(lambda: [licenses.detect(x) for x in license_texts])
    rows.append(row("license detection (license/README files)", sum(len(x.encode()) for x in license_texts) / 1e6, t,
                    f"{len(license_texts)} files"))

    config = filters.FilterConfig()
    reasons, t = timed(lambda: [filters.drop_reason(text, p, lang, config) for (p, _, text), lang in zip(texts, langs)])
    rows.append(row("filters", text_mb, t))
    kept = [text for (_, _, text), reason, lang in zip(texts, reasons, langs) if reason is None and lang]
    kept_mb = sum(len(x.encode()) for x in kept) / 1e6

    rng = random.Random(0)
    snippets = [x[i : i + 200] for x in rng.sample(kept, min(200, len(kept))) for i in [rng.randrange(max(1, len(x) - 200))]]
    decontaminator = Decontaminator(snippets)
    _, t = timed(lambda: [decontaminator.contaminated(x) for x in kept])
    rows.append(row("decontamination (200 strings)", kept_mb, t))

    redacted, t = timed(lambda: [pii.redact(x)[0] for x in kept])
    rows.append(row("PII redaction", kept_mb, t))

    records = [dict(content_id=identity.content_id(x.encode()), license_type="permissive", commit_time=None, repo="r", path=str(i))
               for i, x in enumerate(redacted)]
    _, t = timed(lambda: exact_duplicates(records, list(range(len(records)))))
    rows.append(row("exact dedup (content id groups)", kept_mb, t))
    clusters, t = timed(lambda: near_duplicate_clusters([(str(i), x) for i, x in enumerate(redacted)]))
    rows.append(row("near dedup (MinHash-LSH + Jaccard)", kept_mb, t, f"{len(clusters)} clusters"))

    tokenizer = Tokenizer(args.tokenizer_dir)

    def tokenize():
        with ShardWriter(tmp / "ours_shards", vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id) as writer:
            for x in redacted:
                writer.add(tokenizer.encode(x).tolist())

    _, t = timed(tokenize)
    rows.append(row("tokenize + shards", kept_mb, t))
    return rows, kept, redacted


def end_to_end(args, tmp: Path) -> list[dict]:
    rows = []
    for workers in sorted({1, args.workers}):
        out = tmp / f"e2e_{workers}"
        cmd = [sys.executable, "-m", "litgpt_clone", "prepare", "code", args.source, "--out_dir", str(out),
               "--tokenizer_dir", args.tokenizer_dir, "--workers", str(workers), "--max_file_size", str(args.max_file_size),
               "--exclude", json.dumps(args.exclude)]
        _, t = timed(subprocess.run, cmd, check=True, capture_output=True)
        manifest = json.loads((out / "v1" / "manifest.json").read_text())
        rows.append(row(f"end to end, --workers {workers} (fresh process, cold license cache)", manifest["stages"][0]["bytes_in"] / 1e6, t,
                        f"{manifest['totals']['kept']} files kept, {manifest['totals']['tokens']:,} tokens"))
    return rows


def datatrove_side(args, tmp: Path, kept: list[str]) -> list[dict]:
    try:
        import datatrove  # noqa: F401
    except ImportError:
        return []
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                                  MinhashDedupSignature)
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    class WordSplit(WhitespaceTokenizer):
        def word_tokenize(self, text):
            return re.findall(r"\w+", text)

    rows, mb = [], sum(len(x.encode()) for x in kept) / 1e6
    jsonl = tmp / "dt_in" / "docs.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("".join(json.dumps({"id": str(i), "text": x}) + "\n" for i, x in enumerate(kept)))
    docs, t = timed(lambda: list(JsonlReader(str(jsonl.parent))()))
    rows.append(row("datatrove JsonlReader (decoded files as JSONL)", mb, t))

    formatter = PIIFormatter()
    _, t = timed(lambda: [formatter.format(x) for x in kept])
    rows.append(row("datatrove PIIFormatter (emails, IPs)", mb, t))

    config = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"), num_buckets=25, hashes_per_bucket=10, n_grams=5)
    sig, buckets, clusters = tmp / "mh_sig", tmp / "mh_buckets", tmp / "mh_clusters"

    def drain(out) -> int:  # some steps are generators, some consume their input and return None
        return sum(1 for _ in out) if out is not None else 0

    def minhash():
        documents = lambda: (Document(text=x, id=str(i)) for i, x in enumerate(kept))  # noqa: E731
        drain(MinhashDedupSignature(output_folder=str(sig), config=config, language=WordSplit()).run(documents()))
        for rank in range(config.num_buckets):  # one task per bucket, as datatrove requires
            drain(MinhashDedupBuckets(input_folder=str(sig), output_folder=str(buckets), config=config).run(None, rank, config.num_buckets))
        drain(MinhashDedupCluster(input_folder=str(buckets), output_folder=str(clusters), config=config).run(None))
        return drain(MinhashDedupFilter(input_folder=str(clusters)).run(documents()))

    left, t = timed(minhash)
    rows.append(row("datatrove MinHash (signature+buckets+cluster+filter)", mb, t, f"{len(kept) - left} docs dropped"))

    tokenizer = DocumentTokenizer(output_folder=str(tmp / "dt_tok"), tokenizer_name_or_path=str(Path(args.tokenizer_dir) / "tokenizer.json"),
                                  eos_token=None, shuffle_documents=False)
    _, t = timed(lambda: drain(tokenizer.run(iter([Document(text=x, id=str(i)) for i, x in enumerate(kept)]))))
    rows.append(row("datatrove DocumentTokenizer", mb, t))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--exclude", nargs="*", default=["site-packages", "*__pycache__"])
    parser.add_argument("--tokenizer_dir", default=str(ROOT / "demo_out" / "hf"))
    parser.add_argument("--max_file_size", type=int, default=1 << 20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows, kept, _ = ours(args, tmp)
        dt_rows = datatrove_side(args, tmp, kept)
        e2e = end_to_end(args, tmp)
    by_name = {r["stage"]: r for r in rows + dt_rows}
    pairs = [("read (list + read files)", "datatrove JsonlReader (decoded files as JSONL)"),
             ("PII redaction", "datatrove PIIFormatter (emails, IPs)"),
             ("near dedup (MinHash-LSH + Jaccard)", "datatrove MinHash (signature+buckets+cluster+filter)"),
             ("tokenize + shards", "datatrove DocumentTokenizer")]
    print(f"source: {args.source} (excluding {args.exclude}); python {platform.python_version()}, {platform.machine()}\n")
    print("| stage | MB | s | MB/s | note |\n|---|---:|---:|---:|---|")
    for r in rows + e2e + dt_rows:
        print(f"| {r['stage']} | {r['mb']} | {r['seconds']} | {r['mb_per_s']} | {r['note']} |")
    if dt_rows:
        print("\n| ours | datatrove | ours / datatrove time |\n|---|---|---:|")
        for a, b in pairs:
            if a in by_name and b in by_name:
                print(f"| {a} | {b} | {by_name[a]['seconds'] / by_name[b]['seconds']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(ours=rows, end_to_end=e2e, datatrove=dt_rows), indent=2))


if __name__ == "__main__":
    main()
