"""A second, independent signal for text: character-shingle overlap.

A text is normalised (case folded, markup characters and runs of whitespace removed) and cut
into overlapping character 5-grams, each hashed to one of 2**24 buckets with a rolling hash of
its UTF-8 bytes (deterministic across processes). A corpus is a sparse binary matrix, one row
per text. For a pair: Jaccard = |A & B| / |A | B| (both mostly the same) and containment =
|A & B| / min(|A|, |B|) (the shorter mostly inside the longer: truncations, added headers).

A copy shares its characters with its original whatever an embedding makes of a header or of
markup wrapped around every line; two distinct passages on one topic do not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import sparse

K = 5
N_BUCKETS = 1 << 24
MIN_CONTAINMENT = 0.9  # the shingles route: the shorter text mostly inside the longer
MIN_JACCARD = 0.5  # ... and half of all shingles shared
_MARKUP = re.compile(r"[`*_#>|\[\]]+|</?p>|\.\. \w+::")
_SPACE = re.compile(r"\s+")
_PRIME = np.uint64(1_099_511_628_211)


def normalise(text: str) -> str:
    """Case-folded text with markup characters dropped and whitespace runs made one space."""
    return _SPACE.sub(" ", _MARKUP.sub(" ", text.casefold())).strip()


def shingle_ids(text: str, k: int = K) -> np.ndarray:
    """Sorted unique bucket ids of the normalised text's character k-grams."""
    data = np.frombuffer(normalise(text).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if data.size == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, int(data.size))
    h = np.zeros(data.size - k + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):  # h = sum_j byte[i + j] * P^(k - 1 - j) mod 2^64, then mixed
            h = h * _PRIME + data[j : data.size - k + 1 + j]
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return np.unique((h % np.uint64(N_BUCKETS)).astype(np.int64))


def shingle_matrix(texts: Sequence[str | None]) -> sparse.csr_matrix:
    """Binary CSR matrix: row i marks text i's shingle buckets (no text: an empty row)."""
    rows = [shingle_ids(t) if t else np.zeros(0, dtype=np.int64) for t in texts]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    data = np.ones(len(indices), dtype=np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), N_BUCKETS))


def pair_overlap(
    x: sparse.csr_matrix, a: np.ndarray, b: np.ndarray, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """(Jaccard, containment) of rows a[k], b[k] of a shingle matrix (0 for empty rows)."""
    size = np.diff(x.indptr).astype(np.float64)
    inter = np.zeros(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        e = min(s + chunk, len(a))
        inter[s:e] = np.asarray(x[a[s:e]].multiply(x[b[s:e]]).sum(axis=1)).ravel()
    union = size[a] + size[b] - inter
    smaller = np.minimum(size[a], size[b])
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    con = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    return jac.astype(np.float32), con.astype(np.float32)
