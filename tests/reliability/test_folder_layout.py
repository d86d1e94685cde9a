"""An image folder's labels come from leanset's own layout rule (split/class/file): one odd file
never costs the other files their labels, a flat `unlabeled/` pool is a pool, files that do not fit
are named, links out of the dataset folder are never read, and label stages that cannot run say
so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.cli import main
from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.sources import load_source
from leanset.pipelines.store import Store
from tests.helpers import make_imagefolder, pixel_flow, write_png
from tests.reliability.conftest import TALLY


def _load(root: Path) -> pl.DataFrame:
    return load_source(SourceSettings(type="imagefolder", path=str(root)), ColumnSettings()).table


def _label_of(table: pl.DataFrame) -> dict[str, str | None]:
    return dict(zip(table["source"], table["label"], strict=True))


def _noise(path: Path, seed: int) -> None:
    write_png(path, np.random.default_rng(seed).integers(0, 256, size=(16, 16)))


ODD_FILES = {
    "a file one level deeper": ("train/a/sub/deep.png", "a", "deeper than split/class/file"),
    "a stray file in a split folder": ("train/stray.png", None, "not in a class folder"),
    "a file at the top": ("top.png", None, "not in a class folder"),
    "a backslash in a name": ("train/b/we\\ird.png", "b", None),
    "brackets and a star in a name": ("train/a/[x]*.png", "a", None),
}


@pytest.mark.parametrize("case", sorted(ODD_FILES))
def test_one_odd_file_never_costs_the_others_their_labels(
    tmp_path: Path, case: str, leanset_warnings
):
    root = make_imagefolder(tmp_path / "images", n=12)
    expected = _label_of(_load(root))
    assert expected["train/a/img000.png"] == "a" and expected["test/a/only_test.png"] == "a"
    rel, label, warning = ODD_FILES[case]
    _noise(root / rel, 99)
    TALLY[f"hostile inputs tried: imagefolder with {case}"] += 1
    got = _label_of(_load(root))
    assert {k: got[k] for k in expected} == expected  # every other file keeps its label
    assert got[rel] == label
    if warning:
        assert rel in leanset_warnings.text and warning in leanset_warnings.text
    TALLY["hostile inputs refused"] += 1


def test_a_flat_unlabeled_pool_is_a_pool_and_the_splits_keep_their_labels(tmp_path: Path):
    root = make_imagefolder(tmp_path / "images", n=12)
    expected = _label_of(_load(root))
    for k in range(5):
        _noise(root / f"unlabeled/p{k}.png", k)
    TALLY["hostile inputs tried: imagefolder with a flat unlabeled/ pool"] += 1
    table = _load(root)
    got = _label_of(table)
    assert {k: got[k] for k in expected} == expected
    pool = table.filter(pl.col("split") == "unlabeled")
    assert pool.height == 5 and pool["label"].null_count() == 5
    TALLY["hostile inputs refused"] += 1


def test_a_flat_pool_is_labeled_by_the_flow(prefect_harness, tmp_path: Path):
    root = make_imagefolder(tmp_path / "images", n=24)
    for k in range(8):
        _noise(root / f"unlabeled/p{k}.png", 100 + k)
    config = pixel_flow(
        tmp_path,
        "pool",
        label_noise={"policy": "flag", "n_folds": 2},
        active_learning={"budget": 3, "diversity": "none"},
    )
    summary = clean_flow(config_path=str(config), flow_name="pool")
    assert "probe_accuracy" in summary["labeling"]  # label noise ran on the labeled splits
    assert summary["labeling"]["selection"]["selected"] == 3
    dec = Store(tmp_path / "store").read("decisions")
    picked = dec.filter(pl.col("queue_rank").is_not_null())
    assert set(picked["split"]) == {"unlabeled"}
    assert dec.filter(pl.col("split") == "train")["label"].null_count() == 0


def test_label_stages_that_cannot_run_say_so(prefect_harness, tmp_path: Path, leanset_warnings):
    for k in range(8):  # no class folders anywhere: nothing is labeled
        _noise(tmp_path / "images" / f"unlabeled/p{k}.png", k)
    config = pixel_flow(
        tmp_path,
        "nolabels",
        label_noise={"policy": "flag", "n_folds": 2},
        active_learning={"budget": 3},
    )
    TALLY["hostile inputs tried: label stages over a dataset with no labels"] += 1
    clean_flow(config_path=str(config), flow_name="nolabels")
    text = leanset_warnings.text
    assert "label noise and the labeling selection could not run" in text
    assert "0 readable sample(s) have a label" in text and "split/class/file" in text
    TALLY["hostile inputs refused"] += 1


def test_links_out_of_the_dataset_folder_are_never_read(
    prefect_harness, tmp_path: Path, leanset_warnings
):
    root = make_imagefolder(tmp_path / "images", n=12)
    secret = tmp_path / "outside" / "secret.png"
    _noise(secret, 7)
    (tmp_path / "outside" / "more").mkdir()
    _noise(tmp_path / "outside" / "more" / "x.png", 8)
    (root / "train/a/link.png").symlink_to(secret)
    (root / "train/b/inside-link.png").symlink_to(root / "train/b/img001.png")
    (root / "train/b/linked-folder").symlink_to(tmp_path / "outside" / "more")
    for k in range(6):  # a pool, so the queue has tasks to export
        _noise(root / f"unlabeled/p{k}.png", 200 + k)
    TALLY["hostile inputs tried: symlink out of the image folder"] += 2
    config = pixel_flow(
        tmp_path,
        "links",
        label_noise={"policy": "flag", "n_folds": 2},
        active_learning={"budget": 5},
    )
    clean_flow(config_path=str(config), flow_name="links")
    store = Store(tmp_path / "store")
    dec = store.read("decisions")
    row = dec.filter(pl.col("source") == "train/a/link.png").row(0, named=True)
    assert row["drop_reason"] == "unreadable" and "outside the dataset folder" in row["error"]
    assert not dec.filter(pl.col("source").str.contains("linked-folder")).height
    assert "linked-folder" in leanset_warnings.text
    inside = dec.filter(pl.col("source") == "train/b/inside-link.png").row(0, named=True)
    assert inside["error"] is None  # a link inside the folder reads like its target

    tasks = tmp_path / "tasks.json"
    assert (
        main(["queue", "export", str(store.root), "--format", "label-studio", "--out", str(tasks)])
        == 0
    )
    assert "secret" not in tasks.read_text() and json.loads(tasks.read_text())
    out = tmp_path / "hf"
    assert main(["export", str(store.root), "--format", "hf", "--out", str(out)]) == 0
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert secret.read_bytes() not in blob and b"secret.png" not in blob
    TALLY["hostile inputs refused"] += 2


@pytest.mark.parametrize("case", ["self", "pair", "folder"])
def test_symlink_loops_are_error_rows_not_a_traceback(
    prefect_harness, tmp_path: Path, case: str, leanset_warnings
):
    """`self.png -> self.png` raised `RuntimeError: Symlink loop` from the image loader."""
    root = make_imagefolder(tmp_path / "images", n=12)
    readable = [p for p in root.rglob("*.png") if p.name != "broken.png"]
    looped = {"self": ["train/a/self.png"], "pair": ["train/a/l1.png", "train/b/l2.png"]}
    if case == "self":
        (root / "train/a/self.png").symlink_to("self.png")
    elif case == "pair":
        (root / "train/a/l1.png").symlink_to(root / "train/b/l2.png")
        (root / "train/b/l2.png").symlink_to(root / "train/a/l1.png")
    else:  # a folder that links to its own parent: not followed
        (root / "train/a/up").symlink_to(root / "train")
    TALLY[f"hostile inputs tried: symbolic link loop ({case})"] += 1
    clean_flow(config_path=str(pixel_flow(tmp_path, "loops")), flow_name="loops")
    dec = Store(tmp_path / "store").read("decisions")
    for source in looped.get(case, []):
        row = dec.filter(pl.col("source") == source).row(0, named=True)
        assert row["drop_reason"] == "unreadable" and "symbolic link loop" in row["error"]
    assert dec.filter(pl.col("error").is_null()).height == len(readable)  # the others all read
    TALLY["hostile inputs refused"] += 1
