"""What the quality checks share: robust z-scores over a dataset, a cap on what one check flags,
and the policy that turns flags into columns (`flag`, `drop`, `queue`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

MAD_SCALE = 1.4826  # the MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class Robust:
    """A dataset's centre and spread of one measure (median and scaled MAD)."""

    median: float
    scale: float

    @classmethod
    def of(cls, values: np.ndarray) -> Robust:
        """Median and scaled MAD of the finite values (scale > 0 even for constant data)."""
        v = values[np.isfinite(values)]
        if v.size == 0:
            return cls(float("nan"), 1.0)
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med))) * MAD_SCALE
        spread = mad if mad > 0 else float(np.std(v)) or 1e-12
        return cls(med, spread)

    def z(self, values: np.ndarray) -> np.ndarray:
        """How many robust deviations above the median each value lies."""
        out: np.ndarray = (values - self.median) / self.scale
        return out


def cap(flags: np.ndarray, severity: np.ndarray, max_fraction: float, n_scored: int) -> np.ndarray:
    """At most `max_fraction` of the scored rows flagged: the most severe of them."""
    most = int(np.floor(max_fraction * n_scored))
    idx = np.flatnonzero(flags)
    if idx.size <= most:
        return flags
    keep = idx[np.argsort(-severity[idx], kind="stable")[:most]]
    out = np.zeros_like(flags)
    out[keep] = True
    return out


def policy_columns(
    table: pl.DataFrame,
    flagged: np.ndarray,
    policy: str,
    reason: str,
    eval_splits: Sequence[str],
    prefix: str | None = None,
) -> list[pl.Series]:
    """The check's drop column (`drop`: flagged training rows; eval rows are never dropped, so
    evaluation stays comparable) and its review column (`queue`: flagged rows go to the queue)."""
    training = ~table["split"].is_in(list(eval_splits)).to_numpy()
    drop = flagged & training if policy == "drop" else np.zeros(table.height, dtype=bool)
    review = flagged if policy == "queue" else np.zeros(table.height, dtype=bool)
    prefix = prefix or reason
    dropped = pl.select(pl.when(pl.Series(drop)).then(pl.lit(reason)).otherwise(None))
    return [
        dropped.to_series().cast(pl.Utf8).alias(f"{prefix}_drop"),
        pl.Series(f"{prefix}_review", review),
    ]
