"""Near-duplicate pairs by cosine similarity: FAISS exact, partitioned (SemDeDup-style), GPU.

Rows of the embedding matrix are L2-normalised, so cosine similarity is the inner product. Two
searchers share one set of compute kernels:

* ``exact`` compares every pair, in blocks of ``block_rows`` x ``block_rows`` (a self-search
  only visits blocks on or above the diagonal, so it does half the work of a full search).
* ``partitioned`` trains spherical k-means (about sqrt(N) centroids; clusters far above the
  mean size are split once more) on a sample, and gives each row its nearest centroid plus
  the next ones, up to ``n_probe_clusters`` in all, whose similarity is within
  ``PROBE_MARGIN * sqrt(2 - 2 threshold)`` of the nearest (rows on a border probe several
  clusters, rows deep inside one probe one). Each cluster's members (rows whose nearest
  centroid it is) are searched against its members and every row probing it. A pair (x, y) is
  found when x's nearest centroid is among y's probed ones, or the other way round; recall
  below 1 comes only from pairs failing both. Found pairs are exact (same cosine as exact).

Every kernel proposes, float64 decides. Kernels: FAISS ``IndexFlatIP.range_search`` on CPU; on a
GPU with faiss-gpu, k-NN search on a GPU flat index with k grown until every query's neighbours
within the radius are complete; on a GPU without faiss-gpu (or on CPU: ``device="cpu-torch"``),
blocked ``torch.mm`` in fp16 (CUDA) or bf16 (CPU). Each proposes the candidate pairs within its
own rounding-error bound of the threshold; `decide` then computes every candidate's inner
product once in float64 from the float32 rows, rounds it to float32, and keeps it when it is at
least the threshold (as float32). The partitioned search's centroid ranking is checked the same
way (`assign_rows`). So every kernel returns the same pairs with bit-identical similarities, on
any thread count, block size or machine.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from leanset.dedup.matrix import check_matrix, cuda_available

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "cpu-torch", "cuda-torch")
"""`cpu`: FAISS; `cuda`: faiss-gpu if present, else torch; `*-torch`: the torch kernel."""

KMEANS_ITERS = 10
KMEANS_POINTS_PER_CENTROID = 40
BALANCE_FACTOR = 4.0  # clusters with more than this x the mean sample count are split
BALANCE_ROUNDS = 1
DEFAULT_PROBE_CLUSTERS = 8  # the most clusters one row probes
PROBE_MARGIN = 0.1  # probe centroids within PROBE_MARGIN * sqrt(2 - 2 threshold) of the nearest
# FAISS calls comparing fewer pairs run on one thread: OpenMP start-up and spin-waiting cost
# more than the work (2-4x slower partitioned search on a busy 2-core machine)
_FAISS_SERIAL_PAIRS = 1 << 22
_ASSIGN_ROWS = 65536  # rows per centroid-assignment block
_RECHECK_PAIRS = 1 << 18  # candidate pairs per float64 re-check chunk
_GPU_KNN_START = 64  # first k of the faiss-gpu range emulation
_GPU_KNN_MAX = 2048  # largest k faiss-gpu flat search accepts


@dataclass(frozen=True)
class NearPairs:
    """Unordered pairs (i < j for a self-search) with cosine >= threshold, sorted by (i, j)."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray
    method: str
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of pairs."""
        return int(self.i.shape[0])


Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def _empty_pairs() -> Pairs:
    """No pairs."""
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)


def _concat(parts: list[Pairs]) -> Pairs:
    """Concatenate pair lists."""
    if not parts:
        return _empty_pairs()
    return (
        np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False),
        np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False),
        np.concatenate([p[2] for p in parts]).astype(np.float32, copy=False),
    )


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0..n in steps of `size`."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _block_grid(nq: int, nc: int, size: int, upper: bool) -> Iterator[tuple[int, int, int, int]]:
    """Query/corpus block pairs; with `upper` (query is corpus) only blocks on/above the diagonal."""
    for qs, qe in _blocks(nq, size):
        for cs, ce in _blocks(nc, size):
            if not upper or cs >= qs:
                yield qs, qe, cs, ce


def _n_block_pairs(nq: int, nc: int, size: int, upper: bool) -> int:
    """How many blocks `_block_grid` yields."""
    bq, bc = math.ceil(nq / size), math.ceil(nc / size)
    return bq * (bq + 1) // 2 if upper else bq * bc


def error_bound(dim: int) -> float:
    """The most a float32 inner product of two unit rows of `dim` values can be off (with slack)."""
    return 1.05 * dim * 2.0**-24 + 1e-7


def dot64(q: np.ndarray, qi: np.ndarray, c: np.ndarray, cj: np.ndarray) -> np.ndarray:
    """float64 inner products of rows q[qi] and c[cj] (chunked; one fixed summation order)."""
    out = np.empty(qi.shape[0], dtype=np.float64)
    for s in range(0, qi.shape[0], _RECHECK_PAIRS):
        a = q[qi[s : s + _RECHECK_PAIRS]].astype(np.float64)
        b = c[cj[s : s + _RECHECK_PAIRS]].astype(np.float64)
        out[s : s + _RECHECK_PAIRS] = np.einsum("ij,ij->i", a, b)
    return out


@dataclass(frozen=True)
class HostRows:
    """Where a kernel handle's rows live in host memory: local row r is `matrix[ids[r]]`."""

    matrix: np.ndarray  # float32 rows as the caller gave them
    ids: np.ndarray | None = None  # None: local row r is matrix[r]

    def at(self, local: np.ndarray) -> np.ndarray:
        """Row ids into `matrix` of some local rows."""
        return local if self.ids is None else self.ids[local]


