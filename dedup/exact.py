"""Exact duplicates: samples whose raw content bytes hash the same."""

from __future__ import annotations

import numpy as np
import polars as pl

CHECK_ROWS = 1 << 20  # rows whose hashes are compared at a time (bounds the strings gathered)


def exact_representatives(table: pl.DataFrame) -> np.ndarray:
    """For each row, the row index of the first readable row with the same content hash (-1 if unreadable)."""
    # columnar: no per-row Python objects (at 100M rows they would be the driver's largest cost);
    # 64-bit keys sorted by NumPy take about half the memory of a window over the strings
    hashes = table["content_hash"]
    rows = np.flatnonzero(table["error"].is_null().to_numpy())
    key = hashes.hash(seed=0).to_numpy()[rows]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    del key
    rep = np.full(table.height, -1, dtype=np.int64)
    rep[rows] = rows[first[inverse.ravel()]]
    del first, inverse
    if not _same_content(hashes, rows, rep):  # two contents share a 64-bit key: compare strings
        return _by_window(table)
    return rep


def _same_content(hashes: pl.Series, rows: np.ndarray, rep: np.ndarray) -> bool:
    """Each readable row's hash equals its representative's (checked a bounded slice at a time)."""
    for s in range(0, len(rows), CHECK_ROWS):
        mine = rows[s : s + CHECK_ROWS]
        if not hashes.gather(mine).equals(hashes.gather(rep[mine])):
            return False
    return True


def _by_window(table: pl.DataFrame) -> np.ndarray:
    """exact_representatives by a window over the hash strings (what no key collision can fool)."""
    ok, i = pl.col("error").is_null(), pl.col("_i")
    rep = pl.when(ok).then(pl.when(ok).then(i).min().over("content_hash")).otherwise(-1)
    rows = table.select("content_hash", "error").with_row_index("_i").cast({"_i": pl.Int64})
    return rows.select(rep.alias("rep"))["rep"].to_numpy().astype(np.int64)
