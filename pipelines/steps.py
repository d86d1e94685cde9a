"""The run's heavy steps as plain functions: what each Prefect task in `pipelines/flows.py` calls,
and what `pipelines/core.py` calls directly when no Prefect is wanted.

Each takes tables (and the embedding matrix) and returns a typed result; only `commit`, `enqueue`
and `html_report` write, and they are given the paths they write.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.config import DedupSettings
from leanset.dedup.matrix import Rows
from leanset.dedup.stage import (
    DedupResult,
    PriorIndex,
    Search,
    SearchBetween,
    Signals,
    find_duplicates,
)
from leanset.labeling.stage import LabelingOutcome, label_and_select
from leanset.pipelines import finish
from leanset.pipelines.checks import image_measure, measures_after
from leanset.pipelines.config import EngineSettings, FlowSettings
from leanset.pipelines.cost import CostDelta
from leanset.pipelines.embed import EmbedResult, ThumbnailEmbedder, embed_dataset, make_embedder
from leanset.pipelines.embed.features import FeatureStore
from leanset.pipelines.sources import FileHashCache, LoadedDataset, load_source
from leanset.pipelines.store import Store
from leanset.pipelines.store.layout import EMBEDDINGS, FILE_HASHES, StoreLayout
from leanset.pipelines.store.manifest import JSON, Manifest
from leanset.pipelines.store.queue import PENDING, enqueue, read_queue
from leanset.pipelines.store.shardplace import ShardPlace
from leanset.pipelines.store.storage import is_url
from leanset.pipelines.store.vectors import KeptVectors
from leanset.pipelines.store.workdir import mirror_folder
from leanset.pipelines.summary import RunSummary
from leanset.pipelines.units import Accounting, account, split_roles, units_per_row

GpuSlot = Callable[[], AbstractContextManager[Any]]  # held while a local GPU embeds


def load(
    settings: FlowSettings, dry_run: bool = False, loaded: LoadedDataset | None = None
) -> LoadedDataset:
    """Read the dataset and hash every sample's content (unchanged files: from the hash cache).

    `loaded`: the dataset the caller already read in this process to answer "unchanged"."""
    return loaded if loaded is not None else load_dataset(settings, dry_run)


def load_dataset(settings: FlowSettings, dry_run: bool = False) -> LoadedDataset:
    """The sample table; a dry run reads the file-hash cache but never writes it."""
    store = Store(settings.store, settings.storage_options)
    store.side.pull_file(FILE_HASHES)
    hashes = FileHashCache(store.side_layout.file_hashes)
    probs = settings.label_noise is not None and settings.label_noise.pred_probs_column is not None
    data = load_source(settings.source, settings.columns, hashes, content_optional=probs)
    if not dry_run:
        hashes.save()
        store.side.push(FILE_HASHES)
    return data


def embeddings_folder(settings: FlowSettings) -> Path:
    """The flow's embedding cache folder: in its store, or for a bucket store in its local mirror
    (the run pulls the bucket's shards into it before embedding and pushes new ones after)."""
    if is_url(settings.store):
        return StoreLayout(mirror_folder(settings.store)).embeddings
    return StoreLayout.of(settings.store).embeddings


def embed(
    data: LoadedDataset,
    settings: FlowSettings,
    dry_run: bool = False,
    gpu_slot: GpuSlot = nullcontext,
) -> EmbedResult:
    """Embed what the cache does not hold yet (a local GPU inside `gpu_slot`); a dry run writes
    the cache too, so the real run after it embeds nothing again."""
    emb = settings.embedder
    assert emb is not None  # the run only calls this step with an embedder configured
    if settings.engine.type == "ray":  # the cluster's scheduler owns its GPUs
        from leanset.pipelines.engine.embed import embed_dataset_ray

        bucket = (
            ShardPlace.bucket(settings.store, settings.storage_options, EMBEDDINGS)
            if is_url(settings.store)
            else None
        )
        folder = embeddings_folder(settings)
        res, stats = embed_dataset_ray(data, emb, settings.engine, folder, bucket=bucket)
        res.engine = stats.to_dict()
        res.measures = measures_after(data, settings, res, folder)
        return res
    embedder = make_embedder(emb, data.columns.embedding)

    def run() -> EmbedResult:
        return embed_dataset(
            data,
            embedder,
            embeddings_folder(settings),
            batch_size=emb.batch_size,
            num_workers=emb.num_workers,
            shard_rows=emb.shard_rows,
            write_cache=True,  # content-addressed: a dry run's vectors serve the real run
            measure=image_measure(data, settings),
        )

    if not str(getattr(embedder, "device", "cpu")).startswith("cuda"):
        return run()
    with gpu_slot():
        return run()


def image_signal(data: LoadedDataset, settings: FlowSettings, dry_run: bool = False) -> EmbedResult:
    """Grey thumbnails of the images: the second signal that confirms near duplicates (cached,
    a dry run's too)."""
    emb = settings.embedder
    return embed_dataset(
        data,
        ThumbnailEmbedder(),
        embeddings_folder(settings),
        batch_size=256,
        num_workers=emb.num_workers if emb else 0,
        shard_rows=emb.shard_rows if emb else 4096,
        write_cache=True,
    )


def image_features(
    data: LoadedDataset, settings: FlowSettings, dry_run: bool = False
) -> FeatureStore:
    """Local features of the images, for the geometric check (computed when a pair needs them,
    cached beside the embeddings; a dry run keeps what it computes in memory)."""
    return FeatureStore(data, embeddings_folder(settings), read_only=dry_run)


def dedup(
    table: pl.DataFrame,
    matrix: np.ndarray | None,
    settings: DedupSettings,
    signals: Signals | None,
    prior: PriorIndex | None,
    basis: str,
    engine: EngineSettings | None = None,
) -> DedupResult:
    """Exact and near duplicates, confirmed by evidence, decided without chains (incremental
    against the parent's pairs when nothing that decides them changed). With `engine: ray` the
    near-duplicate searches run as tasks on the cluster (same pairs)."""
    search, between = _searchers(engine)
    return find_duplicates(
        table,
        matrix,
        settings,
        signals=signals,
        prior=prior,
        basis=basis,
        search=search,
        search_between=between,
    )


def _searchers(engine: EngineSettings | None) -> tuple[Search | None, SearchBetween | None]:
    """The near-duplicate searches of an engine (None: the local ones)."""
    if engine is None or engine.type == "local":
        return None, None
    from leanset.pipelines.engine import search

    cpus, rows = engine.task_cpus, engine.task_rows
    return (
        partial(search.find_near_pairs, task_cpus=cpus, task_rows=rows),
        partial(search.find_near_pairs_between, task_cpus=cpus, task_rows=rows),
    )


def labeling(
    table: pl.DataFrame,
    matrix: Rows | None,
    settings: FlowSettings,
    pred_probs: list[Any] | None,
    pending: pl.DataFrame,
    threshold: float,
    class_label: list[str] | None = None,
) -> LabelingOutcome:
    """cleanlab label issues on out-of-fold probe probabilities, then the labeling selection
    (`class_label`: the source's ClassLabel names, an order for the `pred_probs` columns)."""
    return label_and_select(
        table,
        matrix,
        settings.label_noise,
        settings.active_learning,
        pred_probs=pred_probs,
        class_label=class_label,
        pending=pending,
        threshold=threshold,
    )


@dataclass
class CostMeasures:
    """What the cost delta is computed from: units per split, and the probe's quality delta."""

    accounting: Accounting
    quality: JSON
    gpu_seconds: float


def cost(
    decided: LoadedDataset,
    raw_labels: list[str | None],
    matrix: Rows | None,
    settings: FlowSettings,
) -> CostMeasures:
    """Cost units of the training and eval splits, and the probe trained on the raw and on the
    cleaned train split, scored on the untouched eval split."""
    from leanset.labeling.probe import ProbeOptions
    from leanset.labeling.quality import table_quality

    t, cost = decided.table, settings.cost
    roles = split_roles(
        t["split"].unique().to_list(),
        cost.train_splits,
        settings.dedup.eval_splits,
        settings.columns.unlabeled_splits,
    )
    units, how = units_per_row(decided, cost, settings.embedder)
    accounting = account(t, units, roles, cost.unit, how)
    if not cost.quality or matrix is None:
        why = "cost.quality is false" if not cost.quality else "needs an embedder for the probe"
        return CostMeasures(accounting, {"skipped": why}, 0.0)
    opts = ProbeOptions.of(settings.label_noise)  # the strongest C the candidates try
    quality = table_quality(t, raw_labels, matrix, roles[0], roles[1], opts)
    fits = [quality[k] for k in ("raw", "clean") if k in quality]
    gpu = sum(f["wall_seconds"] for f in fits if str(f["device"]).startswith("cuda"))
    return CostMeasures(accounting, quality, gpu)


@dataclass
class VersionDraft:
    """Everything a commit writes, and the typed cost delta its manifest records."""

    dataset: pl.DataFrame
    decisions: pl.DataFrame
    manifest: Manifest
    parent: int | None
    pairs: pl.DataFrame | None
    queue: pl.DataFrame | None  # rows the queue fill adds after the commit (None: no labeling)
    vectors: KeptVectors | None = None  # precomputed vectors of the kept rows (shared shards)
    cost: CostDelta | None = None


def commit(store: Store, draft: VersionDraft) -> JSON:
    """Write the new version (tables and pair index first, manifest last)."""
    return store.commit(
        draft.dataset,
        draft.decisions,
        draft.manifest.to_dict(),
        draft.parent,
        pairs=draft.pairs,
        queue_rows=draft.queue,
        vectors=draft.vectors,
    )


def fill_queue(store: Store, rows: pl.DataFrame, version: int, run_id: str) -> JSON:
    """Add this version's uncertain samples, label issues and label conflicts to the queue."""
    if rows.height == 0:
        return {"added": 0}

    def add() -> tuple[Any, pl.DataFrame]:
        with store.labeling(write=True) as root:
            counts = enqueue(root, rows, run_id=run_id, version=version)
            return counts, read_queue(root)

    added_and_queue = finish.unless_disk_full(add, None)
    if added_and_queue is None:
        return {"added": 0, "not_written": "no space left on the store's disk"}
    counts, queue = added_and_queue
    done = asdict(counts)
    added = queue.filter(pl.col("version") == version).group_by("reason").len().sort("reason")
    done["by_reason"] = dict(zip(added["reason"], added["len"], strict=True))
    done["waiting"] = queue.filter(pl.col("status").is_in(list(PENDING))).height
    return done


def html_report(
    path: Path,
    summary: RunSummary,
    decisions: pl.DataFrame,
    data: LoadedDataset,
    manifest: JSON,
    parent_report: Path | None,
) -> str:
    """A static HTML page of the version, with the samples behind its decisions."""
    from leanset.pipelines.report.html import write_html_report

    def write() -> str:
        return str(write_html_report(path, summary, decisions, data, manifest, parent_report))

    return finish.unless_disk_full(write, "")  # "": not written, the disk is full
