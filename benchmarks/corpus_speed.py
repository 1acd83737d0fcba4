"""Speed of ``prepare code`` (MB/s per stage and end to end) on a source tree, side by side with datatrove's own
equivalents in the same run.

Every timing is reported as wall time and as CPU time (this process plus the child processes it waited for): the
machine may be shared, and CPU time is what other jobs disturb least.

1. Stages, in a child process: each stage of ours timed alone on the same files (input MB / seconds of that
   stage), and datatrove's equivalent right after it on the same texts, ``--stage_rounds`` times (fastest kept):

   - reader: our listing + reading of the files from disk, against datatrove's ``JsonlReader`` over a JSONL of the
     texts (datatrove has no folder-of-code reader);
   - PII: ``corpus.pii.redact`` (emails, IPs, secrets confirmed with detect-secrets: more work) against
     ``PIIFormatter`` (email and IP regexes);
   - MinHash: ``corpus.dedup.find_near_duplicates`` (256 permutations, candidates verified by exact Jaccard) against
     ``MinhashDedupSignature`` → ``Buckets`` → ``Cluster`` → ``Filter`` with 25 bands x 10 rows (The Stack v2's),
     word 5-grams on a ``\\w+`` word split (the same shingles as ours; datatrove's default English tokenizer needs
     spaCy), SHA-1 shingle hashes (its xxhash path needs xxhash<4);
   - tokenizer: ``corpus.pipeline.token_ids`` + ``ShardWriter`` against ``DocumentTokenizer`` (its ``.ds`` format,
     shuffling off), same tokenizer.json.

2. End to end, ``--workers`` 1 and N, fresh processes taking turns (ours, datatrove, ours, ...; ``--rounds``
   rounds, fastest kept):

   - ours: ``litgpt-clone prepare code --workers N`` on the source tree, with a warm license cache (the
     ``out_dir/cache`` of an earlier build, as on every rebuild) and, once, a cold one (ScanCode's index load and
     every license detection in the time);
   - datatrove: ``LocalPipelineExecutor`` (forked workers) with tasks = workers = N running JsonlReader →
     MinhashDedupSignature; MinhashDedupBuckets; MinhashDedupCluster; JsonlReader → PIIFormatter →
     MinhashDedupFilter → DocumentTokenizer, on 8 JSONL files (datatrove spreads files, not documents, over tasks)
     of the texts that pass our per-file stages, so that both redact, deduplicate and tokenize the same documents
     (ours also reads, decodes, detects languages and licenses, filters and decontaminates).

   ``TOKENIZERS_PARALLELISM=false`` everywhere, so that N processes use N cores on both sides (datatrove's
   ``encode_batch`` would otherwise spread one task over every core).

Usage (from the repo root)::

    .venv/bin/python benchmarks/corpus_speed.py                      # the Python stdlib with its site-packages
    .venv/bin/python benchmarks/corpus_speed.py --exclude site-packages "*__pycache__" --rounds 1   # stdlib only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # N processes = N cores, for both sides (inherited by subprocesses)


def timed(fn, *args, **kwargs):
    """``(fn(...), (wall seconds, CPU seconds))``; CPU counts this process and the child processes it waited for."""
    def cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    wall, start = time.perf_counter(), cpu()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - wall, cpu() - start)


class Best:
    """The fastest of several timings of each named stage (wall and CPU time, each its own minimum)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def add(self, name: str, mb: float, t: tuple[float, float], note: str = "") -> None:
        old = self.rows.get(name, dict(seconds=float("inf"), cpu_seconds=float("inf")))
        wall, cpu = min(t[0], old["seconds"]), min(t[1], old["cpu_seconds"])
        self.rows[name] = dict(stage=name, mb=round(mb, 2), seconds=round(wall, 3), cpu_seconds=round(cpu, 3),
                               mb_per_s=round(mb / wall, 2) if wall else None, mb_per_cpu_s=round(mb / cpu, 2) if cpu else None,
                               note=note)


# --------------------------------------------------------------------------- datatrove's equivalents
def _datatrove_minhash_config():
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    return MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"), num_buckets=25, hashes_per_bucket=10, n_grams=5)


def _word_split():
    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    class WordSplit(WhitespaceTokenizer):  # the \w+ words ours shingles (datatrove's English default needs spaCy)
        def word_tokenize(self, text):
            return re.findall(r"\w+", text)

    return WordSplit()


def _drain(out) -> int:  # some datatrove steps are generators, some consume their input and return None
    return sum(1 for _ in out) if out is not None else 0


