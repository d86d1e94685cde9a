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


def knn_distance(x: np.ndarray, k: int, device: str = "auto") -> np.ndarray:
    """Mean cosine distance of each unit row to its `k` nearest other rows (NaN with no other)."""
    n = x.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    nb = sample_neighbours(x, min(k, n - 1), n, rows=np.arange(n), device=device)
    sim = np.where(nb.idx >= 0, nb.sim, np.nan).astype(np.float64)
    return np.asarray(np.nanmean(1.0 - sim, axis=1))


def score_outliers(
    table: pl.DataFrame, matrix: np.ndarray, settings: OutlierSettings, device: str = "auto"
) -> OutlierScores:
    """Each readable row's outlier score and flag (copies of one content share its score)."""
    x = check_matrix(matrix, rows=table.height, error=DedupError)
    distinct = table.with_row_index("_i").filter(pl.col("error").is_null())
    distinct = distinct.unique("content_hash", keep="first", maintain_order=True)
    rows = distinct["_i"].to_numpy()
    dist_distinct = knn_distance(x[rows], settings.k, device)
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
