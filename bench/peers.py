"""Peer tools on the same embeddings and threshold: cleanlab Datalab near_duplicate, semhash.

Both are optional (bench-only). Each peer returns a stage row: seconds, pair recall vs exact,
extra pairs vs exact, and its time as a multiple of leanset's (exact where it ran, else
partitioned) on the same data.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.stages import BenchContext, knn_row

SEMHASH_NEIGHBOURS_NOTE = "usearch HNSW (semhash default), threshold on cosine"


def _missing(module: str) -> dict[str, Any] | None:
    """A skipped row when `module` is not importable."""
    if importlib.util.find_spec(module) is None:
        return {"skipped": f"{module} is not installed"}
    return None


def _ratio_note(ctx: BenchContext, seconds: float) -> str:
    """Peer time as a multiple of leanset's search time on the same data."""
    for stage in ("knn-exact", "knn-partitioned"):
        ours = ctx.results.get(f"{stage}_seconds")
        if ours:
            return f"{seconds / ours:.1f}x the time of leanset {stage}"
    return "no leanset knn stage ran at this size"


def _median_nn_distance(emb: np.ndarray, seed: int, sample: int = 2000) -> float:
    """Median cosine distance to the nearest other row, estimated on a sample of rows."""
    import faiss

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(emb.shape[0], size=min(sample, emb.shape[0]), replace=False))
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    sims, _ = index.search(np.ascontiguousarray(emb[rows]), 2)
    return float(np.median(1.0 - sims[:, 1]))


def run_cleanlab(ctx: BenchContext) -> dict[str, Any]:
    """cleanlab Datalab near_duplicate with features = embeddings, at the same cosine threshold.

    Datalab flags pairs whose distance is below `threshold x median nearest-neighbour distance`
    (cosine distance for these features), so the relative threshold is set to
    (1 - cosine threshold) / median, with the median estimated beforehand (untimed).
    """
    skipped = _missing("cleanlab")
    if skipped:
        return skipped
    from cleanlab import Datalab

    emb = ctx.data().emb
    rel = (1.0 - ctx.threshold) / max(_median_nn_distance(emb, ctx.seed), 1e-8)
    t0 = time.perf_counter()
    lab = Datalab(data={"row": np.arange(emb.shape[0])}, verbosity=0)
    lab.find_issues(features=emb, issue_types={"near_duplicate": {"threshold": rel}})
    seconds = time.perf_counter() - t0
    sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
    counts = np.array([len(s) for s in sets], dtype=np.int64)
    i = np.repeat(np.arange(len(sets), dtype=np.int64), counts)
    j = np.concatenate([np.asarray(s, dtype=np.int64) for s in sets]) if counts.sum() else i
    row = knn_row(ctx, i, j)
    row.update(
        seconds=seconds,
        device="cpu",
        notes=f"{_ratio_note(ctx, seconds)}; k=10 graph, relative threshold {rel:.3f}",
    )
    return row


class _RowEncoder:
    """Stands in for a semhash Encoder: the embeddings are precomputed, nothing is encoded."""

    def encode(self, sentences: Any, **_: Any) -> np.ndarray:
        """Refuse: the benchmark only self-deduplicates precomputed embeddings."""
        raise NotImplementedError("precomputed embeddings only")


def run_semhash(ctx: BenchContext) -> dict[str, Any]:
    """semhash self_deduplicate from precomputed embeddings (records are the row numbers)."""
    skipped = _missing("semhash")
    if skipped:
        return skipped
    from semhash import SemHash

    emb = ctx.data().emb
    records = [str(r) for r in range(emb.shape[0])]
    captured: list[Any] = []
    t0 = time.perf_counter()
    sh = SemHash.from_embeddings(emb, records, model=_RowEncoder())
    query = sh.index.query_threshold

    def capture(vectors: np.ndarray, threshold: float) -> Any:
        """Keep the neighbour lists semhash computes, for pair recall."""
        out = query(vectors, threshold)
        captured.append(out)
        return out

    sh.index.query_threshold = capture  # type: ignore[method-assign]
    result = sh.self_deduplicate(threshold=ctx.threshold)
    seconds = time.perf_counter() - t0
    neighbours = captured[0]
    counts = np.array([len(ix) for ix, _ in neighbours], dtype=np.int64)
    i = np.repeat(np.arange(len(neighbours), dtype=np.int64), counts)
    j = np.concatenate([np.asarray(ix, dtype=np.int64) for ix, _ in neighbours])
    keep = i != j
    row = knn_row(ctx, i[keep], j[keep])
    row.update(
        seconds=seconds,
        device="cpu",
        notes=f"{_ratio_note(ctx, seconds)}; {SEMHASH_NEIGHBOURS_NOTE}; "
        f"{len(result.filtered)} rows filtered",
    )
    return row


PEERS: dict[str, Callable[[BenchContext], dict[str, Any]]] = {
    "cleanlab": run_cleanlab,
    "semhash": run_semhash,
}