def decide(q: HostRows, qi: np.ndarray, c: HostRows, cj: np.ndarray, threshold: float) -> Pairs:
    """The one decision every kernel's candidates go through: float64 product, rounded to float32,
    kept when at least the threshold (as float32). Kernels only propose."""
    sims = dot64(q.matrix, q.at(qi), c.matrix, c.at(cj)).astype(np.float32)
    keep = sims >= np.float32(threshold)
    return qi[keep], cj[keep], sims[keep]


# --------------------------------------------------------------------------------------------
# kernels: propose candidates of one (query block, corpus block), top-k against centroids


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run FAISS with n OpenMP threads inside the block (0: leave as is). A setting that is
    already n is left alone, so that threads entering this side by side never race on it."""
    before = faiss.omp_get_max_threads()
    if not n or before == n:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


Candidates = tuple[np.ndarray, np.ndarray]


class _KernelBase:
    """What every kernel shares: `block` = the kernel's candidates, then `decide`."""

    def host(self, h: Any) -> HostRows:
        """The float32 host rows behind a handle."""
        return HostRows(h)

    def topk_error(self, dim: int) -> float:
        """The most a `top_k` similarity can be off."""
        return error_bound(dim)

    def propose(self, q: Any, c: Any, threshold: float, diag: bool) -> Candidates:
        """Candidate pairs (local rows), a superset of those at or above the threshold."""
        raise NotImplementedError

    def block(self, q: Any, c: Any, threshold: float, diag: bool) -> Pairs:
        """Pairs (local rows) with inner product >= threshold; `diag`: q is c, keep qi < cj."""
        qi, cj = self.propose(q, c, threshold, diag)
        if diag:
            qi, cj = qi[qi < cj], cj[qi < cj]
        return decide(self.host(q), qi, self.host(c), cj, threshold)


