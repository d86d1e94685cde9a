"""The dedup stage on tiny tables with known answers."""

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupSettings
from leanset.dedup.stage import find_duplicates


def table(rows: list[tuple[str, str, str | None, str]]) -> pl.DataFrame:
    """rows: (sample_id, split, label, content_hash)."""
    return pl.DataFrame(
        {
            "sample_id": [r[0] for r in rows],
            "position": list(range(len(rows))),
            "source": [f"{r[0]}.png" for r in rows],
            "split": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "content_hash": [r[3] for r in rows],
            "size_bytes": [100 + i for i in range(len(rows))],
            "error": [None] * len(rows),
        },
        schema_overrides={"label": pl.Utf8, "error": pl.Utf8},
    )


def unit(*vs) -> np.ndarray:
    m = np.array(vs, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# a, b exact copies; c near a; e distinct; f (test) near-duplicates d (train)
ROWS = [
    ("a", "train", "cat", "h1"),
    ("b", "train", "cat", "h1"),
    ("c", "train", "dog", "h2"),
    ("d", "train", "cat", "h3"),
    ("e", "train", "cat", "h4"),
    ("f", "test", "cat", "h5"),
]
EMB = unit(
    [1, 0, 0, 0], [1, 0, 0, 0], [0.99, 0.1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0.995, 0.05, 0]
)


DEFAULT = DedupSettings(threshold=0.95)


def run(settings=DEFAULT, rows=ROWS, emb=EMB):
    return find_duplicates(table(rows), emb, settings).table.sort("position")


def col(df: pl.DataFrame, name: str) -> list:
    return df[name].to_list()


def test_exact_near_leak_and_conflict():
    out = run()
    assert col(out, "exact_dup_of") == [None, "a", None, None, None, None]
    assert col(out, "near_dup_of") == [
        None,
        None,
        "a",
        "f",
        None,
        None,
    ]  # dropped rows point to the kept one
    # d (train) leaks into f (test): by default the train copy is dropped, the test sample kept
    assert col(out, "dedup_drop") == [
        None,
        "exact_duplicate",
        "near_duplicate",
        "test_leak",
        None,
        None,
    ]
    assert col(out, "leak_of") == [None, None, None, "f", None, "d"]
    assert col(out, "dup_group") == ["a", "a", "a", "f", None, "f"]
    assert col(out, "label_conflict") == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]  # cat vs dog in group a
    sims = col(out, "dup_similarity")
    assert sims[1] == 1.0 and sims[2] == pytest.approx(0.995, abs=1e-3) and sims[0] is None


def test_leakage_policies():
    drop_eval = run(replace(DedupSettings(threshold=0.95), leakage="drop_eval"))
    assert col(drop_eval, "dedup_drop")[3:] == [None, None, "test_leak"]
    report = run(replace(DedupSettings(threshold=0.95), leakage="report"))
    assert col(report, "dedup_drop")[3:] == [None, None, None]
    assert col(report, "leak_of")[3:] == ["f", None, "d"]


@pytest.mark.parametrize(
    ("keep", "kept"), [("first", "a"), ("last", "c"), ("largest", "c"), ("centroid", "a")]
)
def test_keep_policies(keep: str, kept: str):
    out = run(replace(DedupSettings(threshold=0.95), keep=keep)).filter(
        pl.col("dup_group").is_not_null()
    )
    group = out.filter(pl.col("source").is_in(["a.png", "b.png", "c.png"]))
    assert group.filter(pl.col("dedup_drop").is_null())["sample_id"].to_list() == [kept]
    assert set(group["dup_group"]) == {kept}


