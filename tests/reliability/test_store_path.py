"""The store path is checked before anything runs: never `/`, a non-empty folder that is not a
store, the source itself, a folder inside it (a class folder) or above it, or a folder whose files
the source's `files` patterns would read back as samples."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from leanset.pipelines.cli import main
from leanset.pipelines.config import SourceSettings
from leanset.pipelines.store import StoreError
from leanset.pipelines.store.location import check_store_location
from tests.helpers import make_imagefolder, pixel_flow, tree_digest, write_flows
from tests.reliability.conftest import TALLY

IMAGE_CASES = {
    "the filesystem root": ("/", "the filesystem root cannot be a store"),
    "/etc": ("/etc", "is a folder holding other files"),
    "the source itself": ("images", "is the imagefolder source"),
    "a class folder": ("images/train/a", "is inside the imagefolder source"),
    "a split folder": ("images/test", "is inside the imagefolder source"),
    "above the source": (".", "holds the imagefolder source"),
    "a folder of notes": ("notes", "is a folder holding other files (a.txt)"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_store_path_for_an_imagefolder_is_refused(tmp_path: Path, case: str, capsys):
    images = make_imagefolder(tmp_path / "images", n=6)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    store, expected = IMAGE_CASES[case]
    config = pixel_flow(tmp_path, "bad", store=store)
    before = tree_digest(tmp_path)
    TALLY[f"hostile inputs tried: store path ({case})"] += 1
    assert main(["run", str(config), "--flow", "bad"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert expected in out and "give `store:` a new folder" in out
    assert tree_digest(tmp_path) == before  # nothing written anywhere
    assert not (images / "manifests").exists()
    TALLY["hostile inputs refused"] += 1


def _files_source(tmp_path: Path, pattern: str) -> SourceSettings:
    (tmp_path / "data" / "part").mkdir(parents=True)
    pl.DataFrame({"text": ["a", "b"]}).write_parquet(tmp_path / "data" / "part" / "x.parquet")
    return SourceSettings(type="files", format="parquet", data_files=[str(tmp_path / pattern)])


@pytest.mark.parametrize(
    ("pattern", "store"),
    [
        ("data/**/*.parquet", "data/store"),
        ("data/**", "data/clean"),
        ("data/*/*.parquet", "data/store/.."),
        ("**/*.parquet", "elsewhere/store"),
    ],
    ids=["recursive glob", "everything under data", "one level", "any parquet anywhere"],
)
def test_store_matched_by_a_files_pattern_is_refused(tmp_path: Path, pattern: str, store: str):
    source = _files_source(tmp_path, pattern)
    TALLY["hostile inputs tried: store path matched by source.data_files"] += 1
    with pytest.raises(StoreError, match="matches files the store writes|holds source file"):
        check_store_location(tmp_path / store, source)
    TALLY["hostile inputs refused"] += 1


def test_store_beside_the_source_is_accepted(tmp_path: Path):
    check_store_location(tmp_path / "store", _files_source(tmp_path, "data/*/*.parquet"))
    check_store_location(
        tmp_path / "data" / "store", _files_source(tmp_path / "b", "data/*.parquet")
    )
    (tmp_path / "empty").mkdir()
    check_store_location(
        tmp_path / "empty", SourceSettings(type="imagefolder", path=str(tmp_path / "i"))
    )


def test_an_existing_store_is_accepted(prefect_harness, tmp_path: Path):
    make_imagefolder(tmp_path / "images", n=6)
    config = write_flows(
        tmp_path,
        ok={
            "source": {"type": "imagefolder", "path": "images"},
            "embedder": {"type": "pixels"},
            "store": "store",
        },
    )
    from leanset.pipelines.flows import clean_flow

    clean_flow(config_path=str(config), flow_name="ok")
    check_store_location(
        tmp_path / "store", SourceSettings(type="imagefolder", path=str(tmp_path / "images"))
    )
