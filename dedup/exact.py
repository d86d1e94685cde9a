"""Exact duplicates: samples whose raw content bytes hash the same."""

from __future__ import annotations

import numpy as np
import polars as pl

CHECK_ROWS = 1 << 20  # rows whose hashes are compared at a time (bounds the strings gathered)
FILL_ROWS = 1 << 16  # sorted rows given their representative at a time


def exact_representatives(table: pl.DataFrame) -> np.ndarray:
    """For each row, the row index of the first readable row with the same content hash (-1 if unreadable)."""
    # columnar: no per-row Python objects (at 100M rows they would be the driver's largest cost);
    # 64-bit keys sorted by NumPy: ~25 bytes a row at the peak besides the table
    hashes = table["content_hash"]
    readable = table["error"].is_null().to_numpy()
    rep = _first_of_key(hashes, readable)
    if not _same_content(hashes, rep):  # two contents share a 64-bit key: compare strings
        return _by_window(table)
    return rep


def _first_of_key(hashes: pl.Series, readable: np.ndarray) -> np.ndarray:
    """Each readable row's first readable row with its hash's 64-bit key (-1 for unreadable
    rows). A stable sort keeps the rows of one key in table order: a run's first is its least."""
    key = hashes.hash(seed=0).to_numpy()
    if readable.all():
        order = np.argsort(key, kind="stable")
    else:
        order = np.flatnonzero(readable)
        order = order[np.argsort(key[order], kind="stable")]
    if not order.size:
        return np.full(len(readable), -1, dtype=np.int64)
    sorted_key = key[order]
    del key
    starts = np.flatnonzero(np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]]))
    del sorted_key
    rep = np.full(len(readable), -1, dtype=np.int64)
    for s in range(0, order.size, FILL_ROWS):  # bounded pieces: no second N-long array
        at = np.arange(s, min(s + FILL_ROWS, order.size))
        rep[order[at]] = order[starts[np.searchsorted(starts, at, side="right") - 1]]
    return rep


def _same_content(hashes: pl.Series, rep: np.ndarray) -> bool:
    """Each row that points to another row has that row's hash (a bounded slice at a time)."""
    for s in range(0, len(rep), CHECK_ROWS):
        r = rep[s : s + CHECK_ROWS]
        mine = np.flatnonzero((r >= 0) & (r != np.arange(s, s + len(r)))) + s
        if not hashes.gather(mine).equals(hashes.gather(rep[mine])):
            return False
    return True


def _by_window(table: pl.DataFrame) -> np.ndarray:
    """exact_representatives by a window over the hash strings (what no key collision can fool)."""
    ok, i = pl.col("error").is_null(), pl.col("_i")
    rep = pl.when(ok).then(pl.when(ok).then(i).min().over("content_hash")).otherwise(-1)
    rows = table.select("content_hash", "error").with_row_index("_i").cast({"_i": pl.Int64})
    return rows.select(rep.alias("rep"))["rep"].to_numpy().astype(np.int64)