def test_no_chains_a_sample_is_dropped_only_for_its_own_match():
    """x~y, y~z, x!~z, w~x: x is kept first, y and w point to it; z matches only dropped y."""
    rows = [(k, "train", None, f"h{k}") for k in "xyzw"]
    emb = unit(
        [1, 0, 0],
        [np.cos(0.3), np.sin(0.3), 0],
        [np.cos(0.6), np.sin(0.6), 0],
        [np.cos(0.3), 0, np.sin(0.3)],
    )
    out = run(DedupSettings(threshold=0.95), rows, emb)
    assert col(out, "dedup_drop") == [None, "near_duplicate", None, "near_duplicate"]
    assert col(out, "near_dup_of") == [None, "x", None, "x"]
    assert col(out, "dup_group") == ["x", "x", None, "x"]
    assert col(out, "dup_similarity")[1] == pytest.approx(np.cos(0.3), abs=1e-4)


def test_a_sample_matching_two_kept_ones_is_kept_for_both():
    """c1~o, c2~o, c1!~c2 (two crops of one original, the crops first in keep order): o is kept
    and both crops point to it, rather than o dropped for c1 and c2 kept beside it."""
    rows = [(k, "train", None, f"h{k}") for k in ("c1", "o", "c2")]
    emb = unit([np.cos(0.3), np.sin(0.3)], [1, 0], [np.cos(0.3), -np.sin(0.3)])
    out = run(DedupSettings(threshold=0.95), rows, emb)
    assert col(out, "dedup_drop") == ["near_duplicate", None, "near_duplicate"]
    assert col(out, "near_dup_of") == ["o", None, "o"]
    assert col(out, "dup_group") == ["o", "o", "o"]
    assert col(out, "dup_similarity")[2] == pytest.approx(np.cos(0.3), abs=1e-4)


def test_a_chain_through_the_test_split_makes_no_leak():
    """t1 (train) ~ e (test) ~ t2 (train), t1 !~ t2: only t1 leaks; t2 stays."""
    rows = [("t1", "train", None, "h1"), ("e", "test", None, "h2"), ("t2", "train", None, "h3")]
    emb = unit([1, 0], [np.cos(0.3), np.sin(0.3)], [np.cos(0.6), np.sin(0.6)])
    out = run(DedupSettings(threshold=0.95), rows, emb)
    assert col(out, "dedup_drop") == ["test_leak", None, "test_leak"]
    rows = [("t1", "train", None, "h1"), ("e", "test", None, "h2"), ("t2", "train", None, "h3")]
    far = unit([1, 0], [np.cos(0.3), np.sin(0.3)], [np.cos(0.9), np.sin(0.9)])  # t2 !~ e
    out = run(DedupSettings(threshold=0.95), rows, far)
    assert col(out, "dedup_drop") == ["test_leak", None, None]
    assert col(out, "leak_of") == ["e", "t1", None]


def test_eval_duplicates_are_reported_not_dropped_by_default():
    rows = [("t1", "test", "a", "h1"), ("t2", "test", "a", "h1")]
    out = run(DedupSettings(threshold=0.95), rows, unit([1, 0], [1, 0]))
    assert col(out, "dedup_drop") == [None, None] and col(out, "exact_dup_of") == [None, "t1"]
    out = run(DedupSettings(threshold=0.95, dedup_eval=True), rows, unit([1, 0], [1, 0]))
    assert col(out, "dedup_drop") == [None, "exact_duplicate"]


def test_unreadable_rows_never_join_groups():
    t = table(ROWS[:2]).with_columns(pl.Series("error", [None, "unreadable: bad"], dtype=pl.Utf8))
    out = find_duplicates(t, unit([1, 0], [1, 0]), DedupSettings()).table
    assert col(out, "dup_group") == [None, None]


def test_exact_only_without_embeddings():
    out = find_duplicates(table(ROWS), None, DedupSettings(near=False)).table
    assert col(out, "dedup_drop") == [None, "exact_duplicate", None, None, None, None]


def test_embedding_rows_must_match_table():
    with pytest.raises(ValueError, match="embeddings has 2 rows, the sample table 6"):
        find_duplicates(table(ROWS), EMB[:2], DedupSettings())