def datatrove_stages(best: Best, tmp: Path, texts: list[str], tokenizer_dir: str, which: str) -> None:
    """One round of one of datatrove's equivalents ("reader", "pii", "minhash", "tokenizer") on ``texts``."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer

    mb = sum(len(x.encode()) for x in texts) / 1e6
    work = tmp / f"dt_{which}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    documents = lambda: (Document(text=x, id=str(i)) for i, x in enumerate(texts))  # noqa: E731
    if which == "reader":
        (work / "docs.jsonl").write_text("".join(json.dumps({"id": str(i), "text": x}) + "\n" for i, x in enumerate(texts)))
        _, t = timed(lambda: list(JsonlReader(str(work))()))
        best.add("datatrove JsonlReader (the texts as one JSONL)", mb, t)
    elif which == "pii":
        formatter = PIIFormatter()
        _, t = timed(lambda: [formatter.format(x) for x in texts])
        best.add("datatrove PIIFormatter (emails, IPs)", mb, t)
    elif which == "minhash":
        config = _datatrove_minhash_config()

        def minhash():
            _drain(MinhashDedupSignature(output_folder=str(work / "sig"), config=config, language=_word_split()).run(documents()))
            for rank in range(config.num_buckets):  # one task per bucket, as datatrove requires
                _drain(MinhashDedupBuckets(input_folder=str(work / "sig"), output_folder=str(work / "buckets"), config=config)
                       .run(None, rank, config.num_buckets))
            _drain(MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "clusters"), config=config).run(None))
            return _drain(MinhashDedupFilter(input_folder=str(work / "clusters")).run(documents()))

        left, t = timed(minhash)
        best.add("datatrove MinHash (signature+buckets+cluster+filter)", mb, t, f"{len(texts) - left} docs dropped (unverified)")
    else:
        step = DocumentTokenizer(output_folder=str(work), tokenizer_name_or_path=str(Path(tokenizer_dir) / "tokenizer.json"),
                                 eos_token=None, shuffle_documents=False)
        _, t = timed(lambda: _drain(step.run(documents())))
        best.add("datatrove DocumentTokenizer", mb, t)


def datatrove_pipeline(jsonl_dir: str, work: str, tokenizer_dir: str, workers: int) -> None:
    """datatrove's reader, MinHash (4 steps), PII and tokenizer, with tasks = workers (run in its own process). PII
    redaction runs once, in the last stage (signatures of the unredacted texts: redaction hardly changes shingles)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer

    config, work = _datatrove_minhash_config(), Path(work)
    run = lambda name, pipeline, tasks, **kw: LocalPipelineExecutor(  # noqa: E731
        pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(work / "logs" / name), start_method="fork",
        **kw).run()
    run("signatures", [JsonlReader(jsonl_dir), MinhashDedupSignature(output_folder=str(work / "sig"), config=config, language=_word_split())],
        workers)
    run("buckets", [MinhashDedupBuckets(input_folder=str(work / "sig"), output_folder=str(work / "buckets"), config=config)], config.num_buckets)
    run("cluster", [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "clusters"), config=config)], 1)
    run("tokenize", [JsonlReader(jsonl_dir), PIIFormatter(), MinhashDedupFilter(input_folder=str(work / "clusters")),
                     DocumentTokenizer(output_folder=str(work / "tokens"), tokenizer_name_or_path=str(Path(tokenizer_dir) / "tokenizer.json"),
                                       eos_token=None, shuffle_documents=False)], workers)


