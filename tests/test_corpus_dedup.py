"""Near-duplicate removal against the exact answer: Jaccard >= 0.7 on word 5-gram shingles over all pairs.

The corpus: standard-library files, deterministic mutations of some of them (deleted lines, inserted comments,
renamed identifiers, at several rates), and real vendored copies (pip's ``_vendor`` packages against the
standalone releases installed in this environment, when both exist).
"""

from __future__ import annotations

import itertools
import json
import keyword
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from litgpt_clone.corpus import dedup as dedup_module
from litgpt_clone.corpus.dedup import find_near_duplicates, shingle_hashes, shingles, words

THRESHOLD = 0.7


def _reference_shingles(text: str) -> frozenset[str]:
    """The definition, written independently: lowercase, split on \\W+, word 5-grams."""
    words = [w for w in re.split(r"\W+", text.lower()) if w]
    if len(words) < 5:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + 5]) for i in range(len(words) - 4))


def _mutate(text: str, rng: random.Random, kind: str, rate: float) -> str:
    lines = text.splitlines()
    if kind == "delete":
        return "\n".join(line for line in lines if rng.random() >= rate)
    if kind == "comment":
        out = []
        for line in lines:
            out.append(line)
            if rng.random() < rate:
                out.append(f"# note {rng.randrange(10**6)}: reviewed by {rng.choice(['ann', 'bob', 'eve'])} on pass {rng.randrange(9)}")
        return "\n".join(out)
    # rename: a fraction of the distinct identifiers get new names everywhere they occur
    names = sorted({w for w in re.findall(r"\b[A-Za-z_]\w*\b", text) if not keyword.iskeyword(w)})
    chosen = {n: f"{n}_v{rng.randrange(1000)}" for n in names if rng.random() < rate}
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: chosen.get(m.group(0), m.group(0)), text)


def _vendored_pairs(limit: int) -> list[tuple[str, str, str, str]]:
    """(vendored key, text, standalone key, text) for files present in pip/_vendor and as a standalone package."""
    try:
        import pip
    except ImportError:
        return []
    vendor = Path(pip.__file__).parent / "_vendor"
    site = Path(sysconfig.get_paths()["purelib"])
    pairs = []
    for package in sorted(p for p in vendor.iterdir() if p.is_dir() and (site / p.name).is_dir() and p.name != "__pycache__"):
        for path in sorted(package.rglob("*.py")):
            twin = site / path.relative_to(vendor)
            if twin.is_file() and path.stat().st_size > 1024:
                pairs.append((f"pip/_vendor/{path.relative_to(vendor)}", path.read_text(encoding="utf-8"),
                              f"site/{twin.relative_to(site)}", twin.read_text(encoding="utf-8")))
    return random.Random(7).sample(pairs, min(limit, len(pairs)))


def build_corpus(seed: int = 42) -> dict[str, str]:
    """About 480 documents: 160 stdlib originals, ~180 mutated copies of 90 of them, 60 vendored/standalone twins."""
    rng = random.Random(seed)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.stat().st_size > 1024)
    originals = rng.sample(files, 160)
    docs = {f"stdlib/{p.relative_to(root)}": p.read_text(encoding="utf-8", errors="replace") for p in originals}
    plans = [("delete", r) for r in (0.05, 0.1, 0.2, 0.3, 0.4)] + [("comment", r) for r in (0.1, 0.3, 0.6)]
    plans += [("rename", r) for r in (0.02, 0.05, 0.1, 0.2)]
    for key in list(docs)[:90]:
        for kind, rate in rng.sample(plans, rng.choice([1, 2, 3])):
            docs[f"{key}~{kind}{rate}"] = _mutate(docs[key], rng, kind, rate)
    for vendored_key, vendored, standalone_key, standalone in _vendored_pairs(60):
        docs[vendored_key], docs[standalone_key] = vendored, standalone
    return docs


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    return build_corpus()


def test_module_shingles_match_the_definition(corpus):
    texts = list(itertools.islice(corpus.values(), 40)) + ["Grüße, Ünïcode wörds: ǅemal ΣΊΣΥΦΟΣ ok_1 x²", "Hello, world", "...", ""]
    for text, hashes in zip(texts, shingle_hashes(texts)):
        reference = _reference_shingles(text)
        assert shingles(text) == reference
        assert words(text) == [w for w in re.split(r"\W+", text.lower()) if w]
        # one distinct 64-bit hash per shingle, sorted
        assert hashes.dtype == np.uint64 and len(hashes) == len(reference) and (np.diff(hashes) > 0).all()
    assert shingles("Hello, world") == {"hello world"} and shingles("...") == set()
    # the same shingle hashes the same in every document (here: a 5-gram shared by two texts, ASCII or not)
    a, b, c = shingle_hashes(["one two three four five", "zero one two three four five", "ü one two three four five"])
    assert len(set(a) & set(b) & set(c)) == 1


def _reference_jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b)


@pytest.fixture(scope="module")
def truth(corpus) -> tuple[dict[str, frozenset], set[tuple[str, str]]]:
    """The reference shingle sets, and the pairs (in corpus order) whose exact Jaccard is >= the threshold."""
    sets = {k: _reference_shingles(text) for k, text in corpus.items()}
    pairs = set()
    for x, y in itertools.combinations(corpus, 2):
        a, b = sets[x], sets[y]
        if min(len(a), len(b)) < THRESHOLD * max(len(a), len(b)):
            continue  # Jaccard <= |small| / |large| < threshold
        inter = len(a & b)
        if inter >= THRESHOLD * (len(a) + len(b) - inter):  # |a | b| = |a| + |b| - |a & b|
            pairs.add((x, y))
    return sets, pairs


