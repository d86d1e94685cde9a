"""The cleaning flow: the ten steps of a run (ARCHITECTURE.md), each heavy one a thin Prefect task.

Tasks take and return tables (and the embedding matrix); only the commit, queue and report tasks
write into the store, and they are given the paths they write. The manifest is built once, before
the commit, and never changed after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dedup.config import DedupSettings
from dedup.guard import DedupGuardError, check_drops, split_drops
from dedup.imagesig import ImageSignal
from dedup.lexical import shingle_matrix
from dedup.stage import DedupResult, PriorIndex, Search, SearchBetween, Signals, find_duplicates
from labeling.stage import LabelingOutcome, apply_answers, label_and_select, queue_rows
from pipelines.config import EngineSettings, FlowSettings, load_flow
from pipelines.cost import ComputeMeter, cost_delta, statement
from pipelines.decide import decide
from pipelines.embed import EmbedResult, ThumbnailEmbedder, embed_dataset, make_embedder
from pipelines.errors import USER_ERRORS
from pipelines.sources import FileHashCache, LoadedDataset, load_source
from pipelines.store import Store
from pipelines.store.history import History
from pipelines.store.layout import StoreLayout
from pipelines.store.manifest import JSON, Counts, Manifest
from pipelines.store.queue import PENDING, enqueue, read_answers, read_queue
from pipelines.store.tables import dataset_table, decisions_table, input_fingerprint
from pipelines.summary import RunSummary, Timer

GPU_LIMIT = "leanset-gpu"  # Prefect global concurrency limit guarding GPU work
TEXT_SIGNAL = "shingles-5-v1"  # what dedup.lexical computes (part of the pair index's basis)


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures a second try may pass; never bad input, a lost race, or a bug."""
    try:
        state.result()
    except USER_ERRORS:  # includes StoreConflict: a retry cannot win the race it lost
        return False
    except OSError:  # a flaky disk or network
        return True
    except Exception:  # noqa: BLE001 - a bug fails the same way again
        return False
    return True


# ---------------------------------------------------------------- tasks


