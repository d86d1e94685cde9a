"""Exact duplicates: samples whose raw content bytes hash the same."""

from __future__ import annotations

import numpy as np
import polars as pl


def exact_representatives(table: pl.DataFrame) -> np.ndarray:
    """For each row, the row index of the first readable row with the same content hash (-1 if unreadable)."""
    ok, i = pl.col("error").is_null(), pl.col("_i")
    rep = pl.when(ok).then(pl.when(ok).then(i).min().over("content_hash")).otherwise(-1)
    # columnar: no per-row Python objects (at 100M rows they would be the driver's largest cost)
    rows = table.select("content_hash", "error").with_row_index("_i").cast({"_i": pl.Int64})
    return rows.select(rep.alias("rep"))["rep"].to_numpy().astype(np.int64)
