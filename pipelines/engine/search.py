"""Near-duplicate search as Ray tasks: the same pairs and similarities as `dedup.near` locally.

The matrix lives in the object store as row blocks (`BlockMatrix`), so tasks fetch only the rows
they search. `dedup.near` decides every pair and every probed centroid in float64, so a task's
thread count and row count never change a result, and the pieces below reproduce the local search
exactly:

exact        one task per (query block, corpus block) tile of `near._block_grid` (on or above
             the diagonal for a self-search), each the local kernel call.
partitioned  1. the k-means sample is the rows the local search draws (same generator, same
                order); centroids are trained on the driver with `near._train_centroids`
             2. one task per block gives its rows their probed centroids (`near.assign_rows`);
                labels stay in the object store, only per-cluster counts come back
             3. clusters are packed into groups by their work (longest first onto the lightest);
                one task per block splits its rows into one piece per group
             4. one task per group gathers its pieces (rows ascending, as locally) and runs each
                of its clusters' jobs as `near._cluster_jobs` builds them
The driver holds O(k) counts and the pairs; (1 + mean extra probes) x N x D x 4 bytes move once.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from leanset.dedup import near
from leanset.dedup.matrix import Rows, check_matrix, check_rows
from leanset.dedup.near import NearPairs, Pairs, SearchOptions
from leanset.pipelines.engine.rows import (
    BlockMatrix,
    RayRows,
    _kernel,
    _remote,
    _rows,
    take_rows,
)

GROUPS_PER_CPU = 4  # search tasks per cluster CPU: evens out clusters of unequal work
TASK_ROWS = 262_144  # rows one search task holds at most (engine.task_rows): bounds its memory


def _task(
    kernel: near.Kernel,
    q: np.ndarray,
    c: np.ndarray,
    self_search: bool,
    t: float,
    opts: SearchOptions,
) -> near._Task:
    """A near._Task over the rows one task holds."""
    hq = kernel.load(q)
    return near._Task(kernel, q, c, hq, hq if self_search else kernel.load(c), self_search, t, opts)


# ------------------------------------------------------------------------------- tasks


def exact_tile(
    qcuts: list[tuple[int, int]],
    ccuts: list[tuple[int, int]],
    n_q: int,
    diag: bool,
    threshold: float,
    device: str,
    *parts: np.ndarray,
) -> Pairs:
    """One tile of the exact search (local rows): the call the local search makes for it."""
    kernel = _kernel(device)
    q = kernel.load(_rows(qcuts, parts[:n_q]))
    c = q if diag else kernel.load(_rows(ccuts, parts[n_q:]))
    qi, cj, s = kernel.block(q, c, threshold, diag)
    return qi, cj, s


def assign_block(
    block: np.ndarray, centroids: np.ndarray, m: int, threshold: float, device: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, primary members per cluster, extra probes per cluster) of one block."""
    kernel = _kernel(device)
    labels = np.empty((block.shape[0], m), dtype=np.int64)
    cent = kernel.load(centroids)
    for s, e in near._blocks(block.shape[0], near._ASSIGN_ROWS):
        labels[s:e] = near.assign_rows(kernel, kernel.load(block[s:e]), cent, m, threshold)
    k = centroids.shape[0]
    extra = labels[:, 1:]
    return (
        labels,
        np.bincount(labels[:, 0], minlength=k),
        np.bincount(extra[extra >= 0], minlength=k),
    )


def scatter_block(
    block: np.ndarray, labels: np.ndarray, start: int, group_of: np.ndarray, g: int
) -> Any:
    """A block's rows split into g pieces: a row goes to each group one of its clusters is in."""
    grp = np.where(labels >= 0, group_of[np.maximum(labels, 0)], -1)
    out = []
    for gi in range(g):
        idx = np.flatnonzero((grp == gi).any(axis=1))
        out.append((idx + start, labels[idx], np.ascontiguousarray(block[idx])))
    return out[0] if g == 1 else tuple(out)


Piece = tuple[np.ndarray, np.ndarray, np.ndarray]  # global rows, their labels, their vectors


def _gather(pieces: tuple[Piece, ...], dim: int, m: int) -> Piece:
    """One group's rows in ascending global order (blocks in order, rows in order)."""
    full = [p for p in pieces if p[0].size]
    if not full:
        return np.empty(0, np.int64), np.empty((0, m), np.int64), np.empty((0, dim), np.float32)
    rows = np.concatenate([p[0] for p in full])
    labels = np.concatenate([p[1] for p in full])
    return rows, labels, np.ascontiguousarray(np.concatenate([p[2] for p in full]))


