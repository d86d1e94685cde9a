"""The embed stage on Ray actors: each writes the local cache's shards, so every run reuses them.

The driver works out what to embed as `embed_dataset` does (readable rows, the first row per
content hash, minus what the cache holds: `rows.cached_mask`, tasks read the shards' keys, so no
vector and no Python string per row reaches the driver) and cuts it into slices of `shard_rows`
items (a slice's lists are made as it is sent). A pool of `EmbedWorker` actors (each with its
own GPU when `gpus_per_worker` is set) builds the embedder once, reads its own samples through
the dataset's splits, embeds a slice in batches and writes it as one checksummed shard under a
name fixed when the slice was cut. Only counts and errors come back. A killed worker is restarted
by Ray and its slice run again (`max_task_retries`): finished shards are on disk, the one it was
writing leaves at most a temporary file; with no retries left the run fails and a rerun embeds
only what never reached the disk. Tasks then align the cache's shards with the sample table as a
local run's cache read does (`rows.from_cache`): the matrix is the one the local engine computes,
kept in the cluster's object store; the driver never holds it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from leanset.pipelines.config import EmbedderSettings, EngineSettings
from leanset.pipelines.embed import EmbedResult, PrecomputedEmbedder, make_embedder
from leanset.pipelines.embed.cache import shard_bytes, shard_name
from leanset.pipelines.embed.protocol import SampleError
from leanset.pipelines.embed.stage import NONFINITE, _check_dims, _roundtrip, embed_dataset
from leanset.pipelines.engine.rows import CacheRead, cached_mask, from_cache
from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.store.shardplace import ShardPlace

IN_FLIGHT = 2  # slices queued per worker: keeps a GPU fed while bounding memory
START_TIMEOUT_S = 180.0  # workers must be up by then (their resources were checked before)


class EmbedWorker:
    """One Ray actor: the embedder built once; one slice in, one cache shard out."""

    def __init__(
        self, settings: EmbedderSettings, reader: LoadedDataset, place: ShardPlace, batch_size: int
    ):
        self.embedder = make_embedder(settings, reader.columns.embedding)
        self.reader, self.place, self.batch_size = reader, place, batch_size

    def info(self) -> dict[str, Any]:
        """Where this worker runs (the pid lets a test kill it)."""
        import ray

        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node": ctx.get_node_id(),
            "device": str(getattr(self.embedder, "device", "cpu")),
            "gpus": ctx.get_accelerator_ids().get("GPU", []),
        }

    def embed_slice(
        self, name: str, hashes: list[str], parts: list[str], rows: list[int]
    ) -> dict[str, Any]:
        """Embed these samples and write them as shard `name`; their errors come back."""
        t0 = time.perf_counter()
        errors: dict[str, str] = {}
        good: list[str] = []
        vectors: list[np.ndarray] = []
        dims: set[int] = set()
        for s in range(0, len(hashes), self.batch_size):
            cut = slice(s, s + self.batch_size)
            items = self._prepare(hashes[cut], parts[cut], rows[cut], errors)
            if not items:
                continue
            out = _roundtrip(self.embedder.encode([item for _, item in items]))
            _check_dims(dims, out, len(items))
            finite = np.isfinite(out).all(axis=1)  # a NaN vector is an error, never cached
            errors.update(
                (h, NONFINITE) for (h, _), ok in zip(items, finite, strict=True) if not ok
            )
            good += [h for (h, _), ok in zip(items, finite, strict=True) if ok]
            vectors.append(out[finite])
        if good:
            self.place.write(name, shard_bytes(good, np.concatenate(vectors)))
        return {"embedded": len(good), "errors": errors, "seconds": time.perf_counter() - t0}

    def _prepare(
        self, hashes: list[str], parts: list[str], rows: list[int], errors: dict[str, str]
    ) -> list[tuple[str, Any]]:
        items = []
        for h, part, row in zip(hashes, parts, rows, strict=True):
            try:
                items.append((h, self.embedder.prepare(self.reader.content_at(part, int(row)))))
            except SampleError as exc:
                errors[h] = str(exc)
            except OSError as exc:
                errors[h] = f"unreadable: {exc}"
        return items


@dataclass
class Slice:
    """One task: these contents (content_hash, _part, _row: a slice of one frame, no copy),
    written as cache shard `name`."""

    name: str
    items: pl.DataFrame

    def lists(self) -> tuple[list[str], list[str], list[int]]:
        """Its hashes, parts and rows as the worker takes them (made as it is sent)."""
        f = self.items
        return f["content_hash"].to_list(), f["_part"].to_list(), f["_row"].to_list()


@dataclass
class EmbedStats:
    """How the stage ran on the cluster."""

    workers: list[dict[str, Any]] = field(default_factory=list)
    slices: int = 0
    embedded: int = 0
    worker_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "workers": len(self.workers),
            "slices": self.slices,
            "worker_seconds": round(self.worker_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


OnResult = Callable[[dict[str, Any], EmbedStats], None]


def _slices(data: LoadedDataset, todo: pl.DataFrame, shard_rows: int) -> list[Slice]:
    """The uncached contents (first row of each) cut into shard-sized slices."""
    where = todo.join(data.table.select("position", "_part", "_row"), on="position", how="left")
    where = where.select("content_hash", "_part", "_row").rechunk()
    cuts = [where.slice(s, shard_rows) for s in range(0, where.height, shard_rows)]
    return [Slice(shard_name(c["content_hash"].to_list()), c) for c in cuts]


def _n_workers(engine: EngineSettings, n_slices: int) -> int:
    """As many workers as fit on the cluster (or as asked), never more than there are slices."""
    import ray

    if engine.workers:
        want = engine.workers
    else:
        res = ray.cluster_resources()
        if engine.gpus_per_worker > 0:
            want = int(res.get("GPU", 0) // engine.gpus_per_worker)
        else:
            want = int(res.get("CPU", 1) // engine.cpus_per_worker)
    return max(1, min(want, n_slices))


def _start(
    engine: EngineSettings,
    settings: EmbedderSettings,
    data: LoadedDataset,
    place: ShardPlace,
    n: int,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """n started workers and what each reports; a worker that cannot start is named."""
    import ray

    actor: Any = ray.remote(EmbedWorker).options(
        num_cpus=engine.cpus_per_worker,
        num_gpus=engine.gpus_per_worker,
        max_restarts=-1,
        max_task_retries=engine.max_task_retries,
    )
    batch = engine.batch_size or settings.batch_size
    # the reader is a few KB (Arrow file references): passed inline, so a restarted worker
    # never depends on an object the driver might have released
    workers: list[Any] = [actor.remote(settings, data.reader(), place, batch) for _ in range(n)]
    try:
        return workers, ray.get([w.info.remote() for w in workers], timeout=START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as exc:
        for w in workers:
            ray.kill(w)
        raise RuntimeError(
            f"{n} embedding worker(s) ({engine.cpus_per_worker:g} CPU, "
            f"{engine.gpus_per_worker:g} GPU each) did not start within {START_TIMEOUT_S:g} s; "
            f"free on the cluster: {ray.available_resources()}"
        ) from exc


def _run_slices(
    workers: list[Any], slices: list[Slice], stats: EmbedStats, on_result: OnResult | None
) -> dict[str, str]:
    """Keep IN_FLIGHT slices queued on every worker until all are done; their errors."""
    import ray

    errors: dict[str, str] = {}
    pending: dict[Any, int] = {}
    queue = list(reversed(slices))

    def submit(w: int) -> None:
        sl = queue.pop()
        pending[workers[w].embed_slice.remote(sl.name, *sl.lists())] = w

    for w in range(len(workers)):
        for _ in range(IN_FLIGHT):
            if queue:
                submit(w)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        w = pending.pop(ref)
        res = ray.get(ref)
        errors.update(res["errors"])
        stats.embedded += res["embedded"]
        stats.worker_seconds += res["seconds"]
        if on_result is not None:
            on_result(res, stats)
        if queue:
            submit(w)
    return errors


def embed_dataset_ray(
    data: LoadedDataset,
    settings: EmbedderSettings,
    engine: EngineSettings,
    cache_root: str | Path,
    on_result: OnResult | None = None,
    bucket: ShardPlace | None = None,
) -> tuple[EmbedResult, EmbedStats]:
    """`embed_dataset` with the computing done by Ray workers: the same EmbedResult. `bucket`:
    a bucket store's cache prefix, where the workers write their shards and the tasks read them
    (`cache_root` is then the driver's mirror of it, which the workers never touch)."""
    import ray

    t0 = time.perf_counter()
    stats = EmbedStats()
    probe = make_embedder(settings, data.columns.embedding)  # its fingerprint names the shards
    if isinstance(probe, PrecomputedEmbedder):  # nothing to compute: the column is read here
        return embed_dataset(data, probe, cache_root, progress=False), stats
    readable = (  # two columns: never a copy of the whole table
        data.table.lazy()
        .filter(pl.col("error").is_null())
        .select("content_hash", "position")
        .unique("content_hash", keep="first", maintain_order=True)
        .collect()
    )
    place = _place(cache_root, bucket, probe.fingerprint)
    read = CacheRead(place)  # the shards read once for both questions
    found = cached_mask(read, readable["content_hash"])  # keys read by tasks, no vector here
    todo = readable.filter(pl.Series(~found))
    distinct = readable.height
    del readable, found
    errors: dict[str, str] = {}
    if todo.height:
        slices = _slices(data, todo, engine.shard_rows or settings.shard_rows)
        stats.slices = len(slices)
        workers, stats.workers = _start(
            engine, settings, data, place, _n_workers(engine, len(slices))
        )
        try:  # workers end with the stage, also when it fails (else they keep their GPUs)
            errors = _run_slices(workers, slices, stats, on_result)
        finally:
            for w in workers:
                ray.kill(w)
    return _result(data, probe.fingerprint, read, distinct, todo, errors, stats, t0), stats


def _place(cache_root: str | Path, bucket: ShardPlace | None, fingerprint: str) -> ShardPlace:
    """Where this embedder's shards are written and read on the cluster."""
    return (bucket or ShardPlace(str(cache_root))).child(fingerprint)


def _result(
    data: LoadedDataset,
    fingerprint: str,
    read: CacheRead,
    distinct: int,
    todo: pl.DataFrame,
    errors: dict[str, str],
    stats: EmbedStats,
    t0: float,
) -> EmbedResult:
    """The matrix a local run reads from the cache, kept on the cluster (`RayRows`: aligned by
    tasks, never here), and what the stage did."""
    lost = todo.height - len(errors) - stats.embedded
    if lost > 0:
        raise RuntimeError(f"{lost} samples were neither embedded nor failed")
    table = data.table
    matrix = from_cache(
        read,
        table["content_hash"],
        table["error"].is_null().to_numpy(),
    )
    stats.seconds = time.perf_counter() - t0
    return EmbedResult(
        matrix=np.zeros((table.height, 0), np.float32) if matrix is None else matrix,
        computed=todo.height - len(errors),
        cached=distinct - todo.height,
        seconds=stats.seconds,
        device=stats.workers[0]["device"] if stats.workers else "cpu",
        fingerprint=fingerprint,
        errors=errors,
    )
