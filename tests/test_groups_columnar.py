"""The columnar grouping (only rows in pairs or exact copies are worked on) decides exactly as the
per-row reference it replaced, on random tables with copies, leaks, unreadable rows and labels."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupSettings
from leanset.dedup.exact import _by_window, _same_content, exact_representatives
from leanset.dedup.groups import (
    KEEP_POLICIES,
    Edges,
    GroupContext,
    _decide_units,
    _ranks,
    age_order,
    involved_rows,
    resolve_groups,
)
from leanset.dedup.groups import _build_units as _columnar_units
from leanset.dedup.stage import _Found, _row_evidence, _to_columns

COLUMNS = [
    "exact_dup_of",
    "near_dup_of",
    "dup_similarity",
    "dup_evidence",
    "dup_group",
    "leak_of",
    "label_conflict",
    "dedup_drop",
]


def _reference(table: pl.DataFrame, rep_of: np.ndarray, e: Edges, s: DedupSettings) -> dict:
    """The decision columns as the per-row code before the columnar one made them: one Python
    pass over every unit and row (the unit decisions themselves are shared)."""
    is_eval = table["split"].is_in(s.eval_splits).to_numpy()
    ctx = GroupContext(age_order(table), table["size_bytes"].to_numpy(), rep_of, e)
    units = _columnar_units(rep_of, is_eval, _ranks(KEEP_POLICIES[s.keep](ctx)), e)
    state = _decide_units(units, s)
    rows = [units.order[a:b] for a, b in itertools.pairwise(units.row_starts.tolist())]
    n, hashes = table.height, table["content_hash"].to_list()
    ref, sim = np.full(n, -1), np.full(n, np.nan, np.float32)
    leak, drop = np.full(n, -1), [None] * n
    for u, r in enumerate(rows):
        target = state.ref[u]
        if target >= 0:
            ref[r], sim[r] = rows[target][0], state.sim[u]
        else:
            ref[r[1:]], sim[r[1:]] = r[0], 1.0
        if state.leak_of[u] >= 0:
            leak[r] = rows[state.leak_of[u]][0]
        for i in r if target >= 0 else r[1:]:
            if state.why[u] == "test_leak":
                drop[i] = "test_leak"
            elif not units.is_eval[u] or s.dedup_eval:
                drop[i] = "exact_duplicate" if hashes[i] == hashes[ref[i]] else "near_duplicate"
    root = np.where(ref >= 0, ref, np.arange(n))
    for _ in range(2):
        root = np.where(ref[root] >= 0, ref[root], root)
    group = np.full(n, -1)
    group[ref >= 0] = root[ref >= 0]
    group[np.unique(root[ref >= 0])] = np.unique(root[ref >= 0])
    labels, names = table["label"].to_list(), {}
    for i in np.flatnonzero(group >= 0).tolist():
        if labels[i] is not None:
            names.setdefault(group[i], set()).add(labels[i])
    conflict = [bool(group[i] >= 0 and len(names.get(group[i], ())) > 1) for i in range(n)]
    by_pair = {
        (min(x, y), max(x, y)): "embedding" for x, y in zip(e.a.tolist(), e.b.tolist(), strict=True)
    }
    ids = table["sample_id"].to_list()

    def name(i: int, ok: bool) -> str | None:
        return ids[i] if ok and i >= 0 else None

    same = [ref[i] >= 0 and hashes[i] == hashes[ref[i]] for i in range(n)]
    return {
        "exact_dup_of": [name(ref[i], same[i]) for i in range(n)],
        "near_dup_of": [name(ref[i], not same[i]) for i in range(n)],
        "dup_similarity": [None if np.isnan(x) else float(x) for x in sim],
        "dup_evidence": [
            None
            if ref[i] < 0
            else "exact"
            if rep_of[i] == rep_of[ref[i]]
            else by_pair.get((min(rep_of[i], rep_of[ref[i]]), max(rep_of[i], rep_of[ref[i]])))
            for i in range(n)
        ],
        "dup_group": [name(group[i], True) for i in range(n)],
        "leak_of": [name(leak[i], True) for i in range(n)],
        "label_conflict": conflict,
        "dedup_drop": drop,
    }


def _random_case(seed: int, n: int = 400) -> tuple[pl.DataFrame, np.ndarray, Edges]:
    """Rows with exact copies (shared hashes), unreadable rows, splits, labels with nulls, and
    random near-duplicate edges between contents (some across splits, some on one side)."""
    rng = np.random.default_rng(seed)
    content = rng.integers(0, int(n * 0.7), n)
    table = pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "position": np.arange(n),
            "split": rng.choice(["train", "train", "test", "validation"], n),
            "label": pl.Series(rng.choice(["cat", "dog", "owl", ""], n)).replace("", None),
            "content_hash": [f"h{c}" for c in content],
            "error": pl.Series(np.where(rng.random(n) < 0.05, "unreadable", "")).replace("", None),
            "size_bytes": rng.integers(1, 50, n),
            "first_seen": pl.Series(rng.integers(0, 3, n)).cast(pl.Int64),
        }
    )
    rep_of = exact_representatives(table)
    reps = np.flatnonzero(rep_of == np.arange(n))
    m = len(reps) // 2
    a, b = rng.choice(reps, m), rng.choice(reps, m)
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    a, b = key // n, key % n
    keep = a != b
    sim = rng.choice([0.91, 0.95, 0.97, 0.99], int(keep.sum())).astype(np.float32)  # ties
    return table, rep_of, Edges(a[keep], b[keep], sim)


SETTINGS = [
    DedupSettings(threshold=0.9, keep=k, leakage=lk, dedup_eval=d)
    for k in KEEP_POLICIES
    for lk in ("drop_train", "drop_eval", "report")
    for d in (False, True)
]


@pytest.mark.parametrize("seed", range(6))
def test_columns_equal_the_per_row_reference(seed: int) -> None:
    table, rep_of, edges = _random_case(seed)
    for s in SETTINGS:
        cols = resolve_groups(table, rep_of, edges, s)
        found = _Found(edges.a, edges.b, edges.sim, ["embedding"] * len(edges.a), {})
        out = pl.DataFrame(_to_columns(table, cols, _row_evidence(rep_of, cols, found)))
        want = _reference(table, rep_of, edges, s)
        assert out.columns == COLUMNS
        for c in COLUMNS:
            assert out[c].to_list() == want[c], (seed, s.keep, s.leakage, s.dedup_eval, c)
        assert out["dedup_drop"].is_not_null().sum() > 0  # the case decides something


def test_only_rows_with_pairs_or_copies_are_worked_on() -> None:
    """200k distinct contents and 100 pairs: the grouping marks the pairs' rows only, and its
    Python and NumPy allocations stay about 11 bytes per row of the table (a flag per row and
    bounded pieces; the rest is per row in a pair). Building the units over every row took ~100,
    the per-row code before it ~370, most of it Python objects."""
    n = 200_000
    table = pl.DataFrame(
        {
            "sample_id": pl.Series(np.arange(n)).cast(pl.Utf8),
            "position": np.arange(n),
            "split": np.where(np.arange(n) % 5 == 0, "test", "train"),
            "label": (np.arange(n) % 10).astype(str),
            "content_hash": pl.Series(np.arange(n)).cast(pl.Utf8),
            "error": pl.Series([None] * n, dtype=pl.Utf8),
            "size_bytes": np.full(n, 1000),
        }
    )
    rep_of = exact_representatives(table)
    a = np.arange(0, 200 * 997, 997)[:100]
    edges = Edges(a, a + 1, np.full(100, 0.95, np.float32))
    tracemalloc.start()
    try:
        cols = resolve_groups(table, rep_of, edges, DedupSettings(threshold=0.9))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(cols.rows, np.unique(np.concatenate([a, a + 1])))
    assert (cols.drop > 0).sum() == 100
    assert peak / n < 15, peak / n


def test_the_involved_rows_are_those_of_contents_with_an_edge_or_a_second_readable_row() -> None:
    # rows 0-1 one content; 2 alone; 3 unreadable; 4 and 6 joined by an edge; 5 and 7 alone
    rep_of = np.array([0, 0, 2, -1, 4, 5, 6, 7])
    edges = Edges(np.array([4]), np.array([6]), np.array([0.95], np.float32))
    assert involved_rows(rep_of, edges).tolist() == [0, 1, 4, 6]


@pytest.mark.parametrize("seed", range(3))
def test_exact_copies_by_64_bit_keys_equal_the_window_over_the_strings(seed: int) -> None:
    table = _random_case(seed, n=3000)[0]
    assert np.array_equal(exact_representatives(table), _by_window(table))
    assert (exact_representatives(table) != np.arange(3000)).sum() > 100  # copies and unreadable


def test_a_representative_with_another_hash_is_caught() -> None:
    """What a 64-bit key collision would produce: the string check refuses it."""
    hashes = pl.Series(["h1", "h2", "h1", "h3"])
    assert _same_content(hashes, np.array([0, 1, 0, 3]))
    assert not _same_content(hashes, np.array([0, 1, 0, 1]))
    assert not _same_content(hashes, np.array([0, 1, 1, 3]))


@pytest.mark.parametrize("errors", [[], [None], ["bad"], ["bad", "bad"], [None, "bad", None]])
def test_exact_copies_of_tiny_and_unreadable_tables(errors: list[str | None]) -> None:
    table = pl.DataFrame(
        {"content_hash": ["h"] * len(errors), "error": pl.Series(errors, dtype=pl.Utf8)}
    )
    assert np.array_equal(exact_representatives(table), _by_window(table))


def test_exact_copies_take_about_25_bytes_a_row_at_their_peak() -> None:
    """A stable sort of 64-bit keys and the representatives filled a bounded piece at a time
    (np.unique with its index and inverse held ~75 bytes a row: the dedup stage's peak at 4M)."""
    n = 400_000
    table = _random_case(0, n=n)[0]
    tracemalloc.start()
    try:
        rep = exact_representatives(table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(rep, _by_window(table))
    assert peak / n < 40, peak / n


def test_decision_columns_are_enums_in_memory_and_strings_when_stored() -> None:
    """The string decision columns take 1-4 bytes a row as enums (a string column's view takes
    16 even where null); they sort as their strings do, and a version stores them as strings."""
    from leanset.pipelines.store.versions import as_stored

    table, rep_of, edges = _random_case(1, n=3000)
    s = SETTINGS[0]
    cols = resolve_groups(table, rep_of, edges, s)
    found = _Found(edges.a, edges.b, edges.sim, ["embedding"] * len(edges.a), {})
    out = pl.DataFrame(_to_columns(table, cols, _row_evidence(rep_of, cols, found)))
    text = [c for c in COLUMNS if c not in ("dup_similarity", "label_conflict")]
    stored = as_stored(out)
    for c in text:
        assert isinstance(out.schema[c], pl.Enum), c
        assert out[c].estimated_size() <= 4.2 * out.height, c
        assert stored.schema[c] == pl.Utf8 and stored[c].to_list() == out[c].to_list(), c
        assert out[c].sort(nulls_last=True).to_list() == stored[c].sort(nulls_last=True).to_list()
    assert stored.drop(text).equals(out.drop(text))