def _csr(members: tuple[np.ndarray, np.ndarray], cl: int) -> np.ndarray:
    rows, starts = members
    return rows[starts[cl] : starts[cl + 1]]


def search_group(
    clusters: np.ndarray,
    k: int,
    n_q: int,
    t: float,
    opts: SearchOptions,
    dim: int,
    m: int,
    *pieces: Piece,
) -> list[tuple[tuple[int, int], Pairs]]:
    """Every job of this group's clusters, as near._cluster_jobs builds and runs them.

    Self-search (n_q == 0): all pieces are corpus rows. Between: the first n_q are query rows."""
    kernel = _kernel(opts.device)
    if n_q == 0:
        rows, lab, x = _gather(pieces, dim, m)
        qrows, qlab, crows, clab = rows, lab, rows, lab
        task = _task(kernel, x, x, True, t, opts)
    else:
        qrows, qlab, qx = _gather(pieces[:n_q], dim, m)
        crows, clab, cx = _gather(pieces[n_q:], dim, m)
        task = _task(kernel, qx, cx, False, t, opts)
    if not qrows.size or not crows.size:
        return []
    out = []
    q_prim, c_all = near._members(qlab[:, :1], k), near._members(clab, k)
    q_sec, c_prim = near._members(qlab[:, 1:], k), near._members(clab[:, :1], k)
    for cl in clusters.tolist():
        if n_q == 0:  # members first, then the rows that only probe this cluster
            qr, cr = _csr(q_prim, cl), _csr(c_all, cl)
            jobs = [(qr, np.concatenate([qr, cr[clab[cr, 0] != cl]]), True)]
        else:
            jobs = [
                (_csr(q_prim, cl), _csr(c_all, cl), False),
                (_csr(q_sec, cl), _csr(c_prim, cl), False),
            ]
        for n_job, (qr, cr, own) in enumerate(jobs):
            if qr.size and cr.size:
                li, lj, s = near._cluster_pairs(task, qr, cr, own)
                out.append(((cl, n_job), (qrows[li], crows[lj], s)))
    return out


# ------------------------------------------------------------------------------- driver


def lpt_groups(
    work: np.ndarray, g: int, rows: np.ndarray | None = None, task_rows: int = TASK_ROWS
) -> np.ndarray:
    """Cluster -> group: longest job first onto the lightest group (deterministic) that still
    has room for its `rows` (under `task_rows`; else the group with the fewest rows)."""
    group_of = np.zeros(work.shape[0], dtype=np.int64)
    load, held = np.zeros(g), np.zeros(g)
    size = np.zeros(work.shape[0]) if rows is None else rows
    for cl in np.argsort(-work, kind="stable"):
        fits = held + size[cl] <= task_rows
        j = int(np.argmin(np.where(fits, load, np.inf))) if fits.any() else int(np.argmin(held))
        group_of[cl] = j
        load[j] += work[cl]
        held[j] += size[cl]
    return group_of


