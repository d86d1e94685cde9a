"""No silent deletes: nothing leanset does removes or rewrites source data, and removing old
versions is an explicit command with a dry run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from leanset.pipelines.store import Store
from leanset.pipelines.store.gc import collect_garbage
from tests.helpers import pixel_flow, tree_digest, write_png
from tests.reliability.conftest import TALLY


def test_runs_exports_and_gc_never_touch_the_source(
    prefect_harness, imagefolder: Path, tmp_path: Path
):
    from leanset.pipelines.flows import clean_flow
    from leanset.pipelines.store.export import export_version

    config = pixel_flow(tmp_path, "keep")
    expected = tree_digest(imagefolder)  # bytes, mode and mtime of every source file

    def run() -> dict:
        out = clean_flow(config_path=str(config), flow_name="keep")
        assert tree_digest(imagefolder) == expected  # after every step, the source is as it was
        return out

    def add(name: str, seed: int) -> None:
        path = imagefolder / "train/a" / name
        write_png(path, np.random.default_rng(seed).integers(0, 256, (16, 16)))
        expected.update({k: v for k, v in tree_digest(imagefolder).items() if k.endswith(name)})

    assert run()["version"] == 1
    add("new1.png", 11)
    assert run()["version"] == 2
    assert run()["unchanged"]
    store = Store(tmp_path / "store")
    export_version(store, 1, "hf", tmp_path / "out-hf")
    export_version(store, 2, "parquet", tmp_path / "out.parquet", decisions=True)
    assert tree_digest(imagefolder) == expected

    before = tree_digest(store.root)
    plan = collect_garbage(store, keep_last=1, dry_run=True)
    assert tree_digest(store.root) == before and plan.remove == [1]
    assert not [p for p in plan.paths() if str(imagefolder) in p]
    collect_garbage(store, keep_last=1)
    assert tree_digest(imagefolder) == expected
    TALLY["gc runs checked"] += 1

    add("new2.png", 12)
    third = run()  # builds on the kept version: its tables and pair index are all there
    assert third["version"] == 3 and third["parent"] == 2
    assert third["embed"]["computed"] == 1 and third["embed"]["cached"] > 0
    decisions = store.read("decisions")
    assert decisions.height == len(list(imagefolder.rglob("*.png")))
    kept_paths = store.read("dataset")["image_path"].to_list()
    # versions point at untouched sources (paths relative to the dataset root)
    assert all((imagefolder / p).is_file() for p in kept_paths)
    assert set(decisions.filter(pl.col("kept"))["sample_id"]) == set(
        store.read("dataset")["sample_id"]
    )
