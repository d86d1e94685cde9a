"""Candidates from local features: images that share many rare visual words.

A crop, a rotated or flipped scan, or a photo with a caption burned in keeps most of its
keypoints, while its pooled embedding and thumbnail move. Each image's ORB descriptors (the ones
the geometric check uses, `dedup.geometry`) are quantised to visual words: a vocabulary learned on
this data, two levels of k-means on the descriptors' bits (`BRANCH` cells of `BRANCH`, a word
being the Hamming-nearest binary centroid), then each of those split around its own descriptors
until a word holds about `LEAF` of them. Words stay rare however many images there are (4,096
fixed words were each in ~5% of the images, so every image was scored against every other); the
search is a sparse product that scores only the images sharing a word, its cost the images times
the images per word rather than their square. An image is the tf-idf weighted, unit-length
histogram of its words; the mirrored image's words give a second histogram, so a flip is found
too (ORB itself is rotation-invariant, so turns need nothing more). Each image's `k` most similar images, plain or
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

BRANCH = 64  # two k-means levels of 64 cells of 64 (4,096 cells) ...
LEAF = 16  # ... each split further, by up to `DEPTH` levels, until a word holds at most this
DEPTH = 2  # many of the data's descriptors: words stay rare however many images there are
SPLIT = 64  # at most this many words from one split
STOP = 8 * LEAF  # a word in more images than this (identical descriptors) is not searched
TRAIN_DESCRIPTORS = 64_000  # k-means learns on at most this many descriptors (sampled)
KMEANS_ITERS = 10
CHUNK = 32_768  # descriptors compared with the centroids at a time (bounded memory)
SEARCH_WORK = 4096  # a split word's descriptors x centroids from which one FAISS search for it
# costs less than its share of comparing every small word's at once (`_nearest_each`)
EACH_CHUNK = 262_144  # descriptors compared with their words' centroids at a time (memory)
NULL_RANK = 8  # an image's 8th most similar image is, on any data, a look-alike at best ...
DISTINCT = 1.05  # ... and a candidate scores at least 5% above it (the true copy stands out)
BLOCK = 512  # query images scored per block (bounded memory: BLOCK x the images sharing words)
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
    `threads` threads (default: the cores), and so do the vocabulary's assignments."""
    start = time.perf_counter()
    usable = [n for n, f in enumerate(features) if f is not None and f.plain.usable]
    if len(usable) < 2 or k < 1:
        return NO_WORDS
    plain = [features[n].plain.descriptors for n in usable]  # type: ignore[union-attr]
    mirror = [features[n].mirrored.descriptors for n in usable]  # type: ignore[union-attr]
    vocab, plain_words = vocabulary(np.concatenate(plain), workers(threads))
    hist_p = _histograms(plain_words, plain, vocab.size)
    hist_m = _histograms(vocab.words(np.concatenate(mirror)), mirror, vocab.size)
    p, m = _tfidf(hist_p, hist_m)
    rows = np.asarray(usable, dtype=np.int64)
    asked = np.arange(len(rows)) if queries is None else np.flatnonzero(np.isin(rows, queries))
    i, j, score = _top_k(p, m, asked, min(k, len(usable) - 1), threads)
    a, b = rows[i], rows[j]
    n = len(features)
    key, first = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_index=True)
    seconds = time.perf_counter() - start
    return WordPairs(key // n, key % n, score[first].astype(np.float32), seconds, vocab.leaves)


def vocabulary(descriptors: np.ndarray, threads: int = 1) -> tuple[Vocabulary, np.ndarray]:
    """The vocabulary of these ORB descriptors, and each one's word: `BRANCH` cells by k-means
    on the descriptors' bits (rounded to binary centroids), each split again into up to
    `BRANCH` by k-means, then every cell holding more than `LEAF` of the descriptors split by
    up to `SPLIT` of its own descriptors (drawn at random), up to `DEPTH` times. Descriptors
    are assigned to words on `threads` threads (the same words on any number)."""
    rng = np.random.default_rng(SEED)
    sample = descriptors
    if len(descriptors) > TRAIN_DESCRIPTORS:
        sample = descriptors[rng.choice(len(descriptors), TRAIN_DESCRIPTORS, replace=False)]
    top = _kmeans(sample, BRANCH)
    cell = _nearest(top, sample)
    subs = [_kmeans(sample[cell == c], BRANCH) for c in range(len(top))]
    vocab = Vocabulary(top, subs, {}, [len(subs) * BRANCH], threads)
    word = vocab.cells(descriptors)
    for _ in range(DEPTH):
        if not vocab.grow(descriptors, word, rng):
            break
        word = vocab.descend(descriptors, word)
    return vocab, word


@dataclass(frozen=True)
class Vocabulary:
    """Binary centroids: the top cells, each cell's k-means words (32 bytes each), and the
    words split further: a word's centroids (its own descriptors) and its first child's id."""

    top: np.ndarray
    subs: list[np.ndarray]
    split: dict[int, tuple[np.ndarray, int]]
    count: list[int]  # one item: the number of ids given (words and the cells split)
    threads: int = 1  # descriptors are assigned to words on this many threads

    @property
    def size(self) -> int:
        return self.count[0]

    @property
    def leaves(self) -> int:
        return self.size - len(self.split)

    def cells(self, descriptors: np.ndarray) -> np.ndarray:
        """Each descriptor's k-means word (cell * BRANCH + the nearest of the cell's words)."""
        cell = _nearest(self.top, descriptors, self.threads)
        out = np.zeros(len(descriptors), np.int64)
        groups = _groups(cell)
        found = parallel_map(
            lambda g: _nearest(self.subs[g[0]], descriptors[g[1]]), groups, self.threads
        )
        for (c, mine), near in zip(groups, found, strict=True):
            out[mine] = c * BRANCH + near
        return out

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """Each descriptor's word: its k-means word, then down the splits."""
        word = self.cells(descriptors)
        for _ in range(DEPTH):
            word = self.descend(descriptors, word)
        return word

    def grow(self, descriptors: np.ndarray, word: np.ndarray, rng: np.random.Generator) -> bool:
        """Split each word holding more than `LEAF` of `descriptors` into up to `SPLIT`
        (about `LEAF` each) around its own descriptors drawn at random; False when none was."""
        grown = False
        for w, mine in _groups(word, more_than=LEAF):
            if w not in self.split:
                b = min(SPLIT, -(-len(mine) // LEAF))
                centres = descriptors[mine[np.sort(rng.choice(len(mine), b, replace=False))]]
                self.split[w] = (centres, self.count[0])
                self.count[0] += b
                grown = True
        return grown

    def descend(self, descriptors: np.ndarray, word: np.ndarray) -> np.ndarray:
        """One level down: each descriptor of a split word to the nearest of its centroids. A
        split word with many descriptors here is one FAISS search; the many small ones (most of
        a deep level: a few centroids each) are compared all at once (`_nearest_each`), not
        one search per word."""
        out = word.copy()
        splits = _Splits.of(self.split)
        slot = splits.slot(word, self.size)
        rows = np.flatnonzero(slot >= 0)
        slot = slot[rows]
        work = np.bincount(slot, minlength=len(splits.first))[slot] * splits.count[slot]
        many = work >= SEARCH_WORK
        searched = rows[many]
        groups = [(s, searched[mine]) for s, mine in _groups(slot[many])]
        found = parallel_map(
            lambda g: _nearest(splits.centres(g[0]), descriptors[g[1]]), groups, self.threads
        )
        for (s, at), near in zip(groups, found, strict=True):
            out[at] = splits.first[s] + near
        few, few_slot = rows[~many], slot[~many]
        chunks = [
            (few[s : s + EACH_CHUNK], few_slot[s : s + EACH_CHUNK])
            for s in range(0, len(few), EACH_CHUNK)
        ]
        found = parallel_map(
            lambda c: _nearest_each(descriptors[c[0]], splits, c[1]), chunks, self.threads
        )
        for (at, where), near in zip(chunks, found, strict=True):
            out[at] = splits.first[where] + near
        return out


@dataclass(frozen=True)
class _Splits:
    """The split words as arrays: sorted ids, each one's first child id, its centroids' count
    and where they start in `stacked` (every split's centroids, one after another)."""

    word: np.ndarray
    first: np.ndarray
    count: np.ndarray
    start: np.ndarray
    stacked: np.ndarray  # (total, 32) uint8

    @classmethod
    def of(cls, split: dict[int, tuple[np.ndarray, int]]) -> _Splits:
        word = np.array(sorted(split), dtype=np.int64)
        centres = [split[w][0] for w in word.tolist()]
        count = np.array([len(c) for c in centres], dtype=np.int64)
        first = np.array([split[w][1] for w in word.tolist()], dtype=np.int64)
        start = np.cumsum(count) - count
        stacked = np.concatenate(centres) if centres else np.zeros((0, 32), np.uint8)
        return cls(word, first, count, start, np.ascontiguousarray(stacked, np.uint8))

    def slot(self, word: np.ndarray, size: int) -> np.ndarray:
        """Each word's position among the split words (ids below `size`); -1 where it is not
        split."""
        table = np.full(size, -1, np.int64)
        table[self.word] = np.arange(len(self.word))
        out: np.ndarray = table[word]
        return out

    def centres(self, s: int) -> np.ndarray:
        return self.stacked[self.start[s] : self.start[s] + self.count[s]]


def _nearest_each(descriptors: np.ndarray, splits: _Splits, slot: np.ndarray) -> np.ndarray:
    """Each descriptor's Hamming-nearest centroid among those of its own split word (`slot`),
    as an index within them, ties to the lower (as `_nearest`): the j-th centroids of every
    descriptor compared at once, for j up to the most centroids a word has."""
    n = len(slot)
    count = splits.count[slot]
    order = np.argsort(-count, kind="stable")  # most centroids first: those with a j-th are
    # a prefix
    x = np.ascontiguousarray(descriptors[order], np.uint8).view(np.uint64)
    base, count = splits.start[slot[order]], count[order]
    centres = splits.stacked.view(np.uint64)
    best = np.full(n, 257, np.int32)  # more than 256 bits: any centroid is closer
    arg = np.zeros(n, np.int64)
    most = int(count.max()) if n else 0
    have = np.searchsorted(-count, -np.arange(most), side="left").tolist()  # with a j-th
    for j, m in enumerate(have):
        dist = _popcount(x[:m] ^ centres[base[:m] + j])
        closer = dist < best[:m]
        np.copyto(best[:m], dist, where=closer)
        np.copyto(arg[:m], j, where=closer)
    out = np.empty(n, np.int64)
    out[order] = arg
    return out


_BITS = np.array([bin(v).count("1") for v in range(256)], np.int32)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per row of a (n, 4) uint64 array (256-bit descriptors)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        counts: np.ndarray = np.bitwise_count(x).sum(axis=1, dtype=np.int32)
        return counts
    return _popcount_table(x)


def _popcount_table(x: np.ndarray) -> np.ndarray:
    """`_popcount` by a table of each byte's bits (numpy before 2 has no `bitwise_count`)."""
    counts: np.ndarray = _BITS[np.ascontiguousarray(x).view(np.uint8)].reshape(len(x), -1).sum(1)
    return counts


def _groups(word: np.ndarray, more_than: int = 0) -> list[tuple[int, np.ndarray]]:
    """Each distinct word (ascending) held at more than `more_than` positions, and those
    positions (ascending)."""
    order = np.argsort(word, kind="stable")
    values, starts, counts = np.unique(word[order], return_index=True, return_counts=True)
    big = np.flatnonzero(counts > more_than).tolist()
    return [(int(values[k]), order[starts[k] : starts[k] + counts[k]]) for k in big]


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


def _nearest(centroids: np.ndarray, descriptors: np.ndarray, threads: int = 1) -> np.ndarray:
    """The Hamming-nearest binary centroid of each binary descriptor (ties to the lower index),
    `CHUNK` descriptors at a time on `threads` threads."""
    chunks = [descriptors[s : s + CHUNK] for s in range(0, len(descriptors), CHUNK)]
    found = parallel_map(lambda d: hamming_knn(d, centroids, 1)[1][:, 0], chunks, threads)
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def _histograms(word: np.ndarray, descriptors: list[np.ndarray], size: int) -> sparse.csr_matrix:
    """Per image, how many of its descriptors (their words in order) fall in each word."""
    counts = np.array([len(d) for d in descriptors])
    rows = np.repeat(np.arange(len(descriptors)), counts)
    shape = (len(descriptors), size)
    out = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, word)), shape=shape)
    out.sum_duplicates()
    return out


