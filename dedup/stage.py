"""The dedup stage: exact hashing + near-duplicate search → per-row duplicate columns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from dedup.exact import exact_edges, exact_representatives
from dedup.groups import components, resolve_groups
from pipelines.config import DedupSettings

DUP_COLUMNS = [
    "exact_dup_of",
    "near_dup_of",
    "dup_similarity",
    "dup_group",
    "leak_of",
    "label_conflict",
    "dedup_drop",
]


@dataclass
class DedupResult:
    """The sample table with duplicate columns, and how the search ran."""

    table: pl.DataFrame
    near_pairs: int
    search: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def find_duplicates(
    table: pl.DataFrame,
    emb: np.ndarray | None,
    settings: DedupSettings,
    *,
    search: Callable | None = None,
    progress: bool = False,
) -> DedupResult:
    """Add exact_dup_of, near_dup_of, dup_similarity, dup_group, leak_of, label_conflict, dedup_drop."""
    if emb is not None and len(emb) != table.height:
        raise ValueError(f"embeddings has {len(emb)} rows, the sample table {table.height}")
    t0 = time.perf_counter()
    rep_of = exact_representatives(table) if settings.exact else _no_exact(table)
    a, b = exact_edges(rep_of)
    t1 = time.perf_counter()
    near_a, near_b, info = _near_edges(rep_of, emb, settings, search, progress)
    t2 = time.perf_counter()
    labels = components(table.height, np.concatenate([a, near_a]), np.concatenate([b, near_b]))
    cols = resolve_groups(table, labels, emb, settings)
    out = table.with_columns(_to_columns(table, cols, emb))
    seconds = {"exact": t1 - t0, "near_search": t2 - t1, "groups": time.perf_counter() - t2}
    return DedupResult(table=out, near_pairs=len(near_a), search=info, seconds=seconds)


def _no_exact(table: pl.DataFrame) -> np.ndarray:
    ok = table["error"].is_null().to_numpy()
    return np.where(ok, np.arange(table.height), -1)


def _near_edges(
    rep_of, emb, settings: DedupSettings, search, progress
) -> tuple[np.ndarray, np.ndarray, dict]:
    empty = np.zeros(0, dtype=np.int64)
    if not settings.near or emb is None or emb.shape[1] == 0:
        return empty, empty, {"method": "none"}
    if search is None:
        from dedup.near import find_near_pairs as search
    reps = np.flatnonzero(rep_of == np.arange(len(rep_of)))
    pairs = search(
        np.ascontiguousarray(emb[reps]),
        settings.threshold,
        method=settings.search,
        exact_max_rows=settings.exact_max_rows,
        progress=progress,
    )
    return reps[pairs.i], reps[pairs.j], {"method": pairs.method, **pairs.params}


def _to_columns(table: pl.DataFrame, cols, emb: np.ndarray | None) -> list[pl.Series]:
    ids = table["sample_id"].to_numpy().astype(object)
    hashes = table["content_hash"].to_numpy()
    has_ref = cols.ref >= 0
    ref = np.where(has_ref, cols.ref, 0)
    same = has_ref & (hashes == hashes[ref])
    sim = np.ones(table.height, dtype=np.float32)
    if emb is not None and emb.shape[1]:
        sim = np.einsum("ij,ij->i", emb, emb[ref]).clip(-1, 1).astype(np.float32)
    sim = np.where(same, 1.0, sim).astype(np.float32)

    def ids_where(mask: np.ndarray, idx: np.ndarray) -> pl.Series:
        return pl.Series(np.where(mask, ids[np.where(mask, idx, 0)], None).tolist(), dtype=pl.Utf8)

    return [
        ids_where(same, ref).alias("exact_dup_of"),
        ids_where(has_ref & ~same, ref).alias("near_dup_of"),
        pl.Series("dup_similarity", np.where(has_ref, sim, np.nan)).fill_nan(None).cast(pl.Float32),
        ids_where(cols.group >= 0, cols.group).alias("dup_group"),
        ids_where(cols.leak_of >= 0, cols.leak_of).alias("leak_of"),
        pl.Series("label_conflict", cols.conflict, dtype=pl.Boolean),
        pl.Series("dedup_drop", cols.drop, dtype=pl.Utf8),
    ]