def _rows_per_cluster(assigned: list[tuple[list[Any], np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rows a cluster's jobs bring into its group task (members and probing rows, all sides)."""
    out: np.ndarray = np.sum([a[1] + a[2] for a in assigned], axis=0).astype(np.float64)
    return out


def search_exact(
    q: BlockMatrix,
    c: BlockMatrix | None,
    t: float,
    opts: SearchOptions,
    task_cpus: float,
    task_rows: int = TASK_ROWS,
) -> tuple[Pairs, dict[str, Any]]:
    """The exact search, one task per tile of `opts.block_rows` (c None: self-search of q)."""
    import ray

    self_search = c is None
    corpus = q if c is None else c
    tile = _remote(exact_tile).options(num_cpus=task_cpus)
    futures, offsets = [], []
    for qs, qe, cs, ce in near._block_grid(q.n, corpus.n, opts.block_rows, self_search):
        diag = self_search and qs == cs
        qrefs, qcuts = q.covering(qs, qe)
        crefs, ccuts = ([], []) if diag else corpus.covering(cs, ce)
        futures.append(tile.remote(qcuts, ccuts, len(qrefs), diag, t, opts.device, *qrefs, *crefs))
        offsets.append((qs, cs))
    parts = [
        (qi + qs, cj + cs, s)
        for (qs, cs), (qi, cj, s) in zip(offsets, ray.get(futures), strict=True)
        if qi.size
    ]
    return near._concat(parts), {"block_pairs": len(futures), "tasks": len(futures)}


def _sample(bms: list[BlockMatrix], size: int, seed: int) -> np.ndarray:
    """near._sample_rows over [query rows..., corpus rows...], gathered by tasks."""
    import ray

    offsets = np.cumsum([0] + [b.n for b in bms])
    pick = np.sort(np.random.default_rng(seed).choice(int(offsets[-1]), size=size, replace=False))
    refs = []
    for bi, bm in enumerate(bms):
        mine = pick[(pick >= offsets[bi]) & (pick < offsets[bi + 1])] - offsets[bi]
        where = np.searchsorted(bm.starts, mine, side="right") - 1
        refs += [
            _remote(take_rows).remote(bm.refs[b], mine[where == b] - bm.starts[b])
            for b in np.unique(where)
        ]
    out: np.ndarray = np.concatenate(list(ray.get(refs)))
    return out


def _assign_all(
    bm: BlockMatrix, cent: Any, m: int, t: float, opts: SearchOptions, task_cpus: float
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Labels per block (left in the object store), primary members and extra probes per cluster."""
    import ray

    fn = _remote(assign_block, 3).options(num_cpus=task_cpus)
    assigned = [fn.remote(ref, cent, m, t, opts.device) for ref in bm.refs]
    counts = ray.get([a[1] for a in assigned] + [a[2] for a in assigned])
    nb = len(assigned)
    return [a[0] for a in assigned], np.sum(counts[:nb], axis=0), np.sum(counts[nb:], axis=0)


def _work(assigned: list[tuple[list[Any], np.ndarray, np.ndarray]]) -> np.ndarray:
    """Pairs each cluster's jobs compare (self-search: one matrix; between: query, corpus)."""
    prim, probes = assigned[0][1], assigned[0][2]
    if len(assigned) == 1:
        return np.where(prim > 0, prim * (prim + probes - (prim + 1) / 2), 0.0)
    c_prim, c_probes = assigned[1][1], assigned[1][2]
    out: np.ndarray = prim * (c_prim + c_probes) + probes * c_prim.astype(np.float64)
    return out


def _scatter(bm: BlockMatrix, labels: list[Any], group_ref: Any, g: int) -> list[list[Any]]:
    """pieces[b][gi]: block b's rows for group gi."""
    fn = _remote(scatter_block, g)
    pieces = [
        fn.remote(ref, lab, int(bm.starts[b]), group_ref, g)
        for b, (ref, lab) in enumerate(zip(bm.refs, labels, strict=True))
    ]
    return [[p] for p in pieces] if g == 1 else [list(p) for p in pieces]


def search_partitioned(
    q: BlockMatrix,
    c: BlockMatrix | None,
    t: float,
    opts: SearchOptions,
    task_cpus: float,
    task_rows: int = TASK_ROWS,
) -> tuple[Pairs, dict[str, Any]]:
    """The partitioned search as assign, scatter and group tasks (c None: self-search of q);
    a group task holds about `task_rows` rows (more only when one cluster alone has more)."""
    import ray

    bms = [q] if c is None else [q, c]
    n_all = sum(b.n for b in bms)
    t0 = time.perf_counter()
    k0 = min(opts.n_clusters or near._default_clusters(n_all), n_all)
    sample = _sample(bms, min(n_all, k0 * near.KMEANS_POINTS_PER_CENTROID), opts.seed)
    centroids = near._train_centroids(sample, k0, opts.seed)  # where the local engine trains
    k = centroids.shape[0]
    m = min(opts.n_probe_clusters or near.DEFAULT_PROBE_CLUSTERS, k)
    t1 = time.perf_counter()
    cent = ray.put(centroids)
    assigned = [_assign_all(b, cent, m, t, opts, task_cpus) for b in bms]
    t2 = time.perf_counter()
    work = _work(assigned)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    moved = sum(int(a[1].sum() + a[2].sum()) for a in assigned)  # rows the groups receive
    g = int(min(k, max(1, GROUPS_PER_CPU * cpus, -(-moved // task_rows))))
    group_of = lpt_groups(work, g, _rows_per_cluster(assigned), task_rows)
    group_ref = ray.put(group_of)
    pieces = [_scatter(b, a[0], group_ref, g) for b, a in zip(bms, assigned, strict=True)]
    n_q = 0 if c is None else len(pieces[0])
    fn = _remote(search_group).options(num_cpus=task_cpus)
    results = [
        fn.remote(
            np.flatnonzero(group_of == gi),
            k,
            n_q,
            t,
            opts,
            q.dim,
            m,
            *[blk[gi] for bp in pieces for blk in bp],
        )
        for gi in range(g)
    ]
    # concatenated cluster by cluster, job by job: the local search's order
    per_job = sorted((p for r in ray.get(results) for p in r), key=lambda item: item[0])
    params = _params(bms, assigned, work, sample.shape[0], k, k0, m, t)
    params |= {
        "groups": g,
        "task_rows": task_rows,
        "kmeans_s": round(t1 - t0, 3),
        "assign_s": round(t2 - t1, 3),
    }
    params["search_s"] = round(time.perf_counter() - t2, 3)
    return near._concat([p for _, p in per_job]), params


def _params(
    bms: list[BlockMatrix],
    assigned: list[tuple[list[Any], np.ndarray, np.ndarray]],
    work: np.ndarray,
    n_sample: int,
    k: int,
    k0: int,
    m: int,
    t: float,
) -> dict[str, Any]:
    """The partitioned search's record, as the local search writes it."""
    corpus = bms[-1]
    c_prim, c_probes = assigned[-1][1], assigned[-1][2]
    full = corpus.n * (corpus.n - 1) / 2 if len(bms) == 1 else bms[0].n * corpus.n
    return {
        "n_clusters": k,
        "n_clusters_kmeans": k0,
        "n_probe_clusters": m,
        "probe_margin": round(near._probe_margin(t), 6),
        "mean_probes": round(float((c_prim.sum() + c_probes.sum()) / corpus.n), 3),
        "kmeans_sample": int(n_sample),
        "kmeans_iters": near.KMEANS_ITERS,
        "largest_cluster": int(c_prim.max()),
        "work_fraction": round(float(work.sum()) / full, 6),
        "blocks": sum(len(b.refs) for b in bms),
    }


SEARCHERS = {"exact": search_exact, "partitioned": search_partitioned}


def _blocks_of(x: Rows, name: str) -> BlockMatrix:
    """A checked matrix's row blocks: kept on the cluster already, or put there from here."""
    if isinstance(x, RayRows):
        check_rows(x, name=name, unit=True)
        return x.blocks
    return BlockMatrix.put(check_matrix(x, name=name, unit=True))


def _shaped(bm: BlockMatrix) -> np.ndarray:
    """A zero-byte stand-in with the matrix's shape (what `near.search_params` reads)."""
    return np.broadcast_to(np.float32(0), (bm.n, bm.dim))


def _run(
    q: BlockMatrix,
    c: BlockMatrix,
    self_search: bool,
    t: float,
    opts: SearchOptions,
    task_cpus: float,
    task_rows: int,
) -> NearPairs:
    """near._run with the searchers on the cluster: same method choice, pairs and params."""
    chosen, params = near.search_params(_shaped(q), _shaped(c), self_search, t, opts)
    params["engine"] = "ray"
    if (self_search and c.n < 2) or (not self_search and (q.n == 0 or c.n == 0)):
        params["backend"] = "none"
        return NearPairs(*near._empty_pairs(), method=chosen, params=params)
    start = time.perf_counter()
    pairs, extra = SEARCHERS[chosen](q, None if self_search else c, t, opts, task_cpus, task_rows)
    i, j, s = near._finish(pairs, c.n)
    params.update(extra)
    params["backend"] = "ray-tasks"
    params["seconds"] = round(time.perf_counter() - start, 3)
    params["pairs"] = int(i.shape[0])
    return NearPairs(i, j, s, method=chosen, params=params)


def find_near_pairs(
    emb: Rows,
    threshold: float,
    options: SearchOptions | None = None,
    task_cpus: float = 1.0,
    task_rows: int = TASK_ROWS,
) -> NearPairs:
    """`dedup.near.find_near_pairs`, searched by tasks on the connected Ray cluster (`emb` may
    be kept there already: `RayRows`, never brought here)."""
    t = near._check_threshold(threshold)
    bm = _blocks_of(emb, "embeddings")
    return _run(bm, bm, True, t, options or SearchOptions(), task_cpus, task_rows)


def find_near_pairs_between(
    query: Rows,
    corpus: Rows,
    threshold: float,
    options: SearchOptions | None = None,
    task_cpus: float = 1.0,
    task_rows: int = TASK_ROWS,
) -> NearPairs:
    """`dedup.near.find_near_pairs_between`, searched by tasks on the connected Ray cluster."""
    t = near._check_threshold(threshold)
    q, c = _blocks_of(query, "query"), _blocks_of(corpus, "corpus")
    if q.dim != c.dim:
        raise ValueError(f"query has {q.dim} columns, expected {c.dim} (as corpus)")
    return _run(q, c, False, t, options or SearchOptions(), task_cpus, task_rows)
