"""The embedding checks over a matrix kept on the cluster (`RayRows`): the driver gets floats.

The outlier check's k-NN distances are computed by tasks that read the matrix's blocks, in the
query chunks the local computation uses (`outliers.QUERY_BLOCK` rows from row 0, so FAISS sees
the same batches), and only one float per distinct row comes back:

exact    (distinct rows <= `outliers.sample`) one task per (query chunk, corpus block of
         `near._KNN_CORPUS_ROWS`), each `rows.knn_block`; one task per chunk merges its blocks'
         neighbours (`near._merge_neighbours`) and returns the chunk's mean distances.
sampled  the sample's rows are gathered into blocks on the cluster; one task per group of
         chunks builds the sample's index and scores its chunks (`outliers.sampled_chunk`).

The drift test reads only its sampled rows (`drift.split_shift_rows`), the contamination search
runs as the dedup search's tasks (`between`), and the probes run in one task each
(`RayRows.apply`): none of them needs the tasks below.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from leanset.dedup import near
from leanset.dedup.contamination import Between
from leanset.dedup.outliers import (
    QUERY_BLOCK,
    mean_distance,
    sample_index,
    sample_pick,
    sampled_chunk,
)
from leanset.pipelines.config import EngineSettings
from leanset.pipelines.engine.rows import RayRows, _remote, _rows, knn_block

CHUNKS_PER_TASK = 4  # query chunks one sampled-distance task scores (its result: 4 x 64k floats)


def knn_distance(
    x: RayRows,
    k: int,
    device: str = "auto",
    sample: int | None = None,
    seed: int = 0,
    chunk: int = QUERY_BLOCK,
) -> np.ndarray:
    """`outliers.knn_distance` of a matrix kept on the cluster, by tasks (same floats).
    `chunk`: query rows per FAISS call (the local check's; tests try others)."""
    n = x.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    if sample is not None and n > sample:
        return _sampled(x, k, sample, seed, chunk)
    return _exact(x, min(k, n - 1), chunk)


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + chunk)) for s in range(0, n, chunk)]


def _exact(x: RayRows, k: int, chunk: int) -> np.ndarray:
    """Every row's k nearest other rows, searched chunk by corpus block as `sample_neighbours`
    searches them; the merge and the mean run in one task per chunk."""
    import ray

    n, bm = x.shape[0], x.blocks
    want = min(k + 2, n)
    corpus = []
    for s, e in near._blocks(n, near._KNN_CORPUS_ROWS):
        refs, cuts = bm.covering(s, e)
        corpus.append((min(want, e - s), s, cuts, refs))
    futures = []
    for qs, qe in _chunks(n, chunk):
        qrefs, qcuts = bm.covering(qs, qe)
        q = _remote(gather).remote(qcuts, *qrefs)
        found = [_remote(knn_block).remote(q, kk, s, cuts, *refs) for kk, s, cuts, refs in corpus]
        futures.append(_remote(chunk_distance).remote(qs, qe, k, *found))
    return np.concatenate(ray.get(futures))


def _sampled(x: RayRows, k: int, sample: int, seed: int, chunk: int) -> np.ndarray:
    """Every row's distance to its k nearest rows of the random sample the local check draws."""
    import ray

    n = x.shape[0]
    pick = sample_pick(n, sample, seed)
    sample_refs = x.take(pick).blocks.refs
    pick_ref = ray.put(pick)
    chunks = _chunks(n, chunk)
    futures = []
    for g in range(0, len(chunks), CHUNKS_PER_TASK):
        group = chunks[g : g + CHUNKS_PER_TASK]
        qrefs, qcuts = x.blocks.covering(group[0][0], group[-1][1])
        futures.append(
            _remote(sampled_distance).remote(
                pick_ref, group, k, len(sample_refs), qcuts, *sample_refs, *qrefs
            )
        )
    return np.concatenate(ray.get(futures))


def between(engine: EngineSettings) -> Between:
    """The contamination search of rows kept on the cluster: the dedup search's tasks."""
    from leanset.pipelines.engine import search

    find = partial(
        search.find_near_pairs_between, task_cpus=engine.task_cpus, task_rows=engine.task_rows
    )
    return lambda q, c, t, opts: find(q, c, t, opts)


# ------------------------------------------------------------------------------- tasks


def gather(cuts: list[tuple[int, int]], *parts: np.ndarray) -> np.ndarray:
    """Some rows of resolved blocks as one array (a query chunk)."""
    return _rows(cuts, parts)


def chunk_distance(
    start: int, end: int, k: int, *found: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """A query chunk's mean distance to its k nearest other rows, from its corpus blocks'
    top-k (merged as `sample_neighbours` merges them)."""
    idx = np.concatenate([f[0] for f in found], 1)
    sim = np.concatenate([f[1] for f in found], 1)
    nb = near._merge_neighbours(np.arange(start, end, dtype=np.int64), idx, sim, k)
    return mean_distance(nb.idx, nb.sim)


def sampled_distance(
    pick: np.ndarray,
    chunks: list[tuple[int, int]],
    k: int,
    n_sample: int,
    qcuts: list[tuple[int, int]],
    *parts: Any,
) -> np.ndarray:
    """Some query chunks' mean distances to their k nearest sampled rows (the local chunks)."""
    vectors = np.ascontiguousarray(np.concatenate(parts[:n_sample]))
    index = sample_index(vectors)
    q = _rows(qcuts, parts[n_sample:])
    first = chunks[0][0]
    out = [sampled_chunk(index, vectors, pick, q[s - first : e - first], s, k) for s, e in chunks]
    return np.concatenate(out)
