"""Throughput of the content-quality stages of ``prepare code`` on this interpreter's standard library.

Measured in one run, one process, on the same corpus (every file under ``sysconfig.get_paths()["stdlib"]``
outside ``site-packages`` and ``__pycache__``): ``decode`` (bytes -> text), ``drop_reason`` (filters),
``redact`` (PII), ``find_near_duplicates`` (dedup) and ``Decontaminator.contaminated`` (against
``--benchmark-strings`` synthetic strings). MB/s is megabytes of input (UTF-8 bytes for the text stages) per
second of wall time, the best of ``--repeat`` rounds; CPU seconds are reported too, since the machine may be
shared.

Then the MinHash library choice: signatures for the stdlib ``.py`` files with datasketch (``MinHash.bulk``,
its default "affine32" scheme, SHA-1 token hashing) and rensa (``RMinHash``), 256 permutations, from the same
5-gram shingle sets; and each library's Jaccard estimate error on pairs of files and their copies with 15% of
lines deleted (the standard deviation should be close to sqrt(J(1-J)/256) ~ 0.027 for an unbiased MinHash).

    .venv/bin/python benchmarks/corpus_quality.py
    .venv/bin/python benchmarks/corpus_quality.py --repeat 1 --benchmark-strings 10000
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import string
import sysconfig
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*") if p.is_file() and not {"site-packages", "__pycache__"} & set(p.parts))


def _timed(fn, repeat: int):
    best_wall = best_cpu = float("inf")
    result = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return result, best_wall, best_cpu


def stages(repeat: int, n_strings: int) -> None:
    from litgpt_clone.corpus.decontam import Decontaminator
    from litgpt_clone.corpus.dedup import find_near_duplicates
    from litgpt_clone.corpus.filters import FilterConfig, decode, drop_reason
    from litgpt_clone.corpus.pii import redact

    blobs = [(str(p), p.read_bytes()) for p in _stdlib_files()]
    raw_mb = sum(len(b) for _, b in blobs) / 1e6
    decoded, wall, cpu = _timed(lambda: [(path, decode(data)) for path, data in blobs], repeat)
    texts = [(path, text) for path, (text, _) in decoded if text is not None]
    text_mb = sum(len(t.encode("utf-8")) for _, t in texts) / 1e6
    print(f"corpus: {len(blobs)} stdlib files, {raw_mb:.1f} MB; {len(texts)} decode to text ({text_mb:.1f} MB)\n")
    print("| stage | MB/s (wall) | MB/s (CPU) | wall s | CPU s | result |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| decode | {raw_mb / wall:.1f} | {raw_mb / cpu:.1f} | {wall:.2f} | {cpu:.2f} | {len(blobs) - len(texts)} binary/undecodable |")

    config = FilterConfig()
    reasons, wall, cpu = _timed(lambda: [drop_reason(t, p, None, config) for p, t in texts], repeat)
    dropped = sum(r is not None for r in reasons)
    print(f"| filters (drop_reason) | {text_mb / wall:.1f} | {text_mb / cpu:.1f} | {wall:.2f} | {cpu:.2f} | {dropped} dropped |")

    redacted, wall, cpu = _timed(lambda: [redact(t)[1] for _, t in texts], repeat)
    total = sum(redacted, start=collections.Counter())
    print(f"| PII (redact) | {text_mb / wall:.1f} | {text_mb / cpu:.1f} | {wall:.2f} | {cpu:.2f} | {dict(total)} |")

    twins, wall, cpu = _timed(lambda: find_near_duplicates(texts), repeat)
    print(f"| near-dup (find_near_duplicates) | {text_mb / wall:.1f} | {text_mb / cpu:.1f} | {wall:.2f} | {cpu:.2f} | "
          f"{len(twins)} files removed, near duplicates of {len(set(twins.values()))} kept ones |")

    rng = random.Random(0)
    word = lambda: "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(3, 9)))
    strings = [" ".join(word() for _ in range(rng.randrange(15, 40))) for _ in range(n_strings)]
    decon, build_wall, _ = _timed(lambda: Decontaminator(strings), 1)
    hits, wall, cpu = _timed(lambda: [decon.contaminated(t) for _, t in texts], repeat)
    print(f"| decontamination ({n_strings} strings, built in {build_wall:.2f} s) | {text_mb / wall:.1f} | {text_mb / cpu:.1f} | {wall:.2f} | "
          f"{cpu:.2f} | {sum(h is not None for h in hits)} contaminated |")


def minhash_libraries(repeat: int) -> None:
    import rensa
    from datasketch import MinHash

    from litgpt_clone.corpus.dedup import shingles

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in _stdlib_files() if p.suffix == ".py"]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    sets, wall, _ = _timed(lambda: [list(shingles(t)) for t in texts], repeat)
    sets = [s for s in sets if s]
    print(f"\nMinHash signatures, 256 permutations, {len(sets)} stdlib .py files ({mb:.1f} MB; shingling alone "
          f"{mb / wall:.1f} MB/s)\n")
    print("| library | MB/s (signatures only, wall) | MB/s (CPU) | wall s |")
    print("|---|---:|---:|---:|")
    _, wall, cpu = _timed(lambda: MinHash.bulk([[s.encode() for s in doc] for doc in sets], num_perm=256, seed=42), repeat)
    print(f"| datasketch {version('datasketch')} MinHash.bulk | {mb / wall:.1f} | {mb / cpu:.1f} | {wall:.2f} |")
    _, wall, cpu = _timed(lambda: rensa.RMinHash.digest_matrix_from_token_hash_sets(
        rensa.RMinHash.hash_token_sets(sets), 256, 42).to_rows(), repeat)
    print(f"| rensa {version('rensa')} RMinHash | {mb / wall:.1f} | {mb / cpu:.1f} | {wall:.2f} |")

    rng = random.Random(0)
    errors = {"datasketch": [], "rensa": []}
    for text in texts[:300]:
        copy = "\n".join(line for line in text.splitlines() if rng.random() >= 0.15)
        a, b = shingles(text), shingles(copy)
        if len(a) < 50 or not b:
            continue
        exact = len(a & b) / len(a | b)
        da, db = (MinHash(num_perm=256, seed=42) for _ in range(2))
        da.update_batch([s.encode() for s in a])
        db.update_batch([s.encode() for s in b])
        ra, rb = (rensa.RMinHash(256, 42) for _ in range(2))
        ra.update(list(a))
        rb.update(list(b))
        errors["datasketch"].append(da.jaccard(db) - exact)
        errors["rensa"].append(ra.jaccard(rb) - exact)
    print(f"\nJaccard estimate error on {len(errors['rensa'])} (file, 15%-deleted copy) pairs:")
    for name, e in errors.items():
        print(f"- {name}: mean {statistics.fmean(e):+.4f}, std {statistics.pstdev(e):.4f}, max |err| {np.max(np.abs(e)):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="rounds per stage; the fastest is reported")
    parser.add_argument("--benchmark-strings", type=int, default=5000, help="synthetic strings for decontamination")
    args = parser.parse_args()
    stages(args.repeat, args.benchmark_strings)
    minhash_libraries(args.repeat)


if __name__ == "__main__":
    main()