# --------------------------------------------------------------------------- ours, stage by stage
def ours_stages(args, tmp: Path, best: Best, datatrove: bool) -> list[str]:
    """Every stage of ours once per round (datatrove's equivalent after each of the four that have one); returns
    the texts that pass the per-file stages (before PII redaction)."""
    from litgpt_clone.corpus import filters, identity, language, licenses, pii
    from litgpt_clone.corpus.decontam import Decontaminator
    from litgpt_clone.corpus.dedup import find_near_duplicates
    from litgpt_clone.corpus.pipeline import exact_duplicates, token_ids
    from litgpt_clone.corpus.sources import open_sources
    from litgpt_clone.data.shards import ShardWriter
    from litgpt_clone.tokenizer import Tokenizer

    def read_all():
        files = []
        for repo in open_sources([args.source], "repo", args.max_file_size, args.exclude):
            readable = [e for e in repo.entries if not e.skip]
            files += [(e.path, d) for e, d in zip(readable, repo.read(readable)) if isinstance(d, bytes)]
        return files

    def dt(which, texts):
        if datatrove:
            datatrove_stages(best, tmp, texts, args.tokenizer_dir, which)

    tokenizer = Tokenizer(args.tokenizer_dir)
    for round_ in range(args.stage_rounds):
        files, t = timed(read_all)
        total_mb = sum(len(d) for _, d in files) / 1e6
        best.add("read (list + read files)", total_mb, t, f"{len(files)} files")
        decoded, t = timed(lambda: [(p, d, filters.decode(d)[0]) for p, d in files])
        best.add("decode", total_mb, t)
        _, t = timed(lambda: [(identity.blob_id(d), identity.content_id(d)) for _, d in files])
        best.add("identity (2x SHA-1)", total_mb, t)
        texts = [(p, d, text) for p, d, text in decoded if text is not None and d.strip()]
        text_mb = sum(len(d) for _, d, _ in texts) / 1e6
        langs, t = timed(lambda: [language.detect(p, d).name for p, d, _ in texts])
        best.add("language (enry)", text_mb, t)

        if round_ == 0:  # ScanCode's index stays loaded: a second round would time nothing new
            license_texts = list(licenses.license_parts({p: text for p, _, text in texts}).values())
            _, t = timed(licenses.load_index)
            best.add("license index load (once per process, skipped on a cache hit)", 0, t)
            _, t = timed(lambda: [licenses.detect(x) for x in license_texts])
            best.add("license detection (license/README files, 1 process)", sum(len(x.encode()) for x in license_texts) / 1e6, t,
                     f"{len(license_texts)} files")

        config = filters.FilterConfig()
        reasons, t = timed(lambda: [filters.drop_reason(text, p, lang, config) for (p, _, text), lang in zip(texts, langs)])
        best.add("filters", text_mb, t)
        kept = [text for (_, _, text), reason, lang in zip(texts, reasons, langs) if reason is None and lang]
        kept_mb = sum(len(x.encode()) for x in kept) / 1e6

        rng = random.Random(0)
        snippets = [x[i : i + 200] for x in rng.sample(kept, min(200, len(kept))) for i in [rng.randrange(max(1, len(x) - 200))]]
        decontaminator = Decontaminator(snippets)
        _, t = timed(lambda: [decontaminator.contaminated(x) for x in kept])
        best.add("decontamination (200 strings)", kept_mb, t)
        dt("reader", kept)

        redacted, t = timed(lambda: [pii.redact(x)[0] for x in kept])
        best.add("PII redaction", kept_mb, t)
        dt("pii", kept)

        records = [dict(content_id=identity.content_id(x.encode()), license_type="permissive", commit_time=None, repo="r", path=str(i))
                   for i, x in enumerate(redacted)]
        _, t = timed(lambda: exact_duplicates(records, list(range(len(records)))))
        best.add("exact dedup (content id groups)", kept_mb, t)
        twins, t = timed(lambda: find_near_duplicates([(str(i), x) for i, x in enumerate(redacted)]))
        best.add("near dedup (MinHash-LSH + exact Jaccard)", kept_mb, t, f"{len(twins)} docs dropped (verified)")
        dt("minhash", redacted)

        def tokenize():
            shutil.rmtree(tmp / "ours_shards", ignore_errors=True)
            with ShardWriter(tmp / "ours_shards", vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id) as writer:
                for x in redacted:
                    writer.add(token_ids(tokenizer, x))

        _, t = timed(tokenize)
        best.add("tokenize + shards", kept_mb, t)
        dt("tokenizer", redacted)
    return kept


def stages_to_files(args, tmp: Path, datatrove: bool) -> None:
    """``ours_stages``, its timings written to ``tmp/stages.json`` and the texts it kept to ``tmp/kept.json``."""
    best = Best()
    kept = ours_stages(args, tmp, best, datatrove)
    (tmp / "stages.json").write_text(json.dumps(list(best.rows.values())))
    (tmp / "kept.json").write_text(json.dumps(kept))


