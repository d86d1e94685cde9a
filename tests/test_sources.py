"""Loading sources: ids, labels, splits, and clear errors for bad input."""

from pathlib import Path

import polars as pl
import pytest

from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.sources import SourceError, load_source


def parquet(tmp_path: Path, rows: dict) -> SourceSettings:
    path = tmp_path / "d.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return SourceSettings(type="files", format="parquet", data_files=[str(path)])


def test_imagefolder_rows(tiny_images: Path):
    data = load_source(SourceSettings(type="imagefolder", path=str(tiny_images)), ColumnSettings())
    t = data.table
    assert data.modality == "image" and t.height == 10
    assert sorted(t["split"].unique()) == ["test", "train"]
    row = t.filter(pl.col("source") == "train/a/copy0.png").row(0, named=True)
    orig = t.filter(pl.col("source") == "train/a/base0.png").row(0, named=True)
    assert row["label"] == "a" and row["content_hash"] == orig["content_hash"]
    assert row["sample_id"] != orig["sample_id"]  # same content, another file: another sample
    assert t["sample_id"].n_unique() == 10
    assert t["position"].to_list() == list(range(10))


def test_text_ids_labels_and_unlabeled(tmp_path: Path):
    src = parquet(
        tmp_path, {"uid": ["a", "b", "c"], "text": ["x", "y", "x"], "label": [1, None, 2]}
    )
    t = load_source(src, ColumnSettings(id="uid")).table
    assert t["sample_id"].to_list() == ["a", "b", "c"]
    assert t["label"].to_list() == ["1", None, "2"]
    assert t["content_hash"][0] == t["content_hash"][2]


def test_missing_label_column_is_named(tmp_path: Path):
    src = parquet(tmp_path, {"text": ["x"], "label": [1]})
    with pytest.raises(
        SourceError,
        match=r"columns.label: column 'lbl' does not exist; columns here: \['text', 'label'\]",
    ):
        load_source(src, ColumnSettings(label="lbl"))


def test_duplicate_ids_are_refused(tmp_path: Path):
    src = parquet(tmp_path, {"uid": ["a", "a", "b"], "text": ["x", "y", "z"]})
    with pytest.raises(SourceError, match="id 'a' appears 2 times"):
        load_source(src, ColumnSettings(id="uid"))


def test_empty_dataset(tmp_path: Path):
    src = parquet(tmp_path, {"text": pl.Series([], dtype=pl.Utf8)})
    with pytest.raises(SourceError, match="the dataset is empty|corresponds to no data"):
        load_source(src, ColumnSettings())


def test_missing_files(tmp_path: Path):
    with pytest.raises(SourceError, match="not a folder of images"):
        load_source(
            SourceSettings(type="imagefolder", path=str(tmp_path / "nope")), ColumnSettings()
        )
    with pytest.raises(SourceError, match="does not exist"):
        load_source(
            SourceSettings(type="files", format="csv", data_files=[str(tmp_path / "x.csv")]),
            ColumnSettings(),
        )


def test_bad_text_and_vectors_are_unreadable_rows_not_crashes(tmp_path: Path):
    src = parquet(tmp_path, {"text": [b"ok", b"\xff\xfe bad"]})
    t = load_source(src, ColumnSettings()).table
    assert t["error"][0] is None and "not valid UTF-8" in t["error"][1]
    src = parquet(tmp_path, {"text": ["a", "b"], "emb": [[1.0, 0.0], [float("nan"), 1.0]]})
    t = load_source(src, ColumnSettings(embedding="emb")).table
    assert t["error"].to_list()[0] is None and "NaN" in t["error"][1]


def test_split_column(tmp_path: Path):
    src = parquet(tmp_path, {"text": ["a", "b"], "part": ["train", "test"]})
    t = load_source(src, ColumnSettings(split="part")).table
    assert t["split"].to_list() == ["train", "test"]


def test_save_to_disk_source(tmp_path: Path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]}).save_to_disk(
        str(tmp_path / "ds")
    )
    data = load_source(SourceSettings(type="disk", path=str(tmp_path / "ds")), ColumnSettings())
    assert data.modality == "text" and data.table["label"].to_list() == ["x", "y"]
    assert data.read([1]) == ["b"]


