"""Candidates from local features: images that share many rare visual words.

A crop, a rotated or flipped scan, or a photo with a caption burned in keeps most of its
keypoints, while its pooled embedding and thumbnail move. Each image's ORB descriptors (the ones
the geometric check uses, `dedup.geometry`) are quantised to visual words: a two-level
vocabulary (`BRANCH` cells of `BRANCH` words) learned on this data by k-means on the descriptors'
bits, a word being the Hamming-nearest binary centroid. An image is the tf-idf weighted, unit-length histogram of its words;
the mirrored image's words give a second histogram, so a flip is found too (ORB itself is
rotation-invariant, so turns need nothing more). Each image's `k` most similar images, plain or
mirrored, are its candidates where they stand out from the image's look-alikes (`DISTINCT` times
the similarity of its `NULL_RANK`-th nearest): distinct images that look alike share common
words (down-weighted by idf) about as much as the next look-alike does, a copy shares the rare
ones of the part it keeps. On the trust benchmark's textiles (all alike), of the 3 nearest
(5,040 pairs, 436 of 442 true pairs among them) 10% above the 8th keeps 1,112 pairs and 432 true;
5% is used (more of the crops, whose words stand out least).

Nothing here accepts a pair: the candidates go to the geometric check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from leanset.dedup.geometry import ImageFeatures, hamming_knn, parallel_map, workers

BRANCH = 64  # a two-level vocabulary: 64 cells of 64 words each (4,096 words)
TRAIN_DESCRIPTORS = 64_000  # k-means learns on at most this many descriptors (sampled)
KMEANS_ITERS = 10
CHUNK = 32_768  # descriptors compared with the centroids at a time (bounded memory)
NULL_RANK = 8  # an image's 8th most similar image is, on any data, a look-alike at best ...
DISTINCT = 1.05  # ... and a candidate scores at least 5% above it (the true copy stands out)
BLOCK = 512  # query images scored per block (bounded memory: BLOCK x N scores)
SEED = 0


@dataclass(frozen=True)
class WordPairs:
    """Each image's nearest images by visual words: rows (i < j), their similarity, the cost."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray
    seconds: float  # the vocabulary and the search
    words: int
    read_seconds: float = 0.0  # reading (or computing) the features, when the caller did


NO_WORDS = WordPairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0.0, 0)


