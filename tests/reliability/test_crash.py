"""Crashes (SIGKILL in a child process, at points the test chooses) during embedding and commits."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupSettings
from leanset.dedup.stage import find_duplicates
from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.decide import decide
from leanset.pipelines.embed import PixelEmbedder, embed_dataset
from leanset.pipelines.sources import load_source
from leanset.pipelines.store import Store
from tests.helpers import brute_search, pixel_flow, tree_digest
from tests.reliability._child import do_commit, payload
from tests.reliability.conftest import TALLY, finish, kill9, spawn, wait_for

pytestmark = pytest.mark.slow  # every test here kills a child process


def decisions_of(data, matrix: np.ndarray) -> pl.DataFrame:
    settings = DedupSettings(threshold=0.95)
    out = decide(find_duplicates(data.table, matrix, settings, search=brute_search).table)
    return out.drop("_part", "_row")


def shards(cache: Path) -> list[Path]:
    return sorted(cache.rglob("shard-*.npz"))


def rows_in(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with np.load(p) as z:
            total += len(z["hashes"])
    return total


# ---------------------------------------------------------------- embedding


@pytest.mark.parametrize(
    ("kill_point", "complete_shards"),
    [("after_shard:2", 2), ("before_rename:2", 1), ("mid_write:2", 1)],
    ids=["between-shards", "shard-written-not-renamed", "shard-half-written"],
)
def test_killed_embedding_reuses_complete_shards_and_decides_the_same(
    imagefolder: Path, tmp_path: Path, kill_point: str, complete_shards: int, caplog
):
    cache = tmp_path / "cache"
    child = spawn("embed", imagefolder, cache, kill_point, tmp_path / "at-kill-point")
    wait_for(tmp_path / "at-kill-point", child)
    kill9(child, f"SIGKILL during embedding ({kill_point.split(':')[0]})")

    assert len(shards(cache)) == complete_shards
    complete_rows = rows_in(shards(cache))
    leftovers = sorted(p.name for p in cache.rglob(".*.tmp"))
    assert len(leftovers) == (0 if kill_point.startswith("after") else 1)

    data = load_source(SourceSettings(type="imagefolder", path=str(imagefolder)), ColumnSettings())
    caplog.set_level(logging.WARNING, logger="leanset")
    rerun = embed_dataset(
        data, PixelEmbedder(16), cache, batch_size=2, shard_rows=4, progress=False
    )
    assert "corrupt" not in caplog.text  # a partial file is never even opened as a shard
    assert rerun.cached == complete_rows > 0
    fresh = embed_dataset(data, PixelEmbedder(16), tmp_path / "fresh", progress=False)
    assert rerun.cached + rerun.computed == fresh.computed
    np.testing.assert_array_equal(rerun.matrix, fresh.matrix)
    assert decisions_of(data, rerun.matrix).equals(decisions_of(data, fresh.matrix))
    third = embed_dataset(data, PixelEmbedder(16), cache, progress=False)
    assert third.computed == 0 and third.cached == fresh.computed
    TALLY["faults survived"] += 1


def test_killed_flow_run_resumes_from_its_cache_with_the_same_decisions(
    prefect_harness, imagefolder: Path, tmp_path: Path
):
    from leanset.pipelines.flows import clean_flow

    store = tmp_path / "store"
    child = spawn(
        "embed", imagefolder, store / "cache" / "embeddings", "after_shard:3", tmp_path / "m"
    )
    wait_for(tmp_path / "m", child)
    kill9(child, "SIGKILL during embedding (flow store cache)")
    assert not (store / "manifests").exists()
    complete_rows = rows_in(shards(store / "cache"))

    config = pixel_flow(tmp_path, "crash")
    resumed = clean_flow(config_path=str(config), flow_name="crash")
    assert resumed["version"] == 1 and resumed["embed"]["cached"] == complete_rows
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "images").symlink_to(imagefolder)
    clean = clean_flow(
        config_path=str(pixel_flow(tmp_path / "b", "crash")),
        flow_name="crash",
    )
    assert clean["embed"]["cached"] == 0
    a = Store(store).read("decisions").sort("sample_id")
    b = Store(tmp_path / "b" / "store").read("decisions").sort("sample_id")
    assert a.equals(b) and resumed["counts"] == clean["counts"]
    TALLY["faults survived"] += 1


# ---------------------------------------------------------------- committing


def committed_store(path: Path, versions: int) -> Store:
    """A store with `versions` versions, tagged v1, v2, ..."""
    for v in range(1, versions + 1):
        do_commit(str(path), f"v{v}", v - 1 or None)
    return Store(path)


def assert_version_intact(store: Store, version: int) -> None:
    """The version's tables are its own, complete and consistent with each other."""
    tag = store.manifest(version)["tag"]
    dataset, decisions = payload(tag)
    assert store.read("dataset", version).equals(dataset)
    assert store.read("decisions", version).equals(decisions)


