"""Near-duplicate removal of ``prepare code``: MinHash-LSH over word 5-grams, verified by exact Jaccard.

Interface::

    find_near_duplicates(docs: Iterable[tuple[str, str]], threshold=0.7, num_perm=256, ngram=5, seed=42, mapper=None)
        -> dict[str, str]
        ``{removed key: key of the kept document it duplicates}`` for ``(key, text)`` documents given in keep
        order (the preferred copies first); ``mapper(fn, items)`` (e.g. a process pool's ``map``) spreads the
        shingling and MinHash over processes.

The decision is not transitive. Documents are taken in the given order; a document is removed when its shingle
set has exact Jaccard similarity >= ``threshold`` with a document already KEPT (its "twin", the first such one in
keep order), else it is kept. So every removed document has a kept twin at >= ``threshold``, and no two kept
documents are near duplicates unless LSH missed the pair. Clustering connected components instead (A~B and B~C
put A and C in one cluster, one kept) removes C for being like B even when J(A, C) < ``threshold``.

As in The Stack v2: a document's shingles are the word ``ngram``-grams of its lowercased text split on ``\\W+`` (a
document with fewer words has its whole word sequence as one shingle; one with no word is never removed). A
shingle is represented by a 64-bit hash: each word is hashed by rensa (a Rust MinHash library) and the hashes of a
shingle's words are combined in order (a polynomial in the word hashes, then a bit mixer), all in numpy, so no
Python string is built per shingle. Each shingle set gets a ``num_perm``-permutation MinHash signature (rensa's
``RMinHash``: ~10x the throughput of datasketch's Python hashing with the same estimator accuracy, see
benchmarks/RESULTS.md), and datasketch's ``MinHashLSH`` indexes the signatures of the kept documents with the
bands x rows that minimise its weighted false positive + false negative probability integral for ``threshold``
(weights ``LSH_WEIGHTS``: 36 x 7 for 0.7 and 256 permutations). LSH candidates are only hints: a candidate is a
twin only when the exact Jaccard similarity of the two sets of shingle hashes is at least ``threshold``.

A document whose shingle set equals an earlier one's gets that document's decision without a query, so many copies
of one file cost one index lookup. Memory holds the shingle hashes of the documents (8 bytes per word).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from functools import partial
from typing import Callable, Iterable, Optional

import numpy as np
import rensa
from datasketch import LeanMinHash, MinHashLSH

WORD = re.compile(r"\w+")  # the non-empty pieces of a split on \W+
_ASCII_NON_WORD = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}  # str.translate table
# Weights (false positive, false negative) of datasketch's choice of bands x rows. Candidates are verified
# exactly, so an LSH false positive costs one Jaccard computation while a false negative is a missed duplicate.
# (0.05, 0.95) gives 36 bands x 7 rows at 0.7 (252 of the 256 permutations): a pair at Jaccard 0.7 is a candidate
# with probability 0.955, at 0.75 with 0.994. On the test corpus (tests/test_corpus_dedup.py, 5 seeds) it left
# 0-2% of the true pairs both kept, against 0-4% for (0.1, 0.9) (32 x 8: 0.85 and 0.97) and 4-11% for datasketch's
# default (0.5, 0.5) (25 x 10: 0.51 and 0.77); see benchmarks/RESULTS.md.
LSH_WEIGHTS = (0.05, 0.95)
MAX_NEAR_DEDUP_THRESHOLD = 0.997
"""The highest threshold MinHashLSH indexes with 256 permutations and ``LSH_WEIGHTS``: above it the best bands x
rows has a single band, which datasketch refuses ("The number of bands are too small")."""
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))  # splitmix64's finalizer
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial that combines a shingle's word hashes
_CHUNK = 16  # documents per mapper task


def shingles(text: str, ngram: int = 5) -> set[str]:
    """The word ``ngram``-grams (space-joined) of ``text`` lowercased and split on ``\\W+`` (the definition;
    ``sketch`` hashes the same shingles without building these strings)."""
    pieces = WORD.findall(text.lower())
    if not pieces:
        return set()
    if len(pieces) < ngram:
        return {" ".join(pieces)}
    return set(map(" ".join, zip(*(pieces[i:] for i in range(ngram)))))


def _mix(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> np.uint64(30))) * _MIX[0]
    h = (h ^ (h >> np.uint64(27))) * _MIX[1]
    return h ^ (h >> np.uint64(31))


def words(text: str) -> list[str]:
    """``text`` lowercased and split on ``\\W+`` (the non-empty pieces); ASCII texts take a faster path, as
    ``\\w`` is ``[A-Za-z0-9_]`` there."""
    lower = text.lower()
    if lower.isascii():
        return lower.translate(_ASCII_NON_WORD).split()
    return WORD.findall(lower)


def shingle_hashes(texts: list[str], ngram: int = 5) -> list[np.ndarray]:
    """For each text, the sorted distinct 64-bit hashes of its ``shingles`` (one per shingle, barring collisions)."""
    words_of = [words(text) for text in texts]
    out = []
    for word_hashes in rensa.RMinHash.hash_token_sets(words_of):  # u64 per word, in order
        w = _mix(np.asarray(word_hashes, dtype=np.uint64))
        n = max(w.size - ngram + 1, 1)
        h = np.full(n, min(w.size, ngram), dtype=np.uint64)  # the shingle's length in words starts the polynomial
        for i in range(min(w.size, ngram)):
            h = h * _POLY + w[i : i + n]  # wraps modulo 2**64
        out.append(_sorted_unique(_mix(h)) if w.size else np.empty(0, dtype=np.uint64))
    return out


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` for a non-empty array; numpy 2's hash-based ``unique`` is ~7x slower on uint64 here."""
    a = np.sort(a)
    keep = np.empty(a.size, dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def sketch(texts: list[str], ngram: int = 5, num_perm: int = 256, seed: int = 42) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each text: (sorted distinct shingle hashes, uint32 MinHash signature); both empty for a text with no word."""
    hashes = shingle_hashes(texts, ngram)
    sizes = np.array([0] + [h.size for h in hashes], dtype=np.uint64)
    flat = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
    rows = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, np.cumsum(sizes), num_perm, seed).to_rows()
    empty = np.empty(0, dtype=np.uint32)
    return [(h, np.asarray(r, dtype=np.uint32) if h.size else empty) for h, r in zip(hashes, rows)]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted arrays of distinct shingle hashes."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def find_near_duplicates(
    docs: Iterable[tuple[str, str]], threshold: float = 0.7, num_perm: int = 256, ngram: int = 5, seed: int = 42,
    mapper: Optional[Callable] = None,
) -> dict[str, str]:
    """The near duplicates among ``(key, text)`` documents given in keep order, each with its kept twin.

    Returns ``{removed key: twin key}``, in input order of the removed keys: a document is removed when a document
    kept before it has exact Jaccard >= ``threshold`` with it, and its twin is the first such kept document among
    the LSH candidates. Keys must be unique; the result depends only on the documents and their order, not on
    ``mapper`` (which computes the sketches of chunks of documents, in order; default: in this process).
    """
    keys, texts = [], []
    for key, text in docs:
        keys.append(key)
        texts.append(text)
    chunks = [texts[i : i + _CHUNK] for i in range(0, len(texts), _CHUNK)]
    sketches = (mapper or map)(partial(sketch, ngram=ngram, num_perm=num_perm, seed=seed), chunks)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    kept_hashes: dict[int, np.ndarray] = {}  # position of a kept document -> its shingle hashes
    decided: dict[bytes, int] = {}  # shingle set -> the kept document it is (or is a near duplicate of)
    twins: dict[str, str] = {}
    for index, (hashes, signature) in enumerate(itertools.chain.from_iterable(sketches)):
        if not hashes.size:
            continue
        content = hashlib.blake2b(hashes, digest_size=16).digest()
        if content in decided:  # same shingle set as an earlier document: same kept twin (or that document)
            twins[keys[index]] = keys[decided[content]]
            continue
        # rensa signatures are uint32 like datasketch's "affine32"; the label only satisfies datasketch's check
        # that one index holds one kind of signature (here they all come from rensa).
        minhash = LeanMinHash(seed=seed, hashvalues=signature, scheme="affine32")
        twin = next((other for other in sorted(lsh.query(minhash)) if jaccard(kept_hashes[other], hashes) >= threshold), None)
        if twin is None:
            lsh.insert(index, minhash)
            kept_hashes[index] = hashes
            decided[content] = index
        else:
            twins[keys[index]] = keys[twin]
            decided[content] = twin
    return twins
