"""The dedup stage: exact hashing + near-duplicate search → per-row duplicate columns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from dedup.config import DedupError, DedupSettings
from dedup.exact import exact_edges, exact_representatives
from dedup.groups import GroupColumns, components, resolve_groups
from dedup.matrix import check_matrix, cuda_available
from dedup.near import NearPairs, SearchOptions, find_near_pairs, find_near_pairs_between


@dataclass(frozen=True)
class PriorIndex:
    """Near pairs an earlier version found, keyed by content hash, and the contents it searched."""

    pairs: pl.DataFrame  # hash_a, hash_b, sim
    covered: frozenset[str]
    key: str  # embedder fingerprint + threshold + search: pairs are reusable only for the same key


@dataclass
class DedupResult:
    """The sample table with duplicate columns, the near pairs found, and how the search ran."""

    table: pl.DataFrame
    pairs: pl.DataFrame
    search: dict[str, Any] = field(default_factory=dict)


PAIR_SCHEMA = {"hash_a": pl.Utf8, "hash_b": pl.Utf8, "sim": pl.Float32}


def find_duplicates(
    table: pl.DataFrame,
    emb: np.ndarray | None,
    settings: DedupSettings,
    *,
    search: Callable | None = None,
    search_between: Callable | None = None,
    prior: PriorIndex | None = None,
) -> DedupResult:
    """Add exact_dup_of, near_dup_of, dup_similarity, dup_group, leak_of, label_conflict, dedup_drop.

    With `prior` (the pairs of an earlier version made with the same embedder and threshold), only
    contents the prior did not cover are searched: against the covered corpus and among themselves.
    """
    if emb is not None:
        emb = _check_embeddings(table, emb)
    rep_of = exact_representatives(table) if settings.exact else _no_exact(table)
    a, b = exact_edges(rep_of)
    near = _NearSearch(search, search_between, settings)
    near_a, near_b, sims, info = near.edges(table, rep_of, emb, prior)
    labels = components(table.height, np.concatenate([a, near_a]), np.concatenate([b, near_b]))
    cols = resolve_groups(table, labels, emb, settings)
    out = table.with_columns(_to_columns(table, cols, emb))
    hashes = table["content_hash"].to_numpy()
    pairs = pl.DataFrame(
        {"hash_a": hashes[near_a], "hash_b": hashes[near_b], "sim": sims}, schema=PAIR_SCHEMA
    )
    return DedupResult(out, pairs, search=info)


def _check_embeddings(table: pl.DataFrame, emb: np.ndarray) -> np.ndarray:
    """One finite row per sample (unreadable samples have zero rows); a bad row names its sample."""

    def describe(r: int) -> str:
        row = table.row(r, named=True)
        return f"sample {row['sample_id']}" + (f" ({row['source']})" if row.get("source") else "")

    return check_matrix(emb, rows=table.height, describe=describe, error=DedupError)


def _no_exact(table: pl.DataFrame) -> np.ndarray:
    ok = table["error"].is_null().to_numpy()
    return np.where(ok, np.arange(table.height), -1)


_EMPTY = np.zeros(0, dtype=np.int64)


def default_exact_max_rows() -> int:
    """Exact search up to 200k rows on CPU (~35 s on 2 cores); a GPU does 2M exactly in minutes."""
    return 2_000_000 if cuda_available() else 200_000


Edges = tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]  # rows a, rows b, sims, info
Search = Callable[[np.ndarray, float, SearchOptions], NearPairs]
SearchBetween = Callable[[np.ndarray, np.ndarray, float, SearchOptions], NearPairs]


class _NearSearch:
    """Near-duplicate edges between table rows: a full search, or an incremental one."""

    def __init__(
        self, search: Search | None, between: SearchBetween | None, settings: DedupSettings
    ):
        self.search: Search = search or find_near_pairs
        self.between: SearchBetween = between or find_near_pairs_between
        self.settings = settings

    def _opts(self) -> SearchOptions:
        s = self.settings
        return SearchOptions(
            method=s.search, exact_max_rows=s.exact_max_rows or default_exact_max_rows()
        )

    def edges(
        self,
        table: pl.DataFrame,
        rep_of: np.ndarray,
        emb: np.ndarray | None,
        prior: PriorIndex | None,
    ) -> Edges:
        """(rows a, rows b, similarities, search info)."""
        if not self.settings.near or emb is None or emb.shape[1] == 0:
            return _EMPTY, _EMPTY, np.zeros(0, np.float32), {"method": "none"}
        reps = np.flatnonzero(rep_of == np.arange(len(rep_of)))
        if prior is None:
            p = self.search(_take(emb, reps), self.settings.threshold, self._opts())
            return (
                reps[p.i],
                reps[p.j],
                p.sim,
                {"method": p.method, **p.params, "incremental": False},
            )
        return self._incremental(table, reps, emb, prior)

    def _incremental(
        self, table: pl.DataFrame, reps: np.ndarray, emb: np.ndarray, prior: PriorIndex
    ) -> Edges:
        hashes = table["content_hash"].to_numpy()
        old_mask = np.fromiter((h in prior.covered for h in hashes[reps]), bool, len(reps))
        first = np.zeros(len(reps), dtype=bool)  # without exact dedup a content repeats in reps:
        first[np.unique(hashes[reps], return_index=True)[1]] = True  # only its first is "old"
        old_mask &= first
        old, new = reps[old_mask], reps[~old_mask]
        t = self.settings.threshold
        own = self.search(_take(emb, new), t, self._opts())
        cross = self.between(_take(emb, new), _take(emb, old), t, self._opts())
        ka, kb, ks = _prior_edges(prior.pairs, hashes, old)
        a = np.concatenate([new[own.i], new[cross.i], ka])
        b = np.concatenate([new[own.j], old[cross.j], kb])
        sims = np.concatenate([own.sim, cross.sim, ks]).astype(np.float32)
        info = {
            "method": cross.method,
            **cross.params,
            "incremental": True,
            "new_contents": len(new),
            "reused_contents": len(old),
            "reused_pairs": len(ka),
        }
        return a, b, sims, info


def _take(emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`emb[rows]` as a C-contiguous matrix; a view (no copy) when `rows` is one ascending run."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and (np.diff(rows) == 1).all():
        return emb[int(rows[0]) : int(rows[-1]) + 1]
    return np.ascontiguousarray(emb[rows])


def _row_similarity(emb: np.ndarray, ref: np.ndarray, block: int = 65536) -> np.ndarray:
    """Cosine of each row with row `ref[i]`, block by block (no N x D temporary)."""
    out = np.empty(emb.shape[0], dtype=np.float32)
    for lo in range(0, emb.shape[0], block):
        hi = min(lo + block, emb.shape[0])
        out[lo:hi] = np.einsum("ij,ij->i", emb[lo:hi], emb[ref[lo:hi]])
    return out


def _prior_edges(
    pairs: pl.DataFrame, hashes: np.ndarray, old: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The prior's pairs whose two contents are still present, as row indices."""
    row_of = dict(zip(hashes[old].tolist(), old.tolist(), strict=True))
    live = pairs.filter(pl.col("hash_a").is_in(list(row_of)) & pl.col("hash_b").is_in(list(row_of)))
    a = np.array([row_of[h] for h in live["hash_a"].to_list()], dtype=np.int64)
    b = np.array([row_of[h] for h in live["hash_b"].to_list()], dtype=np.int64)
    return a, b, live["sim"].to_numpy().astype(np.float32)


