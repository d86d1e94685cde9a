"""Who is kept among duplicates: keep policies, a greedy pass with no chains, leaks, conflicts.

A *unit* is one distinct content on one side (train or eval): the readable rows that share a
content hash (or, with exact detection off, one row). Near-duplicate edges join units. Units are
visited in keep-policy order; a unit is dropped only when it directly matches (an edge at or above
the threshold) a unit already kept on its side, and then points to that unit. So a~b~c never joins
a and c through b: c survives unless it matches a itself, or b is kept for both (a dropped unit
that matches two or more kept units nothing else points to is kept instead of them).

Leakage is a direct match across sides. The reference side is deduplicated first (eval under
`drop_train` and `report`, train under `drop_eval`); a unit of the other side that directly matches
a kept unit of the reference side is a leak (dropped as `test_leak` unless the policy is `report`),
and the rest of that side is then deduplicated among itself. Both cleaned sides therefore share no
direct match, and every dropped row points to a kept row it matches itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from leanset.dedup.config import DedupSettings


@dataclass(frozen=True)
class GroupContext:
    """What keep policies may look at: arrays over the rows a decision can touch (the rows in
    an edge or an exact copy, in table order), their contents' table rows, and the edges."""

    age: np.ndarray  # rank by (first_seen, position): 0 = oldest
    size_bytes: np.ndarray
    rep_of: np.ndarray
    edges: Edges

    @cached_property
    def centrality(self) -> np.ndarray:
        """Mean similarity of a row's content to its near-duplicate neighbours (made only for
        the policy that reads it: five float arrays of the table's length)."""
        return _centrality(len(self.rep_of), self.rep_of, self.edges)


def _first(ctx: GroupContext) -> np.ndarray:
    return ctx.age


def _last(ctx: GroupContext) -> np.ndarray:
    return -ctx.age


def _largest(ctx: GroupContext) -> np.ndarray:
    return _ranks(np.lexsort((ctx.age, -ctx.size_bytes)), is_order=True)


def _centroid(ctx: GroupContext) -> np.ndarray:
    return _ranks(np.lexsort((ctx.age, -ctx.centrality.round(6))), is_order=True)


KeepPolicy = Callable[[GroupContext], np.ndarray]
# Each policy ranks the rows: the lower, the more a row is preferred as the one kept.
KEEP_POLICIES: dict[str, KeepPolicy] = {
    "first": _first,
    "last": _last,
    "largest": _largest,
    "centroid": _centroid,
}


DROP_REASONS: tuple[str | None, ...] = (None, "exact_duplicate", "near_duplicate", "test_leak")
_EXACT, _NEAR, _LEAK = 1, 2, 3  # codes into DROP_REASONS
_CHUNK = 1 << 20  # rows of the table looked at a time when finding the involved ones


@dataclass
class GroupColumns:
    """The rows the dedup stage marks (ascending) and their values (row indices, -1 = none).

    Only rows of a content with a near-duplicate edge or with more than one row are marked: every
    other row is kept and points nowhere, so the decisions cost nothing per row beyond these.
    """

    n: int  # rows in the table
    rows: np.ndarray
    ref: np.ndarray
    sim: np.ndarray  # similarity to `ref` (NaN without one; 1 for identical content)
    leak_of: np.ndarray
    group: np.ndarray
    drop: np.ndarray  # int8 codes into DROP_REASONS
    conflict: np.ndarray


def age_order(table: pl.DataFrame) -> np.ndarray:
    """Rank of each row by age: the version it was first seen in (when known), then position."""
    position = table["position"].to_numpy()
    if "first_seen" not in table.columns:
        return _ranks(position)
    first_seen = table["first_seen"].fill_null(np.iinfo(np.int64).max).to_numpy()
    return _ranks(np.lexsort((position, first_seen)), is_order=True)


