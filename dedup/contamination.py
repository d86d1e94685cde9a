"""Contamination: training samples that are near copies of an outside reference set (a public
benchmark's test split, another team's eval set), found with the dedup stage's own search and
threshold. Eval splits are never touched: they are what the reference protects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.config import DedupError
from leanset.dedup.matrix import Rows, check_matrix, check_rows
from leanset.dedup.near import NearPairs, SearchOptions, find_near_pairs_between

# (query rows, reference vectors, threshold, options) -> pairs: `near.find_near_pairs_between`,
# or the same searched by cluster tasks for rows kept there
Between = Callable[[Any, np.ndarray, float, SearchOptions | None], NearPairs]

REASON = "contaminated"


@dataclass(frozen=True)
class Reference:
    """One outside set: its name, and per distinct content its sample id, content hash and
    unit vector."""

    name: str
    sample_ids: list[str]
    hashes: list[str]
    vectors: np.ndarray


@dataclass(frozen=True)
class Contamination:
    """Per table row: the reference row it copies (`name:sample_id`) and the similarity; how many
    training rows were searched (the others' findings carried from a prior run)."""

    by: list[str | None]
    similarity: np.ndarray
    found: dict[str, int]
    searched: int = 0
    carried: int = 0


@dataclass(frozen=True)
class Prior:
    """What an earlier run found against the same references, embedder and eval splits: per
    content hash it searched, the reference row it copies (None: none) and the similarity, at
    its `threshold`."""

    found: dict[str, tuple[str | None, float]]
    threshold: float

    def holds(self, threshold: float) -> bool:
        """Its findings stand at `threshold`: a miss stays a miss at a higher one."""
        return threshold >= self.threshold


def find_contamination(
    table: pl.DataFrame,
    matrix: Rows,
    references: Sequence[Reference],
    threshold: float,
    eval_splits: Sequence[str],
    options: SearchOptions | None = None,
    prior: Prior | None = None,
    between: Between = find_near_pairs_between,
) -> Contamination:
    """Each readable training row's closest reference copy at or above `threshold` (an identical
    content hash counts as similarity 1, whatever the vectors). With a `prior` that holds at this
    threshold, only contents it did not search are searched; the others keep its findings.
    A matrix kept on a cluster is searched there by `between` (its rows `take`n there)."""
    if isinstance(matrix, np.ndarray):
        x: Rows = check_matrix(matrix, rows=table.height, error=DedupError)
    else:
        x = check_rows(matrix, rows=table.height, error=DedupError)
    train = (table["error"].is_null() & ~table["split"].is_in(list(eval_splits))).to_numpy()
    hashes = table["content_hash"].to_list()
    rows = np.flatnonzero(train)
    best = np.full(table.height, -np.inf)
    by: list[str | None] = [None] * table.height
    owner: list[str | None] = [None] * table.height
    if prior is not None and prior.holds(threshold):
        known = np.array([hashes[r] in prior.found for r in rows], dtype=bool)
        _carry(rows[known], hashes, prior, threshold, references, best, by, owner)
        rows = rows[~known]
    for ref in references:
        hits = _pairs(_subset(x, rows), ref, threshold, options, between)
        same = {h: k for k, h in enumerate(ref.hashes)}
        hits += [(i, same[hashes[r]], 1.0) for i, r in enumerate(rows) if hashes[r] in same]
        for i, j, sim in hits:
            r = rows[i]
            if sim > best[r]:
                best[r], by[r], owner[r] = sim, f"{ref.name}:{ref.sample_ids[j]}", ref.name
    found = {ref.name: owner.count(ref.name) for ref in references}
    n_train = int(train.sum())
    similarity = np.where(np.isfinite(best), best, np.nan)
    return Contamination(by, similarity, found, len(rows), n_train - len(rows))


def _carry(
    rows: np.ndarray,
    hashes: list[str],
    prior: Prior,
    threshold: float,
    references: Sequence[Reference],
    best: np.ndarray,
    by: list[str | None],
    owner: list[str | None],
) -> None:
    """The prior's findings for `rows` (those still at or above `threshold`), in place."""
    names = sorted((ref.name for ref in references), key=len, reverse=True)
    for r in rows.tolist():
        name, sim = prior.found[hashes[r]]
        if name is not None and sim >= threshold:
            best[r], by[r] = sim, name
            owner[r] = next((n for n in names if name.startswith(f"{n}:")), None)


def _subset(x: Rows, rows: np.ndarray) -> Rows:
    """Rows `rows` (ascending) of a matrix here or kept on a cluster (there, as new blocks)."""
    return x[rows] if isinstance(x, np.ndarray) else x.take(rows)


def _pairs(
    q: Rows,
    ref: Reference,
    threshold: float,
    options: SearchOptions | None,
    between: Between,
) -> list[tuple[int, int, float]]:
    if q.shape[0] == 0 or len(ref.vectors) == 0:
        return []
    if ref.vectors.shape[1] != q.shape[1]:
        raise DedupError(
            f"reference {ref.name!r} has {ref.vectors.shape[1]}-dimensional embeddings, this "
            f"dataset {q.shape[1]}: both must come from the same embedder"
        )
    p = between(q, ref.vectors, threshold, options)
    return list(zip(p.i.tolist(), p.j.tolist(), p.sim.astype(float).tolist(), strict=True))


def contamination_columns(table: pl.DataFrame, found: Contamination, policy: str) -> pl.DataFrame:
    """`contaminated_by`, `contamination_similarity` and (policy drop) `contamination_drop`."""
    drop = [REASON if b is not None and policy == "drop" else None for b in found.by]
    return table.with_columns(
        pl.Series("contaminated_by", found.by, dtype=pl.Utf8),
        pl.Series("contamination_similarity", found.similarity).fill_nan(None),
        pl.Series("contamination_drop", drop, dtype=pl.Utf8),
    )


def info(found: Contamination, threshold: float, policy: str) -> dict[str, Any]:
    """What the manifest records: samples found per reference, the threshold, the policy, the
    training rows searched and those whose findings a prior run's carried."""
    return {
        "found": found.found,
        "threshold": threshold,
        "policy": policy,
        "searched": found.searched,
        "carried": found.carried,
    }
