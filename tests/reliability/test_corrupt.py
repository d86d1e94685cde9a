"""Corrupt or truncated cache, index and store files: detected, named in a warning or error, and
recomputed where they can be."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.embed import PixelEmbedder, embed_dataset
from leanset.pipelines.embed.cache import shard_checksum
from leanset.pipelines.sources import load_source
from leanset.pipelines.store import Store, StoreError
from tests.helpers import pixel_flow, write_png
from tests.reliability._child import do_commit, payload
from tests.reliability.conftest import TALLY


def _load(p: Path) -> dict[str, np.ndarray]:
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


def _save(p: Path, **arrays) -> None:
    with open(p, "wb") as fh:
        np.savez(fh, **arrays)


def flip_middle_byte(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))


def truncate_half(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def truncate_last_byte(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-1])


def zero_bytes(p: Path) -> None:
    p.write_bytes(b"")


def random_bytes(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(p.stat().st_size))


def vector_changed_checksum_kept(p: Path) -> None:
    z = _load(p)
    z["vectors"][0, 0] += np.float16(0.25)
    _save(p, **z)


def fewer_vectors_than_hashes(p: Path) -> None:
    z = _load(p)
    vectors = z["vectors"][:-1]
    _save(p, hashes=z["hashes"], vectors=vectors, checksum=shard_checksum(z["hashes"], vectors))


def pickled_object_array(p: Path) -> None:
    z = _load(p)
    _save(p, hashes=z["hashes"].astype(object), vectors=z["vectors"], checksum=z["checksum"])


def checksum_missing(p: Path) -> None:
    z = _load(p)
    _save(p, hashes=z["hashes"], vectors=z["vectors"])


def nan_vector_with_valid_checksum(p: Path) -> None:
    z = _load(p)
    z["vectors"][0] = np.nan
    _save(
        p,
        hashes=z["hashes"],
        vectors=z["vectors"],
        checksum=shard_checksum(z["hashes"], z["vectors"]),
    )


def text_vectors_with_valid_checksum(p: Path) -> None:
    z = _load(p)
    vectors = np.full(z["vectors"].shape, "x", dtype="U1")
    _save(p, hashes=z["hashes"], vectors=vectors, checksum=shard_checksum(z["hashes"], vectors))


def replaced_by_a_folder(p: Path) -> None:
    p.unlink()
    p.mkdir()


SHARD_CORRUPTIONS: list[Callable[[Path], None]] = [
    flip_middle_byte,
    truncate_half,
    truncate_last_byte,
    zero_bytes,
    random_bytes,
    vector_changed_checksum_kept,
    fewer_vectors_than_hashes,
    pickled_object_array,
    checksum_missing,
    nan_vector_with_valid_checksum,
    text_vectors_with_valid_checksum,
    replaced_by_a_folder,
]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """An imagefolder embedded once into a cache of 3-row shards."""
    from tests.helpers import make_imagefolder

    root = tmp_path_factory.mktemp("corrupt")
    images = make_imagefolder(root / "images", n=12)
    data = load_source(SourceSettings(type="imagefolder", path=str(images)), ColumnSettings())
    first = embed_dataset(
        data, PixelEmbedder(16), root / "cache", batch_size=3, shard_rows=3, progress=False
    )
    return data, first, root / "cache"


@pytest.mark.parametrize("corrupt", SHARD_CORRUPTIONS, ids=lambda f: f.__name__)
def test_corrupt_shard_is_named_in_a_warning_and_recomputed(embedded, tmp_path, corrupt, caplog):
    data, first, pristine = embedded
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    shards = sorted(cache.rglob("shard-*.npz"))
    victim = shards[len(shards) // 2]
    lost = len(_load(victim)["hashes"])
    corrupt(victim)
    TALLY["faults injected: corrupted cache shard"] += 1

    caplog.set_level(logging.WARNING, logger="leanset")
    again = embed_dataset(data, PixelEmbedder(16), cache, progress=False)
    assert str(victim) in caplog.text and "corrupt" in caplog.text
    assert (again.cached, again.computed) == (first.computed - lost, lost)
    np.testing.assert_array_equal(again.matrix, first.matrix)
    assert np.isfinite(again.matrix).all()
    TALLY["faults survived"] += 1


def test_corrupt_manifest_is_named_and_never_skipped(tmp_path: Path):
    """A damaged manifest stops the store with its path: skipping it would reuse its number."""
    store = Store(tmp_path / "s")
    do_commit(str(store.root), "v1", None)
    do_commit(str(store.root), "v2", 1)
    manifest = store.root / "manifests" / "v000002.json"
    truncate_half(manifest)
    TALLY["faults injected: truncated manifest"] += 1
    with pytest.raises(StoreError, match=f"manifest {manifest} is unreadable"):
        Store(store.root).latest()
    with pytest.raises(StoreError, match="v000002.json is unreadable"):
        do_commit(str(store.root), "v3", 2)
    assert sorted(p.name for p in (store.root / "manifests").iterdir()) == [
        "v000001.json",
        "v000002.json",
    ]
    TALLY["faults survived"] += 1


@pytest.mark.parametrize("corrupt", [truncate_half, zero_bytes, "missing"], ids=str)
def test_damaged_table_file_is_named_and_other_versions_still_read(tmp_path: Path, corrupt):
    store = Store(tmp_path / "s")
    do_commit(str(store.root), "v1", None)
    do_commit(str(store.root), "v2", 1)
    from deltalake import DeltaTable

    delta_version = store.manifest(2)["tables"]["dataset"]
    rel = DeltaTable(str(store.root / "dataset"), version=delta_version).file_uris()[0]
    victim = Path(rel)
    victim.unlink() if corrupt == "missing" else corrupt(victim)
    TALLY["faults injected: damaged Delta data file"] += 1
    with pytest.raises(StoreError, match=f"version 2: data file {victim} is"):
        store.read("dataset", 2)
    assert store.read("dataset", 1).equals(payload("v1")[0])
    assert store.read("decisions", 2).equals(payload("v2")[1])
    do_commit(str(store.root), "v3", 2)  # the next run still commits
    assert store.read("dataset").equals(payload("v3")[0])
    TALLY["faults survived"] += 1


def test_damaged_delta_log_is_named(tmp_path: Path):
    store = Store(tmp_path / "s")
    do_commit(str(store.root), "v1", None)
    do_commit(str(store.root), "v2", 1)
    log = store.root / "decisions" / "_delta_log" / "00000000000000000001.json"
    truncate_half(log)
    TALLY["faults injected: truncated Delta log entry"] += 1
    with pytest.raises(StoreError, match=f"version 2: the Delta log of {store.root / 'decisions'}"):
        store.read("decisions", 2)
    assert store.read("decisions", 1).equals(payload("v1")[1])
    TALLY["faults survived"] += 1


@pytest.mark.parametrize(
    "corrupt", [flip_middle_byte, truncate_half, zero_bytes, "missing"], ids=str
)
def test_corrupt_pair_index_is_named_in_a_warning_and_ignored(tmp_path: Path, corrupt, caplog):
    store = Store(tmp_path / "s")
    pairs = pl.DataFrame(
        {"hash_a": [f"a{i}" for i in range(200)], "hash_b": [f"b{i}" for i in range(200)]}
    ).with_columns(pl.lit(0.97, dtype=pl.Float32).alias("sim"))
    dataset, decisions = payload("v1", 10)
    m = store.commit(dataset, decisions, {"counts": {}}, None, pairs=pairs)
    assert store.read_pairs(m).equals(pairs)
    index = store.root / m["index"]["pairs"]
    index.unlink() if corrupt == "missing" else corrupt(index)
    TALLY["faults injected: corrupted near-pair index"] += 1
    caplog.set_level(logging.WARNING, logger="leanset")
    assert store.read_pairs(store.manifest(1)) is None
    assert m["index"]["pairs"] in caplog.text and "unreadable" in caplog.text
    TALLY["faults survived"] += 1


def test_incremental_run_over_a_corrupt_pair_index_decides_like_a_full_run(
    prefect_harness, imagefolder: Path, tmp_path: Path, leanset_warnings
):
    from leanset.pipelines.flows import clean_flow

    config = pixel_flow(tmp_path, "idx")
    clean_flow(config_path=str(config), flow_name="idx")
    store = Store(tmp_path / "store")
    index = store.root / store.latest()["index"]["pairs"]
    flip_middle_byte(index)
    TALLY["faults injected: corrupted near-pair index (flow)"] += 1
    base = imagefolder / "train/a/img000.png"
    write_png(imagefolder / "train/b/late_copy.png", np.asarray(_png_pixels(base)))
    second = clean_flow(config_path=str(config), flow_name="idx")
    assert second["version"] == 2 and not second["search"].get("incremental")
    assert str(Path(store.latest()["index"]["pairs"]).parent) == "index"
    assert str(index.relative_to(store.root)) in leanset_warnings.text
    assert "checksum does not match" in leanset_warnings.text

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "images").symlink_to(imagefolder)
    clean_flow(config_path=str(pixel_flow(tmp_path / "full", "idx")), flow_name="idx")
    a = store.read("decisions").drop("first_seen").sort("sample_id")
    b = Store(tmp_path / "full" / "store").read("decisions").drop("first_seen").sort("sample_id")
    assert a.equals(b)
    late = a.filter(pl.col("source") == "train/b/late_copy.png").row(0, named=True)
    assert late["drop_reason"] == "exact_duplicate"
    TALLY["faults survived"] += 1


def _png_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))
