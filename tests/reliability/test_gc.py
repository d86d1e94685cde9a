"""Removing old versions: explicit, with a dry run, keeping what kept versions need."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.cli import parser as leanset_parser
from leanset.pipelines.embed import EmbeddingCache
from leanset.pipelines.store import Store, StoreError
from leanset.pipelines.store.gc import GcError, collect_garbage, plan_gc
from tests.helpers import tree_digest
from tests.reliability._child import payload
from tests.reliability.conftest import TALLY, kill9, spawn, wait_for

FINGERPRINT = {1: "fp-a", 2: "fp-a", 3: "fp-b", 4: "fp-c"}
HOUR = 3600


def old(path: Path, hours: float = 2) -> Path:
    t = time.time() - hours * HOUR
    os.utime(path, (t, t))
    return path


def pairs(tag: str) -> pl.DataFrame:
    return pl.DataFrame({"hash_a": [f"{tag}a"], "hash_b": [f"{tag}b"]}).with_columns(
        pl.lit(0.99, dtype=pl.Float32).alias("sim")
    )


def build_store(root: Path) -> Store:
    """Four versions with pair indexes and cache folders, plus leftovers and foreign files."""
    store = Store(root)
    for v in range(1, 5):
        dataset, decisions = payload(f"v{v}", 50)
        manifest = {"tag": f"v{v}", "counts": {}, "embed": {"fingerprint": FINGERPRINT[v]}}
        store.commit(dataset, decisions, manifest, v - 1 or None, pairs=pairs(f"v{v}"))
        _touch_old(store.layout.report(v))
    cache = root / "cache" / "embeddings"
    for fp in ("fp-a", "fp-b", "fp-c", "fp-running"):  # fp-running: no manifest names it yet
        EmbeddingCache(cache, fp).put([f"{fp}-h"], np.ones((1, 4), dtype=np.float32))
    corrupt = EmbeddingCache(cache, "fp-c").put(["bad"], np.ones((1, 4), dtype=np.float32))
    corrupt.write_bytes(corrupt.read_bytes()[:20])
    _touch_old(root / "manifests" / ".v000005.json.dead1.tmp")
    (root / "manifests" / ".v000005.json.fresh.tmp").write_text("a writer is busy")
    (root / "dataset" / "my-notes.txt").write_text("not written by Delta")
    (root / "dataset" / "user.parquet").write_bytes(b"PAR1 not Delta's")
    _touch_old(
        root / "dataset" / "part-00000-11111111-2222-3333-4444-555555555555-c000.snappy.parquet"
    )
    (
        root / "dataset" / "part-00000-66666666-2222-3333-4444-555555555555-c000.snappy.parquet"
    ).write_bytes(b"x")
    _touch_old(root / "index" / "pairs-v000009-deadbeef.parquet")
    (root / "index" / "README").write_text("someone's file")
    (root / "reports" / "notes.html").write_text("someone's page")
    (root / "labeling").mkdir()
    (root / "labeling" / "queue.parquet").write_bytes(b"labels")
    return store


def _touch_old(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"leftover")
    return old(path)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    root = tmp_path / "store"
    s = build_store(root)
    return s


def snapshot(store: Store, versions) -> dict[int, tuple[pl.DataFrame, pl.DataFrame]]:
    return {v: (store.read("dataset", v), store.read("decisions", v)) for v in versions}


def test_dry_run_lists_what_only_removed_versions_use_and_changes_nothing(store: Store):
    before = tree_digest(store.root)
    plan = collect_garbage(store, keep_last=2, dry_run=True)
    assert tree_digest(store.root) == before and not plan.applied
    assert (plan.keep, plan.remove) == ([3, 4], [1, 2])
    root = store.root.resolve()
    assert plan.manifests == [str(root / "manifests" / f"v00000{v}.json") for v in (1, 2)]
    names = {Path(p).name for p in plan.paths()}
    assert "my-notes.txt" not in names and "user.parquet" not in names and "README" not in names
    assert not [p for p in plan.paths() if "/labeling/" in p or "_delta_log" in p]
    assert plan.cache_dirs == [str(root / "cache" / "embeddings" / "fp-a")]
    assert [Path(p).parent.name for p in plan.corrupt_shards] == ["fp-c"]
    assert [Path(p).name for p in plan.temp_files] == [".v000005.json.dead1.tmp"]
    assert plan.reports == [str(root / "reports" / f"v00000{v}.html") for v in (1, 2)]
    index = sorted(Path(p).name for p in plan.index_files)
    assert index[-1] == "pairs-v000009-deadbeef.parquet" and len(index) == 3
    assert all(Path(p).name.startswith(("pairs-v000001", "pairs-v000002")) for p in index[:2])
    orphans = [p for p in plan.table_files if "11111111" in p]
    assert len(orphans) == 1 and not [p for p in plan.table_files if "66666666" in p]
    assert plan.bytes > 0


def test_gc_keeps_every_file_kept_versions_read_and_the_store_works_after(store: Store):
    kept_before = snapshot(store, [3, 4])
    digest = tree_digest(store.root)
    plan = collect_garbage(store, keep_last=2)
    TALLY["gc runs checked"] += 1
    after = tree_digest(store.root)
    removed = {str(store.root.resolve() / k) for k in set(digest) - set(after)}
    listed = {p for p in plan.paths() if Path(p).is_file() or not Path(p).exists()}
    assert removed == {str(Path(p).resolve()) for p in _files_under(plan.paths(), digest, store)}
    assert all(after[k] == digest[k] for k in after)  # nothing rewritten
    assert listed  # something was removed

    reopened = Store(store.root)
    assert [m["version"] for m in reopened.manifests()] == [3, 4]
    for v, (dataset, decisions) in kept_before.items():
        assert reopened.read("dataset", v).equals(dataset)
        assert reopened.read("decisions", v).equals(decisions)
        assert reopened.read_pairs(reopened.manifest(v)).equals(pairs(f"v{v}"))
    with pytest.raises(StoreError, match="has no version 1"):
        reopened.read("dataset", 1)
    assert (store.root / "cache" / "embeddings" / "fp-running").is_dir()
    assert (store.root / "labeling" / "queue.parquet").read_bytes() == b"labels"
    assert sorted(p.name for p in (store.root / "reports").iterdir()) == [
        "notes.html",
        "v000003.html",
        "v000004.html",
    ]
    d, dec = payload("v5", 50)
    assert reopened.commit(d, dec, {"counts": {}}, 4)["version"] == 5  # numbering goes on
    again = plan_gc(reopened, keep_last=3)
    assert again.remove == [] and again.table_files == [] and again.index_files == []


def _files_under(paths: list[str], digest: dict, store: Store) -> list[Path]:
    """The files (of the digest) that the plan's paths cover (folders cover their files)."""
    root = store.root.resolve()
    out = []
    for rel in digest:
        f = (root / rel).resolve()
        if any(f == Path(p) or Path(p) in f.parents for p in paths):
            out.append(f)
    return out