def _to_columns(table: pl.DataFrame, cols: GroupColumns, emb: np.ndarray | None) -> list[pl.Series]:
    ids = table["sample_id"].to_numpy().astype(object)
    hashes = table["content_hash"].to_numpy()
    has_ref = cols.ref >= 0
    ref = np.where(has_ref, cols.ref, 0)
    same = has_ref & (hashes == hashes[ref])
    sim = np.ones(table.height, dtype=np.float32)
    if emb is not None and emb.shape[1]:
        sim = _row_similarity(emb, ref).clip(-1, 1).astype(np.float32)
    sim = np.where(same, 1.0, sim).astype(np.float32)

    def ids_where(mask: np.ndarray, idx: np.ndarray) -> pl.Series:
        names = ids[np.where(mask, idx, 0)]
        return pl.Series(
            [n if m else None for n, m in zip(names, mask, strict=True)], dtype=pl.Utf8
        )

    return [
        ids_where(same, ref).alias("exact_dup_of"),
        ids_where(has_ref & ~same, ref).alias("near_dup_of"),
        pl.Series("dup_similarity", np.where(has_ref, sim, np.nan)).fill_nan(None).cast(pl.Float32),
        ids_where(cols.group >= 0, cols.group).alias("dup_group"),
        ids_where(cols.leak_of >= 0, cols.leak_of).alias("leak_of"),
        pl.Series("label_conflict", cols.conflict, dtype=pl.Boolean),
        pl.Series("dedup_drop", cols.drop, dtype=pl.Utf8),
    ]
