"""Exports as their users load them: Hugging Face `DatasetDict`s, image folders, Parquet with
embeddings and probabilities; every kept image readable, and no export ends in a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.cli import main
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store, StoreError
from leanset.pipelines.store.export import ExportOptions, export_version
from tests.helpers import make_imagefolder, pixel_flow, write_flows


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def disk_images(tmp_path: Path) -> dict[str, bytes]:
    """A `save_to_disk` DatasetDict whose images are bytes with bare file names (no files)."""
    import datasets

    rng = np.random.default_rng(3)
    blobs = {f"img{i}.png": _png(rng.integers(0, 256, (16, 16))) for i in range(12)}
    images = [{"bytes": b, "path": name} for name, b in blobs.items()]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["zebra", "ant"])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 2 for i in range(12)]}, features=features
    )
    split = {"train": ds.select(range(9)), "test": ds.select(range(9, 12))}
    datasets.DatasetDict(split).save_to_disk(str(tmp_path / "disk"))
    return blobs


DISK = {
    "source": {"type": "disk", "path": "disk"},
    "embedder": {"type": "pixels", "size": 16},
    "store": "store",
}


def test_a_disk_source_with_image_bytes_keeps_them_and_exports(
    prefect_harness, tmp_path, disk_images, capsys
):
    """The cleaned version held only bare file names; `export --format hf` died with a
    FileNotFoundError traceback."""
    import datasets

    clean_flow(config_path=str(write_flows(tmp_path, d=DISK)), flow_name="d")
    store = Store(tmp_path / "store")
    table = store.read("dataset")
    assert table.height == 12 and table["image_bytes"].null_count() == 0
    assert sorted(table["image_path"]) == sorted(disk_images)
    rc = main(["export", str(store.root), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert rc == 0, capsys.readouterr().out
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert sorted(dd) == ["test", "train"] and (len(dd["train"]), len(dd["test"])) == (9, 3)
    assert dd["train"].features["label"].names == ["zebra", "ant"]  # the source's order
    raw = dd["train"].cast_column("image", datasets.Image(decode=False))
    for row in raw:
        assert row["image"]["bytes"] == disk_images[row["image"]["path"]]
    assert dd["test"][0]["image"].size == (16, 16)


@pytest.fixture
def folder_store(prefect_harness, tmp_path) -> Store:
    make_imagefolder(tmp_path / "images")
    clean_flow(config_path=str(pixel_flow(tmp_path, "f")), flow_name="f")
    return Store(tmp_path / "store")


def test_the_dataset_table_holds_paths_relative_to_the_dataset_root(folder_store, tmp_path):
    """Before: absolute paths of the machine that ran the flow."""
    table = folder_store.read("dataset")
    paths = table["image_path"].to_list()
    assert paths and all(not Path(p).is_absolute() for p in paths)
    assert paths == table["source"].to_list()
    assert all((tmp_path / "images" / p).is_file() for p in paths)
    assert table["image_bytes"].null_count() == table.height  # the files are the content


def test_hf_export_by_split_with_relative_absolute_or_embedded_images(folder_store, tmp_path):
    import datasets

    root = (tmp_path / "images").resolve()
    rel = export_version(folder_store, None, "hf", tmp_path / "rel")
    dd = datasets.load_from_disk(str(rel))
    assert sorted(dd) == ["test", "train"]
    assert dd["train"].features["label"].names == ["a", "b"]
    raw = dd["train"].cast_column("image", datasets.Image(decode=False))
    assert all(not Path(r["image"]["path"]).is_absolute() for r in raw)
    assert str(root) in dd["train"].info.description

    absolute = ExportOptions(image_paths="absolute")
    dd = datasets.load_from_disk(
        str(export_version(folder_store, None, "hf", tmp_path / "abs", options=absolute))
    )
    assert dd["train"][0]["image"].size == (16, 16)  # decodes from any folder

    embedded = ExportOptions(embed_images=True)
    out = export_version(folder_store, None, "hf", tmp_path / "emb", options=embedded)
    raw = datasets.load_from_disk(str(out))["test"].cast_column(
        "image", datasets.Image(decode=False)
    )
    table = folder_store.read("dataset").filter(pl.col("split") == "test")
    expected = {Path(p).name: (root / p).read_bytes() for p in table["image_path"]}
    assert {r["image"]["path"]: r["image"]["bytes"] for r in raw} == expected


def test_imagefolder_export_lays_out_split_and_label(folder_store, tmp_path):
    out = export_version(folder_store, None, "imagefolder", tmp_path / "folder")
    table = folder_store.read("dataset")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert len(files) == table.height
    for row in table.iter_rows(named=True):
        target = out / row["split"] / row["label"] / Path(row["image_path"]).name
        assert target.read_bytes() == (tmp_path / "images" / row["image_path"]).read_bytes()
    meta = pl.read_parquet(out / "leanset.parquet")
    assert set(meta["file_name"]) == set(files)
    assert json.loads((out / "classes.json").read_text()) == ["a", "b"]
    with pytest.raises(StoreError, match="not empty"):
        export_version(folder_store, None, "imagefolder", out)
    linked = export_version(
        folder_store,
        None,
        "imagefolder",
        tmp_path / "linked",
        options=ExportOptions(link="symlink"),
    )
    assert all(p.is_symlink() for p in linked.rglob("*.png"))


def test_a_missing_image_is_named_instead_of_a_traceback(folder_store, tmp_path, capsys):
    row = folder_store.read("dataset").row(0, named=True)
    (tmp_path / "images" / row["image_path"]).unlink()
    out = str(tmp_path / "x")
    args = ["export", str(folder_store.root), "--format", "hf", "--embed-images", "--out", out]
    assert main(args) == 2
    printed = capsys.readouterr().out
    assert row["sample_id"] in printed and "missing" in printed


LABELED = {
    "source": {"type": "imagefolder", "path": "images"},
    "embedder": {"type": "pixels", "size": 16},
    "label_noise": {"policy": "flag", "n_folds": 3},
    "store": "store",
}


def test_with_embeddings_pred_probs_and_decisions(prefect_harness, tmp_path):
    from leanset.pipelines.embed import EmbeddingCache

    make_imagefolder(tmp_path / "images", n=36)
    clean_flow(config_path=str(write_flows(tmp_path, f=LABELED)), flow_name="f")
    store = Store(tmp_path / "store")
    opts = ExportOptions(extras=("embeddings", "pred_probs", "decisions"))
    frame = pl.read_parquet(
        export_version(store, None, "parquet", tmp_path / "x.parquet", options=opts)
    )
    table = store.read("dataset")
    assert frame["sample_id"].to_list() == table["sample_id"].to_list()
    assert {"dup_group", "label_issue", "label_quality", "suggested_label"} <= set(frame.columns)
    probs = np.array(frame["pred_probs"].to_list())
    assert probs.shape == (table.height, 2) and np.allclose(probs.sum(axis=1), 1.0)
    fingerprint = store.manifest()["embed"]["fingerprint"]
    _, cached = EmbeddingCache(store.layout.embeddings, fingerprint).get(frame["content_hash"])
    assert np.allclose(np.array(frame["embedding"].to_list()), cached)

    folder = export_version(store, None, "imagefolder", tmp_path / "folder", options=opts)
    assert np.load(folder / "embedding.npy").shape == (table.height, cached.shape[1])
    assert np.allclose(np.load(folder / "pred_probs.npy"), probs)

    import shutil

    shutil.rmtree(store.layout.embeddings)  # the cache is safe to delete: the export says so
    with pytest.raises(StoreError, match="no longer holds the vectors"):
        export_version(store, None, "parquet", tmp_path / "y.parquet", options=opts)


def test_with_pred_probs_without_label_noise_says_what_to_do(folder_store, tmp_path):
    with pytest.raises(StoreError, match="configure label_noise"):
        export_version(
            folder_store,
            None,
            "parquet",
            tmp_path / "p.parquet",
            options=ExportOptions(extras=("pred_probs",)),
        )
    with pytest.raises(StoreError, match="unknown --with"):
        ExportOptions(extras=("vectors",))
