"""Near-duplicate detection of ``prepare code``: MinHash-LSH over word 5-grams, verified by exact Jaccard.

Interface::

    near_duplicate_clusters(docs: Iterable[tuple[str, str]], threshold=0.7, num_perm=256, ngram=5, seed=42)
        -> list[list[str]]
        Keys of near-duplicate documents grouped into clusters; documents with no near duplicate are omitted.

    choose_keepers(clusters: list[list[str]], rank: Callable[[str], tuple]) -> set[str]
        One key per cluster, the one with the smallest ``rank(key)``; every other key of a cluster is a drop.

As in The Stack v2: a document's shingles are the word ``ngram``-grams of its lowercased text split on ``\\W+`` (a
document with fewer words has its whole word sequence as one shingle; one with no word is skipped). Each shingle
set gets a ``num_perm``-permutation MinHash signature (rensa's ``RMinHash``: a Rust MinHash, ~10x the throughput of
datasketch's Python hashing with the same estimator accuracy, see benchmarks/RESULTS.md), and datasketch's
``MinHashLSH`` indexes the signatures with the bands x rows that minimise its weighted false positive + false
negative probability integral for ``threshold`` (weights ``LSH_WEIGHTS``: 32 x 8 for 0.7 and 256 permutations). LSH
candidates are only hints: a pair joins a cluster only when the exact Jaccard similarity of its shingle sets (kept
as sorted 64-bit shingle hashes) is at least ``threshold``; clusters are the connected components of the verified
pairs.

Documents with identical shingle sets are grouped before the index sees them, so many copies of one file cost
one signature. Output order is deterministic: keys in input order within a cluster, clusters ordered by their
first key's input position.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import numpy as np
import rensa
from datasketch import LeanMinHash, MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

WORD = re.compile(r"\w+")  # the non-empty pieces of a split on \W+
# Weights (false positive, false negative) of datasketch's choice of bands x rows. Candidates are verified
# exactly, so an LSH false positive costs one Jaccard computation while a false negative is a missed duplicate:
# (0.1, 0.9) gives 32 bands x 8 rows at 0.7 (all 256 permutations), which finds a pair at Jaccard 0.7 with
# probability 0.85 and at 0.75 with 0.97; datasketch's default (0.5, 0.5) gives 25 x 10 (0.51 and 0.77), which
# missed 4-8% of the true pairs on the test corpus (tests/test_corpus_dedup.py, benchmarks/RESULTS.md).
LSH_WEIGHTS = (0.1, 0.9)
_BATCH = 512  # documents hashed per rensa call


def shingles(text: str, ngram: int = 5) -> set[str]:
    """The word ``ngram``-grams (space-joined) of ``text`` lowercased and split on ``\\W+``."""
    words = WORD.findall(text.lower())
    if not words:
        return set()
    if len(words) < ngram:
        return {" ".join(words)}
    return set(map(" ".join, zip(*(words[i:] for i in range(ngram)))))


def _signature_batches(docs: Iterable[tuple[str, str]], ngram: int, num_perm: int, seed: int):
    """Yield (keys, sorted shingle-hash arrays, signatures) for batches of documents that have words."""
    keys, sets = [], []

    def flush():
        hashes = rensa.RMinHash.hash_token_sets(sets)  # one list of u64 shingle hashes per document
        signatures = rensa.RMinHash.digest_matrix_from_token_hash_sets(hashes, num_perm, seed).to_rows()
        return keys, [np.unique(np.asarray(h, dtype=np.uint64)) for h in hashes], signatures

    for key, text in docs:
        doc_shingles = shingles(text, ngram)
        if doc_shingles:
            keys.append(key)
            sets.append(list(doc_shingles))
        if len(keys) == _BATCH:
            yield flush()
            keys, sets = [], []
    if keys:
        yield flush()


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def near_duplicate_clusters(
    docs: Iterable[tuple[str, str]], threshold: float = 0.7, num_perm: int = 256, ngram: int = 5, seed: int = 42
) -> list[list[str]]:
    """Group the keys of ``(key, text)`` documents whose shingle sets have Jaccard similarity >= ``threshold``.

    Returns the clusters with at least two keys (connected components of the verified near-duplicate pairs),
    keys in input order, clusters ordered by first key. Keys must be unique. Each document queries the index
    of the documents before it, so every candidate pair is seen once; memory holds each distinct document's
    shingle hashes (8 bytes per word) for the verification.
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    keys: list[str] = []
    hash_sets: dict[int, np.ndarray] = {}  # index of the first document with a given shingle set -> its hashes
    by_content: dict[bytes, int] = {}
    edges: list[tuple[int, int]] = []
    for batch_keys, batch_hashes, batch_signatures in _signature_batches(docs, ngram, num_perm, seed):
        for key, hashes, signature in zip(batch_keys, batch_hashes, batch_signatures):
            index = len(keys)
            keys.append(key)
            first = by_content.setdefault(hashes.tobytes(), index)
            if first != index:  # identical shingle set: same cluster, nothing to index
                edges.append((first, index))
                continue
            hash_sets[index] = hashes
            # rensa signatures are uint32 like datasketch's "affine32"; the label only satisfies datasketch's
            # check that one index holds one kind of signature (here they all come from rensa).
            minhash = LeanMinHash(seed=seed, hashvalues=np.asarray(signature, dtype=np.uint32), scheme="affine32")
            for other in lsh.query(minhash):
                if _jaccard(hash_sets[other], hashes) >= threshold:
                    edges.append((other, index))
            lsh.insert(index, minhash)
    return _components(keys, edges)


def _components(keys: list[str], edges: list[tuple[int, int]]) -> list[list[str]]:
    if not edges:
        return []
    rows, cols = np.array(edges, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (rows, cols)), shape=(len(keys), len(keys)))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for index in np.unique(np.concatenate([rows, cols])):  # sorted, so members come in input order
        members.setdefault(int(labels[index]), []).append(int(index))
    clusters = sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
    return [[keys[i] for i in m] for m in clusters]


def choose_keepers(clusters: list[list[str]], rank: Callable[[str], tuple]) -> set[str]:
    """The key to keep from each cluster: the smallest ``rank(key)`` (ties: the smallest key).

    The caller's rank puts the preferred copy first, e.g. ``(not permissive, -commit_time, path)``: permissive
    license, then newest commit, then path. Keys of a cluster not returned are the near duplicates to drop.
    """
    return {min(cluster, key=lambda key: (rank(key), key)) for cluster in clusters}