def _ranks(values: np.ndarray, is_order: bool = False) -> np.ndarray:
    """Rank 0..n-1 of each row by `values` (or by the given sort order)."""
    order = values if is_order else np.argsort(values, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


@dataclass(frozen=True)
class Edges:
    """Near-duplicate edges between rows (representatives of contents), with their similarity."""

    a: np.ndarray
    b: np.ndarray
    sim: np.ndarray


@dataclass
class _Units:
    """Units (one content on one side), their rows in preference order, and their edges (CSR)."""

    order: np.ndarray  # readable rows grouped by unit, most preferred first within a unit
    row_starts: np.ndarray  # CSR over units into `order`
    lead: np.ndarray  # per unit: its most preferred row
    is_eval: np.ndarray  # per unit
    rank: np.ndarray  # per unit: the rank of its most preferred row
    starts: np.ndarray  # CSR over units
    nbr: np.ndarray
    nbr_sim: np.ndarray

    def neighbours(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.starts[u], self.starts[u + 1]
        return self.nbr[s:e], self.nbr_sim[s:e]


def resolve_groups(
    table: pl.DataFrame, rep_of: np.ndarray, edges: Edges, settings: DedupSettings
) -> GroupColumns:
    """Decide for every row whether it is kept, and which kept row a dropped one matches."""
    rows = involved_rows(rep_of, edges)
    wanted = [c for c in ("split", "position", "first_seen", "size_bytes") if c in table.columns]
    sub = table.select(wanted)[rows]
    is_eval = sub["split"].is_in(settings.eval_splits).to_numpy()
    rank = _keep_rank(sub, rep_of[rows], edges, settings)
    units = _on_rows(_build_units(rep_of[rows], is_eval, rank, edges), rows)
    state = _decide_units(units, settings)
    return _row_columns(table, units, state, settings)


def involved_rows(rep_of: np.ndarray, edges: Edges) -> np.ndarray:
    """The readable rows (ascending) whose content has a near-duplicate edge or more than one
    readable row: the only ones a decision can touch (a lone content without an edge is kept
    and points nowhere). One byte per row of the table, the rest per involved row."""
    n = len(rep_of)
    hit = np.zeros(n, dtype=bool)
    hit[edges.a], hit[edges.b] = True, True
    for s in range(0, n, _CHUNK):  # bounded pieces: no N-long index array
        rep = rep_of[s : s + _CHUNK]
        hit[rep[(rep >= 0) & (rep != np.arange(s, s + len(rep)))]] = True
    parts = [np.zeros(0, np.int64)]
    for s in range(0, n, _CHUNK):
        rep = rep_of[s : s + _CHUNK]
        parts.append(np.flatnonzero((rep >= 0) & hit[np.maximum(rep, 0)]) + s)
    return np.concatenate(parts).astype(np.int64)


def _on_rows(units: _Units, rows: np.ndarray) -> _Units:
    """Units built over the involved rows, their row positions turned into table rows."""
    units.order, units.lead = rows[units.order], rows[units.lead]
    return units


def _keep_rank(
    table: pl.DataFrame, rep_of: np.ndarray, edges: Edges, settings: DedupSettings
) -> np.ndarray:
    """Each row's rank under the keep policy (its context is freed before the units are built).
    On the involved rows alone the ranks keep their order, so every comparison is the same."""
    ctx = GroupContext(age_order(table), table["size_bytes"].to_numpy(), rep_of, edges)
    return _ranks(KEEP_POLICIES[settings.keep](ctx))


def _centrality(n: int, rep_of: np.ndarray, edges: Edges) -> np.ndarray:
    """Mean edge similarity of each row's content (0 for contents without edges); `rep_of`:
    the content of each of the n rows (a table row), summed edge by edge as before."""
    ends, at = np.unique(np.concatenate([edges.a, edges.b]), return_inverse=True)
    total = np.zeros(len(ends))
    count = np.zeros(len(ends))
    m = len(edges.a)
    np.add.at(total, at[:m], edges.sim)
    np.add.at(total, at[m:], edges.sim)
    np.add.at(count, at[:m], 1)
    np.add.at(count, at[m:], 1)
    mean = np.divide(total, count, out=np.zeros(len(ends)), where=count > 0)
    k = np.minimum(np.searchsorted(ends, rep_of), max(len(ends) - 1, 0))
    found = (rep_of >= 0) & (ends[k] == rep_of) if len(ends) else np.zeros(n, dtype=bool)
    return np.where(found, mean[k] if len(ends) else 0.0, 0.0)


def _build_units(rep_of: np.ndarray, is_eval: np.ndarray, rank: np.ndarray, edges: Edges) -> _Units:
    """Group rows into units and turn content edges into unit edges (both directions)."""
    readable = np.flatnonzero(rep_of >= 0)
    key = rep_of[readable] * 2 + is_eval[readable]
    keys, unit_idx = np.unique(key, return_inverse=True)
    order = readable[np.lexsort((rank[readable], unit_idx))]
    row_starts = _csr_starts(unit_idx, len(keys))
    lead = order[row_starts[:-1]]
    ua, ub, us = _unit_edges(keys, edges)
    nbr_order = np.lexsort((ub, ua))
    starts = _csr_starts(ua, len(keys))
    return _Units(
        order, row_starts, lead, keys % 2 == 1, rank[lead], starts, ub[nbr_order], us[nbr_order]
    )


def _csr_starts(owner: np.ndarray, n: int) -> np.ndarray:
    """Start of each of n owners' entries in `owner`'s sorted order, and the end."""
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=starts[1:])
    return starts


def _unit_edges(keys: np.ndarray, edges: Edges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit pairs joined by a content edge or by one content on both sides (an exact leak)."""
    parts_a, parts_b, parts_s = [], [], []
    both = keys[(keys % 2 == 1) & np.isin(keys - 1, keys)]  # a content train and eval both hold
    pairs = [(edges.a * 2 + sa, edges.b * 2 + sb, edges.sim) for sa in (0, 1) for sb in (0, 1)]
    pairs.append((both - 1, both, np.ones(len(both), np.float32)))
    for ka, kb, sim in pairs:
        ua, ub = _lookup(keys, ka), _lookup(keys, kb)
        ok = (ua >= 0) & (ub >= 0)
        parts_a += [ua[ok], ub[ok]]
        parts_b += [ub[ok], ua[ok]]
        parts_s += [sim[ok], sim[ok]]
    return (
        np.concatenate(parts_a).astype(np.int64),
        np.concatenate(parts_b).astype(np.int64),
        np.concatenate(parts_s).astype(np.float32),
    )


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each wanted key in the sorted `keys` (-1 where absent)."""
    idx = np.searchsorted(keys, wanted)
    idx = np.minimum(idx, max(len(keys) - 1, 0))
    found = (keys[idx] == wanted) if len(keys) else np.zeros(len(wanted), dtype=bool)
    return np.where(found, idx, -1)


@dataclass
class _State:
    """Per-unit decisions: the unit it points to (-1: none), why, and whether its rows stay."""

    ref: np.ndarray
    sim: np.ndarray  # similarity to `ref`
    why: np.ndarray  # "duplicate", "test_leak" or None (objects: one pointer per unit)
    kept: np.ndarray
    leak_of: np.ndarray
    leak_sim: np.ndarray

    @classmethod
    def of(cls, n: int) -> _State:
        neg = np.full(n, -1, dtype=np.int64)
        nan = np.full(n, np.nan, dtype=np.float32)
        why = np.full(n, None, dtype=object)
        return cls(neg.copy(), nan, why, np.ones(n, dtype=bool), neg.copy(), nan.copy())


def _decide_units(units: _Units, settings: DedupSettings) -> _State:
    """The greedy passes: reference side, leaks of the other side, then the other side."""
    state = _State.of(len(units.lead))
    ref_is_eval = settings.leakage != "drop_eval"
    drops_eval = settings.dedup_eval
    ref_side = np.flatnonzero(units.is_eval == ref_is_eval)
    other = np.flatnonzero(units.is_eval != ref_is_eval)
    _greedy(units, state, ref_side, drop=drops_eval if ref_is_eval else True)
    if settings.leakage != "report":
        _mark_leaks(units, state, other, drop=True)
    _greedy(units, state, other[state.ref[other] < 0], drop=True if ref_is_eval else drops_eval)
    if settings.leakage == "report":
        _mark_leaks(units, state, other, drop=False)
    return state


def _greedy(units: _Units, state: _State, members: np.ndarray, drop: bool) -> None:
    """Visit `members` in preference order; a unit matching a kept one of its side points to it."""
    side = np.zeros(len(units.lead), dtype=bool)
    side[members] = True
    anchor = np.zeros(len(units.lead), dtype=bool)  # kept units of this side, as visited
    linked = members[np.diff(units.starts)[members] > 0]  # units without edges are kept as they are
    for u in linked[np.argsort(units.rank[linked], kind="stable")].tolist():
        nbr, sims = units.neighbours(u)
        ok = side[nbr] & anchor[nbr]
        if not ok.any():
            anchor[u] = True
            continue
        k = _best(nbr[ok], sims[ok], units.rank)
        state.ref[u], state.sim[u] = nbr[ok][k], sims[ok][k]
        state.why[u] = "duplicate"
        state.kept[u] = not drop
    _keep_hubs(units, state, linked, side, anchor, drop)


def _keep_hubs(
    units: _Units,
    state: _State,
    members: np.ndarray,
    side: np.ndarray,
    anchor: np.ndarray,
    drop: bool,
) -> None:
    """A dropped unit that matches two or more kept units of its side, none of which another unit
    points to, is kept instead and they point to it: one sample stands for all of them (an original
    whose two crops were visited first would otherwise leave both crops kept; no chain is made:
    each of them matches it directly)."""
    pointed = np.bincount(state.ref[members][state.ref[members] >= 0], minlength=len(side))
    for u in members[np.argsort(units.rank[members], kind="stable")].tolist():
        if anchor[u] or state.why[u] != "duplicate":
            continue
        nbr, sims = units.neighbours(u)
        ok = side[nbr] & anchor[nbr]
        kept, ref = nbr[ok], int(state.ref[u])
        if len(kept) < 2 or pointed[ref] != 1 or (pointed[kept[kept != ref]] > 0).any():
            continue
        state.ref[kept], state.sim[kept] = u, sims[ok]
        for k in kept.tolist():
            state.why[k], state.kept[k] = "duplicate", not drop
        anchor[kept], pointed[ref] = False, 0
        anchor[u], pointed[u] = True, len(kept)
        state.ref[u], state.sim[u], state.why[u], state.kept[u] = -1, np.nan, None, True


def _mark_leaks(units: _Units, state: _State, members: np.ndarray, drop: bool) -> None:
    """Units of `members` that directly match a kept unit of the other side."""
    for u in members[np.diff(units.starts)[members] > 0].tolist():  # the rest match nothing
        if not state.kept[u]:
            continue
        nbr, sims = units.neighbours(u)
        ok = (units.is_eval[nbr] != units.is_eval[u]) & state.kept[nbr]
        if not ok.any():
            continue
        k = _best(nbr[ok], sims[ok], units.rank)
        target, sim = int(nbr[ok][k]), float(sims[ok][k])
        state.leak_of[u] = target
        if not state.leak_sim[target] >= sim:  # the eval side names its most similar leak
            state.leak_of[target], state.leak_sim[target] = u, sim
        if drop:
            state.ref[u], state.sim[u] = target, sim
            state.why[u], state.kept[u] = "test_leak", False


def _best(candidates: np.ndarray, sims: np.ndarray, rank: np.ndarray) -> int:
    """Position of the most similar candidate (ties: the most preferred)."""
    return int(np.lexsort((rank[candidates], -sims))[0])


def _row_columns(
    table: pl.DataFrame, units: _Units, state: _State, settings: DedupSettings
) -> GroupColumns:
    """Unit decisions as per-row references, drop reasons, groups and label conflicts, for the
    rows of units with an edge or more than one row (the others are kept, pointing nowhere)."""
    unit, rows, is_lead = _marked_rows(units)
    target = state.ref[unit]
    pointed = target >= 0  # the whole unit points to another's lead; else its rows to its own
    lead_of_unit = units.lead[unit]
    ref = np.where(pointed, units.lead[np.maximum(target, 0)], np.where(is_lead, -1, lead_of_unit))
    one, nan = np.float32(1.0), np.float32(np.nan)
    sim = np.where(pointed, state.sim[unit], np.where(is_lead, nan, one)).astype(np.float32)
    leak = state.leak_of[unit]
    leak_of = np.where(leak >= 0, units.lead[np.maximum(leak, 0)], -1)
    dropped = pointed | ~is_lead
    drop_side = ~units.is_eval[unit] | settings.dedup_eval
    drop = _drop_codes(
        table["content_hash"], rows, ref, dropped, state.why[unit] == "test_leak", drop_side
    )
    by_row = np.argsort(rows, kind="stable")
    none = np.full(len(rows), -1, dtype=np.int64)
    out = GroupColumns(
        table.height,
        rows[by_row],
        ref[by_row].astype(np.int64),
        sim[by_row],
        leak_of[by_row].astype(np.int64),
        none,
        drop[by_row],
        np.zeros(len(rows), dtype=bool),
    )
    _groups(out, table["label"])
    return out


def _marked_rows(units: _Units) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit of each row of units with an edge or more than one row, the row, and whether it
    is its unit's lead."""
    size = np.diff(units.row_starts)
    touched = np.flatnonzero((np.diff(units.starts) > 0) | (size > 1))
    count = size[touched]
    unit = np.repeat(touched, count)
    first = np.repeat(units.row_starts[touched], count)
    pos = first + np.arange(len(unit)) - np.repeat(np.cumsum(count) - count, count)
    return unit, units.order[pos], pos == first


def _drop_codes(
    hashes: pl.Series,
    rows: np.ndarray,
    ref: np.ndarray,
    dropped: np.ndarray,
    leak: np.ndarray,
    drop_side: np.ndarray,
) -> np.ndarray:
    """Why each dropped row goes: a leak, or on a side that drops duplicates, an exact or a
    near duplicate of its reference."""
    code = np.zeros(len(rows), dtype=np.int8)
    dup = dropped & ~leak & drop_side
    same = hashes.gather(rows[dup]).eq_missing(hashes.gather(ref[dup])).to_numpy()
    code[dup] = np.where(same, _EXACT, _NEAR)
    code[dropped & leak] = _LEAK
    return code


def _groups(out: GroupColumns, labels: pl.Series) -> None:
    """A group is a kept row and the rows pointing to it (a leak's group is its eval match's)."""
    at = np.where(out.ref >= 0, np.searchsorted(out.rows, out.ref), -1)  # targets are marked
    root = np.arange(len(out.rows))
    has = at >= 0
    root[has] = at[has]
    for _ in range(2):  # a leak may point to an eval row that points on (dedup_eval off)
        root = np.where(at[root] >= 0, at[root], root)
    members = np.flatnonzero(has)
    roots = np.unique(root[members])
    out.group[members] = out.rows[root[members]]
    out.group[roots] = out.rows[roots]
    grouped = np.flatnonzero(out.group >= 0)
    named = pl.DataFrame({"g": out.group[grouped], "label": labels.gather(out.rows[grouped])})
    per_group = named.drop_nulls("label").group_by("g").agg(pl.col("label").n_unique())
    conflicted = per_group.filter(pl.col("label") > 1)["g"].to_numpy()
    out.conflict[np.isin(out.group, conflicted) & (out.group >= 0)] = True
