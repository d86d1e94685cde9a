"""`engine: ray` against `engine: local` on a real local Ray cluster (2 CPUs on 127.0.0.1).

Slow (a cluster start and several flow runs): run with `python -m pytest -m slow
tests/test_engine_ray.py`. The cluster's head runs with a folder hidden from it, so one test can
show what happens when the store is not visible on a node.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.helpers import write_png
from tests.ray_cluster import (
    LocalCluster,
    can_hide,
    free_port,
    kill_one_worker_when,
)
from tests.test_near import _bitwise, at_threshold

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

T = 0.9


@pytest.mark.parametrize("method", ["exact", "partitioned"])
@pytest.mark.parametrize("mode", ["self", "between"])
def test_search_equals_the_local_search_bit_for_bit(driver, method: str, mode: str) -> None:
    from leanset.dedup import near
    from leanset.dedup.near import SearchOptions
    from leanset.pipelines.engine import search

    x = at_threshold(1500, 64, T)  # pairs within ulps of the threshold, among clustered rows
    opts = SearchOptions(method=method, device="cpu", block_rows=1024, n_clusters=12)
    if mode == "self":
        local = near.find_near_pairs(x, T, opts)
        remote = search.find_near_pairs(x, T, opts)
    else:
        local = near.find_near_pairs_between(x[:2000], x[2000:], T, opts)
        remote = search.find_near_pairs_between(x[:2000], x[2000:], T, opts)
    assert len(local) > 300
    assert _bitwise(local, remote)
    assert remote.params["engine"] == "ray" and remote.params["method"] == method


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~290 16x16 PNGs in train/test with exact copies, near copies, leaks and a corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("ray-data") / "images"
    for k in range(240):
        base = rng.integers(0, 256, size=(16, 16))
        write_png(root / f"train/{k % 3}/b{k}.png", base)
        if k % 20 == 0:
            write_png(root / f"train/{k % 3}/copy{k}.png", base)
        if k % 15 == 0:
            noisy = np.clip(base + rng.normal(0, 3, (16, 16)), 0, 255)
            write_png(root / f"{'test' if k % 30 == 0 else 'train'}/{k % 3}/near{k}.png", noisy)
    (root / "train/0/broken.png").write_bytes(b"not an image")
    return root


def _config(tmp: Path, images: Path, store: Path, engine: str) -> Path:
    cfg = tmp / f"{store.name}.yaml"
    cfg.write_text(
        "flows:\n  f:\n"
        f"    source: {{type: imagefolder, path: {images}}}\n"
        "    embedder: {type: pixels, size: 16}\n"
        "    dedup: {threshold: 0.95}\n"
        f"    store: {store}\n"
        f"    engine: {engine}\n"
    )
    return cfg


def _tables(store: Path) -> dict[str, pl.DataFrame]:
    from leanset.pipelines.store import Store

    s = Store(store)
    return {
        t: s.read(t).drop("run_id", strict=False).sort("sample_id")
        for t in ("decisions", "dataset")
    }


@pytest.fixture(scope="module")
def local_run(prefect_harness, images: Path, tmp_path_factory: pytest.TempPathFactory):
    from leanset.pipelines.flows import clean_flow

    tmp = tmp_path_factory.mktemp("local")
    summary = clean_flow(
        config_path=str(_config(tmp, images, tmp / "store", "local")), flow_name="f"
    )
    contents = {f.read_bytes() for f in images.rglob("*.png")}  # all go to the embedder once
    return summary, _tables(tmp / "store"), -(-len(contents) // 32)  # the slices a ray run cuts


def _ray_engine(cluster: LocalCluster, extra: str = "") -> str:
    return f"{{type: ray, address: '{cluster.address}', workers: 2, shard_rows: 32{extra}}}"


def test_flow_on_ray_decides_and_cleans_like_the_local_engine(cluster, local_run, images, tmp_path):
    from leanset.pipelines.flows import clean_flow
    from leanset.pipelines.store import Store

    summary = clean_flow(
        config_path=str(_config(tmp_path, images, tmp_path / "store", _ray_engine(cluster))),
        flow_name="f",
    )
    assert summary["counts"] == local_run[0]["counts"]
    assert summary["counts"]["by_reason"]["near_duplicate"] > 0
    got = _tables(tmp_path / "store")
    for name, table in local_run[1].items():
        assert got[name].equals(table), name
    manifest = Store(tmp_path / "store").manifests()[-1]
    assert manifest["engine"]["type"] == "ray" and manifest["engine"]["resources"]["CPU"] == 2
    assert manifest["embed"]["engine"]["workers"] == 2 and manifest["search"]["engine"] == "ray"
    assert manifest["embed"]["engine"]["slices"] == local_run[2] > 1
    assert "embed" in manifest["timings"] and "dedup" in manifest["timings"]


def _kill_one_worker_after_first_shard(
    cluster: LocalCluster, cache: Path
) -> tuple[threading.Thread, list[int]]:
    """A thread that SIGKILLs one embedding worker of this cluster once the first shard is written
    (the other slices still queued or running)."""
    return kill_one_worker_when(cluster, lambda: any(cache.rglob("shard-*.npz")))


def test_a_worker_killed_mid_embedding_still_ends_in_the_same_decisions(
    cluster, local_run, images, tmp_path
):
    from leanset.pipelines.flows import clean_flow

    cfg = _config(tmp_path, images, tmp_path / "store", _ray_engine(cluster))
    thread, killed = _kill_one_worker_after_first_shard(cluster, tmp_path / "store" / "cache")
    summary = clean_flow(config_path=str(cfg), flow_name="f")  # Ray restarts it, reruns the slice
    thread.join(1)
    assert killed, "no embedding worker was killed"
    assert summary["counts"] == local_run[0]["counts"]
    for name, table in _tables(tmp_path / "store").items():
        assert table.equals(local_run[1][name]), name


def test_without_retries_the_run_fails_and_the_rerun_reuses_finished_shards(
    cluster, local_run, images, tmp_path
):
    from leanset.pipelines.flows import clean_flow
    from leanset.pipelines.store import Store

    store = tmp_path / "store"
    cfg = _config(tmp_path, images, store, _ray_engine(cluster, ", max_task_retries: 0"))
    thread, killed = _kill_one_worker_after_first_shard(cluster, store / "cache")
    with pytest.raises(Exception, match="(?i)actor|worker|died"):
        clean_flow(config_path=str(cfg), flow_name="f")
    thread.join(1)
    assert killed and Store(store).manifests() == []  # nothing committed
    shards = len(list((store / "cache").rglob("shard-*.npz")))
    assert 0 < shards < local_run[2]
    summary = clean_flow(config_path=str(cfg), flow_name="f")
    manifest = Store(store).manifests()[-1]
    assert manifest["embed"]["cached"] > 0 and manifest["embed"]["engine"]["slices"] < local_run[2]
    assert summary["counts"] == local_run[0]["counts"]
    for name, table in _tables(store).items():
        assert table.equals(local_run[1][name]), name


def _settings(tmp_path: Path, images: Path, engine: str, store: Path | None = None):
    from leanset.pipelines.config import load_flow

    return load_flow(_config(tmp_path, images, store or tmp_path / "store", engine), "f")


def test_an_unreachable_address_is_one_clear_error_before_any_work(images, tmp_path):
    from leanset.pipelines.engine import EngineError
    from leanset.pipelines.flows import run_pipeline

    port = free_port()
    settings = _settings(tmp_path, images, f"{{type: ray, address: '127.0.0.1:{port}'}}")
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        run_pipeline(settings)
    assert time.perf_counter() - t0 < 15
    assert not (tmp_path / "store").exists()


def test_resources_the_cluster_lacks_are_one_clear_error_before_any_work(cluster, images, tmp_path):
    from leanset.pipelines.engine import EngineError
    from leanset.pipelines.flows import run_pipeline

    settings = _settings(tmp_path, images, _ray_engine(cluster, ", gpus_per_worker: 1"))
    with pytest.raises(EngineError, match=r"engine.gpus_per_worker: .*1 GPU.* GPU 0"):
        run_pipeline(settings)
    assert not list((tmp_path / "store").rglob("*.json"))  # no version, no manifest


@pytest.mark.skipif(
    not can_hide(), reason="hiding a folder from the cluster needs root and unshare"
)
def test_a_store_the_nodes_cannot_see_is_one_clear_error_before_any_work(cluster, images, tmp_path):
    from leanset.pipelines.engine import EngineError
    from leanset.pipelines.flows import run_pipeline

    assert cluster.hidden is not None
    store = Path(cluster.hidden) / "store"  # visible here, an empty tmpfs on the cluster's node
    settings = _settings(tmp_path, images, _ray_engine(cluster), store)
    with pytest.raises(EngineError, match=r"store is not visible on node .*: No such file"):
        run_pipeline(settings)
    assert not list(store.rglob("*.json")) and not list(store.rglob("shard-*"))


def _kept(x: np.ndarray, rows: int = 700):
    """`x` as a matrix kept on the cluster, in blocks of `rows` (not the search's own blocking)."""
    from leanset.pipelines.engine.rows import BlockMatrix, RayRows

    return RayRows(BlockMatrix.put(x, rows))


@pytest.mark.parametrize("method", ["exact", "partitioned"])
def test_a_matrix_kept_on_the_cluster_searches_and_calibrates_like_the_local_one(driver, method):
    from leanset.dedup import near
    from leanset.dedup.near import SearchOptions
    from leanset.pipelines.engine import search

    x = at_threshold(1500, 64, T)
    reps = np.flatnonzero(np.random.default_rng(1).random(x.shape[0]) < 0.8)  # a subset, as dedup
    kept = _kept(x).take(reps)
    assert kept.shape == (reps.size, 64) and np.array_equal(kept.dense(), x[reps])
    opts = SearchOptions(method=method, device="cpu", block_rows=1024, n_clusters=12)
    local = near.find_near_pairs(np.ascontiguousarray(x[reps]), T, opts)
    assert len(local) > 300 and _bitwise(local, search.find_near_pairs(kept, T, opts))
    half = reps.size // 2
    between = near.find_near_pairs_between(x[reps[:half]], x[reps[half:]], T, opts)
    remote = search.find_near_pairs_between(
        _kept(x).take(reps[:half]), _kept(x).take(reps[half:]), T, opts
    )
    assert _bitwise(between, remote)
    want = near.sample_neighbours(np.ascontiguousarray(x[reps]), 10, 500)
    got = kept.neighbours(10, 500)
    assert np.array_equal(want.rows, got.rows) and np.array_equal(want.idx, got.idx)
    assert np.array_equal(want.sim.view(np.uint32), got.sim.view(np.uint32))
    pick = np.array([5, 3, 5, 1000])
    assert np.array_equal(kept.fetch(pick), x[reps][pick])


def test_taking_every_row_of_a_block_shares_the_block_and_sends_no_positions(driver):
    """The dedup stage takes its contents' rows (all of them when no sample is a copy): a whole
    block is shared, not copied by a task from positions the driver wrote into shared pages."""
    x = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
    kept = _kept(x, rows=300)  # blocks 0-300, 300-600, 600-900, 900-1000
    rows = np.concatenate([np.arange(0, 600), np.arange(650, 1000)])
    taken = kept.take(rows)
    refs = kept.blocks.refs
    assert taken.blocks.refs[:2] == refs[:2] and taken.blocks.refs[3] == refs[3]
    assert taken.blocks.refs[2] != refs[2]
    assert np.array_equal(taken.dense(), x[rows])


def test_a_row_bound_per_task_makes_more_groups_and_the_same_pairs(driver):
    from leanset.dedup import near
    from leanset.dedup.near import SearchOptions
    from leanset.pipelines.engine import search

    x = at_threshold(1500, 64, T)
    opts = SearchOptions(method="partitioned", device="cpu", n_clusters=12)
    local = near.find_near_pairs(x, T, opts)
    wide = search.find_near_pairs(_kept(x), T, opts)
    narrow = search.find_near_pairs(_kept(x), T, opts, task_rows=500)
    assert _bitwise(local, wide) and _bitwise(local, narrow)
    assert narrow.params["groups"] > wide.params["groups"] and narrow.params["task_rows"] == 500


def test_a_bad_row_kept_on_the_cluster_is_named_as_locally(driver):
    from leanset.dedup.matrix import check_matrix, check_rows

    x = at_threshold(500, 64, T)
    x[1234] *= 2.0
    with pytest.raises(ValueError) as local:
        check_matrix(x, unit=True, describe=lambda r: f"sample s{r}")
    with pytest.raises(ValueError) as remote:
        check_rows(_kept(x), unit=True, describe=lambda r: f"sample s{r}")
    assert "row 1234 (sample s1234)" in str(local.value)
    assert str(remote.value) == str(local.value)
    x[7, 3] = np.nan
    assert _kept(x).first_bad_row(unit=False) == 7


def test_tasks_align_the_cache_with_the_table_as_the_local_cache_read(driver, tmp_path):
    from leanset.pipelines.embed import EmbeddingCache
    from leanset.pipelines.embed.cache import write_shard
    from leanset.pipelines.embed.stage import _align
    from leanset.pipelines.engine.rows import from_cache

    rng = np.random.default_rng(3)
    hashes = [f"{k:032x}" for k in range(900)]
    vec = rng.standard_normal((900, 24)).astype(np.float32)
    write_shard(tmp_path, hashes[:500], vec[:500], "shard-a.npz")
    write_shard(tmp_path, hashes[400:], -vec[400:], "shard-b.npz")  # 400..499 twice: b wins
    (tmp_path / "shard-c.npz").write_bytes(b"corrupt")  # skipped, as the local cache skips it
    table_hashes = [hashes[i] for i in rng.integers(0, 900, 2500)]
    table_hashes[:3] = ["f" * 32, None, hashes[450]]  # not cached, no content, cached
    table_hashes[10] = hashes[7]
    readable = np.ones(2500, bool)
    readable[10] = False  # unreadable, its content readable elsewhere: vector as locally
    table_hashes[11] = hashes[7]
    readable[1] = False
    kept = from_cache(tmp_path, pl.Series(table_hashes), readable, rows=333)
    cache = EmbeddingCache(tmp_path.parent, tmp_path.name)
    good = list(dict.fromkeys(h for h, r in zip(table_hashes, readable, strict=True) if r and h))
    found, vectors = cache.get(good)
    have = dict(zip([h for h, f in zip(good, found, strict=True) if f], vectors, strict=True))
    want = _align(table_hashes, have)
    assert kept is not None and kept.shape == want.shape
    assert np.array_equal(kept.dense().view(np.uint32), want.view(np.uint32))
    assert not want[0].any() and not want[1].any() and want[2].any() and want[10].any()


def test_tasks_say_what_the_cache_holds_as_the_local_cache_does(driver, tmp_path):
    from leanset.pipelines.embed import EmbeddingCache
    from leanset.pipelines.embed.cache import write_shard
    from leanset.pipelines.engine.rows import CacheRead, cached_mask, from_cache
    from leanset.pipelines.store.shardplace import ShardPlace

    rng = np.random.default_rng(4)
    hashes = [f"{k:032x}" for k in range(3000)]
    vec = rng.standard_normal((3000, 8)).astype(np.float32)
    assert not cached_mask(CacheRead(ShardPlace(str(tmp_path))), pl.Series(hashes)).any()
    write_shard(tmp_path, hashes[:1200], vec[:1200], "shard-a.npz")
    write_shard(tmp_path, hashes[1000:1900], vec[1000:1900], "shard-b.npz")
    write_shard(tmp_path, hashes[2500:], vec[2500:], "shard-c.npz")
    (tmp_path / "shard-c.npz").write_bytes(b"corrupt")  # skipped, as the local cache skips it
    asked = [hashes[i] for i in rng.permutation(3000)] + ["f" * 32]
    found, _ = EmbeddingCache(tmp_path.parent, tmp_path.name).get(asked)
    read = CacheRead(ShardPlace(str(tmp_path)))
    got = cached_mask(read, pl.Series(asked))
    assert np.array_equal(got, found) and 0 < found.sum() < len(asked)
    # a shard written after the question is read by the alignment; the others are not again
    write_shard(tmp_path, ["e" * 32], np.ones((1, 8), np.float32), "shard-d.npz")
    first = dict(read.refs)
    kept = from_cache(read, pl.Series(["e" * 32, hashes[5]]), np.ones(2, bool))
    assert kept is not None and kept.dense()[0].any() and kept.dense()[1].any()
    assert all(read.refs[k] is v for k, v in first.items()) and len(read.refs) == 4


def _sample_table(n: int, seed: int = 0) -> pl.DataFrame:
    """A sample table with splits, labels, exact copies (equal hashes) and an unreadable row."""
    rng = np.random.default_rng(seed)
    r = np.arange(n)
    hashes = [f"{k:032x}" for k in r]
    for k in rng.choice(n - 1, 40, replace=False).tolist():
        hashes[k + 1] = hashes[k]
    error = [None] * n
    error[3] = "unreadable: truncated"
    return pl.DataFrame(
        {
            "sample_id": [f"s{k:06d}" for k in r],
            "position": r,
            "split": np.where(r % 5 == 0, "test", "train"),
            "label": (r % 7).astype(str),
            "content_hash": hashes,
            "error": pl.Series(error, dtype=pl.Utf8),
            "size_bytes": np.full(n, 1000),
            "source": pl.Series([None] * n, dtype=pl.Utf8),
        }
    )


@pytest.mark.parametrize("threshold", [T, "auto"])
def test_dedup_over_a_matrix_kept_on_the_cluster_decides_as_locally(driver, threshold):
    from leanset.dedup.config import DedupSettings
    from leanset.dedup.stage import find_duplicates
    from leanset.pipelines.config import EngineSettings
    from leanset.pipelines.steps import _searchers

    x = at_threshold(1500, 64, T)
    table = _sample_table(x.shape[0])
    same = table["content_hash"].to_numpy()
    first = {h: k for k, h in reversed(list(enumerate(same.tolist())))}
    x = x[[first[h] for h in same.tolist()]]  # equal content, equal vector
    x[3] = 0.0  # the unreadable row's zeros
    settings = DedupSettings(threshold=threshold, search="partitioned", confirm="embedding")
    local = find_duplicates(table, x, settings)
    search, between = _searchers(EngineSettings(type="ray", task_rows=2000))
    remote = find_duplicates(table, _kept(x), settings, search=search, search_between=between)
    assert local.table["dedup_drop"].drop_nulls().len() > 100
    assert remote.table.equals(local.table) and remote.pairs.equals(local.pairs)
    assert remote.calibration == local.calibration and remote.index_key == local.index_key
    assert remote.search["engine"] == "ray"