@pytest.mark.parametrize(
    "kill_point", ["between_tables", "before_manifest", "mid_manifest", "after_manifest"]
)
def test_killed_commit_leaves_previous_or_new_version_and_next_run_succeeds(
    tmp_path: Path, kill_point: str
):
    store = committed_store(tmp_path / "store", 1)
    child = spawn("commit", store.root, "v2", 1, kill_point, tmp_path / "m")
    wait_for(tmp_path / "m", child)
    # a reader while the writer is stopped mid-commit
    assert store.latest()["version"] == (2 if kill_point == "after_manifest" else 1)
    assert_version_intact(store, store.latest()["version"])
    kill9(child, f"SIGKILL during a commit ({kill_point})")

    reopened = Store(store.root)
    expected = 2 if kill_point == "after_manifest" else 1
    assert [m["version"] for m in reopened.manifests()] == list(range(1, expected + 1))
    for v in range(1, expected + 1):
        assert_version_intact(reopened, v)
    nxt = do_commit(str(store.root), f"v{expected + 1}", expected)
    assert nxt["version"] == expected + 1
    assert_version_intact(Store(store.root), expected + 1)
    TALLY["faults survived"] += 1


def test_random_kills_of_a_committing_process_never_break_the_store(tmp_path: Path):
    rng = random.Random(5)
    store = Store(tmp_path / "store")
    for round_ in range(5):
        marker = tmp_path / f"running-{round_}"
        child = spawn("loop", store.root, marker)
        wait_for(marker, child)  # at least one commit done in this round
        time.sleep(rng.uniform(0.05, 0.6))
        kill9(child, "SIGKILL at a random time while committing in a loop")
        versions = [m["version"] for m in Store(store.root).manifests()]
        assert versions == list(range(1, len(versions) + 1))
        for v in versions:
            assert_version_intact(Store(store.root), v)
        TALLY["faults survived"] += 1
    TALLY["versions committed between random kills"] += len(versions)
    assert do_commit(str(store.root), "after", versions[-1])["version"] == versions[-1] + 1


def test_store_files_are_unchanged_by_a_killed_commit_except_unreferenced_new_files(
    tmp_path: Path,
):
    """A crash only adds files no version references; nothing a version reads is rewritten."""
    store = committed_store(tmp_path / "store", 2)
    before = tree_digest(store.root)
    child = spawn("commit", store.root, "v3", 2, "before_manifest", tmp_path / "m")
    wait_for(tmp_path / "m", child)
    kill9(child, "SIGKILL during a commit (before_manifest, digest check)")
    after = tree_digest(store.root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k.startswith("manifests/") and k not in before]
    TALLY["faults survived"] += 1


def test_json_of_child_commit(tmp_path: Path):
    """The commit child itself works (guards the harness the crash tests rely on)."""
    out = finish(spawn("commit", tmp_path / "s", "v1", "none", "none", tmp_path / "m"))
    assert json.loads(out) == {"version": 1}