# --------------------------------------------------------------------------- end to end
def end_to_end(args, tmp: Path, kept: list[str], datatrove: bool) -> list[dict]:
    best = Best()
    inputs = tmp / "e2e_in"  # 8 JSONL files, documents dealt round-robin: datatrove gives each task whole files
    inputs.mkdir()
    for shard in range(8):
        lines = (json.dumps({"id": str(i), "text": kept[i]}) + "\n" for i in range(shard, len(kept), 8))
        (inputs / f"docs-{shard}.jsonl").write_text("".join(lines))
    kept_mb = sum(len(x.encode()) for x in kept) / 1e6
    cache = tmp / "license_cache"

    def ours(workers: int, warm: bool) -> None:
        out = tmp / "e2e_ours"
        shutil.rmtree(out, ignore_errors=True)
        if warm and cache.is_dir():
            shutil.copytree(cache, out / "cache")
        cmd = [sys.executable, "-m", "litgpt_clone", "prepare", "code", args.source, "--out_dir", str(out),
               "--tokenizer_dir", args.tokenizer_dir, "--workers", str(workers), "--max_file_size", str(args.max_file_size),
               "--exclude", json.dumps(args.exclude)]
        _, t = timed(subprocess.run, cmd, check=True, capture_output=True)
        manifest = json.loads((out / "v1" / "manifest.json").read_text())
        if not warm and (out / "cache").is_dir():
            shutil.rmtree(cache, ignore_errors=True)
            shutil.copytree(out / "cache", cache)
        read_mb = manifest["stages"][0]["bytes_out"] / 1e6
        best.add(f"ours, --workers {workers}, {'warm' if warm else 'cold'} license cache", read_mb, t,
                 f"{read_mb:.1f} MB read; {manifest['totals']['kept']} files kept, {manifest['totals']['tokens']:,} tokens")

    def theirs(workers: int) -> None:
        work = tmp / "e2e_dt"
        shutil.rmtree(work, ignore_errors=True)
        cmd = [sys.executable, __file__, "--datatrove_pipeline", str(inputs), str(work), "--tokenizer_dir", args.tokenizer_dir,
               "--workers", str(workers)]
        _, t = timed(subprocess.run, cmd, check=True, capture_output=True)
        best.add(f"datatrove, {workers} task(s) and worker(s)", kept_mb, t, f"{kept_mb:.1f} MB of texts in")

    for workers in sorted({1, args.workers}):
        ours(workers, warm=False)
        for _ in range(args.rounds):
            ours(workers, warm=True)
            if datatrove:
                theirs(workers)
    return list(best.rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--exclude", nargs="*", default=["*__pycache__"])
    parser.add_argument("--tokenizer_dir", default=str(ROOT / "demo_out" / "hf"))
    parser.add_argument("--max_file_size", type=int, default=1 << 20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="end-to-end rounds (ours, datatrove, ours, ...); the fastest is reported")
    parser.add_argument("--stage_rounds", type=int, default=1, help="rounds of the stage timings; the fastest is reported")
    parser.add_argument("--json", default=None)
    parser.add_argument("--datatrove_pipeline", nargs=2, metavar=("JSONL_DIR", "WORK_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.datatrove_pipeline:
        return datatrove_pipeline(*args.datatrove_pipeline, args.tokenizer_dir, args.workers)
    try:
        import datatrove  # noqa: F401
    except ImportError:
        datatrove = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The stages run in a child process, whose memory (every file, several GB for site-packages) is gone
        # before the end-to-end runs start.
        child = multiprocessing.get_context("fork").Process(target=stages_to_files, args=(args, tmp, datatrove is not None))
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"the stage timings failed (exit code {child.exitcode})")
        rows = json.loads((tmp / "stages.json").read_text())
        kept = json.loads((tmp / "kept.json").read_text())
        e2e = end_to_end(args, tmp, kept, datatrove is not None)
    print(f"source: {args.source} (excluding {args.exclude}); python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| stage | MB | wall s | CPU s | MB/s (wall) | MB/s (CPU) | note |\n|---|---:|---:|---:|---:|---:|---|")
    for r in rows + e2e:
        print(f"| {r['stage']} | {r['mb']} | {r['seconds']} | {r['cpu_seconds']} | {r['mb_per_s']} | {r['mb_per_cpu_s']} | {r['note']} |")
    by_name = {r["stage"]: r for r in rows + e2e}
    pairs = [("read (list + read files)", "datatrove JsonlReader (the texts as one JSONL)"),
             ("PII redaction", "datatrove PIIFormatter (emails, IPs)"),
             ("near dedup (MinHash-LSH + exact Jaccard)", "datatrove MinHash (signature+buckets+cluster+filter)"),
             ("tokenize + shards", "datatrove DocumentTokenizer")]
    for workers in sorted({1, args.workers}):
        for cache in ("warm", "cold"):
            pairs.append((f"ours, --workers {workers}, {cache} license cache", f"datatrove, {workers} task(s) and worker(s)"))
    print("\n| ours | datatrove | datatrove / ours, wall time | datatrove / ours, CPU time |\n|---|---|---:|---:|")
    for a, b in pairs:
        if a in by_name and b in by_name:
            wall, cpu = (by_name[b][k] / by_name[a][k] for k in ("seconds", "cpu_seconds"))
            print(f"| {a} | {b} | {wall:.2f} | {cpu:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(stages=rows, end_to_end=e2e), indent=2))


if __name__ == "__main__":
    main()
