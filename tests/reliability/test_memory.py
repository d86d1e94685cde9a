"""Precomputed vectors on large runs: read in blocks, held once, stored once across versions.

The peak memory of whole runs at 200k and 1M rows is measured by `python -m bench.memory`; these
tests pin the mechanisms it depends on, with numpy's own allocations traced (`tracemalloc`).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.embed import PrecomputedEmbedder
from leanset.pipelines.embed.stage import embed_dataset
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.sources import load_source
from leanset.pipelines.store import IntegrityError, Store
from leanset.pipelines.store.gc import collect_garbage
from leanset.pipelines.store.verify import verify_store
from tests.helpers import write_flows
from tests.reliability.conftest import TALLY

ROWS, DIM = 60_000, 256  # 60 MB of float32 vectors: far above one block (8,192 rows, 8 MB)


def vectors_file(path: Path, n: int, dim: int, seed: int, start: int = 0) -> np.ndarray:
    """`n` random float32 vectors with ids `s<start>...` as Parquet; returns the matrix."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    pl.DataFrame(
        {"id": [f"s{start + i:07d}" for i in range(n)], "emb": x},
    ).with_columns(pl.col("emb").cast(pl.List(pl.Float32))).write_parquet(path)
    return x


def numpy_peak(fn, *args, **kwargs):
    """(result, peak bytes numpy and Python allocated while `fn` ran)."""
    tracemalloc.start()
    try:
        out = fn(*args, **kwargs)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[SourceSettings, np.ndarray]:
    root = tmp_path_factory.mktemp("vectors")
    vectors_file(root / "tiny.parquet", 4, DIM, seed=0)
    tiny = SourceSettings(type="files", format="parquet", data_files=[str(root / "tiny.parquet")])
    load_source(tiny, ColumnSettings(embedding="emb", label=None))  # imports are not measured
    x = vectors_file(root / "v.parquet", ROWS, DIM, seed=1)
    return SourceSettings(type="files", format="parquet", data_files=[str(root / "v.parquet")]), x


def test_hashing_reads_the_vector_column_in_blocks(big):
    source, x = big
    columns = ColumnSettings(embedding="emb", label=None)
    data, peak = numpy_peak(load_source, source, columns)
    assert data.table.height == ROWS and data.table["error"].null_count() == ROWS
    # it built the whole column as one matrix (at least 1x the vectors) before
    assert peak < 0.5 * x.nbytes, f"hashing allocated {peak / x.nbytes:.2f}x the vectors"
    TALLY["memory bounds checked: hashing a vector column"] += 1


def test_precomputed_vectors_are_held_once(big, tmp_path: Path):
    source, x = big
    data = load_source(source, ColumnSettings(embedding="emb", label=None))
    result, peak = numpy_peak(
        embed_dataset, data, PrecomputedEmbedder("emb"), tmp_path / "c", progress=False
    )
    want = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(result.matrix, want, rtol=1e-5, atol=1e-6)
    # the column, its rows, their stack and the normalised copy: about 4x before
    assert peak < 1.5 * x.nbytes, f"embedding allocated {peak / x.nbytes:.2f}x the vectors"
    TALLY["memory bounds checked: precomputed vectors"] += 1


FLOW = {
    "source": {"type": "files", "format": "parquet", "data_files": ["data/*.parquet"]},
    "columns": {"id": "id", "embedding": "emb", "label": None},
    "embedder": {"type": "precomputed"},
    "dedup": {"threshold": 0.99},
    "store": "store",
}


def _stored_bytes(root: Path) -> int:
    """What the store holds on disk, caches and reports aside."""
    skip = {"cache", "reports"}
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not skip & set(p.parts))


@pytest.fixture
def two_versions(prefect_harness, tmp_path: Path) -> tuple[Store, dict[str, np.ndarray], int]:
    """Version 1 over 2,000 vectors (a few exact repeats), version 2 after 20 more arrive; with
    the bytes the store held after version 1."""
    (tmp_path / "data").mkdir()
    x = vectors_file(tmp_path / "data" / "a.parquet", 2000, 64, seed=2)
    repeats = pl.read_parquet(tmp_path / "data" / "a.parquet")
    repeats = repeats.head(5).with_columns(("r" + pl.col("id")).alias("id"))
    pl.concat([pl.read_parquet(tmp_path / "data" / "a.parquet"), repeats]).write_parquet(
        tmp_path / "data" / "a.parquet"
    )
    config = write_flows(tmp_path, vec=FLOW)
    clean_flow(config_path=str(config), flow_name="vec")
    store = Store(tmp_path / "store")
    v1_bytes = _stored_bytes(store.root)
    y = vectors_file(tmp_path / "data" / "b.parquet", 20, 64, seed=3, start=2000)
    clean_flow(config_path=str(config), flow_name="vec")
    ids = [f"s{i:07d}" for i in range(2020)] + [f"rs{i:07d}" for i in range(5)]
    truth = dict(zip(ids, np.concatenate([x, y, x[:5]]), strict=True))
    return store, truth, v1_bytes


def test_versions_share_unchanged_vectors(two_versions):
    store, truth, v1_bytes = two_versions
    grown = _stored_bytes(store.root) - v1_bytes  # a full copy of the vectors was all of v1
    assert grown < 0.5 * v1_bytes, f"version 2 added {grown} bytes to {v1_bytes}"
    v1, v2 = store.manifest(1), store.manifest(2)
    assert set(v1["vectors"]["shards"]) <= set(v2["vectors"]["shards"])
    new = set(v2["vectors"]["shards"]) - set(v1["vectors"]["shards"])
    assert len(new) == 1
    with np.load(store.root / new.pop()) as z:
        assert len(z["hashes"]) == 20  # only the vectors no earlier shard holds
    for version, n in ((1, 2000), (2, 2020)):
        table = store.read("dataset", version)
        assert table.height == n  # the repeats were dropped as exact duplicates
        got = np.array(table["embedding"].to_list(), dtype=np.float32)
        want = np.stack([truth[i] for i in table["sample_id"]])
        np.testing.assert_array_equal(got, want)  # the source's own values, bit for bit


def test_a_damaged_vector_shard_is_named(two_versions):
    store = two_versions[0]
    shard = store.root / store.manifest(1)["vectors"]["shards"][0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    TALLY["faults injected: damaged vector shard"] += 1
    with pytest.raises(IntegrityError, match=str(shard)):
        store.read("dataset", 2)
    found = verify_store(store.root).findings
    assert {f.path for f in found if f.severity == "damaged"} == {str(shard)}
    TALLY["faults survived"] += 1


def test_gc_keeps_shared_vector_shards(two_versions):
    store = two_versions[0]
    shards = set(store.manifest(2)["vectors"]["shards"])
    plan = collect_garbage(store, keep_last=1)
    assert plan.remove == [1] and plan.vector_files == []  # version 2 still reads v1's shards
    assert all((store.root / rel).is_file() for rel in shards)
    assert len(store.read("dataset", 2)) == 2020
    orphan = store.layout.vectors / "v000009-deadbeef-000.npz"
    orphan.write_bytes(b"left by a run that died before its manifest")
    plan = collect_garbage(store, keep_last=1, grace_seconds=0)
    assert plan.vector_files == [str(orphan.resolve())] and not orphan.exists()
