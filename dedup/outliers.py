"""Outliers: samples far from every other sample in embedding space.

A sample's distance is its mean cosine distance to its `k` nearest distinct contents (exact
copies share one content, so a copied sample is not its own neighbour). The distances are put on
this dataset's own scale, a robust z-score (median and scaled MAD), as the dedup threshold is
calibrated on the data: `z` = 5 means five robust deviations further out than the typical sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.checks import Robust, cap, policy_columns
from leanset.dedup.config import DedupError, OutlierSettings
from leanset.dedup.matrix import check_matrix
from leanset.dedup.near import sample_neighbours

REASON = "outlier"


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
    sim = np.where(nb.idx >= 0, nb.sim, np.nan).astype(np.float64)
    return np.asarray(np.nanmean(1.0 - sim, axis=1))


_QUERY_BLOCK = 65_536  # query rows per FAISS call: bounds the result arrays


def _sampled_knn_distance(x: np.ndarray, k: int, sample: int, seed: int) -> np.ndarray:
    """Every row's mean cosine distance to its `k` nearest rows of a random sample (itself
    excluded when it is in the sample): a row's distances are all on the sample's scale, so the
    robust z over the dataset compares like with like."""
    import faiss

    n = x.shape[0]
    pick = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x[pick]))
    k = min(k, sample - 1)
    out = np.empty(n)
    for s in range(0, n, _QUERY_BLOCK):
        e = min(n, s + _QUERY_BLOCK)
        sims, idx = index.search(np.ascontiguousarray(x[s:e]), k + 1)
        own = pick[np.maximum(idx, 0)] == np.arange(s, e)[:, None]
        order = np.argsort(own, axis=1, kind="stable")[:, :k]  # the row itself last, dropped
        near = np.take_along_axis(sims.astype(np.float64), order, axis=1)
        out[s:e] = np.mean(1.0 - np.clip(near, -1.0, 1.0), axis=1)
    return out


def score_outliers(
    table: pl.DataFrame, matrix: np.ndarray, settings: OutlierSettings, device: str = "auto"
) -> OutlierScores:
    """Each readable row's outlier score and flag (copies of one content share its score)."""
    x = check_matrix(matrix, rows=table.height, error=DedupError)
    distinct = table.with_row_index("_i").filter(pl.col("error").is_null())
    distinct = distinct.unique("content_hash", keep="first", maintain_order=True)
    rows = distinct["_i"].to_numpy()
    dist_distinct = knn_distance(x[rows], settings.k, device, settings.sample)
    centre = Robust.of(dist_distinct)
    z_distinct = centre.z(dist_distinct)
    by_hash = dict(zip(distinct["content_hash"].to_list(), range(len(rows)), strict=True))
    ok = table["error"].is_null().to_list()
    where = [by_hash[h] if good else -1 for h, good in zip(table["content_hash"], ok, strict=True)]
    at = np.asarray(where, dtype=np.int64)
    distance = (
        np.where(at >= 0, dist_distinct[np.maximum(at, 0)], np.nan) if rows.size else at * 0.0
    )
    score = np.where(at >= 0, z_distinct[np.maximum(at, 0)], np.nan) if rows.size else at * 0.0
    flagged = np.nan_to_num(score, nan=-np.inf) >= settings.z
    flagged = cap(flagged, np.nan_to_num(score, nan=-np.inf), settings.max_fraction, len(rows))
    return OutlierScores(np.asarray(distance, float), np.asarray(score, float), flagged, centre)


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
