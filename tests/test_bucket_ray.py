"""`engine: ray` with its store in a bucket (moto's real S3 server and a real local Ray cluster,
both started here): the workers PUT their cache shards into the bucket and the tasks read them
back from there, so no node needs the driver's folders; the decisions equal a local run's.

Slow (a cluster start and several runs): `python -m pytest -m slow tests/test_bucket_ray.py`.
The cluster's head runs with a folder hidden from it (an empty tmpfs over it, on its side only):
the driver keeps its bucket mirrors there, so a worker that read or wrote them would fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests import s3_server
from tests.helpers import make_imagefolder, pixel_flow_body, write_flows, write_png
from tests.ray_cluster import LocalCluster, can_hide, kill_one_worker_when
from tests.s3_server import S3Server

pytest.importorskip("ray")
pytest.importorskip("obstore")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not can_hide(), reason="hiding a folder from the cluster needs root"),
]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server.serving() as server:
        yield server


@pytest.fixture
def hidden_cache(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The driver's bucket mirrors ($LEANSET_CACHE_DIR) in a folder the cluster cannot see."""
    assert cluster.hidden is not None
    folder = Path(cluster.hidden) / f"cache-{time.time_ns()}"
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(folder))
    return folder


def _engine(cluster: LocalCluster, shard_rows: int = 8) -> dict[str, object]:
    return {"type": "ray", "address": cluster.address, "workers": 2, "shard_rows": shard_rows}


def _decisions(store: object) -> pl.DataFrame:
    table = store.read("decisions")  # type: ignore[attr-defined]
    return table.drop("first_seen", "run_id", strict=False).sort("sample_id")


def _shards(url: str, options: dict[str, str]) -> list[str]:
    from leanset.pipelines.store.storage import ObjectStorage

    names = ObjectStorage(url, options).list("cache/embeddings")  # the pixel embedder's shards
    return [n for n in names if n.startswith("cache/embeddings/pixels-") and "/shard-" in n]


def test_a_bucket_store_on_ray_decides_as_a_local_run_with_no_shared_folder(
    s3, cluster, hidden_cache, tmp_path
):
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.core import run_core
    from leanset.pipelines.store import Store
    from leanset.pipelines.store.verify import verify_store

    make_imagefolder(tmp_path / "images")
    url = f"s3://{s3.bucket()}/stores/photos"
    ray_body = pixel_flow_body(store=url, storage_options=s3.options, engine=_engine(cluster))
    config = write_flows(tmp_path, local=pixel_flow_body(), bucket=ray_body)
    run_core(load_flow(config, "local"))
    first = run_core(load_flow(config, "bucket"))
    assert first.summary.version == 1
    remote, local = Store(url, s3.options), Store(tmp_path / "store")
    assert _decisions(remote).equals(_decisions(local))
    manifest = remote.manifest()
    assert manifest["engine"]["type"] == "ray" and manifest["embed"]["engine"]["slices"] > 1
    assert len(_shards(url, s3.options)) == manifest["embed"]["engine"]["slices"]
    assert verify_store(url, s3.options).ok  # every shard a worker PUT passes its checksum
    objects = remote.storage.list("cache/embeddings")  # the driver's own caches were pushed
    assert any(n.startswith("cache/embeddings/imgq-") for n in objects)
    assert not Path("s3:").exists()  # nothing was written to a local path named like the URL

    assert run_core(load_flow(config, "bucket")).summary.unchanged
    write_png(tmp_path / "images/train/a/new.png", np.full((16, 16), 77))
    assert run_core(load_flow(config, "bucket")).summary.version == 2
    assert remote.manifest(2)["embed"]["computed"] == 1  # the workers' shards were reused
    run_core(load_flow(config, "local"))
    assert _decisions(remote).equals(_decisions(local))


def _kill_one_worker_after_first_shard(
    cluster: LocalCluster, url: str, options: dict[str, str]
) -> tuple[threading.Thread, list[int]]:
    """A thread that SIGKILLs one embedding worker once the first shard is in the bucket."""
    return kill_one_worker_when(cluster, lambda: bool(_shards(url, options)))