@pytest.mark.parametrize("order", ["input", "shuffled"])
def test_precision_and_recall_against_exact_jaccard(corpus, truth, order):
    """Definitions, with T the pairs {x, y} of documents whose exact Jaccard (reference shingles above) is >= 0.7,
    computed on all pairs:

    - precision: the share of removed documents x whose recorded kept twin t(x) has exact J(x, t(x)) >= 0.7;
    - recall: the share of the pairs in T that are not both kept (at least one of x, y was removed).

    "input" keeps originals before their mutated copies; "shuffled" lets a mutated copy be kept instead.
    """
    sets, truth = truth
    keys = list(corpus)
    if order == "shuffled":
        random.Random(3).shuffle(keys)
    twins = find_near_duplicates(((k, corpus[k]) for k in keys), threshold=THRESHOLD, num_perm=256, ngram=5, seed=42)
    kept = {k for k in keys if k not in twins}
    assert set(twins.values()) <= kept  # every twin is a kept document
    position = {k: n for n, k in enumerate(keys)}
    assert all(position[twin] < position[x] for x, twin in twins.items())  # kept before the document it removes
    correct = sum(_reference_jaccard(sets[x], sets[twin]) >= THRESHOLD for x, twin in twins.items())
    precision = correct / len(twins)
    missed = [(x, y) for x, y in truth if x in kept and y in kept]
    recall = 1 - len(missed) / len(truth)
    vendored = sum(k.startswith("pip/_vendor/") for k in keys)
    print(f"{order} order: {len(keys)} docs ({vendored} vendored copies), {len(truth)} pairs with J >= {THRESHOLD}; "
          f"{len(twins)} removed, {correct} with a true twin: precision {precision:.4f}; pairs not both kept: "
          f"{len(truth) - len(missed)}, recall {recall:.4f}")
    assert len(truth) >= 100 and len(twins) >= 90
    assert precision >= 0.99 and recall >= 0.95


def test_removal_is_not_transitive_and_follows_keep_order():
    words = [f"w{i}" for i in range(124)]
    a, b, c = " ".join(words[0:100]), " ".join(words[12:112]), " ".join(words[24:124])
    sets = [_reference_shingles(t) for t in (a, b, c)]
    assert [round(_reference_jaccard(sets[i], sets[j]), 3) for i, j in [(0, 1), (1, 2), (0, 2)]] == [0.778, 0.778, 0.6]
    # A kept, B removed as A's near duplicate, C kept: its only near duplicate, B, is gone, and J(A, C) < 0.7.
    assert find_near_duplicates([("a", a), ("b", b), ("c", c)]) == {"b": "a"}
    # B first: it is kept and both A and C are its near duplicates.
    assert find_near_duplicates([("b", b), ("a", a), ("c", c)]) == {"a": "b", "c": "b"}


def test_output_is_deterministic(corpus):
    items = list(corpus.items())
    items = items[:60] + items[160:280]  # 60 originals, then mutated copies of the first ~50 of them
    first = find_near_duplicates(items)
    assert first and first == find_near_duplicates(items)
    assert list(first) == [k for k, _ in items if k in first]  # in input order
    # Another process (fresh hash seeds) gives the same decisions. It loads dedup.py alone: importing the
    # litgpt_clone package would import torch, seconds for nothing here.
    script = (
        "import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('dedup', sys.argv[1]); "
        "dedup = importlib.util.module_from_spec(spec); spec.loader.exec_module(dedup); "
        "print(json.dumps(dedup.find_near_duplicates(json.load(sys.stdin))))"
    )
    out = subprocess.run([sys.executable, "-c", script, dedup_module.__file__], input=json.dumps(items), capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == first


def test_identical_and_tiny_documents():
    docs = [("a", "x = 1\nprint(x)\n"), ("b", "X = 1\n\nprint( x )"), ("c", ""), ("d", "..."), ("e", "something else entirely here")]
    assert find_near_duplicates(docs) == {"b": "a"}  # same words after lowercasing; no-word docs are never removed
    many = [(f"copy{i}", "def f(a, b):\n    return a + b\n" * 30) for i in range(50)]
    assert find_near_duplicates(many) == {f"copy{i}": "copy0" for i in range(1, 50)}


def test_max_threshold_is_the_highest_minhash_lsh_indexes():
    """``prepare code`` refuses thresholds above MAX_NEAR_DEDUP_THRESHOLD up front: datasketch refuses them only
    after the read stage."""
    from datasketch import MinHashLSH

    top = dedup_module.MAX_NEAR_DEDUP_THRESHOLD
    assert MinHashLSH(threshold=top, num_perm=256, weights=dedup_module.LSH_WEIGHTS).b == 2
    with pytest.raises(ValueError, match="The number of bands are too small"):
        MinHashLSH(threshold=top + 0.001, num_perm=256, weights=dedup_module.LSH_WEIGHTS)
    text = "def f(a, b):\n    return a + b\n" * 30
    assert find_near_duplicates([("a", text), ("b", text + "# one more line\n")], threshold=top) == {}