def word_pairs(
    features: list[ImageFeatures | None],
    k: int,
    queries: np.ndarray | None = None,
    threads: int | None = None,
) -> WordPairs:
    """Each usable image's `k` most similar others by tf-idf visual words (mirrors included);
    with `queries` (positions in `features`), only those images' neighbours. The search runs on
    `threads` threads (default: the cores)."""
    start = time.perf_counter()
    usable = [n for n, f in enumerate(features) if f is not None and f.plain.usable]
    if len(usable) < 2 or k < 1:
        return NO_WORDS
    plain = [features[n].plain.descriptors for n in usable]  # type: ignore[union-attr]
    mirror = [features[n].mirrored.descriptors for n in usable]  # type: ignore[union-attr]
    vocab = vocabulary(np.concatenate(plain))
    p, m = _tfidf(_histograms(plain, vocab), _histograms(mirror, vocab))
    rows = np.asarray(usable, dtype=np.int64)
    asked = np.arange(len(rows)) if queries is None else np.flatnonzero(np.isin(rows, queries))
    i, j, score = _top_k(p, m, asked, min(k, len(usable) - 1), threads)
    a, b = rows[i], rows[j]
    n = len(features)
    key, first = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_index=True)
    seconds = time.perf_counter() - start
    return WordPairs(key // n, key % n, score[first].astype(np.float32), seconds, vocab.size)


def vocabulary(descriptors: np.ndarray) -> Vocabulary:
    """A two-level vocabulary of ORB descriptors: `BRANCH` cells by k-means on the descriptors'
    bits (rounded to binary centroids), each split again into up to `BRANCH` words."""
    rng = np.random.default_rng(SEED)
    if len(descriptors) > TRAIN_DESCRIPTORS:
        descriptors = descriptors[rng.choice(len(descriptors), TRAIN_DESCRIPTORS, replace=False)]
    top = _kmeans(descriptors, BRANCH)
    cell = _nearest(top, descriptors)
    subs = [_kmeans(descriptors[cell == c], BRANCH) for c in range(len(top))]
    return Vocabulary(top, subs)


@dataclass(frozen=True)
class Vocabulary:
    """Binary centroids: the top cells, and each cell's words (32 bytes each)."""

    top: np.ndarray
    subs: list[np.ndarray]

    @property
    def size(self) -> int:
        return len(self.subs) * BRANCH

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """Each descriptor's word (cell * BRANCH + the nearest of the cell's words)."""
        cell = _nearest(self.top, descriptors)
        out = np.zeros(len(descriptors), np.int64)
        for c in np.unique(cell).tolist():
            mine = np.flatnonzero(cell == c)
            out[mine] = c * BRANCH + _nearest(self.subs[c], descriptors[mine])
        return out


def _kmeans(descriptors: np.ndarray, k: int) -> np.ndarray:
    """Up to k binary centroids of binary descriptors: Lloyd's k-means on their bits, seeded by
    a sample of them, the means rounded to bits."""
    if len(descriptors) == 0:
        return np.zeros((1, 32), np.uint8)
    rng = np.random.default_rng(SEED)
    k = int(min(k, max(1, len(descriptors) // 8)))
    bits = np.unpackbits(descriptors, axis=1).astype(np.float32)
    centres = bits[rng.choice(len(bits), k, replace=False)]
    with threadpool_limits(1):  # small products: BLAS threads cost more than they share (5x
        # the CPU on a loaded 2-core machine)
        for _ in range(KMEANS_ITERS):
            label = _nearest_bits(centres, bits)
            onehot = sparse.csr_matrix(
                (np.ones(len(label), np.float32), (label, np.arange(len(label)))),
                shape=(k, len(bits)),
            )
            sums = onehot @ bits
            count = np.bincount(label, minlength=k)[:, None]
            centres = np.where(count > 0, sums / np.maximum(count, 1), centres)
    centroids: np.ndarray = np.packbits(centres >= 0.5, axis=1)
    return centroids


def _nearest_bits(centres: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The nearest centre (squared distance, on 0/1 vectors: Hamming for binary centres)."""
    out = np.empty(len(bits), np.int64)
    half = 0.5 * (centres * centres).sum(axis=1)
    for s in range(0, len(bits), CHUNK):
        out[s : s + CHUNK] = np.argmax(bits[s : s + CHUNK] @ centres.T - half, axis=1)
    return out


def _nearest(centroids: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
    """The Hamming-nearest binary centroid of each binary descriptor (ties to the lower index)."""
    out = np.empty(len(descriptors), np.int64)
    for s in range(0, len(descriptors), CHUNK):
        out[s : s + CHUNK] = hamming_knn(descriptors[s : s + CHUNK], centroids, 1)[1][:, 0]
    return out


def _histograms(descriptors: list[np.ndarray], vocab: Vocabulary) -> sparse.csr_matrix:
    """Per image, how many of its descriptors fall in each word."""
    word = vocab.words(np.concatenate(descriptors))
    counts = np.array([len(d) for d in descriptors])
    rows = np.repeat(np.arange(len(descriptors)), counts)
    shape = (len(descriptors), vocab.size)
    out = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, word)), shape=shape)
    out.sum_duplicates()
    return out


def _tfidf(
    plain: sparse.csr_matrix, mirrored: sparse.csr_matrix
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Square-rooted counts weighted by each word's inverse document frequency, unit rows."""
    df = np.asarray((plain > 0).sum(axis=0)).ravel()
    idf = np.log((plain.shape[0] + 1) / (df + 1)).astype(np.float32)
    out = []
    for h in (plain, mirrored):
        w = sparse.csr_matrix(h.sqrt() @ sparse.diags(idf))
        norm = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel())
        out.append(sparse.csr_matrix(sparse.diags(1 / np.maximum(norm, 1e-12)) @ w))
    return out[0], out[1]


def _top_k(
    plain: sparse.csr_matrix,
    mirrored: sparse.csr_matrix,
    asked: np.ndarray,
    k: int,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each asked row's k best other rows by the better of its plain and mirrored similarity,
    kept where it stands out: at least `DISTINCT` times the row's `NULL_RANK`-th best. Blocks
    of rows are scored side by side on `threads` threads (scipy's products release the GIL),
    each block as large as a block on one thread divided by the threads (the same memory)."""
    corpus = plain.T.tocsc()
    depth = min(max(k, NULL_RANK), plain.shape[0] - 1)
    n = workers(threads)
    size = max(1, BLOCK // n)
    blocks = [asked[s : s + size] for s in range(0, len(asked), size)]
    scored = parallel_map(lambda rows: _block(plain, mirrored, corpus, rows, k, depth), blocks, n)
    if not scored:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate(part) for part in zip(*scored, strict=True))  # type: ignore[return-value]


def _block(
    plain: sparse.csr_matrix,
    mirrored: sparse.csr_matrix,
    corpus: sparse.csc_matrix,
    rows: np.ndarray,
    k: int,
    depth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_top_k` of one block of rows: (row, other row, similarity) of the pairs kept."""
    sim = np.maximum((plain[rows] @ corpus).toarray(), (mirrored[rows] @ corpus).toarray())
    sim[np.arange(len(rows)), rows] = -1.0
    top = np.argpartition(-sim, depth - 1, axis=1)[:, :depth]
    best = np.take_along_axis(sim, top, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    top, best = np.take_along_axis(top, order, 1), np.take_along_axis(best, order, 1)
    keep = np.ones((len(rows), k), dtype=bool)  # too few images for a null: the k best
    if depth >= NULL_RANK:
        keep = best[:, :k] >= DISTINCT * best[:, NULL_RANK - 1 : NULL_RANK]
    return np.repeat(rows, k)[keep.ravel()], top[:, :k][keep], best[:, :k][keep]
