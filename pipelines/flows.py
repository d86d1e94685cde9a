"""The cleaning flow: the ten steps of a run (ARCHITECTURE.md), each heavy one a thin Prefect task.

Tasks take and return tables (and the embedding matrix); only the commit, queue and report tasks
write into the store, and they are given the paths they write. The manifest is built once, before
the commit, and never changed after it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from leanset.dedup.config import DedupSettings
from leanset.dedup.guard import DedupGuardError, check_drops, split_drops
from leanset.dedup.imagesig import ImageSignal
from leanset.dedup.lexical import shingle_matrix
from leanset.dedup.stage import (
    DedupResult,
    PriorIndex,
    Search,
    SearchBetween,
    Signals,
    find_duplicates,
)
from leanset.labeling.stage import (
    AnswerPolicy,
    LabelingOutcome,
    apply_answers,
    label_and_select,
    queue_rows,
)
from leanset.pipelines import finish
from leanset.pipelines.calibrate import read_calibration
from leanset.pipelines.config import EngineSettings, FlowSettings, check_source_exists, load_flow
from leanset.pipelines.cost import ComputeMeter, config_hash, cost_delta, statement
from leanset.pipelines.decide import decide
from leanset.pipelines.embed import EmbedResult, ThumbnailEmbedder, embed_dataset, make_embedder
from leanset.pipelines.embed.features import FeatureStore
from leanset.pipelines.errors import USER_ERRORS
from leanset.pipelines.sources import FileHashCache, LoadedDataset, SourceError, load_source
from leanset.pipelines.store import Store
from leanset.pipelines.store.history import History
from leanset.pipelines.store.layout import StoreLayout
from leanset.pipelines.store.location import check_store_location
from leanset.pipelines.store.manifest import JSON, Counts, Manifest
from leanset.pipelines.store.queue import PENDING, enqueue, read_answers, read_queue
from leanset.pipelines.store.tables import (
    class_names,
    dataset_table,
    decisions_table,
    input_fingerprint,
)
from leanset.pipelines.store.vectors import KeptVectors
from leanset.pipelines.summary import RunSummary, Timer
from leanset.pipelines.units import Accounting, account, split_roles, units_per_row

GPU_LIMIT = "leanset-gpu"  # Prefect global concurrency limit guarding GPU work
TEXT_SIGNAL = "shingles-5-v1"  # what dedup.lexical computes (part of the pair index's basis)
log = logging.getLogger(
    "leanset.flow"
)  # routed to Prefect's run logs (PREFECT_LOGGING_EXTRA_LOGGERS)


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
def load_task(
    settings: FlowSettings, dry_run: bool = False, loaded: LoadedDataset | None = None
) -> LoadedDataset:
    """Read the dataset and hash every sample's content (unchanged files: from the hash cache).

    `loaded`: the dataset `run_flow` already read in this process to answer "unchanged"."""
    return loaded if loaded is not None else load_dataset(settings, dry_run)


def load_dataset(settings: FlowSettings, dry_run: bool = False) -> LoadedDataset:
    """The sample table; a dry run reads the file-hash cache but never writes it."""
    hashes = FileHashCache(StoreLayout.of(settings.store).file_hashes)
    data = load_source(settings.source, settings.columns, hashes)
    if not dry_run:
        hashes.save()
    return data


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(data: LoadedDataset, settings: FlowSettings, dry_run: bool = False) -> EmbedResult:
    """Embed what the cache does not hold yet (one GPU slot at a time across flows); a dry run
    reads the cache and keeps what it computes in memory."""
    emb = settings.embedder
    assert emb is not None  # the flow only calls this task with an embedder configured
    if settings.engine.type == "ray":  # the cluster's scheduler owns its GPUs
        from leanset.pipelines.engine.embed import embed_dataset_ray

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
            write_cache=not dry_run,
        )

    if not str(getattr(embedder, "device", "cpu")).startswith("cuda"):
        return run()
    from prefect.concurrency.sync import concurrency

    with concurrency(GPU_LIMIT, occupy=1, strict=False):
        return run()


@task(name="image-signal", cache_policy=NO_CACHE)
def signal_task(data: LoadedDataset, settings: FlowSettings, dry_run: bool = False) -> EmbedResult:
    """Grey thumbnails of the images: the second signal that confirms near duplicates (a dry run
    reads their cache and keeps what it computes in memory)."""
    emb = settings.embedder
    return embed_dataset(
        data,
        ThumbnailEmbedder(),
        StoreLayout.of(settings.store).embeddings,
        batch_size=256,
        num_workers=emb.num_workers if emb else 0,
        shard_rows=emb.shard_rows if emb else 4096,
        write_cache=not dry_run,
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
    from leanset.pipelines.engine import search

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
class CostMeasures:
    """What the cost delta is computed from: units per split, and the probe's quality delta."""

    accounting: Accounting
    quality: JSON
    gpu_seconds: float