def test_file_hash_cache_skips_reading_unchanged_files(
    tiny_images: Path, tmp_path: Path, monkeypatch
):
    import os

    from leanset.pipelines.sources import FileHashCache

    src = SourceSettings(type="imagefolder", path=str(tiny_images))
    cache_path = tmp_path / "hashes.parquet"
    first = FileHashCache(cache_path)
    fresh = load_source(src, ColumnSettings(), first).table
    first.save()

    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    again = load_source(src, ColumnSettings(), FileHashCache(cache_path)).table
    images = [r for r in reads if not r.name.startswith(cache_path.name)]  # not the cache itself
    assert images == []  # every file was unchanged: nothing was read again
    assert again.select("sample_id", "content_hash", "size_bytes").equals(
        fresh.select("sample_id", "content_hash", "size_bytes")
    )

    target = tiny_images / "train/b/base2.png"
    target.write_bytes((tiny_images / "train/b/base3.png").read_bytes())
    os.utime(target, ns=(1, 1))  # a changed file is hashed again, whatever its mtime
    changed = load_source(src, ColumnSettings(), FileHashCache(cache_path)).table
    row = changed.filter(pl.col("source") == "train/b/base2.png")
    other = changed.filter(pl.col("source") == "train/b/base3.png")
    assert row["content_hash"].item() == other["content_hash"].item()


def test_two_runs_over_one_file_hash_cache_keep_both_runs_hashes(tmp_path: Path, tiny_images):
    """Two processes load one store's file-hash cache, each hashes its own files and saves: the
    second save keeps what the first wrote (it used to replace the file with its own view, so
    the next run read the first run's files again)."""
    import multiprocessing
    import os

    from leanset.pipelines.sources import FileHashCache

    cache_path = tmp_path / "cache" / "file-hashes.parquet"
    files = sorted(tiny_images.rglob("*.png"))
    half = len(files) // 2
    first, second = FileHashCache(cache_path), FileHashCache(cache_path)  # both before a save
    for cache, part in ((first, files[:half]), (second, files[half:])):
        for f in part:
            cache.put(str(f), os.stat(f), f"hash-of-{f.name}")
    ctx = multiprocessing.get_context("spawn")
    saver = ctx.Process(target=_save_cache, args=(first,))  # the first save from another process
    saver.start()
    saver.join(60)
    assert saver.exitcode == 0
    second.save()

    merged = FileHashCache(cache_path)
    for f in files:
        known = merged.get(str(f), os.stat(f))
        assert known is not None, f"{f.name}: the other run's hash was lost"
        assert known.hash == f"hash-of-{f.name}"


def _save_cache(cache) -> None:
    cache.save()


def test_datasets_thread_maps_find_a_tqdm_lock_in_place(tmp_path: Path, monkeypatch):
    """Two flow runs in one process load at once. `datasets`' thread maps go through tqdm's
    `ensure_lock`, which creates the class's lock when missing and deletes it on exit: two of them
    entering while it is missing both delete it, and the second fails the load (AttributeError:
    type object 'tqdm' has no attribute '_lock'). Each load puts a lock in place first."""
    import tqdm.contrib.concurrent as concurrent
    from datasets.utils.tqdm import tqdm as datasets_tqdm

    for cls in datasets_tqdm.__mro__:  # as in a fresh process, where no bar has made a lock yet
        if "_lock" in vars(cls):
            monkeypatch.delattr(cls, "_lock")
    found: list[bool] = []
    ensure_lock = concurrent.ensure_lock

    def watched(tqdm_class, *args, **kwargs):
        found.append(getattr(tqdm_class, "_lock", None) is not None)
        return ensure_lock(tqdm_class, *args, **kwargs)

    monkeypatch.setattr(concurrent, "ensure_lock", watched)
    data = tmp_path / "d.csv"  # files go through `datasets`' data-file resolution (image folders
    data.write_text("text,label\na,x\nb,y\n")  # are walked by leanset itself)
    load_source(
        SourceSettings(type="files", format="csv", data_files=[str(data)]),
        ColumnSettings(text="text"),
    )
    assert found and all(found)  # the helper never had to create (and then delete) the lock