def test_named_versions_are_kept_and_the_newest_always(store: Store):
    kept = snapshot(store, [1])
    plan = collect_garbage(store, keep=[1])
    assert (plan.keep, plan.remove) == ([1, 4], [2, 3])
    assert Store(store.root).read("dataset", 1).equals(kept[1][0])
    assert Store(store.root).read("decisions", 4).equals(payload("v4", 50)[1])
    assert (store.root / "cache" / "embeddings" / "fp-a").is_dir()  # v1 still uses it
    assert not (store.root / "cache" / "embeddings" / "fp-b").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_last": 0}, "keep_last must be at least 1"),
        ({"keep": [7, 2]}, r"has no version\(s\) \[7\] to keep; versions: \[1, 2, 3, 4\]"),
        ({}, "give either keep_last or keep"),
        ({"keep_last": 1, "keep": [1]}, "give either keep_last or keep"),
        ({"keep": []}, "name at least one version"),
    ],
)
def test_bad_requests_are_refused_and_remove_nothing(store: Store, kwargs, message):
    before = tree_digest(store.root)
    with pytest.raises(GcError, match=message):
        collect_garbage(store, **kwargs)
    assert tree_digest(store.root) == before


def test_empty_store_is_refused(tmp_path: Path):
    with pytest.raises(GcError, match="has no versions"):
        collect_garbage(tmp_path / "nothing", keep_last=1)


@pytest.mark.slow  # kills a child process
def test_killed_gc_leaves_a_valid_store_and_a_rerun_finishes(store: Store, tmp_path: Path):
    kept = snapshot(store, [3, 4])
    child = spawn("gc", store.root, 2, tmp_path / "m")
    wait_for(tmp_path / "m", child)
    kill9(child, "SIGKILL during gc (manifests removed, files not yet)")
    reopened = Store(store.root)
    assert [m["version"] for m in reopened.manifests()] == [3, 4]
    for v, (dataset, decisions) in kept.items():
        assert reopened.read("dataset", v).equals(dataset)
        assert reopened.read("decisions", v).equals(decisions)
    rest = collect_garbage(reopened, keep_last=2, grace_seconds=0)
    assert rest.remove == [] and rest.table_files  # the files the killed run had not removed
    assert plan_gc(reopened, keep_last=2, grace_seconds=0).paths() == []
    TALLY["faults survived"] += 1


def test_paths_outside_a_table_are_never_candidates(tmp_path: Path):
    from leanset.pipelines.store.gc import _inside

    root = tmp_path / "store" / "dataset"
    root.mkdir(parents=True)
    assert _inside(root, "../../source/data.parquet") is None
    assert _inside(root, "/etc/passwd") is None
    assert _inside(root, "_delta_log/00000000000000000000.json") is None
    assert _inside(root, "part-0.parquet") == (root / "part-0.parquet").resolve()


def test_command_parses_and_prints_the_plan(store: Store, capsys):
    parser = leanset_parser()
    args = parser.parse_args(["gc", str(store.root), "--keep-last", "1", "--dry-run", "--json"])
    before = tree_digest(store.root)
    assert args.func(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["keep"] == [4] and plan["remove"] == [1, 2, 3] and not plan["applied"]
    assert tree_digest(store.root) == before
    args = parser.parse_args(["gc", str(store.root), "--keep", "2"])
    assert args.func(args) == 0
    assert "removed: version(s) 1, 3\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["gc", str(store.root), "--keep-last", "1", "--keep", "2"])
    with pytest.raises(SystemExit):
        parser.parse_args(["gc", str(store.root)])


def test_the_geometric_checks_feature_shards_are_not_called_corrupt(tmp_path: Path):
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.core import run_core
    from leanset.pipelines.store.verify import verify_store
    from tests.helpers import make_imagefolder, pixel_flow_body, write_flows

    make_imagefolder(tmp_path / "images")
    run_core(load_flow(write_flows(tmp_path, f=pixel_flow_body()), "f"))
    store = Store(tmp_path / "store")
    features = sorted((tmp_path / "store/cache/embeddings").glob("orb-*/shard-*.npz"))
    assert features  # the geometric check cached local features
    assert plan_gc(store, keep_last=1).corrupt_shards == []  # gc would have deleted them
    assert not [f for f in verify_store(tmp_path / "store").findings if "corrupt" in f.problem]
    features[0].write_bytes(features[0].read_bytes()[:-40])  # a damaged one still is
    assert plan_gc(store, keep_last=1).corrupt_shards == [str(features[0].resolve())]
