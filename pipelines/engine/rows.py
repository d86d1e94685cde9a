"""The embedding matrix of an `engine: ray` run, kept on the cluster: the driver holds references.

`RayRows` is an N x D float32 matrix as row blocks in Ray's object store (`BlockMatrix`),
made by tasks, never by the driver: `from_cache` aligns the cache's shards with the sample table
in tasks (each reads one shard; each output block gathers its rows from the shards that hold
them). The driver keeps one 64-bit key, shard and row per cached vector while it plans that
gather (16 bytes a vector, dropped after) and the table's keys one block at a time, then only
the block references. A task gets its rows' positions and a check sum of their hashes, never the
hash strings (what a driver sends is written into the object store's shared pages, which stay
resident in the driver).

`cached_mask` answers the embed stage's question (which contents are cached?) the same way:
tasks read the shards, the driver gets their keys alone; `CacheRead` keeps what they read, so
the alignment after the embedding reads only the shards written since.

What the dedup stage asks of it is answered by tasks with bounded results: `take` (a subset, as
new blocks), `fetch` (some rows to the driver: a calibration sample, the rows of pairs),
`neighbours` (`near.sample_neighbours` of a sample, one task per corpus block of the local
search's blocking, so the neighbours are the local ones) and `first_bad_row` (validation).
`apply` runs a function over some rows in one task (the label-noise probe, the quality probe).
`dense` brings the whole matrix to the driver, for the stages that still need it there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup import near
from leanset.dedup.matrix import NORM_TOL
from leanset.pipelines.store.shardplace import ShardPlace

STORE_ROWS = 4 * near._ASSIGN_ROWS  # rows per object-store block


@dataclass
class BlockMatrix:
    """An N x D float32 matrix as row blocks in Ray's object store."""

    refs: list[Any]
    starts: np.ndarray  # block b holds rows starts[b]:starts[b + 1]
    dim: int

    @property
    def n(self) -> int:
        return int(self.starts[-1])

    @classmethod
    def put(cls, x: np.ndarray, rows: int = STORE_ROWS) -> BlockMatrix:
        """The rows of `x` in blocks of `rows` (put from this process: tests and small inputs)."""
        import ray

        bounds = near._blocks(x.shape[0], rows)
        refs = [ray.put(np.ascontiguousarray(x[s:e], dtype=np.float32)) for s, e in bounds]
        starts = np.array([s for s, _ in bounds] + [x.shape[0]], dtype=np.int64)
        return cls(refs, starts, int(x.shape[1]))

    def covering(self, s: int, e: int) -> tuple[list[Any], list[tuple[int, int]]]:
        """The blocks holding rows s:e, and the slice of each."""
        b = int(np.searchsorted(self.starts, s, side="right")) - 1
        refs, cuts = [], []
        while b < len(self.refs) and self.starts[b] < e:
            lo, hi = max(s, int(self.starts[b])), min(e, int(self.starts[b + 1]))
            refs.append(self.refs[b])
            cuts.append((lo - int(self.starts[b]), hi - int(self.starts[b])))
            b += 1
        return refs, cuts


@cache
def _remote(fn: Callable[..., Any], num_returns: int = 1) -> Any:
    """`fn` as a Ray remote function (made once per process)."""
    import ray

    return ray.remote(num_returns=num_returns)(fn) if num_returns != 1 else ray.remote(fn)


def _kernel(device: str) -> near.Kernel:
    """near's kernel, FAISS on as many threads as the task was given CPUs (a pooled Ray worker
    keeps the OMP_NUM_THREADS of the task it was started for)."""
    import faiss
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    faiss.omp_set_num_threads(max(1, int(cpus)))
    return near._make_kernel(device)


def _rows(cuts: list[tuple[int, int]], parts: tuple[np.ndarray, ...]) -> np.ndarray:
    """The row slices of resolved blocks as one contiguous float32 array."""
    return np.ascontiguousarray(
        np.concatenate([p[s:e] for p, (s, e) in zip(parts, cuts, strict=True)])
    )


