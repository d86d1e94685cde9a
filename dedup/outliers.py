"""Outliers: samples far from every other sample in embedding space.

A sample's distance is its mean cosine distance to its `k` nearest distinct contents (exact
copies share one content, so a copied sample is not its own neighbour). The distances are put on
this dataset's own scale, a robust z-score (median and scaled MAD), as the dedup threshold is
calibrated on the data: `z` = 5 means five robust deviations further out than the typical sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.checks import Robust, cap, policy_columns
from leanset.dedup.config import DedupError, OutlierSettings
from leanset.dedup.matrix import Rows, check_matrix, check_rows
from leanset.dedup.near import dot64, sample_neighbours

REASON = "outlier"

# (distinct rows, k, device, sample) -> each row's mean k-NN distance: `knn_distance`, or the
# same computed by cluster tasks for a matrix kept there
KnnDistance = Callable[[Any, int, str, int | None], np.ndarray]


@dataclass(frozen=True)
class OutlierScores:
    """Per row: the k-NN distance, its robust z (NaN when not scored) and the flag."""

    distance: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    centre: Robust

    def info(self, settings: OutlierSettings) -> dict[str, Any]:
        """What the manifest records: the scale, the limit and how many were flagged."""
        scored = int(np.isfinite(self.score).sum())
        return {
            "scored": scored,
            "flagged": int(self.flagged.sum()),
            "k": settings.k,
            "z": settings.z,
            "median_distance": round(self.centre.median, 6),
            "distance_scale": round(self.centre.scale, 6),
            "limit_distance": round(self.centre.median + settings.z * self.centre.scale, 6),
            "policy": settings.policy,
        }


def knn_distance(
    x: np.ndarray, k: int, device: str = "auto", sample: int | None = None, seed: int = 0
) -> np.ndarray:
    """Mean cosine distance of each unit row to its `k` nearest other rows (NaN with no other);
    with more rows than `sample`, to its `k` nearest among a random `sample` of the rows."""
    n = x.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    if sample is not None and n > sample:
        return _sampled_knn_distance(x, k, sample, seed)
    nb = sample_neighbours(x, min(k, n - 1), n, rows=np.arange(n), device=device)
    return mean_distance(nb.idx, nb.sim)


def mean_distance(idx: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Each row's mean cosine distance to its found neighbours (`-1` pads are not neighbours)."""
    near = np.where(idx >= 0, sim, np.nan).astype(np.float64)
    return np.asarray(np.nanmean(1.0 - near, axis=1))


QUERY_BLOCK = 65_536  # query rows per FAISS call: bounds the result arrays


def _sampled_knn_distance(x: np.ndarray, k: int, sample: int, seed: int) -> np.ndarray:
    """Every row's mean cosine distance to its `k` nearest rows of a random sample (itself
    excluded when it is in the sample): a row's distances are all on the sample's scale, so the
    robust z over the dataset compares like with like."""
    n = x.shape[0]
    pick = sample_pick(n, sample, seed)
    vectors = np.ascontiguousarray(x[pick])
    index = sample_index(vectors)
    out = np.empty(n)
    for s in range(0, n, QUERY_BLOCK):
        e = min(n, s + QUERY_BLOCK)
        out[s:e] = sampled_chunk(index, vectors, pick, x[s:e], s, k)
    return out


def sample_pick(n: int, sample: int, seed: int) -> np.ndarray:
    """The rows of the sampled k-NN's sample (ascending)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def sample_index(vectors: np.ndarray) -> Any:
    """A FAISS inner-product index over the sample's vectors."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def sampled_chunk(
    index: Any, vectors: np.ndarray, pick: np.ndarray, q: np.ndarray, start: int, k: int
) -> np.ndarray:
    """Rows start:start+len(q)'s mean distance to their `k` nearest sampled rows (not self).
    FAISS proposes the neighbours; their similarities are recomputed in float64 and summed in
    sorted order, so the thread count and the rows per call never change a distance."""
    k = min(k, pick.size - 1)
    q = np.ascontiguousarray(q)
    _, idx = index.search(q, k + 1)
    own = pick[np.maximum(idx, 0)] == np.arange(start, start + q.shape[0])[:, None]
    order = np.argsort(own, axis=1, kind="stable")[:, :k]  # the row itself last, dropped
    chosen = np.take_along_axis(idx, order, axis=1)
    qi = np.repeat(np.arange(q.shape[0], dtype=np.int64), k)
    sims = dot64(q, qi, vectors, chosen.ravel().astype(np.int64)).reshape(chosen.shape)
    near = -np.sort(-np.clip(sims, -1.0, 1.0), axis=1)
    out: np.ndarray = np.mean(1.0 - near, axis=1)
    return out


def score_outliers(
    table: pl.DataFrame,
    matrix: Rows,
    settings: OutlierSettings,
    device: str = "auto",
    knn: KnnDistance = knn_distance,
) -> OutlierScores:
    """Each readable row's outlier score and flag (copies of one content share its score).
    A matrix kept on a cluster is scored by `knn` on its distinct rows (`take`n there)."""
    readable = table.select("content_hash", "error").with_row_index("_i")  # two columns only
    distinct = readable.filter(pl.col("error").is_null())
    distinct = distinct.unique("content_hash", keep="first", maintain_order=True)
    rows = distinct["_i"].to_numpy()
    if isinstance(matrix, np.ndarray):
        x = check_matrix(matrix, rows=table.height, error=DedupError)
        dist_distinct = knn(x[rows], settings.k, device, settings.sample)
    else:
        lazy = check_rows(matrix, rows=table.height, error=DedupError)
        dist_distinct = knn(lazy.take(rows), settings.k, device, settings.sample)
    centre = Robust.of(dist_distinct)
    z_distinct = centre.z(dist_distinct)
    at = _distinct_of(table, distinct)
    distance = (
        np.where(at >= 0, dist_distinct[np.maximum(at, 0)], np.nan) if rows.size else at * 0.0
    )
    score = np.where(at >= 0, z_distinct[np.maximum(at, 0)], np.nan) if rows.size else at * 0.0
    flagged = np.nan_to_num(score, nan=-np.inf) >= settings.z
    flagged = cap(flagged, np.nan_to_num(score, nan=-np.inf), settings.max_fraction, len(rows))
    return OutlierScores(np.asarray(distance, float), np.asarray(score, float), flagged, centre)


def _distinct_of(table: pl.DataFrame, distinct: pl.DataFrame) -> np.ndarray:
    """Per table row, the position of its content among the distinct rows (-1: unreadable);
    a join, so no Python object per row."""
    keys = distinct.select("content_hash").with_row_index("_d")
    joined = (
        table.select("content_hash", ok=pl.col("error").is_null())
        .with_row_index("_r")
        .join(keys, on="content_hash", how="left")
        .sort("_r")
    )
    at = pl.when(pl.col("ok")).then(pl.col("_d").cast(pl.Int64)).otherwise(-1)
    return joined.select(at.fill_null(-1)).to_series().to_numpy().astype(np.int64)


def outlier_columns(
    table: pl.DataFrame,
    scores: OutlierScores,
    settings: OutlierSettings,
    eval_splits: Sequence[str],
) -> pl.DataFrame:
    """The table with `outlier_score`, `outlier` and the policy's `outlier_drop`/`outlier_review`."""
    score = pl.Series("outlier_score", scores.score).fill_nan(None)
    cols = [score, pl.Series("outlier", scores.flagged)]
    cols += policy_columns(table, scores.flagged, settings.policy, REASON, eval_splits)
    return table.with_columns(cols)