@task(name="cost-and-quality", cache_policy=NO_CACHE)
def cost_task(
    decided: LoadedDataset,
    raw_labels: list[str | None],
    matrix: np.ndarray | None,
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
    noise = settings.label_noise
    opts = (  # one logistic regression (the strongest C the label-noise candidates try)
        ProbeOptions(seed=noise.seed, device=noise.device, c=max(noise.c_values))
        if noise
        else ProbeOptions()
    )
    quality = table_quality(t, raw_labels, matrix, roles[0], roles[1], opts)
    fits = [quality[k] for k in ("raw", "clean") if k in quality]
    gpu = sum(f["wall_seconds"] for f in fits if str(f["device"]).startswith("cuda"))
    return CostMeasures(accounting, quality, gpu)


@dataclass
class VersionDraft:
    """Everything a commit writes."""

    dataset: pl.DataFrame
    decisions: pl.DataFrame
    manifest: Manifest
    parent: int | None
    pairs: pl.DataFrame | None
    queue: pl.DataFrame | None  # rows the queue fill adds after the commit (None: no labeling)
    vectors: KeptVectors | None = None  # precomputed vectors of the kept rows (shared shards)


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
        draft.dataset,
        draft.decisions,
        draft.manifest.to_dict(),
        draft.parent,
        pairs=draft.pairs,
        queue_rows=draft.queue,
        vectors=draft.vectors,
    )


