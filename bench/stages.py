"""Benchmark stages: a registry of functions, each timing one piece of leanset on synthetic data.

A stage is ``fn(ctx: BenchContext) -> dict`` that returns at least ``seconds`` (the timed part
only, data generation excluded) and may add ``device``, ``recall_planted``, ``recall_exact``,
``pairs`` and ``notes``. The runner adds stage name, N, D, samples/s and peak RSS. Register a
new stage by adding it to ``STAGES`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.synth import Synthetic, clustered_embeddings
from leanset.dedup.near import NearPairs, SearchOptions, find_near_pairs, find_near_pairs_between
from leanset.pipelines.fsutil import digest


@dataclass
class BenchContext:
    """One benchmark size: its synthetic data (made on first use) and results shared by stages."""

    n: int
    dim: int
    threshold: float
    device: str
    seed: int
    exact_max_n: int
    args: argparse.Namespace
    results: dict[str, Any] = field(default_factory=dict)
    _data: Synthetic | None = None

    def data(self) -> Synthetic:
        """The clustered embeddings with planted pairs for this size (generated once)."""
        if self._data is None:
            self._data = clustered_embeddings(
                self.n, self.dim, threshold=self.threshold, seed=self.seed
            )
        return self._data

    def exact_affordable(self) -> bool:
        """Whether exact search runs at this size (<= 100k unless --exact-1m)."""
        return self.n <= self.exact_max_n

    def exact(self) -> NearPairs | None:
        """Exact pairs (from the knn-exact stage, or computed untimed); None where unaffordable."""
        if "exact_pairs" not in self.results:
            if not self.exact_affordable():
                return None
            self.results["exact_pairs"] = find_near_pairs(
                self.data().emb, self.threshold, SearchOptions(method="exact", device=self.device)
            )
        return self.results["exact_pairs"]

    def exact_sampled(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows sampled (--exact-sample) and the exact pair keys touching them (untimed, cached).

        Where full exact search is unaffordable, recall is estimated on the pairs that involve
        a uniform sample of rows: an exact between-search of the sample against all rows.
        """
        if "exact_sampled" not in self.results:
            emb = self.data().emb
            rng = np.random.default_rng(self.seed + 1)
            size = min(self.args.exact_sample, self.n)
            rows = np.sort(rng.choice(self.n, size=size, replace=False))
            res = find_near_pairs_between(
                emb[rows], emb, self.threshold, SearchOptions(method="exact", device=self.device)
            )
            gi = rows[res.i]
            other = gi != res.j
            self.results["exact_sampled"] = (rows, pair_keys(gi[other], res.j[other], self.n))
        return self.results["exact_sampled"]


def pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique int64 keys of unordered pairs."""
    lo, hi = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    return np.unique(lo * np.int64(n) + hi)


def recall(found: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of truth keys present in found keys (None for an empty truth)."""
    if truth.size == 0:
        return None
    return float(np.isin(truth, found, assume_unique=True).mean())


def knn_row(ctx: BenchContext, found_i: np.ndarray, found_j: np.ndarray) -> dict[str, Any]:
    """Pair count, recall vs planted and vs exact (where affordable), extra pairs vs exact."""
    syn = ctx.data()
    found = pair_keys(found_i, found_j, ctx.n)
    row: dict[str, Any] = {
        "pairs": int(found.size),
        "recall_planted": recall(found, pair_keys(syn.planted_i, syn.planted_j, ctx.n)),
    }
    exact = ctx.exact()
    if exact is not None:
        truth = pair_keys(exact.i, exact.j, ctx.n)
        row["recall_exact"] = recall(found, truth)
        row["extra_vs_exact"] = int(found.size - np.isin(found, truth, assume_unique=True).sum())
    elif ctx.args.exact_sample:
        rows, truth = ctx.exact_sampled()
        row["recall_exact"] = recall(found, truth)
        row["recall_exact_basis"] = f"pairs touching {rows.size:,} sampled rows ({truth.size:,})"
    return row


