"""Near-duplicate clusters against the exact answer: Jaccard >= 0.7 on word 5-gram shingles over all pairs.

The corpus: standard-library files, deterministic mutations of some of them (deleted lines, inserted comments,
renamed identifiers, at several rates), and real vendored copies (pip's ``_vendor`` packages against the
standalone releases installed in this environment, when both exist).
"""

from __future__ import annotations

import itertools
import keyword
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from litgpt_clone.corpus.dedup import choose_keepers, near_duplicate_clusters, shingles

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
    for text in itertools.islice(corpus.values(), 20):
        assert shingles(text) == _reference_shingles(text)
    assert shingles("Hello, world") == {"hello world"} and shingles("...") == set()


def _co_clustered(clusters, position) -> set[tuple[str, str]]:
    return {tuple(sorted(pair, key=position.get)) for c in clusters for pair in itertools.combinations(c, 2)}


def test_precision_and_recall_against_exact_jaccard(corpus):
    keys = list(corpus)
    position = {k: n for n, k in enumerate(keys)}
    sets = [_reference_shingles(corpus[k]) for k in keys]
    truth = set()
    for i, j in itertools.combinations(range(len(keys)), 2):
        a, b = sets[i], sets[j]
        if min(len(a), len(b)) < THRESHOLD * max(len(a), len(b)):
            continue  # Jaccard <= |small| / |large| < threshold
        if len(a & b) >= THRESHOLD * len(a | b):
            truth.add((keys[i], keys[j]))
    clusters = near_duplicate_clusters(corpus.items(), threshold=THRESHOLD, num_perm=256, ngram=5, seed=42)
    predicted = _co_clustered(clusters, position)
    # Clusters are connected components (as in The Stack): A~B and B~C put A and C together even when J(A, C) < 0.7.
    # The exact answer with the same clustering is the components of the true pairs.
    truth_clusters = [list(c) for c in _components_of(truth, keys)]
    truth_co = _co_clustered(truth_clusters, position)
    raw_precision, raw_recall = len(predicted & truth) / len(predicted), len(predicted & truth) / len(truth)
    precision, recall = len(predicted & truth_co) / len(predicted), len(predicted & truth_co) / len(truth_co)
    vendored = sum(k.startswith("pip/_vendor/") for k in keys)
    print(f"{len(keys)} docs ({vendored} vendored copies), {len(truth)} pairs with J >= {THRESHOLD}, {len(truth_co)} "
          f"co-clustered pairs exactly, {len(predicted)} predicted in {len(clusters)} clusters: precision {precision:.4f}, "
          f"recall {recall:.4f} against the exact clustering; against the pairs themselves precision {raw_precision:.4f}, "
          f"recall {raw_recall:.4f}")
    assert len(truth) >= 100
    assert precision >= 0.99 and recall >= 0.95
    assert raw_recall >= 0.95 and raw_precision >= 0.85  # raw precision below 1 only through chaining (checked above)


def _components_of(pairs, keys):
    neighbours = {k: set() for k in keys}
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen, components = set(), []
    for key in keys:
        if key in seen or not neighbours[key]:
            continue
        stack, component = [key], []
        seen.add(key)
        while stack:
            node = stack.pop()
            component.append(node)
            for other in neighbours[node] - seen:
                seen.add(other)
                stack.append(other)
        components.append(component)
    return components


def test_output_is_deterministic_and_ordered(corpus):
    items = list(corpus.items())[:150]
    first = near_duplicate_clusters(items)
    assert first == near_duplicate_clusters(items)
    order = {k: n for n, (k, _) in enumerate(items)}
    for cluster in first:
        assert [order[k] for k in cluster] == sorted(order[k] for k in cluster)
    assert [order[c[0]] for c in first] == sorted(order[c[0]] for c in first)
    # Another process (fresh hash seeds) gives the same clusters.
    script = (
        "import json, sys; from litgpt_clone.corpus.dedup import near_duplicate_clusters as n; "
        "print(json.dumps(n(json.load(sys.stdin))))"
    )
    import json

    out = subprocess.run([sys.executable, "-c", script], input=json.dumps(items), capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == first


def test_identical_and_tiny_documents():
    docs = [("a", "x = 1\nprint(x)\n"), ("b", "X = 1\n\nprint( x )"), ("c", ""), ("d", "..."), ("e", "something else entirely here")]
    assert near_duplicate_clusters(docs) == [["a", "b"]]  # same words after lowercasing; no-word docs are skipped
    many = [(f"copy{i}", "def f(a, b):\n    return a + b\n" * 30) for i in range(50)]
    assert near_duplicate_clusters(many) == [[k for k, _ in many]]


def test_choose_keepers_uses_rank_then_key():
    clusters = [["a/x.py", "b/x.py", "c/x.py"], ["d.py", "e.py"]]
    info = {"a/x.py": (1, -5), "b/x.py": (0, -3), "c/x.py": (0, -9), "d.py": (0, 0), "e.py": (0, 0)}
    assert choose_keepers(clusters, info.__getitem__) == {"c/x.py", "d.py"}