def _tfidf(
    plain: sparse.csr_matrix, mirrored: sparse.csr_matrix
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Square-rooted counts weighted by each word's inverse document frequency, unit rows; the
    words in more than `STOP` images then left out of the search (their share of the unit
    length stays: an image of common words only scores low)."""
    df = np.asarray((plain > 0).sum(axis=0)).ravel()
    idf = np.log((plain.shape[0] + 1) / (df + 1)).astype(np.float32)
    searched = sparse.diags((df <= STOP).astype(np.float32))
    out = []
    for h in (plain, mirrored):
        w = sparse.csr_matrix(h.sqrt() @ sparse.diags(idf))
        norm = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel())
        unit = sparse.csr_matrix(sparse.diags(1 / np.maximum(norm, 1e-12)) @ w @ searched)
        unit.eliminate_zeros()
        out.append(unit)
    return out[0], out[1]


def _top_k(
    plain: sparse.csr_matrix,
    mirrored: sparse.csr_matrix,
    asked: np.ndarray,
    k: int,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each asked row's k best other rows by the better of its plain and mirrored similarity,
    kept where it stands out: at least `DISTINCT` times the row's `NULL_RANK`-th best. The
    products are sparse (an inverted index: only images sharing a word are scored, and words
    are rare), so the cost grows with the images times the images per word, not their square.
    Blocks of rows are scored side by side on `threads` threads (scipy's products release the
    GIL), each block as large as a block on one thread divided by the threads."""
    corpus = sparse.csr_matrix(plain.T)
    n = workers(threads)
    size = max(1, BLOCK // n)
    blocks = [asked[s : s + size] for s in range(0, len(asked), size)]
    scored = parallel_map(lambda rows: _block(plain, mirrored, corpus, rows, k), blocks, n)
    if not scored:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate(part) for part in zip(*scored, strict=True))  # type: ignore[return-value]


def _block(
    plain: sparse.csr_matrix,
    mirrored: sparse.csr_matrix,
    corpus: sparse.csr_matrix,
    rows: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_top_k` of one block of rows: (row, other row, similarity) of the pairs kept."""
    sim = sparse.csr_matrix((plain[rows] @ corpus).maximum(mirrored[rows] @ corpus))
    found = [
        _best(row, sim.indices[lo:hi], sim.data[lo:hi], k)
        for row, lo, hi in zip(rows.tolist(), sim.indptr[:-1], sim.indptr[1:], strict=True)
    ]
    counts = [len(j) for j, _ in found]
    i = np.repeat(rows.astype(np.int64), counts)
    j = np.concatenate([j for j, _ in found]).astype(np.int64)
    return i, j, np.concatenate([s for _, s in found]).astype(np.float32)


def _best(row: int, cols: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One row's k most similar others that stand out (`DISTINCT` times its `NULL_RANK`-th
    most similar; with fewer others sharing a word, the k best): columns and similarities."""
    other = (cols != row) & (sims > 0)
    cols, sims = cols[other], sims[other]
    depth = max(k, NULL_RANK)
    if depth < len(sims):
        top = np.argpartition(-sims, depth - 1)[:depth]
        cols, sims = cols[top], sims[top]
    order = np.lexsort((cols, -sims))  # ties to the lower image: the same on any block
    null = sims[order[NULL_RANK - 1]] if len(sims) >= NULL_RANK else 0.0
    cols, sims = cols[order][:k], sims[order][:k]
    keep = sims >= DISTINCT * null
    return cols[keep], sims[keep]