def stage_hash(ctx: BenchContext) -> dict[str, Any]:
    """blake2b-128 (pipelines.fsutil.digest) over N random byte strings of 3-5 KB (mean 4 KB)."""
    rng = np.random.default_rng(ctx.seed)
    lengths = rng.integers(3072, 5121, size=ctx.n)
    seconds, total, chunk = 0.0, 0, 4096
    for s in range(0, ctx.n, chunk):
        lens = lengths[s : s + chunk]
        ends = np.cumsum(lens)
        buf = memoryview(rng.bytes(int(ends[-1])))
        starts = (ends - lens).tolist()
        t0 = time.perf_counter()
        for a, b in zip(starts, ends.tolist(), strict=True):
            digest(buf[a:b])  # type: ignore[arg-type]  # hashlib takes any buffer
        seconds += time.perf_counter() - t0
        total += int(ends[-1])
    mib_s = total / seconds / 2**20 if seconds else 0.0
    return {"seconds": seconds, "dim": None, "device": "cpu", "notes": f"{mib_s:.0f} MiB/s"}


def _knn_stage(ctx: BenchContext, method: str) -> dict[str, Any]:
    """Time find_near_pairs with one method on the synthetic embeddings."""
    emb = ctx.data().emb
    t0 = time.perf_counter()
    res = find_near_pairs(emb, ctx.threshold, SearchOptions(method=method, device=ctx.device))
    seconds = time.perf_counter() - t0
    if method == "exact":
        ctx.results["exact_pairs"] = res
    ctx.results[f"knn-{method}_seconds"] = seconds
    p = res.params
    notes = ""
    if method == "partitioned":
        notes = (
            f"k={p['n_clusters']} probes<={p['n_probe_clusters']} "
            f"(mean {p['mean_probes']}) work={p['work_fraction']:.4f} "
            f"kmeans/assign/search={p['kmeans_s']:.0f}/{p['assign_s']:.0f}/"
            f"{p['search_s']:.0f}s"
        )
    return {
        "seconds": seconds,
        "device": p["backend"],
        "notes": notes,
        "params": p,
        **knn_row(ctx, res.i, res.j),
    }


def stage_knn_exact(ctx: BenchContext) -> dict[str, Any]:
    """Exact self-search (FAISS, or the torch kernel with --device *-torch)."""
    if not ctx.exact_affordable():
        return {
            "skipped": f"exact runs up to {ctx.exact_max_n:,} rows (--exact-1m: ~1 h at 1M on 2 cores)"
        }
    return _knn_stage(ctx, "exact")


def stage_knn_partitioned(ctx: BenchContext) -> dict[str, Any]:
    """Partitioned (k-means) self-search; recall vs exact where exact is affordable."""
    return _knn_stage(ctx, "partitioned")


def _peer(name: str) -> Callable[[BenchContext], dict[str, Any]]:
    """A stage running peer tool `name` from bench.peers (imported lazily)."""

    def run(ctx: BenchContext) -> dict[str, Any]:
        """Run the peer, with pair recall vs exact and time ratio vs leanset's auto search."""
        from bench import peers

        if ctx.n > ctx.args.peers_max_n:
            return {"skipped": f"peers run up to {ctx.args.peers_max_n:,} rows (--peers-max-n)"}
        return peers.PEERS[name](ctx)

    run.__doc__ = f"Peer comparison: {name}."
    return run


STAGES: dict[str, Callable[[BenchContext], dict[str, Any]]] = {
    "hash": stage_hash,
    "knn-exact": stage_knn_exact,
    "knn-partitioned": stage_knn_partitioned,
    "peer-cleanlab": _peer("cleanlab"),
    "peer-semhash": _peer("semhash"),
}
"""Stage name -> function; `--stages` picks from these, in the order given."""

PEER_STAGES = ("peer-cleanlab", "peer-semhash")
DEFAULT_STAGES = ("hash", "knn-exact", "knn-partitioned")
