"""Exact duplicates: samples whose raw content bytes hash the same."""

from __future__ import annotations

import numpy as np
import polars as pl


def exact_representatives(table: pl.DataFrame) -> np.ndarray:
    """For each row, the row index of the first readable row with the same content hash (-1 if unreadable)."""
    readable = table["error"].is_null().to_numpy()
    idx = np.arange(table.height)
    first = (
        table.select(pl.col("content_hash"), pl.Series("i", idx))
        .filter(pl.Series(readable))
        .group_by("content_hash", maintain_order=True)
        .agg(pl.col("i").min().alias("rep"))
    )
    reps = dict(zip(first["content_hash"].to_list(), first["rep"].to_list(), strict=True))
    hashes = table["content_hash"].to_list()
    return np.array(
        [reps[h] if ok else -1 for h, ok in zip(hashes, readable, strict=True)], dtype=np.int64
    )
