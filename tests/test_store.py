"""The versioned store: commits, conflicts, diffs."""

import polars as pl
import pytest

from leanset.pipelines.store import Store, StoreConflict, StoreError


def decisions(ids: list[str], kept: list[bool]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": ids,
            "kept": kept,
            "drop_reason": [None if k else "near_duplicate" for k in kept],
        },
        schema_overrides={"drop_reason": pl.Utf8},
    )


def commit(store: Store, ids, kept, parent):
    d = decisions(ids, kept)
    return store.commit(d.filter(pl.col("kept")).select("sample_id"), d, {"counts": {}}, parent)


def test_versions_time_travel_and_diff(tmp_path):
    store = Store(tmp_path / "s")
    assert commit(store, ["a", "b"], [True, True], None)["version"] == 1
    assert commit(store, ["a", "b", "c"], [True, False, True], 1)["version"] == 2
    assert store.read("dataset", 1)["sample_id"].to_list() == ["a", "b"]
    assert store.read("dataset")["sample_id"].to_list() == ["a", "c"]
    d = store.diff(1, 2)
    assert d.entered["sample_id"].to_list() == ["c"]
    assert d.left.select("sample_id", "drop_reason").rows() == [("b", "near_duplicate")]


def test_second_commit_on_same_parent_loses_and_changes_nothing(tmp_path):
    store = Store(tmp_path / "s")
    commit(store, ["a"], [True], None)
    commit(store, ["a", "b"], [True, True], 1)
    with pytest.raises(StoreConflict, match="version 2 was committed by another run"):
        commit(store, ["z"], [True], 1)
    assert [m["version"] for m in store.manifests()] == [1, 2]
    assert store.read("dataset")["sample_id"].to_list() == ["a", "b"]


def test_unknown_version_and_file_path(tmp_path):
    store = Store(tmp_path / "s")
    with pytest.raises(StoreError, match="has no versions yet"):
        store.manifest()
    commit(store, ["a"], [True], None)
    with pytest.raises(StoreError, match=r"has no version 5; versions: \[1\]"):
        store.read("decisions", 5)
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store(tmp_path / "f")