@task(
    name="load-source",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def load_task(settings: FlowSettings) -> LoadedDataset:
    """Read the dataset and hash every sample's content (unchanged files: from the hash cache)."""
    hashes = FileHashCache(StoreLayout.of(settings.store).file_hashes)
    data = load_source(settings.source, settings.columns, hashes)
    hashes.save()
    return data


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(data: LoadedDataset, settings: FlowSettings) -> EmbedResult:
    """Embed what the cache does not hold yet (one GPU slot at a time across flows)."""
    emb = settings.embedder
    assert emb is not None  # the flow only calls this task with an embedder configured
    if settings.engine.type == "ray":  # the cluster's scheduler owns its GPUs
        from pipelines.engine.embed import embed_dataset_ray

        res, stats = embed_dataset_ray(
            data, emb, settings.engine, StoreLayout.of(settings.store).embeddings
        )
        res.engine = stats.to_dict()
        return res
    embedder = make_embedder(emb, data.columns.embedding)

    def run() -> EmbedResult:
        return embed_dataset(
            data,
            embedder,
            StoreLayout.of(settings.store).embeddings,
            batch_size=emb.batch_size,
            num_workers=emb.num_workers,
            shard_rows=emb.shard_rows,
        )

    if not str(getattr(embedder, "device", "cpu")).startswith("cuda"):
        return run()
    from prefect.concurrency.sync import concurrency

    with concurrency(GPU_LIMIT, occupy=1, strict=False):
        return run()


@task(name="image-signal", cache_policy=NO_CACHE)
def signal_task(data: LoadedDataset, settings: FlowSettings) -> EmbedResult:
    """Grey thumbnails of the images: the second signal that confirms near duplicates."""
    emb = settings.embedder
    return embed_dataset(
        data,
        ThumbnailEmbedder(),
        StoreLayout.of(settings.store).embeddings,
        batch_size=256,
        num_workers=emb.num_workers if emb else 0,
        shard_rows=emb.shard_rows if emb else 4096,
    )


@task(name="find-duplicates", cache_policy=NO_CACHE)
def dedup_task(
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
    from pipelines.engine import search

    cpus = engine.task_cpus
    return (
        partial(search.find_near_pairs, task_cpus=cpus),
        partial(search.find_near_pairs_between, task_cpus=cpus),
    )


@task(name="label-noise-and-selection", cache_policy=NO_CACHE)
def labeling_task(
    table: pl.DataFrame,
    matrix: np.ndarray | None,
    settings: FlowSettings,
    pred_probs: list[Any] | None,
    pending: pl.DataFrame,
    threshold: float,
) -> LabelingOutcome:
    """cleanlab label issues on out-of-fold probe probabilities, then the labeling selection."""
    return label_and_select(
        table,
        matrix,
        settings.label_noise,
        settings.active_learning,
        pred_probs=pred_probs,
        pending=pending,
        threshold=threshold,
    )


@dataclass
class VersionDraft:
    """Everything a commit writes."""

    dataset: pl.DataFrame
    decisions: pl.DataFrame
    manifest: Manifest
    parent: int | None
    pairs: pl.DataFrame | None


@task(
    name="commit-version",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def commit_task(store_root: str, draft: VersionDraft) -> JSON:
    """Write the new version (tables and pair index first, manifest last)."""
    return Store(store_root).commit(
        draft.dataset, draft.decisions, draft.manifest.to_dict(), draft.parent, pairs=draft.pairs
    )


@task(name="fill-labeling-queue", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def enqueue_task(store_root: str, rows: pl.DataFrame, version: int) -> JSON:
    """Add this version's uncertain samples, label issues and label conflicts to the queue."""
    if rows.height == 0:
        return {"added": 0}
    from dataclasses import asdict

    from prefect.runtime import flow_run

    return asdict(enqueue(store_root, rows, run_id=str(flow_run.id), version=version))


@task(name="write-html-report", cache_policy=NO_CACHE)
def html_report_task(
    path: Path, summary: RunSummary, decisions: pl.DataFrame, data: LoadedDataset
) -> str:
    """A static HTML page of the version, with the samples behind its decisions."""
    from pipelines.report.html import write_html_report

    return str(write_html_report(path, summary, decisions, data))


@task(name="publish-report", cache_policy=NO_CACHE)
def report_task(summary: RunSummary, decisions: pl.DataFrame | None) -> str:
    """Leave the run's summary (markdown) and its largest duplicate groups (table) as artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from pipelines.report.markdown import markdown_summary, top_groups, top_label_issues

    text = markdown_summary(summary, decisions)
    key = "leanset-" + "".join(c if c.isalnum() else "-" for c in summary.flow.lower())
    create_markdown_artifact(markdown=text, key=key, description=f"leanset run of {summary.flow}")
    if decisions is None:
        return text
    tables = (
        ("groups", top_groups(decisions, 25), "largest duplicate groups"),
        ("label-issues", top_label_issues(decisions, 25), "likeliest label errors"),
    )
    for suffix, frame, description in tables:
        if frame.height:
            create_table_artifact(
                table=frame.to_dicts(), key=f"{key}-{suffix}", description=description
            )
    return text


# ---------------------------------------------------------------- the flow


@flow(name="leanset-clean", flow_run_name="clean-{flow_name}", log_prints=False)
def clean_flow(config_path: str, flow_name: str, force: bool = False) -> JSON:
    """Clean one dataset from flows.yaml and commit a new version when anything changed.

    `force`: commit even when dedup would drop more of a split than the guard allows."""
    settings = load_flow(config_path, flow_name)
    summary, decisions = run_pipeline(settings, force=force)
    report_task(summary, decisions)
    return summary.to_dict()


def run_pipeline(
    settings: FlowSettings, force: bool = False
) -> tuple[RunSummary, pl.DataFrame | None]:
    """One run: load → unchanged? → history → embed → dedup → labeling → decide → commit →
    queue → report (the decisions are returned for the report artifacts). With `engine: ray`
    the cluster is connected and checked first, before any work."""
    with _engine(settings) as engine:
        return _pipeline(settings, force, Timer(), engine)


@contextmanager
def _engine(settings: FlowSettings) -> Iterator[JSON]:
    """What the manifest records about the engine; with ray, connected to a checked cluster
    (resources, and the store and dataset visible from every node) for the whole run."""
    if settings.engine.type == "local":
        yield {"type": "local"}
        return
    from prefect.runtime import flow_run

    from pipelines.engine import ray_session

    paths = {"store": Path(settings.store)}
    if settings.source.path and settings.source.type in ("imagefolder", "disk"):
        paths["source.path"] = Path(settings.source.path)
    for n, f in enumerate(settings.source.data_files or []):  # a glob: its folder
        paths[f"source.data_files[{n}]"] = Path(f).parent if set("*?[") & set(f) else Path(f)
    import datasets.config

    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)  # workers read the Arrow files there
    if hf_cache.is_dir():
        paths["the Hugging Face datasets cache (HF_DATASETS_CACHE)"] = hf_cache
    metadata = {"leanset_flow": settings.name, "prefect_flow_run_id": str(flow_run.id or "")}
    with ray_session(settings.engine, paths, ["store"], metadata) as info:
        get_run_logger().info("Ray cluster %s: %s", info.address, info.resources)
        yield {"type": "ray", **info.to_dict()}


def _pipeline(
    settings: FlowSettings, force: bool, timer: Timer, engine: JSON
) -> tuple[RunSummary, pl.DataFrame | None]:
    store, meter = Store(settings.store), ComputeMeter()
    parent = store.latest()
    with timer("load"):
        data = load_task(settings)
    data, human = _with_answers(data, store)
    fingerprint, config_hash = input_fingerprint(data.table), settings.fingerprint()
    if parent and (parent["input_fingerprint"], parent["config_hash"]) == (
        fingerprint,
        config_hash,
    ):
        return _unchanged(settings, store, parent, timer), None
    with timer("history"):
        history = History.of(store, parent)
    version = (parent["version"] if parent else 0) + 1
    data = data.with_table(history.mark_first_seen(data.table, version))
    embedded = _embed(data, settings, timer, meter)
    prior = history.prior_index() if settings.dedup.near else None
    with timer("dedup"):
        dd = dedup_task(
            embedded.table,
            embedded.matrix,
            settings.dedup,
            embedded.signals,
            prior,
            embedded.basis,
            settings.engine,
        )
    guard = _guard(dd.table, settings.dedup, force)
    with timer("labeling"):
        labeled = _label(dd.table, embedded.matrix, settings, data, store, dd.calibration)
    decided = decide(labeled.table)
    found = _Found(fingerprint, embedded, dd, labeled.info | human, guard, engine)
    draft = _draft(settings, data.with_table(decided), history, parent, found, timer, meter)
    with timer("commit"):
        committed = commit_task(str(store.root), draft)
    get_run_logger().info("Committed version %s of %s.", committed["version"], settings.store)
    summary = RunSummary.of(settings.name, settings.store, committed, timer.seconds, False)
    if settings.label_noise or settings.active_learning:
        rows = _queue_rows(decided, settings, data)
        summary.labeling["queue"] = enqueue_task(str(store.root), rows, committed["version"])
    path = store.layout.report(committed["version"])
    summary.report = html_report_task(path, summary, draft.decisions, data)
    get_run_logger().info(summary.statement)
    return summary, draft.decisions


# ---------------------------------------------------------------- the steps' details


@dataclass
class _Embedded:
    """The table with decode errors marked, its matrix and second signals, what embedding did,
    and the fingerprints of what made them (the basis of a reusable pair index)."""

    table: pl.DataFrame
    matrix: np.ndarray | None
    info: JSON
    signals: Signals | None = None
    basis: str = ""


def _with_answers(data: LoadedDataset, store: Store) -> tuple[LoadedDataset, dict[str, int]]:
    """Imported human labels applied to the loaded table (they change the input fingerprint)."""
    labeled, human = apply_answers(data.table, read_answers(store.root))
    return data.with_table(labeled), human


def _unchanged(settings: FlowSettings, store: Store, parent: JSON, timer: Timer) -> RunSummary:
    """The summary of a run whose input and config match the latest version's."""
    get_run_logger().info(
        "Input and config unchanged since version %s: no new version.", parent["version"]
    )
    summary = RunSummary.of(settings.name, settings.store, parent, timer.seconds, True)
    summary.report = str(store.layout.report(parent["version"]))
    return summary


def _embed(
    data: LoadedDataset, settings: FlowSettings, timer: Timer, meter: ComputeMeter
) -> _Embedded:
    """Embed (cache first) when an embedder is configured."""
    if settings.embedder is None:
        return _Embedded(data.table, None, {})
    with timer("embed"):
        res = embed_task(data, settings)
        wanted = _wants_signal(settings, data, ("pixels", "hashes"), "image")
        thumbs = signal_task(data, settings) if wanted else None
    meter.add_gpu(res.seconds, res.device)
    info = {
        "computed": res.computed,
        "cached": res.cached,
        "device": res.device,
        "fingerprint": res.fingerprint,
        "samples_per_s": round(res.computed / max(res.seconds, 1e-9), 1),
    }
    if res.engine:
        info["engine"] = res.engine
    get_run_logger().info(
        "Embedded %d new samples, %d from cache (%s).", res.computed, res.cached, res.device
    )
    table = _mark_unreadable(data.table, res.errors)
    if _wants_signal(settings, data, ("shingles",), "text"):
        readable = table["error"].is_null().to_list()
        texts = [
            t if ok else None
            for t, ok in zip(data.texts(range(table.height)), readable, strict=True)
        ]
        info["signal"] = {"fingerprint": TEXT_SIGNAL}
        signals = Signals(text=shingle_matrix(texts))
        return _Embedded(table, res.matrix, info, signals, f"{res.fingerprint}|{TEXT_SIGNAL}")
    if thumbs is None:
        return _Embedded(table, res.matrix, info, None, res.fingerprint)
    table = _mark_unreadable(table, thumbs.errors)
    info["signal"] = {"fingerprint": thumbs.fingerprint, "computed": thumbs.computed}
    signals = Signals(image=ImageSignal.of(thumbs.matrix))
    return _Embedded(table, res.matrix, info, signals, f"{res.fingerprint}|{thumbs.fingerprint}")


def _wants_signal(
    settings: FlowSettings, data: LoadedDataset, routes: tuple[str, ...], modality: str
) -> bool:
    """Whether a route of `dedup.confirm` needs the second signal of this modality."""
    confirm = settings.dedup.confirm
    wanted = set(routes) if confirm == "auto" else set() if confirm == "embedding" else set(confirm)
    return data.modality == modality and settings.dedup.near and bool(wanted & set(routes))


def _mark_unreadable(table: pl.DataFrame, errors: dict[str, str]) -> pl.DataFrame:
    """Samples that failed to decode get their error (so they are dropped as unreadable)."""
    if not errors:
        return table
    found = pl.col("content_hash").replace_strict(errors, default=None, return_dtype=pl.Utf8)
    return table.with_columns(pl.coalesce(pl.col("error"), found).alias("error"))


def _guard(table: pl.DataFrame, settings: DedupSettings, force: bool) -> JSON:
    """The guard's verdict on what dedup would drop (raises when it refuses, unless forced)."""
    try:
        drops = check_drops(table, settings)
    except DedupGuardError as exc:
        if not force:
            raise
        get_run_logger().warning("Forced past the dedup guard: %s", exc)
        drops = split_drops(table)
    return {
        "forced": force,
        "max_drop_fraction": settings.max_drop_fraction,
        "max_group_fraction": settings.max_group_fraction,
        "splits": {
            d.split: {
                "samples": d.samples,
                "dropped": d.dropped,
                "largest_group": d.largest_group_size,
            }
            for d in drops
        },
    }


def _label(
    table: pl.DataFrame,
    matrix: np.ndarray | None,
    settings: FlowSettings,
    data: LoadedDataset,
    store: Store,
    calibration: JSON,
) -> LabelingOutcome:
    """The labeling stages, with the user's own probabilities and the waiting queue; two picks
    are never closer than the dedup threshold (as calibrated)."""
    if not (settings.label_noise or settings.active_learning):
        return LabelingOutcome(table, {})
    column = settings.label_noise.pred_probs_column if settings.label_noise else None
    given = data.column(column) if column else None
    pending = read_queue(store.root).filter(pl.col("status").is_in(list(PENDING)))
    t = settings.dedup.threshold
    threshold = float(calibration.get("threshold", 0.95)) if t == "auto" else float(t)
    return labeling_task(table, matrix, settings, given, pending, min(threshold, 0.999))


@dataclass
class _Found:
    """What the run saw and the stages report for the manifest: input, embedding, search, labeling."""

    fingerprint: str
    embedded: _Embedded
    dedup: DedupResult
    labeling: JSON
    guard: JSON
    engine: JSON


def _draft(
    settings: FlowSettings,
    decided: LoadedDataset,
    history: History,
    parent: JSON | None,
    found: _Found,
    timer: Timer,
    meter: ComputeMeter,
) -> VersionDraft:
    """The tables, the manifest and the pair index of the version this run commits."""
    decisions = decisions_table(decided.table)
    with timer("build_version"):
        cleaned = dataset_table(decided, decisions)
    counts = Counts.of(decisions, settings.dedup.eval_splits, history.new_counts(decisions))
    cd = cost_delta(settings.cost, counts.input, counts.kept, meter.read())
    key = found.dedup.index_key
    manifest = Manifest(
        flow=settings.name,
        config_hash=settings.fingerprint(),
        config=settings.to_dict(),
        input_fingerprint=found.fingerprint,
        counts=counts,
        timings=dict(timer.seconds),
        cost=cd.to_dict(),
        statement=statement(cd),
        embed=found.embedded.info,
        search=found.dedup.search,
        index={"key": key},
        calibration=found.dedup.calibration,
        labeling=found.labeling,
        guard=found.guard,
        engine=found.engine,
    )
    parent_version = parent["version"] if parent else None
    pairs = found.dedup.pairs if key else None
    return VersionDraft(cleaned, decisions, manifest, parent_version, pairs)


def _queue_rows(decided: pl.DataFrame, settings: FlowSettings, data: LoadedDataset) -> pl.DataFrame:
    """Queue rows of this version; text tasks carry the text (or, for bare vectors, the source)."""
    rows = queue_rows(decided, settings.active_learning)
    if rows.height == 0 or data.modality == "image":
        return rows
    where = decided.select("sample_id", "position").join(rows.select("sample_id"), on="sample_id")
    texts = dict(zip(where["sample_id"], data.texts(where["position"].to_list()), strict=True))
    return rows.with_columns(pl.col("sample_id").replace_strict(texts).alias("text"))


def run_flow(config: str | Path, flow_name: str, force: bool = False) -> JSON:
    """Run one flow through Prefect (its local ephemeral API unless PREFECT_API_URL is set)."""
    load_flow(config, flow_name)  # fail fast, before Prefect starts, on a bad config
    return clean_flow(config_path=str(Path(config).resolve()), flow_name=flow_name, force=force)