@task(name="fill-labeling-queue", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def enqueue_task(store_root: str, rows: pl.DataFrame, version: int) -> JSON:
    """Add this version's uncertain samples, label issues and label conflicts to the queue."""
    if rows.height == 0:
        return {"added": 0}
    from dataclasses import asdict

    from prefect.runtime import flow_run

    done = asdict(enqueue(store_root, rows, run_id=str(flow_run.id), version=version))
    queue = read_queue(store_root)
    added = queue.filter(pl.col("version") == version).group_by("reason").len().sort("reason")
    done["by_reason"] = dict(zip(added["reason"], added["len"], strict=True))
    done["waiting"] = queue.filter(pl.col("status").is_in(list(PENDING))).height
    return done


@task(name="write-html-report", cache_policy=NO_CACHE)
def html_report_task(
    path: Path,
    summary: RunSummary,
    decisions: pl.DataFrame,
    data: LoadedDataset,
    manifest: JSON,
    parent_report: Path | None,
) -> str:
    """A static HTML page of the version, with the samples behind its decisions."""
    from leanset.pipelines.report.html import write_html_report

    return str(write_html_report(path, summary, decisions, data, manifest, parent_report))


@task(name="publish-report", cache_policy=NO_CACHE)
def report_task(summary: RunSummary, decisions: pl.DataFrame | None) -> str:
    """Leave the run's summary (markdown) and its largest duplicate groups (table) as artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from leanset.pipelines.report.markdown import markdown_summary, top_groups, top_label_issues

    text = markdown_summary(summary, decisions)
    key = "leanset-" + "".join(c if c.isalnum() else "-" for c in summary.flow.lower())
    key += "-dry-run" if summary.dry_run else ""
    create_markdown_artifact(markdown=text, key=key, description=f"leanset run of {summary.flow}")
    if decisions is None or summary.dry_run:  # unchanged or dry: the one artifact above
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


def _run_name() -> str:
    """`demo-v3`: the flow and the version this run would commit (renamed when it commits none)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    name = str(params.get("flow_name", "leanset"))
    try:
        settings = load_flow(params["config_path"], name, params.get("overrides") or ())
        latest = Store(settings.store).latest()
    except USER_ERRORS + (KeyError,):  # the flow itself reports a bad config
        return name
    version = (latest["version"] if latest else 0) + 1
    return f"{name}-v{version}" + ("-dry-run" if params.get("dry_run") else "")


@flow(name="leanset-clean", flow_run_name=_run_name, log_prints=False)
def clean_flow(
    config_path: str,
    flow_name: str,
    overrides: list[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> JSON:
    """Clean one dataset from flows.yaml and commit a new version when anything changed.

    `overrides`: `key.path=value` settings over the file's (`leanset run --set`); `dry_run`:
    decide and report, commit nothing and leave the store unchanged; `force`: commit even when
    dedup would drop more of a split than the guard allows."""
    settings = load_flow(config_path, flow_name, overrides or ())
    check_source_exists(settings, config_path)
    summary, decisions = run_pipeline(
        settings, dry_run=dry_run, loaded=_HANDOFF.take(settings), force=force
    )
    if summary.unchanged:
        _rename_run(f"{settings.name}-v{summary.version}-unchanged")
    report_task(summary, decisions)
    return summary.to_dict()


def run_pipeline(
    settings: FlowSettings,
    dry_run: bool = False,
    loaded: _Loaded | None = None,
    force: bool = False,
) -> tuple[RunSummary, pl.DataFrame | None]:
    """One run: load → unchanged? → history → embed → dedup → labeling → decide → commit →
    queue → report (the decisions are returned for the report artifacts). A dry run stops
    before the commit and writes its report outside the store. With `engine: ray` the cluster is
    connected and checked first, before any work."""
    check_store_location(settings.store, settings.source)
    with _engine(settings) as engine:
        return _pipeline(settings, dry_run, loaded, force, engine)


@contextmanager
def _engine(settings: FlowSettings) -> Iterator[JSON]:
    """What the manifest records about the engine; with ray, connected to a checked cluster
    (resources, and the store and dataset visible from every node) for the whole run."""
    if settings.engine.type == "local":
        yield {"type": "local"}
        return
    from prefect.runtime import flow_run

    from leanset.pipelines.engine import ray_session

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
        log.info("Ray cluster %s: %s", info.address, info.resources)
        yield {"type": "ray", **info.to_dict()}


def _pipeline(
    settings: FlowSettings, dry_run: bool, loaded: _Loaded | None, force: bool, engine: JSON
) -> tuple[RunSummary, pl.DataFrame | None]:
    store, timer, meter = Store(settings.store), Timer(), ComputeMeter()
    parent = store.latest()
    calibration = read_calibration(store.layout)
    with timer("load"):
        data = load_task(settings, dry_run, loaded.data if loaded else None)
    if loaded:
        timer.add("load", loaded.seconds)
    data, human = _with_answers(data, store, settings, parent)
    if parent and not dry_run:
        _finish_parent(store, parent, data)
    fingerprint, hashed = input_fingerprint(data.table), config_hash(settings, calibration)
    if parent and is_current(parent, fingerprint, hashed):
        return unchanged_summary(settings, store, parent, timer), None
    with timer("history"):
        history = History.of(store, parent)
    history.warn_if_ids_changed(data.table)
    version = (parent["version"] if parent else 0) + 1
    data = data.with_table(history.mark_first_seen(data.table, version))
    embedded = _embed(data, settings, timer, meter, dry_run)
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
    measured = _measure_cost(settings, data.with_table(decided), dd.table, embedded, timer, meter)
    seen = (fingerprint, hashed, embedded, dd, labeled.info | human, guard)
    found = _Found(*seen, measured, calibration, engine)
    draft = _draft(settings, data.with_table(decided), history, parent, found, timer, meter)
    if dry_run:
        return _dry_run(settings, store, draft, data, version, timer), draft.decisions
    with timer("commit"):
        committed = commit_task(str(store.root), draft)
    log.info("Committed version %s of %s.", committed["version"], settings.store)
    summary = RunSummary.of(settings.name, settings.store, committed, timer.seconds, False)
    _after_commit(settings, store, summary, committed, data.with_table(decided), draft, parent)
    return summary, draft.decisions


def _measure_cost(
    settings: FlowSettings,
    decided: LoadedDataset,
    deduped: pl.DataFrame,
    embedded: _Embedded,
    timer: Timer,
    meter: ComputeMeter,
) -> CostMeasures:
    """The cost inputs: units per split and the quality probe on raw and cleaned train rows (the
    raw labels are those before any noise policy)."""
    with timer("cost"):
        measured = cost_task(decided, deduped["label"].to_list(), embedded.matrix, settings)
    meter.add_gpu(measured.gpu_seconds, "cuda" if measured.gpu_seconds else "cpu")
    return measured


def _after_commit(
    settings: FlowSettings,
    store: Store,
    summary: RunSummary,
    committed: JSON,
    decided: LoadedDataset,
    draft: VersionDraft,
    parent: JSON | None,
) -> None:
    """What follows the commit point: the queue fill, the promotion gate and the report. The
    queue fill and the report are each recorded as done once they are (a kill or an error here
    leaves them to the next run or `leanset show`)."""
    version = committed["version"]
    if draft.queue is not None:
        summary.labeling["queue"] = enqueue_task(str(store.root), draft.queue, version)
        finish.mark_done(store, version, finish.QUEUE, summary.labeling["queue"])
    if settings.cost.promote:
        summary.statement += "\n" + _promote_after_run(store, version, settings)
    path = store.layout.report(version)
    parent_report = store.layout.report(parent["version"]) if parent else None
    summary.report = html_report_task(
        path, summary, draft.decisions, decided, committed, parent_report
    )
    finish.mark_done(store, version, finish.REPORT, summary.report)


def is_current(parent: JSON, fingerprint: str, hashed: str) -> bool:
    """The latest version saw this input with these settings (`config_hash`): nothing to do."""
    return (parent["input_fingerprint"], parent["config_hash"]) == (fingerprint, hashed)


def unchanged_summary(
    settings: FlowSettings, store: Store, current: JSON, timer: Timer
) -> RunSummary:
    """What a run that found nothing new did: it loaded the input; the current version stands.

    Only the current version's counts are carried over (what it embedded or found is its own)."""
    log.info("Input and config unchanged since version %s: no new version.", current["version"])
    summary = RunSummary.of(settings.name, settings.store, current, dict(timer.seconds), True)
    summary.embed, summary.search, summary.labeling, summary.cost = {}, {}, {}, {}
    summary.statement = ""
    report = store.layout.report(current["version"])
    summary.report = str(report) if report.is_file() else None
    return summary


def _dry_run(
    settings: FlowSettings,
    store: Store,
    draft: VersionDraft,
    data: LoadedDataset,
    version: int,
    timer: Timer,
) -> RunSummary:
    """The summary of the version a dry run would commit, with its report in a temporary folder."""
    manifest = draft.manifest.to_dict() | {"version": version, "parent": draft.parent}
    summary = RunSummary.of(settings.name, settings.store, manifest, timer.seconds, False)
    summary.dry_run = True
    folder = Path(tempfile.mkdtemp(prefix="leanset-dry-run-"))
    path = folder / f"{settings.name}-v{version}-dry-run.html"
    parent_report = store.layout.report(draft.parent) if draft.parent else None
    summary.report = html_report_task(path, summary, draft.decisions, data, manifest, parent_report)
    log.info("Dry run: version %s was not committed; report at %s", version, path)
    return summary


def _rename_run(name: str) -> None:
    """Give the current flow run a name that says what it did."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        client.set_flow_run_name(flow_run_id=flow_run.id, name=name)


def _finish_parent(store: Store, parent: JSON, data: LoadedDataset) -> None:
    """Finish the post-commit steps the run that committed the parent did not record as done."""
    from prefect.runtime import flow_run

    pending = finish.pending_steps(store, parent)
    if not pending:
        return
    logger = log
    try:
        done = finish.finish_version(store, parent, data, run_id=str(flow_run.id))
    except USER_ERRORS + (OSError,) as exc:
        logger.warning(
            "Version %s: its %s could not be finished: %s", parent["version"], pending, exc
        )
        return
    logger.info("Version %s: finished what its run left undone: %s", parent["version"], done)


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


def _with_answers(
    data: LoadedDataset, store: Store, settings: FlowSettings, parent: JSON | None
) -> tuple[LoadedDataset, JSON]:
    """Imported human labels applied to the loaded table (they change the input fingerprint)."""
    through = (parent or {}).get("labeling", {}).get("answers_imported_through")
    al = settings.active_learning
    policy = AnswerPolicy(
        pool_splits=tuple(settings.columns.unlabeled_splits),
        move_to=al.labeled_pool_split if al is not None else "train",
        applied_through=datetime.fromisoformat(through) if through else None,
    )
    labeled, human = apply_answers(data.table, read_answers(store.root), policy)
    return data.with_table(labeled), human


def _embed(
    data: LoadedDataset, settings: FlowSettings, timer: Timer, meter: ComputeMeter, dry_run: bool
) -> _Embedded:
    """Embed (cache first) when an embedder is configured."""
    if settings.embedder is None:
        _refuse_all_unreadable(data.table)
        return _Embedded(data.table, None, {})
    with timer("embed"):
        res = embed_task(data, settings, dry_run)
        wanted = _wants_signal(settings, data, ("pixels", "hashes", "geometry"), "image")
        thumbs = signal_task(data, settings, dry_run) if wanted else None
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
    log.info("Embedded %d new samples, %d from cache (%s).", res.computed, res.cached, res.device)
    table = _mark_unreadable(data.table, res.errors)
    _refuse_all_unreadable(table)
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
    geometric = _wants_signal(settings, data, ("geometry",), "image")
    features = FeatureStore(data, StoreLayout.of(settings.store).embeddings, dry_run)
    signals = Signals(image=ImageSignal.of(thumbs.matrix), features=features if geometric else None)
    return _Embedded(table, res.matrix, info, signals, f"{res.fingerprint}|{thumbs.fingerprint}")


def _wants_signal(
    settings: FlowSettings, data: LoadedDataset, routes: tuple[str, ...], modality: str
) -> bool:
    """Whether a route of `dedup.confirm` needs the second signal of this modality."""
    confirm = settings.dedup.confirm
    wanted = set(routes) if confirm == "auto" else set() if confirm == "embedding" else set(confirm)
    return data.modality == modality and settings.dedup.near and bool(wanted & set(routes))


def _refuse_all_unreadable(table: pl.DataFrame) -> None:
    """A dataset none of whose samples can be read is an error, not an empty version."""
    if table["error"].null_count():
        return
    first = table.head(3).select("source", "error").iter_rows()
    shown = "; ".join(f"{src}: {err}" for src, err in first)
    raise SourceError(
        f"every one of the {table.height:,} samples is unreadable, so nothing was committed; "
        f"first errors: {shown}"
    )


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
        log.warning("Forced past the dedup guard: %s", exc)
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
    outcome = labeling_task(table, matrix, settings, given, pending, min(threshold, 0.999))
    _warn_if_label_stages_skipped(outcome.info, table)
    return outcome


def _warn_if_label_stages_skipped(info: JSON, table: pl.DataFrame) -> None:
    """Configured label stages that found nothing to learn from say so (a run that queues nothing
    and flags nothing must not look like a clean bill of health)."""
    skipped = []
    if str(info.get("label_noise", "")).startswith("skipped"):
        skipped.append("label noise")
    if "note" in (info.get("selection") or {}):
        skipped.append("the labeling selection")
    if not skipped:
        return
    labeled = table.filter(pl.col("error").is_null() & pl.col("label").is_not_null()).height
    logging.getLogger("leanset.labeling").warning(
        "%s could not run: %d readable sample(s) have a label (labels come from columns.label, "
        "or from the class folders of labeled splits: split/class/file); nothing was flagged or "
        "queued",
        " and ".join(skipped),
        labeled,
    )


@dataclass
class _Found:
    """What the run saw and the stages report for the manifest: input, embedding, search, labeling."""

    fingerprint: str
    config_hash: str
    embedded: _Embedded
    dedup: DedupResult
    labeling: JSON
    guard: JSON
    cost: CostMeasures
    cost_calibration: JSON | None  # the store's `leanset calibrate` record, when there is one
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
    m = found.cost
    cd = cost_delta(settings.cost, m.accounting, meter.read(), found.cost_calibration, m.quality)
    key = found.dedup.index_key
    manifest = Manifest(
        flow=settings.name,
        config_hash=found.config_hash,
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
        classes=class_names(decided, decisions),
        guard=found.guard,
        post_commit=finish.steps_for(bool(settings.label_noise or settings.active_learning)),
        engine=found.engine,
    )
    parent_version = parent["version"] if parent else None
    pairs = found.dedup.pairs if key else None
    labeling = bool(settings.label_noise or settings.active_learning)
    queue = _queue_rows(decided.table, settings, decided) if labeling else None
    vectors = None
    if decided.modality == "embedding":
        kept = decisions.filter(pl.col("kept")).unique("content_hash", maintain_order=True)
        vectors = KeptVectors(decided, kept.select("content_hash", "position"))
    return VersionDraft(cleaned, decisions, manifest, parent_version, pairs, queue, vectors)


def _promote_after_run(store: Store, version: int, settings: FlowSettings) -> str:
    """The flow option `cost.promote`: promote the new version when the quality gate passes."""
    from leanset.pipelines.store.promotions import PromotionRefused, promote

    try:
        record, gate = promote(
            store,
            version,
            settings.cost.max_accuracy_drop,
            by=f"leanset run (flow {settings.name})",
            reason="flow option cost.promote",
        )
    except PromotionRefused as exc:
        log.warning("Version %s not promoted: %s", version, exc)
        return f"Promotion (cost.promote): {exc}"
    return f"Promotion (cost.promote): {gate.statement()}"


def _queue_rows(decided: pl.DataFrame, settings: FlowSettings, data: LoadedDataset) -> pl.DataFrame:
    """Queue rows of this version; text tasks carry the text (or, for bare vectors, the source)."""
    rows = queue_rows(decided, settings.active_learning)
    if rows.height == 0 or data.modality == "image":
        return rows
    where = decided.select("sample_id", "position").join(rows.select("sample_id"), on="sample_id")
    texts = dict(zip(where["sample_id"], data.texts(where["position"].to_list()), strict=True))
    return rows.with_columns(pl.col("sample_id").replace_strict(texts).alias("text"))


@dataclass
class _Loaded:
    """A dataset `run_flow` read before the flow started, and the seconds that took."""

    settings: FlowSettings
    data: LoadedDataset
    seconds: float


class _Handoff:
    """The one dataset `run_flow` read to check for "unchanged", for the flow run it then starts
    in this process (a flow run elsewhere, e.g. a served deployment, loads its own)."""

    def __init__(self) -> None:
        self._slot: _Loaded | None = None

    def put(self, loaded: _Loaded) -> None:
        self._slot = loaded

    def take(self, settings: FlowSettings) -> _Loaded | None:
        loaded, self._slot = self._slot, None
        return loaded if loaded is not None and loaded.settings == settings else None


_HANDOFF = _Handoff()


def run_flow(
    config: str | Path,
    flow_name: str,
    overrides: list[str] | None = None,
    dry_run: bool = False,
    trigger: str = "cli",
    force: bool = False,
) -> JSON:
    """Run one flow through Prefect (its local ephemeral API unless an API URL is set).

    The config and the source are checked first, before Prefect starts; without a Prefect API
    the input is loaded here too, and an unchanged input answers at once, starting no server
    (otherwise the temporary server Prefect starts is guarded: `pipelines/orphans.py`).
    The flow run is tagged `leanset`, the flow's name and `trigger` (`cli`, `demo`)."""
    settings = load_flow(config, flow_name, overrides or ())
    check_source_exists(settings, config)
    check_store_location(settings.store, settings.source)
    if not _has_api():
        current = _answer_if_unchanged(settings, dry_run)
        if current is not None:
            return current.to_dict()
        from leanset.pipelines.orphans import guard

        guard()  # Prefect starts its temporary server next: it must end with this process
    from prefect import tags

    with tags("leanset", flow_name, trigger, *(["dry-run"] if dry_run else [])):
        return clean_flow(
            config_path=str(Path(config).resolve()),
            flow_name=flow_name,
            overrides=list(overrides or []),
            dry_run=dry_run,
            force=force,
        )


def _has_api() -> bool:
    """A Prefect API is configured (a server or Prefect Cloud), so no temporary one starts."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _answer_if_unchanged(settings: FlowSettings, dry_run: bool) -> RunSummary | None:
    """The summary of an unchanged run, read without Prefect; else None (the loaded dataset is
    handed to the flow run, which does not read it again)."""
    store, timer = Store(settings.store), Timer()
    with timer("load"):
        data = load_dataset(settings, dry_run)
    current = store.latest()
    labeled, _ = _with_answers(data, store, settings, current)
    hashed = config_hash(settings, read_calibration(store.layout))
    if current and is_current(current, input_fingerprint(labeled.table), hashed):
        return unchanged_summary(settings, store, current, timer)
    _HANDOFF.put(_Loaded(settings, data, timer.seconds["load"]))
    return None