class _FaissKernel(_KernelBase):
    """FAISS flat inner-product search on CPU."""

    name = "faiss-cpu"

    def load(self, x: np.ndarray) -> np.ndarray:
        """The matrix in the kernel's memory."""
        return x

    def take(self, h: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        """Selected rows (contiguous)."""
        return np.ascontiguousarray(h[rows])

    def _index(self, c: np.ndarray) -> Any:
        """A flat IP index over `c`."""
        index = faiss.IndexFlatIP(c.shape[1])
        index.add(c)
        return index

    def propose(self, q: np.ndarray, c: np.ndarray, threshold: float, diag: bool) -> Candidates:
        """FAISS's range search a rounding-error bound below the threshold (float32 sums that
        change with FAISS's thread count and block size: they only propose)."""
        radius = max(threshold - error_bound(q.shape[1]), -1.0)
        with faiss_threads(1 if q.shape[0] * c.shape[0] < _FAISS_SERIAL_PAIRS else 0):
            lims, _, idx = self._index(c).range_search(q, radius)
        qi = np.repeat(np.arange(q.shape[0], dtype=np.int64), np.diff(lims.astype(np.int64)))
        return qi, idx.astype(np.int64)

    def top_k(self, q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and indices of each query's k most similar corpus rows."""
        sims, idx = self._index(c).search(q, k)
        return sims, idx.astype(np.int64)


def _knn_range(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    q: np.ndarray,
    nc: int,
    radius: float,
    k_start: int,
    k_max: int,
    fallback: Callable[[np.ndarray], Candidates],
) -> Candidates:
    """Range search emulated by k-NN: grow k for queries whose k-th neighbour is still in range."""
    parts: list[Candidates] = []
    todo = np.arange(q.shape[0], dtype=np.int64)
    k = min(k_start, nc)
    while todo.size:
        sims, idx = search(np.ascontiguousarray(q[todo]), k)
        full = (sims[:, -1] >= radius) & (k < nc)
        done = ~full
        r, col = np.nonzero((sims >= radius) & done[:, None])
        parts.append((todo[r], idx[r, col].astype(np.int64)))
        todo = todo[full]
        if todo.size and k >= k_max:
            qi, cj = fallback(np.ascontiguousarray(q[todo]))
            parts.append((todo[qi], cj))
            break
        k = min(k * 4, k_max, nc)
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class _FaissGpuKernel(_FaissKernel):
    """faiss-gpu flat search; range search emulated with growing k (faiss-gpu has none)."""

    name = "faiss-gpu"

    def __init__(self) -> None:
        self._res = faiss.StandardGpuResources()

    def _index(self, c: np.ndarray) -> Any:
        """A GPU flat IP index over `c`."""
        index = faiss.GpuIndexFlatIP(self._res, c.shape[1])
        index.add(c)
        return index

    def propose(self, q: np.ndarray, c: np.ndarray, threshold: float, diag: bool) -> Candidates:
        """Every neighbour within the float32 error bound of the threshold, by growing k."""
        radius = max(threshold - error_bound(q.shape[1]), -1.0)
        return _knn_range(
            self._index(c).search,
            q,
            c.shape[0],
            radius,
            _GPU_KNN_START,
            _GPU_KNN_MAX,
            lambda rest: _CPU.propose(rest, c, threshold, False),
        )


_CPU = _FaissKernel()


@dataclass(frozen=True)
class _TorchRows:
    """Rows of a matrix on the torch device: low-precision copy, and where their fp32 rows are."""

    lp: Any  # (n, D) fp16/bf16 rows
    base: Any  # the whole fp32 matrix on the device (shared, never copied per block)
    rows: Any  # (n,) int64 row ids into base, on the device
    host: np.ndarray  # the whole fp32 matrix in host memory (what `decide` reads)
    ids: np.ndarray  # (n,) int64 row ids into host


class _TorchKernel(_KernelBase):
    """Blocked torch.mm in fp16/bf16 proposes candidates within its error bound of the threshold."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        # |error| of a low-precision dot of unit vectors: 2u (inputs) + u (output rounding),
        # plus the fp32 accumulation (reduced-precision reductions are switched off: _precise)
        unit_roundoff = float(torch.finfo(self.dtype).eps) / 2
        self.margin = 3 * unit_roundoff + 1e-4
        self.name = f"torch-{self.device.type}-{str(self.dtype).removeprefix('torch.')}"

    @contextmanager
    def _precise(self) -> Iterator[None]:
        """CUDA matmuls accumulate in fp32 inside (no TF32, no fp16 split-K reductions)."""
        m = self.torch.backends.cuda.matmul
        before = (m.allow_tf32, m.allow_fp16_reduced_precision_reduction)
        m.allow_tf32, m.allow_fp16_reduced_precision_reduction = False, False
        try:
            yield
        finally:
            m.allow_tf32, m.allow_fp16_reduced_precision_reduction = before

    def load(self, x: np.ndarray) -> _TorchRows:
        """The matrix on the device (fp32 and low precision); the host copy stays for `decide`."""
        base = self.torch.from_numpy(x).to(self.device)
        rows = self.torch.arange(x.shape[0], device=self.device)
        ids = np.arange(x.shape[0], dtype=np.int64)
        return _TorchRows(base.to(self.dtype), base, rows, x, ids)

    def take(self, h: _TorchRows, rows: np.ndarray | slice) -> _TorchRows:
        """Selected rows (fp32 stays in place; `decide` gathers from the host copy)."""
        if isinstance(rows, slice):
            return _TorchRows(h.lp[rows], h.base, h.rows[rows], h.host, h.ids[rows])
        local = np.asarray(rows, dtype=np.int64)
        r = self.torch.from_numpy(local).to(self.device)
        lp, dev_rows = h.lp.index_select(0, r), h.rows.index_select(0, r)
        return _TorchRows(lp, h.base, dev_rows, h.host, h.ids[local])

    def host(self, h: _TorchRows) -> HostRows:
        """The host fp32 rows behind a handle."""
        return HostRows(h.host, h.ids)

    def propose(self, q: _TorchRows, c: _TorchRows, threshold: float, diag: bool) -> Candidates:
        """Pairs whose low-precision product is within the error bound of the threshold."""
        torch = self.torch
        with self._precise():
            sim = q.lp @ c.lp.T
        if diag:
            sim.fill_diagonal_(-math.inf)
        low = threshold - self.margin - error_bound(q.lp.shape[1])
        hit = torch.nonzero(sim.amax(dim=1) >= low).squeeze(1)
        if hit.numel() == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        r, cj = torch.nonzero(sim.index_select(0, hit) >= low, as_tuple=True)
        return hit[r].cpu().numpy().astype(np.int64), cj.cpu().numpy().astype(np.int64)

    def top_k(self, q: _TorchRows, c: _TorchRows, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and indices of each query's k most similar corpus rows (fp32)."""
        qf = q.base.index_select(0, q.rows)
        cf = c.base.index_select(0, c.rows)
        with self._precise():
            sims, idx = self.torch.topk(qf @ cf.T, k, dim=1)
        return sims.cpu().numpy(), idx.cpu().numpy().astype(np.int64)


Kernel = Any  # _FaissKernel | _FaissGpuKernel | _TorchKernel (duck-typed)


def _faiss_gpus() -> int:
    """Number of GPUs faiss can use (0 for faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _make_kernel(device: str) -> Kernel:
    """The kernel for a device name (see DEVICES)."""
    torch_gpu, faiss_gpu = (
        (False, False) if device in ("cpu", "cpu-torch") else (cuda_available(), _faiss_gpus() > 0)
    )
    if device == "auto":
        device = "cuda" if torch_gpu or faiss_gpu else "cpu"
    if device == "cpu":
        return _FaissKernel()
    if device == "cpu-torch":
        return _TorchKernel("cpu")
    if device == "cuda" and faiss_gpu:
        return _FaissGpuKernel()
    if not torch_gpu:
        raise RuntimeError(f"device={device!r} needs a CUDA GPU visible to torch, and none is")
    return _TorchKernel("cuda")


# --------------------------------------------------------------------------------------------
# searchers


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs (not what it finds: every method returns the pairs >= the threshold).

    `method`: exact, partitioned, or auto (exact while the pair count is at most that of a
    self-search of `exact_max_rows` rows); `device`: see DEVICES; `block_rows`: rows per block of
    a blocked product; `n_clusters` (default about sqrt(N)) and `n_probe_clusters` (default
    DEFAULT_PROBE_CLUSTERS) shape the partitioned search; `seed` its k-means.
    """

    method: str = "auto"
    device: str = "auto"
    exact_max_rows: int = 200_000
    block_rows: int = 16384
    n_clusters: int | None = None
    n_probe_clusters: int | None = None
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.method != "auto" and self.method not in SEARCHERS:
            raise ValueError(
                f"method must be 'auto' or one of {sorted(SEARCHERS)}, got {self.method!r}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        for name in ("exact_max_rows", "block_rows", "n_clusters", "n_probe_clusters"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class _Task:
    """One search: matrices on the kernel, and how to search them."""

    kernel: Kernel
    query: np.ndarray
    corpus: np.ndarray
    q: Any
    c: Any
    self_search: bool
    threshold: float
    options: SearchOptions

    @property
    def block_rows(self) -> int:
        return self.options.block_rows

    @property
    def progress(self) -> bool:
        return self.options.progress


def _range_pairs(
    task: _Task, q: Any, c: Any, nq: int, nc: int, upper: bool, bar: tqdm | None = None
) -> Pairs:
    """All pairs (local rows) of q x c at or above the threshold, searched in blocks."""
    kernel, parts = task.kernel, []
    for qs, qe, cs, ce in _block_grid(nq, nc, task.block_rows, upper):
        qi, cj, s = kernel.block(
            kernel.take(q, slice(qs, qe)),
            kernel.take(c, slice(cs, ce)),
            task.threshold,
            upper and qs == cs,
        )
        if qi.size:
            parts.append((qi + qs, cj + cs, s))
        if bar is not None:
            bar.update(1)
    return _concat(parts)


def _search_exact(task: _Task) -> tuple[Pairs, dict]:
    """Every pair, block by block."""
    nq, nc = task.query.shape[0], task.corpus.shape[0]
    total = _n_block_pairs(nq, nc, task.block_rows, task.self_search)
    with tqdm(total=total, desc="exact blocks", disable=not task.progress) as bar:
        pairs = _range_pairs(task, task.q, task.c, nq, nc, task.self_search, bar)
    return pairs, {"block_pairs": total}


def _sample_rows(task: _Task, size: int, rng: np.random.Generator) -> np.ndarray:
    """A k-means training sample drawn from the query and corpus rows."""
    nq = 0 if task.self_search else task.query.shape[0]
    pick = np.sort(rng.choice(nq + task.corpus.shape[0], size=size, replace=False))
    from_q, from_c = pick[pick < nq], pick[pick >= nq] - nq
    return np.concatenate([task.query[from_q], task.corpus[from_c]])


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (unit rows) of the rows of x."""
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=KMEANS_ITERS,
        spherical=True,
        seed=seed,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 30,
    )
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _train_centroids(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centroids, with clusters over BALANCE_FACTOR x the mean size split by k-means."""
    cent = _kmeans(sample, k, seed)
    target = sample.shape[0] / k
    for round_ in range(BALANCE_ROUNDS):
        labels = _CPU.top_k(sample, cent, 1)[1][:, 0]
        counts = np.bincount(labels, minlength=cent.shape[0])
        big = np.flatnonzero(counts > BALANCE_FACTOR * target)
        if not big.size:
            break
        parts = [cent[counts <= BALANCE_FACTOR * target]]
        for c in big:
            sub = np.ascontiguousarray(sample[labels == c])
            parts.append(_kmeans(sub, math.ceil(counts[c] / target), seed + 1 + round_))
        cent = np.concatenate(parts)
    return cent


def _probe_margin(threshold: float) -> float:
    """Similarity margin below a row's nearest centroid within which it probes more clusters."""
    return PROBE_MARGIN * math.sqrt(2.0 - 2.0 * threshold)


def _assign(task: _Task, h: Any, n: int, centroids: Any, m: int, bar: Any) -> np.ndarray:
    """Each row's nearest centroid, then up to m - 1 more within the probe margin (-1 pads)."""
    out = np.empty((n, m), dtype=np.int64)
    for s, e in _blocks(n, _ASSIGN_ROWS):
        out[s:e] = assign_rows(
            task.kernel, task.kernel.take(h, slice(s, e)), centroids, m, task.threshold
        )
        bar.update(e - s)
    return out


def assign_rows(kernel: Kernel, q: Any, centroids: Any, m: int, threshold: float) -> np.ndarray:
    """Rows' probed centroids, best first (-1 pads), the same on any kernel, thread count or batch.

    The kernel's float32 top m + 1 decides where it is clear; a row whose order, top-m
    membership or probe-margin cut lies within the kernel's error bound of a tie is ranked
    again against every centroid in float64 (ties by centroid id), as `decide` does for pairs."""
    margin = _probe_margin(threshold)
    cent = kernel.host(centroids)
    k = cent.ids.shape[0] if cent.ids is not None else cent.matrix.shape[0]
    sims, idx = kernel.top_k(q, centroids, min(m + 1, k))
    err = kernel.topk_error(cent.matrix.shape[1])
    gaps = sims[:, :-1] - sims[:, 1:]
    risky = (gaps[:, : min(m, sims.shape[1] - 1)] <= 2 * err).any(axis=1)
    cut = sims[:, :1] - margin
    risky |= (np.abs(sims[:, :m] - cut) <= 3 * err).any(axis=1)
    idx = idx[:, :m].copy()
    idx[sims[:, :m] < cut] = -1
    rows = np.flatnonzero(risky)
    if rows.size:
        qh = kernel.host(q)
        c64 = cent.matrix[cent.at(np.arange(k))].astype(np.float64)
        full = qh.matrix[qh.at(rows)].astype(np.float64) @ c64.T
        ids = np.broadcast_to(np.arange(k), full.shape)
        order = np.lexsort((ids, -full), axis=-1)[:, :m]
        top = np.take_along_axis(full, order, axis=1)
        order[top < top[:, :1] - margin] = -1
        idx[rows] = order
    return np.asarray(idx, dtype=np.int64)


def _members(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping by label: rows[starts[c]:starts[c + 1]] have label c in some column (>= 0)."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    order = order[flat[order] >= 0]
    rows = order // labels.shape[1]
    starts = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat[order], minlength=k), out=starts[1:])
    return rows, starts


def _cluster_pairs(task: _Task, q_rows: np.ndarray, c_rows: np.ndarray, own: bool) -> Pairs:
    """Pairs between query rows and corpus rows (global ids); `own`: q_rows lead c_rows (self)."""
    kernel = task.kernel
    qh = kernel.take(task.q, q_rows)
    if own:  # c_rows starts with q_rows: a triangle for q x q, then q x the rest
        n = q_rows.shape[0]
        a = _range_pairs(task, qh, qh, n, n, True)
        rest = c_rows[n:]
        b = _range_pairs(task, qh, kernel.take(task.c, rest), n, rest.shape[0], False)
        qi, cj, s = _concat([a, (b[0], b[1] + n, b[2])])
    else:
        qi, cj, s = _range_pairs(
            task, qh, kernel.take(task.c, c_rows), q_rows.shape[0], c_rows.shape[0], False
        )
    gi, gj = q_rows[qi], c_rows[cj]
    if own:
        gi, gj = np.minimum(gi, gj), np.maximum(gi, gj)
    return gi, gj, s


def _default_clusters(n: int) -> int:
    """About sqrt(n) clusters: balances centroid assignment (n k) against search (n^2 / k)."""
    return max(1, round(math.sqrt(n)))


def _cluster_jobs(
    q_top: np.ndarray, c_top: np.ndarray, k: int, self_search: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
    """Per cluster: (query rows, corpus rows, own) searches that find pairs across borders.

    Self-search: the cluster's members against its members (triangle) and the rows probing it.
    Between: query members against corpus rows probing it, and query rows probing it against
    corpus members.
    """
    q_prim, c_all = _members(q_top[:, :1], k), _members(c_top, k)
    if not self_search:
        q_sec, c_prim = _members(q_top[:, 1:], k), _members(c_top[:, :1], k)
    for cl in range(k):
        qr = q_prim[0][q_prim[1][cl] : q_prim[1][cl + 1]]
        cr = c_all[0][c_all[1][cl] : c_all[1][cl + 1]]
        if self_search:  # members first, then the rows that only probe this cluster
            yield qr, np.concatenate([qr, cr[c_top[cr, 0] != cl]]), True
            continue
        yield qr, cr, False
        yield (
            q_sec[0][q_sec[1][cl] : q_sec[1][cl + 1]],
            c_prim[0][c_prim[1][cl] : c_prim[1][cl + 1]],
            False,
        )


def _job_work(q_rows: np.ndarray, c_rows: np.ndarray, own: bool) -> float:
    """Pairs a cluster job compares."""
    nq, nc = q_rows.size, c_rows.size
    return nq * (nc - (nq + 1) / 2) if own else float(nq * nc)


def _search_partitioned(task: _Task) -> tuple[Pairs, dict]:
    """Spherical k-means partitions; each cluster against rows that have it among their nearest."""
    nq, nc = task.query.shape[0], task.corpus.shape[0]
    n_all = nc if task.self_search else nq + nc
    k0 = min(task.options.n_clusters or _default_clusters(n_all), n_all)
    t0 = time.perf_counter()
    rng = np.random.default_rng(task.options.seed)
    sample = _sample_rows(task, min(n_all, k0 * KMEANS_POINTS_PER_CENTROID), rng)
    centroids = _train_centroids(sample, k0, task.options.seed)
    k = centroids.shape[0]
    m = min(task.options.n_probe_clusters or DEFAULT_PROBE_CLUSTERS, k)
    t1 = time.perf_counter()
    cent = task.kernel.load(centroids)
    with tqdm(total=n_all, desc="assign", disable=not task.progress) as bar:
        c_top = _assign(task, task.c, nc, cent, m, bar)
        q_top = c_top if task.self_search else _assign(task, task.q, nq, cent, m, bar)
    t2 = time.perf_counter()
    parts, work = [], 0.0
    with tqdm(total=k, desc="clusters", disable=not task.progress) as bar:
        for n_job, (qr, cr, own) in enumerate(_cluster_jobs(q_top, c_top, k, task.self_search)):
            work += _job_work(qr, cr, own)
            if qr.size and cr.size:
                parts.append(_cluster_pairs(task, qr, cr, own))
            if task.self_search or n_job % 2:
                bar.update(1)
    t3 = time.perf_counter()
    full = nc * (nc - 1) / 2 if task.self_search else nq * nc
    sizes = np.bincount(c_top[:, 0], minlength=k)
    params = {
        "n_clusters": k,
        "n_clusters_kmeans": k0,
        "n_probe_clusters": m,
        "probe_margin": round(_probe_margin(task.threshold), 6),
        "mean_probes": round(float((c_top >= 0).sum() / nc), 3),
        "kmeans_sample": int(sample.shape[0]),
        "kmeans_iters": KMEANS_ITERS,
        "largest_cluster": int(sizes.max()),
        "work_fraction": round(work / full, 6),
        "kmeans_s": round(t1 - t0, 3),
        "assign_s": round(t2 - t1, 3),
        "search_s": round(t3 - t2, 3),
    }
    return _concat(parts), params


SEARCHERS: dict[str, Callable[[_Task], tuple[Pairs, dict]]] = {
    "exact": _search_exact,
    "partitioned": _search_partitioned,
}


# --------------------------------------------------------------------------------------------
# validation and the public entry points


def _check_threshold(threshold: Any) -> float:
    """A number in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise TypeError(f"threshold must be a number in (0, 1], got {type(threshold).__name__}")
    if not (0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return float(threshold)


def _pick_method(method: str, nq: int, nc: int, self_search: bool, exact_max_rows: int) -> str:
    """`auto`: exact while the pair count is at most that of a self-search of exact_max_rows."""
    if method != "auto":
        return method
    pairs = nc * (nc - 1) / 2 if self_search else nq * nc
    return "exact" if pairs <= exact_max_rows * (exact_max_rows - 1) / 2 else "partitioned"


def _finish(pairs: Pairs, nc: int) -> Pairs:
    """Pairs sorted by (i, j), each once."""
    i, j, s = pairs
    key = i * np.int64(nc) + j
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.ones(key.shape, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    keep = order[first]
    return i[keep], j[keep], s[keep]


def search_params(
    query: np.ndarray, corpus: np.ndarray, self_search: bool, threshold: float, opts: SearchOptions
) -> tuple[str, dict[str, Any]]:
    """The method a search of `query` against `corpus` uses, and the parameters it records (the
    same for every engine that runs it)."""
    nq, nc = query.shape[0], corpus.shape[0]
    chosen = _pick_method(opts.method, nq, nc, self_search, opts.exact_max_rows)
    params: dict[str, Any] = {
        "method": chosen,
        "requested_method": opts.method,
        "device": opts.device,
        "threshold": threshold,
        "query_rows": nq,
        "corpus_rows": nc,
        "dim": corpus.shape[1],
        "self_search": self_search,
        "block_rows": opts.block_rows,
        "seed": opts.seed,
    }
    return chosen, params


def _run(
    query: np.ndarray, corpus: np.ndarray, self_search: bool, threshold: float, opts: SearchOptions
) -> NearPairs:
    """Shared body of find_near_pairs and find_near_pairs_between (inputs validated)."""
    nq, nc = query.shape[0], corpus.shape[0]
    chosen, params = search_params(query, corpus, self_search, threshold, opts)
    if (self_search and nc < 2) or (not self_search and (nq == 0 or nc == 0)):
        params["backend"] = "none"
        return NearPairs(*_empty_pairs(), method=chosen, params=params)
    kernel = _make_kernel(opts.device)
    params["backend"] = kernel.name
    start = time.perf_counter()
    c = kernel.load(corpus)
    q = c if self_search else kernel.load(query)
    task = _Task(kernel, query, corpus, q, c, self_search, threshold, opts)
    pairs, extra = SEARCHERS[chosen](task)
    i, j, s = _finish(pairs, nc)
    params.update(extra)
    params["seconds"] = round(time.perf_counter() - start, 3)
    params["pairs"] = int(i.shape[0])
    log.info(
        "near pairs: %d at cosine >= %s (%s, %s, %.1f s)",
        i.shape[0],
        threshold,
        chosen,
        kernel.name,
        params["seconds"],
    )
    return NearPairs(i, j, s, method=chosen, params=params)


def find_near_pairs(
    emb: np.ndarray, threshold: float, options: SearchOptions | None = None
) -> NearPairs:
    """All pairs i < j of rows of `emb` (unit rows) with cosine similarity >= `threshold`."""
    t = _check_threshold(threshold)
    emb = check_matrix(emb, name="embeddings", unit=True)
    return _run(emb, emb, True, t, options or SearchOptions())


def find_near_pairs_between(
    query: np.ndarray, corpus: np.ndarray, threshold: float, options: SearchOptions | None = None
) -> NearPairs:
    """All pairs (i of `query`, j of `corpus`) with cosine similarity >= `threshold`."""
    t = _check_threshold(threshold)
    query = check_matrix(query, name="query", unit=True)
    corpus = check_matrix(corpus, name="corpus", unit=True)
    if query.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query has {query.shape[1]} columns, expected {corpus.shape[1]} (as corpus)"
        )
    return _run(query, corpus, False, t, options or SearchOptions())


# --------------------------------------------------------------------------------------------
# nearest neighbours of a sample (threshold calibration)

_KNN_CORPUS_ROWS = 131072  # corpus rows per block: the index of one block bounds memory


@dataclass(frozen=True)
class Neighbours:
    """The `k` most similar other rows of some query rows: indices and similarities, best first."""

    rows: np.ndarray  # (m,) the query rows
    idx: np.ndarray  # (m, k) int64 corpus rows (-1 pads when the corpus has fewer rows)
    sim: np.ndarray  # (m, k) float32


def sample_neighbours(
    x: np.ndarray,
    k: int,
    n_sample: int,
    *,
    seed: int = 0,
    mirror: np.ndarray | None = None,
    device: str = "auto",
    rows: np.ndarray | None = None,
) -> Neighbours:
    """The k nearest other rows of up to `n_sample` random rows of `x` (unit rows), exactly.

    With `mirror` (the rows transformed, e.g. images flipped), a row's similarity to another is
    the better of the two, so a mirrored copy counts as near. The row itself is never its own
    neighbour. Cost: n_sample x N products, so calibrating on a sample stays cheap at any N.
    `rows`: these query rows instead of a sample.
    """
    n = x.shape[0]
    if rows is None:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=min(n, n_sample), replace=False))
    if n == 0 or len(rows) == 0:  # nothing readable: no neighbours, not an error
        return Neighbours(
            np.asarray(rows, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        )
    corpora = [x] if mirror is None else [x, mirror]
    kernel = _make_kernel(device)
    want = min(k + 2, n)  # room for the row itself and its own mirror
    best_i, best_s = [], []
    for corpus in corpora:
        for s, e in _blocks(n, _KNN_CORPUS_ROWS):
            sims, idx = kernel.top_k(
                kernel.load(np.ascontiguousarray(x[rows])),
                kernel.load(np.ascontiguousarray(corpus[s:e])),
                min(want, e - s),
            )
            best_i.append(idx + s)
            best_s.append(_sims64(x, rows, corpus, idx + s, sims.shape))
    return _merge_neighbours(rows, np.concatenate(best_i, 1), np.concatenate(best_s, 1), k)


def _sims64(
    x: np.ndarray, rows: np.ndarray, corpus: np.ndarray, idx: np.ndarray, shape: Any
) -> Any:
    """A top-k's similarities recomputed in float64 (rounded to float32): kernel-independent."""
    qi = np.repeat(np.asarray(rows, np.int64), idx.shape[1])
    return dot64(x, qi, corpus, idx.ravel()).astype(np.float32).reshape(shape)


def _merge_neighbours(rows: np.ndarray, idx: np.ndarray, sim: np.ndarray, k: int) -> Neighbours:
    """Per query row: each partner once (its best similarity), self removed, the k best."""
    out_i = np.full((len(rows), k), -1, dtype=np.int64)
    out_s = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for r in range(len(rows)):
        order = np.argsort(-sim[r], kind="stable")
        seen: set[int] = {int(rows[r])}
        got = 0
        for o in order.tolist():
            partner = int(idx[r, o])
            if partner in seen:
                continue
            seen.add(partner)
            out_i[r, got], out_s[r, got] = partner, sim[r, o]
            got += 1
            if got == k:
                break
    return Neighbours(rows, out_i, out_s)


def find_knn_pairs(
    x: np.ndarray, k: int, floor: float, options: SearchOptions | None = None
) -> NearPairs:
    """Each row's k most similar other rows at or above `floor`, as unordered pairs (i < j).

    Candidates for a second signal to confirm: the floor is low on purpose. Exact (blocked top-k
    over the whole matrix) up to `exact_max_rows` rows; beyond that, the range search at `floor`
    (which proposes every pair above the floor, a superset of the k nearest)."""
    opts = options or SearchOptions()
    x = check_matrix(x, name="embeddings", unit=True)
    n = x.shape[0]
    if n > opts.exact_max_rows:
        return find_near_pairs(x, floor, opts)
    if n < 2:
        return NearPairs(*_empty_pairs(), method="knn", params={"k": k, "floor": floor})
    nb = sample_neighbours(x, min(k, n - 1), n, device=opts.device)
    rows = np.repeat(nb.rows, nb.idx.shape[1])
    a, b, s = rows, nb.idx.ravel(), nb.sim.ravel()
    keep = (b >= 0) & (s >= np.float32(floor))
    i, j, sim = _finish((np.minimum(a, b)[keep], np.maximum(a, b)[keep], s[keep]), n)
    return NearPairs(i, j, sim, method="knn", params={"k": k, "floor": floor, "pairs": len(i)})