@dataclass
class RayRows:
    """An N x D float32 matrix whose row blocks live in Ray's object store."""

    blocks: BlockMatrix

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks.n, self.blocks.dim

    def __len__(self) -> int:
        return self.blocks.n

    def take(self, rows: np.ndarray) -> RayRows:
        """Rows `rows` (ascending) as a new matrix, gathered block by block by tasks; a block
        whose rows are all taken is shared as it is (its positions are never sent: what the
        driver sends is written into shared pages that stay resident in the driver)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (np.diff(rows) <= 0).any():
            raise ValueError("RayRows.take needs strictly ascending rows")
        bm, refs, starts = self.blocks, [], [0]
        where = np.searchsorted(bm.starts, rows, side="right") - 1
        for b in np.unique(where).tolist():
            local = (rows[where == b] - bm.starts[b]).astype(np.int32)
            whole = local.size == bm.starts[b + 1] - bm.starts[b]  # ascending: all of them
            refs.append(bm.refs[b] if whole else _remote(take_rows).remote(bm.refs[b], local))
            starts.append(starts[-1] + local.size)
        return RayRows(BlockMatrix(refs, np.array(starts, dtype=np.int64), bm.dim))

    def fetch(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (any order, repeats allowed) on the driver: a bounded number, please."""
        import ray

        rows = np.asarray(rows, dtype=np.int64)
        uniq, inverse = np.unique(rows, return_inverse=True)
        if not uniq.size:
            return np.zeros((0, self.blocks.dim), np.float32)
        got = ray.get(self.take(uniq).blocks.refs)
        return np.ascontiguousarray(np.concatenate(got)[inverse.ravel()])

    def dense(self) -> np.ndarray:
        """The whole matrix on the driver (N x D x 4 bytes: only for stages that need it there)."""
        import ray

        if not self.blocks.refs:
            return np.zeros((self.blocks.n, self.blocks.dim), np.float32)
        return np.ascontiguousarray(np.concatenate(ray.get(self.blocks.refs)))

    def first_bad_row(self, unit: bool) -> int | None:
        """The first row with a non-finite value (or, with `unit`, a norm off 1), else None."""
        import ray

        fn = _remote(bad_rows)
        found = ray.get([fn.remote(ref, unit) for ref in self.blocks.refs])
        for b, local in enumerate(found):
            if local >= 0:
                return int(self.blocks.starts[b]) + int(local)
        return None

    def neighbours(
        self, k: int, n_sample: int, *, seed: int = 0, rows: np.ndarray | None = None
    ) -> near.Neighbours:
        """`near.sample_neighbours(matrix, k, n_sample, seed=seed, rows=rows)`, without the matrix
        on the driver: the sample's rows are fetched, each corpus block is searched by a task."""
        import ray

        n = self.blocks.n
        if rows is None:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n, size=min(n, n_sample), replace=False))
        rows = np.asarray(rows, np.int64)
        if n == 0 or len(rows) == 0:
            return near.Neighbours(rows, np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        q = ray.put(self.fetch(rows))
        want = min(k + 2, n)
        futures = []
        for s, e in near._blocks(n, near._KNN_CORPUS_ROWS):
            refs, cuts = self.blocks.covering(s, e)
            futures.append(_remote(knn_block).remote(q, min(want, e - s), s, cuts, *refs))
        parts = ray.get(futures)
        idx = np.concatenate([p[0] for p in parts], 1)
        sim = np.concatenate([p[1] for p in parts], 1)
        return near._merge_neighbours(rows, idx, sim, k)

    def apply(self, rows: np.ndarray, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(matrix[rows], *args, **kwargs)` run by one task, which gathers rows `rows`
        (ascending) from the blocks: only its result comes here (its error is raised here)."""
        import ray

        refs = self.take(rows).blocks.refs
        done, value = ray.get(_remote(apply_rows).remote(self.blocks.dim, fn, args, kwargs, *refs))
        if not done:
            raise value
        return value


# ------------------------------------------------------------------------------- tasks


def take_rows(block: np.ndarray, local: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block[local])


def apply_rows(
    dim: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *parts: Any
) -> tuple[bool, Any]:
    """(True, fn(rows, ...)) over the blocks' rows stacked, or (False, the error it raised)."""
    x = np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, dim), np.float32)
    try:
        return True, fn(x, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - raised again on the driver, as if run there
        return False, exc


def bad_rows(block: np.ndarray, unit: bool) -> int:
    """The first bad row of a block (as `check_matrix` judges rows), -1 when none."""
    bad = ~np.isfinite(block).all(axis=1)
    if unit:
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        bad |= ~(np.abs(norms - 1.0) <= NORM_TOL)
    hit = np.flatnonzero(bad)
    return int(hit[0]) if hit.size else -1


def knn_block(
    q: np.ndarray, kk: int, start: int, cuts: list[tuple[int, int]], *parts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The sample's kk nearest rows in corpus rows start:..., as `sample_neighbours` computes them
    for one corpus block (float32 top-k, similarities re-computed in float64)."""
    kernel = _kernel("auto")
    corpus = _rows(cuts, parts)
    sims, idx = kernel.top_k(kernel.load(q), kernel.load(corpus), kk)
    qi = np.repeat(np.arange(q.shape[0], dtype=np.int64), idx.shape[1])
    s64 = near.dot64(q, qi, corpus, idx.ravel()).astype(np.float32).reshape(sims.shape)
    return idx + start, s64


def shard_keys(place: ShardPlace, name: str) -> tuple[np.ndarray, Any]:
    """A cache shard's 64-bit hash keys (to the driver) and (hashes, vectors) (stays in the
    object store); a corrupt shard has no keys (the local cache skips it too)."""
    from leanset.pipelines.embed.cache import read_shard

    shard = read_shard(place.show(name), place.read(name))
    if shard is None:
        return np.zeros(0, np.uint64), None
    hashes, vectors = shard
    return _keys(hashes), (np.asarray(hashes), vectors)


def gather_block(
    n_rows: int,
    dim: int,
    check: int,
    plan: list[tuple[np.ndarray, ...]],
    *shards: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """One output block: row p is the vector planned for it (zeros where none), taken from the
    shards at the planned positions. The hashes taken must sum, as second 64-bit keys, to
    `check`: the wanted hashes' sum (a key collision is an error; no hash string is sent)."""
    from leanset.pipelines.embed.protocol import l2_normalise

    out = np.zeros((n_rows, dim), np.float32)
    pos_all, vec_all, got = [], [], [np.zeros(0, np.uint64)]
    for entry, (hashes, vectors) in zip(plan, shards, strict=True):
        pos, idx = _expand(entry)
        got.append(_check_keys(hashes[idx].tolist()))
        pos_all.append(pos)
        vec_all.append(vectors[idx])
    if _key_sum(np.concatenate(got)) != check:
        raise RuntimeError(
            f"embedding cache: a 64-bit key collision in a block of {n_rows} table rows "
            "(the cached hashes taken are not the table's)"
        )
    if pos_all:
        pos = np.concatenate(pos_all)
        order = np.argsort(pos, kind="stable")  # the local cache stacks vectors in row order
        out[pos[order]] = l2_normalise(np.concatenate(vec_all)[order].astype(np.float32))
    return out


def _check_keys(hashes: list[str] | pl.Series) -> np.ndarray:
    """Second 64-bit keys of content hashes (another seed than `_keys`'s)."""
    return pl.Series(hashes, dtype=pl.Utf8).hash(seed=1).to_numpy().astype(np.uint64)


def _key_sum(keys: np.ndarray) -> int:
    """The keys' sum modulo 2**64 (any order: a block's rows come shard by shard)."""
    return int(np.add.reduce(keys, dtype=np.uint64)) if keys.size else 0


# ------------------------------------------------------------------------------- driver


def _keys(hashes: list[str] | pl.Series) -> np.ndarray:
    """64-bit keys of content hashes (polars' hash: the same on every node of one install)."""
    return pl.Series(hashes, dtype=pl.Utf8).hash(seed=0).to_numpy().astype(np.uint64)


@dataclass
class _Index:
    """Where each cached content is: sorted keys, their shard and row (the last shard wins)."""

    keys: np.ndarray
    shard: np.ndarray
    row: np.ndarray


def _index(key_parts: list[np.ndarray]) -> _Index:
    keys = np.concatenate(key_parts) if key_parts else np.zeros(0, np.uint64)
    shard = np.repeat(np.arange(len(key_parts), dtype=np.int32), [len(k) for k in key_parts])
    row = np.concatenate(
        [np.arange(len(k), dtype=np.int32) for k in key_parts] or [np.zeros(0, np.int32)]
    )
    order = np.argsort(keys, kind="stable")  # equal keys: shard order, so the last is the winner
    keys, shard, row = keys[order], shard[order], row[order].astype(np.int32)
    last = np.ones(keys.size, dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    return _Index(keys[last], shard[last], row[last])


def from_cache(
    folder: str | Path | ShardPlace | CacheRead,
    hashes: pl.Series,
    readable: np.ndarray,
    rows: int = STORE_ROWS,
) -> RayRows | None:
    """The cache's vectors aligned with the table (row i: the vector of `hashes[i]` when
    some readable row has that content, else zeros), built by tasks; None when the cache holds
    no vector at all. `folder`: the shards' folder, their place in a bucket store, or the
    shards read so far there (only the new ones are read)."""
    import ray

    read = folder if isinstance(folder, CacheRead) else CacheRead(_place_of(folder))
    loaded = [read.refs[name] for name in read.names()]
    key_parts = ray.get([k for k, _ in loaded])
    shard_refs = [s for _, s in loaded]
    dims = [d for d in ray.get([_remote(_dim).remote(s) for s in shard_refs]) if d > 0]
    if not dims or not sum(len(k) for k in key_parts):
        return None
    index = _index(key_parts)
    del key_parts
    good = _readable_keys(hashes, readable)
    refs, bounds = [], near._blocks(len(hashes), rows)
    for s, e in bounds:  # a block's keys at a time: no N-long key, position or mask array
        block = hashes[s:e]
        keys = _keys(block)
        at = np.minimum(np.searchsorted(index.keys, keys), index.keys.size - 1)
        # as the local cache read: every row whose content some readable row has, when cached
        ok = index.keys[at] == keys
        if good is not None:
            ok &= np.isin(keys, good)
        plan, shards, check = gather_plan(block, ok, at, index)
        refs.append(
            _remote(gather_block).remote(
                e - s, dims[0], check, plan, *[shard_refs[sh] for sh in shards]
            )
        )
    starts = np.array([s for s, _ in bounds] + [len(hashes)], dtype=np.int64)
    return RayRows(BlockMatrix(refs, starts, dims[0]))


@dataclass
class CacheRead:
    """A cache's shards as tasks read them, kept between the embed stage's two questions (what
    is cached, then the alignment): per shard name, the refs of its keys and of its (hashes,
    vectors). A shard read for the first is not read again, and the driver maps its keys once."""

    place: ShardPlace
    refs: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def names(self) -> list[str]:
        """The shards there now (sorted), each read by a task unless it was before."""
        names = self.place.names()
        split = _remote(shard_keys, 2)
        for name in names:
            if name not in self.refs:
                keys, shard = split.remote(self.place, name)
                self.refs[name] = (keys, shard)
        return names


def cached_mask(read: CacheRead, hashes: pl.Series) -> np.ndarray:
    """Which of `hashes` the shards hold a vector for (as `EmbeddingCache.get`'s mask), the
    shards read by tasks: only their 64-bit keys come here (8 bytes a cached vector), never a
    vector or a hash string, and the hashes are keyed a block at a time."""
    import ray

    parts = ray.get([read.refs[name][0] for name in read.names()])
    keys = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    del parts
    keys.sort()  # in place: repeated keys do not change what a search finds
    found = np.zeros(len(hashes), dtype=bool)
    if not keys.size:
        return found
    for s, e in near._blocks(len(hashes), STORE_ROWS):
        wanted = _keys(hashes[s:e])
        at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
        found[s:e] = keys[at] == wanted
    return found


def _place_of(folder: str | Path | ShardPlace) -> ShardPlace:
    return folder if isinstance(folder, ShardPlace) else ShardPlace(str(folder))


def _readable_keys(hashes: pl.Series, readable: np.ndarray) -> np.ndarray | None:
    """The sorted keys of the readable rows' contents (None when every row is readable)."""
    readable = np.asarray(readable, bool)
    if readable.all():
        return None
    return np.unique(_keys(hashes.filter(pl.Series(readable))))


def _dim(shard: Any) -> int:
    return 0 if shard is None else int(shard[1].shape[1])


def gather_plan(
    hashes: pl.Series, ok: np.ndarray, at: np.ndarray, index: _Index
) -> tuple[list[tuple[np.ndarray, ...]], list[int], int]:
    """A block's plan (`ok`: its rows that take a vector, `at`: where in the index): per shard
    that holds some, its (block positions, shard rows) as int32 (`_compact`), the shards, and the
    wanted hashes' check sum. At most 8 bytes a row go to the task, a few bytes a block where the
    cache was written in table order (the hash strings stay here: they were ~45 bytes a row of
    the driver's shared memory)."""
    pos = np.flatnonzero(ok).astype(np.int32)
    shard, row = index.shard[at[pos]], index.row[at[pos]]
    plan, shards = [], []
    for sh in np.unique(shard).tolist():
        mine = shard == sh
        plan.append(_compact(pos[mine], row[mine]))
        shards.append(int(sh))
    check = _key_sum(_check_keys(hashes.filter(pl.Series(ok))))
    return plan, shards, check


def _compact(pos: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, ...]:
    """(positions, rows) as they are, or as runs where both step by one (first position, first
    row, length), whichever is smaller: what the driver sends stays resident in its shared pages,
    and a cache written in table order is a few runs a block."""
    step = (np.diff(pos) == 1) & (np.diff(row) == 1)
    starts = np.flatnonzero(np.concatenate([[True], ~step]))
    if 3 * starts.size >= 2 * pos.size:
        return pos, row
    length = np.diff(np.append(starts, pos.size)).astype(np.int32)
    return pos[starts], row[starts], length


def _expand(entry: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A plan entry's (positions, rows), from runs when `_compact` made them."""
    if len(entry) == 2:
        return entry[0], entry[1]
    first_pos, first_row, length = entry
    offset = np.arange(int(length.sum()), dtype=np.int32)
    offset -= np.repeat(np.cumsum(length, dtype=np.int32) - length, length)
    return np.repeat(first_pos, length) + offset, np.repeat(first_row, length) + offset