def test_a_worker_killed_while_putting_shards_ends_in_the_same_decisions(
    s3, cluster, hidden_cache, tmp_path
):
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.core import run_core
    from leanset.pipelines.store import Store
    from leanset.pipelines.store.verify import verify_store

    make_imagefolder(tmp_path / "images")
    url = f"s3://{s3.bucket()}/stores/killed"
    engine = _engine(cluster, shard_rows=3)  # many slices: some still queued at the kill
    ray_body = pixel_flow_body(store=url, storage_options=s3.options, engine=engine)
    config = write_flows(tmp_path, local=pixel_flow_body(), bucket=ray_body)
    run_core(load_flow(config, "local"))
    thread, killed = _kill_one_worker_after_first_shard(cluster, url, s3.options)
    run_core(load_flow(config, "bucket"))  # Ray restarts the worker and reruns its slice
    thread.join(1)
    assert killed, "no embedding worker was killed"
    remote = Store(url, s3.options)
    assert _decisions(remote).equals(_decisions(Store(tmp_path / "store")))
    assert verify_store(url, s3.options).ok  # no partial shard: a PUT is whole or absent


def test_a_bucket_image_source_on_ray_is_read_by_the_workers_from_the_bucket(
    s3, cluster, hidden_cache, tmp_path
):
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.core import run_core
    from leanset.pipelines.store import Store
    from leanset.pipelines.store.storage import ObjectStorage

    images = make_imagefolder(tmp_path / "images")
    name = s3.bucket()
    bucket = ObjectStorage(f"s3://{name}/data/images", s3.options)
    for path in sorted(p for p in images.rglob("*") if p.is_file()):
        bucket.write(path.relative_to(images).as_posix(), path.read_bytes())
    source = {"type": "imagefolder", "path": f"s3://{name}/data/images"}
    source["storage_options"] = s3.options  # type: ignore[assignment]
    url = f"s3://{name}/store"
    body = pixel_flow_body(
        source=source, store=url, storage_options=s3.options, engine=_engine(cluster)
    )
    config = write_flows(tmp_path, local=pixel_flow_body(), bucket=body)
    # the driver's mirror of the source is hidden from the node: its workers fetch the objects
    run_core(load_flow(config, "bucket"))
    run_core(load_flow(config, "local"))
    assert _decisions(Store(url, s3.options)).equals(_decisions(Store(tmp_path / "store")))


def test_a_node_without_the_buckets_credentials_is_named_before_any_work(
    s3, cluster, hidden_cache, tmp_path, monkeypatch
):
    """Credentials in the driver's environment only (the cluster's node was started without
    them): before any work, one task on each node lists the bucket and puts a probe object
    there, and the run stops with one message naming the node, the store and the fix. Nothing
    is committed."""
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.core import run_core
    from leanset.pipelines.engine.cluster import EngineError
    from leanset.pipelines.store.storage import ObjectStorage

    for key, value in s3.options.items():  # this process only: the node never saw them
        monkeypatch.setenv(key, value)
    make_imagefolder(tmp_path / "images")
    url = f"s3://{s3.bucket()}/stores/env-only"
    config = write_flows(tmp_path, bucket=pixel_flow_body(store=url, engine=_engine(cluster)))
    with pytest.raises(EngineError) as raised:
        run_core(load_flow(config, "bucket"))
    said = str(raised.value)
    assert said.startswith("store cannot be used from node") and url in said, said
    assert "credentials" in said and "storage_options" in said
    assert ObjectStorage(url, s3.options).list("manifests") == []

    body = pixel_flow_body(store=url, storage_options=s3.options, engine=_engine(cluster))
    config = write_flows(tmp_path, bucket=body)  # the options travel with the node's tasks
    assert run_core(load_flow(config, "bucket")).summary.version == 1
