"""Duplicate groups: transitive closure, keep policies, cross-split leakage, label conflicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dedup.config import DedupSettings


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label per row for the undirected edges (a[k], b[k])."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    out: np.ndarray = labels.astype(np.int64)
    return out


@dataclass(frozen=True)
class GroupContext:
    """What keep policies may look at: per-row arrays of the whole table."""

    position: np.ndarray
    size_bytes: np.ndarray
    emb: np.ndarray | None


def _first(m: np.ndarray, ctx: GroupContext) -> int:
    return int(m[np.argmin(ctx.position[m])])


def _last(m: np.ndarray, ctx: GroupContext) -> int:
    return int(m[np.argmax(ctx.position[m])])


def _largest(m: np.ndarray, ctx: GroupContext) -> int:
    order = np.lexsort((ctx.position[m], -ctx.size_bytes[m]))
    return int(m[order[0]])


def _centroid(m: np.ndarray, ctx: GroupContext) -> int:
    if ctx.emb is None or ctx.emb.shape[1] == 0:
        return _first(m, ctx)
    vecs = ctx.emb[m]
    centrality = (vecs @ vecs.mean(axis=0)).round(6)
    order = np.lexsort((ctx.position[m], -centrality))
    return int(m[order[0]])


KeepPolicy = Callable[[np.ndarray, GroupContext], int]
KEEP_POLICIES: dict[str, KeepPolicy] = {
    "first": _first,
    "last": _last,
    "largest": _largest,
    "centroid": _centroid,
}


@dataclass
class GroupColumns:
    """Per-row output arrays of the dedup stage (row indices, -1 = none)."""

    ref: np.ndarray
    leak_of: np.ndarray
    group: np.ndarray
    drop: list
    conflict: np.ndarray

    @classmethod
    def empty(cls, n: int) -> GroupColumns:
        neg = np.full(n, -1, dtype=np.int64)
        return cls(neg.copy(), neg.copy(), neg.copy(), [None] * n, np.zeros(n, dtype=bool))


def age_order(table: pl.DataFrame) -> np.ndarray:
    """Rank of each row by age: the version it was first seen in (when known), then position."""
    position = table["position"].to_numpy()
    if "first_seen" not in table.columns:
        return position
    order = np.lexsort((position, table["first_seen"].fill_null(np.iinfo(np.int64).max).to_numpy()))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def resolve_groups(
    table: pl.DataFrame,
    labels_of_component: np.ndarray,
    emb: np.ndarray | None,
    settings: DedupSettings,
) -> GroupColumns:
    """Decide, in every group of two or more rows, who is kept and what each other row points to."""
    n = table.height
    out = GroupColumns.empty(n)
    ctx = GroupContext(
        position=age_order(table),
        size_bytes=table["size_bytes"].to_numpy(),
        emb=emb,
    )
    is_eval = table["split"].is_in(settings.eval_splits).to_numpy()
    hashes = table["content_hash"].to_numpy()
    labels = table["label"].to_list()
    choose = KEEP_POLICIES[settings.keep]
    order = np.argsort(labels_of_component, kind="stable")
    bounds = np.flatnonzero(np.diff(labels_of_component[order])) + 1
    for members in np.split(order, bounds):
        if len(members) > 1:
            _resolve_one(members, is_eval, hashes, labels, choose, ctx, settings, out)
    return out


def _resolve_one(
    m: np.ndarray,
    is_eval: np.ndarray,
    hashes: np.ndarray,
    labels: list[str | None],
    choose: KeepPolicy,
    ctx: GroupContext,
    settings: DedupSettings,
    out: GroupColumns,
) -> None:
    ev, tr = m[is_eval[m]], m[~is_eval[m]]
    anchor_ev = choose(ev, ctx) if len(ev) else -1
    anchor_tr = choose(tr, ctx) if len(tr) else -1
    leak = anchor_ev >= 0 and anchor_tr >= 0
    primary = (
        anchor_ev if (leak and settings.leakage == "drop_train") or anchor_tr < 0 else anchor_tr
    )
    out.group[m] = primary
    if len({labels[i] for i in m} - {None}) > 1:
        out.conflict[m] = True
    for side, anchor, dedup_side in ((tr, anchor_tr, True), (ev, anchor_ev, settings.dedup_eval)):
        for i in side[side != anchor]:
            out.ref[i] = anchor
            if dedup_side:
                out.drop[i] = "exact_duplicate" if hashes[i] == hashes[anchor] else "near_duplicate"
    if not leak:
        return
    out.leak_of[tr], out.leak_of[ev] = anchor_ev, anchor_tr
    loser, winner = {"drop_train": (tr, anchor_ev), "drop_eval": (ev, anchor_tr)}.get(
        settings.leakage, (m[:0], -1)
    )
    for i in loser:
        out.ref[i] = winner
        out.drop[i] = "test_leak"
