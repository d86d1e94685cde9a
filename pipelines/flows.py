"""The cleaning flow: the ten steps of a run (ARCHITECTURE.md), each heavy one a thin Prefect task.

Tasks take and return tables (and the embedding matrix); only the commit, queue and report tasks
write into the store, and they are given the paths they write. The manifest is built once, before
the commit, and never changed after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dedup.config import DedupSettings
from dedup.stage import DedupResult, PriorIndex, find_duplicates
from labeling.stage import LabelingOutcome, apply_answers, label_and_select, queue_rows
from pipelines import finish
from pipelines.config import FlowSettings, load_flow
from pipelines.cost import ComputeMeter, cost_delta, statement
from pipelines.decide import decide
from pipelines.embed import EmbedResult, embed_dataset, make_embedder
from pipelines.errors import USER_ERRORS
from pipelines.sources import FileHashCache, LoadedDataset, SourceError, load_source
from pipelines.store import Store
from pipelines.store.history import History
from pipelines.store.layout import StoreLayout
from pipelines.store.location import check_store_location
from pipelines.store.manifest import JSON, Counts, Manifest
from pipelines.store.queue import PENDING, enqueue, read_answers, read_queue
from pipelines.store.tables import dataset_table, decisions_table, input_fingerprint
from pipelines.store.vectors import KeptVectors
from pipelines.summary import RunSummary, Timer

GPU_LIMIT = "leanset-gpu"  # Prefect global concurrency limit guarding GPU work


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


@task(name="find-duplicates", cache_policy=NO_CACHE)
def dedup_task(
    table: pl.DataFrame,
    matrix: np.ndarray | None,
    settings: DedupSettings,
    prior: PriorIndex | None,
) -> DedupResult:
    """Exact and near duplicates, groups, leaks and label conflicts (incremental with a prior)."""
    return find_duplicates(table, matrix, settings, prior=prior)


@task(name="label-noise-and-selection", cache_policy=NO_CACHE)
def labeling_task(
    table: pl.DataFrame,
    matrix: np.ndarray | None,
    settings: FlowSettings,
    pred_probs: list[Any] | None,
    pending: pl.DataFrame,
) -> LabelingOutcome:
    """cleanlab label issues on out-of-fold probe probabilities, then the labeling selection."""
    return label_and_select(
        table,
        matrix,
        settings.label_noise,
        settings.active_learning,
        pred_probs=pred_probs,
        pending=pending,
        threshold=settings.dedup.threshold,
    )


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
def clean_flow(config_path: str, flow_name: str) -> JSON:
    """Clean one dataset from flows.yaml and commit a new version when anything changed."""
    settings = load_flow(config_path, flow_name)
    summary, decisions = run_pipeline(settings)
    report_task(summary, decisions)
    return summary.to_dict()


def run_pipeline(settings: FlowSettings) -> tuple[RunSummary, pl.DataFrame | None]:
    """One run: load → unchanged? → history → embed → dedup → labeling → decide → commit →
    queue → report (the decisions are returned for the report artifacts)."""
    check_store_location(settings.store, settings.source)
    store, timer, meter = Store(settings.store), Timer(), ComputeMeter()
    parent = store.latest()
    with timer("load"):
        data = load_task(settings)
    data, human = _with_answers(data, store)
    if parent:
        _finish_parent(store, parent, data)
    fingerprint, config_hash = input_fingerprint(data.table), settings.fingerprint()
    if parent and (parent["input_fingerprint"], parent["config_hash"]) == (
        fingerprint,
        config_hash,
    ):
        return _unchanged(settings, store, parent, timer), None
    with timer("history"):
        history = History.of(store, parent)
    history.warn_if_ids_changed(data.table)
    version = (parent["version"] if parent else 0) + 1
    data = data.with_table(history.mark_first_seen(data.table, version))
    embedded = _embed(data, settings, timer, meter)
    prior = history.prior_index(embedded.index_key) if settings.dedup.near else None
    with timer("dedup"):
        dd = dedup_task(embedded.table, embedded.matrix, settings.dedup, prior)
    with timer("labeling"):
        labeled = _label(dd.table, embedded.matrix, settings, data, store)
    decided = decide(labeled.table)
    found = _Found(fingerprint, embedded, dd, labeled.info | human)
    draft = _draft(settings, data.with_table(decided), history, parent, found, timer, meter)
    with timer("commit"):
        committed = commit_task(str(store.root), draft)
    get_run_logger().info("Committed version %s of %s.", committed["version"], settings.store)
    summary = RunSummary.of(settings.name, settings.store, committed, timer.seconds, False)
    _after_commit(store, committed["version"], draft, data, summary)
    get_run_logger().info(summary.statement)
    return summary, draft.decisions


def _after_commit(
    store: Store, version: int, draft: VersionDraft, data: LoadedDataset, summary: RunSummary
) -> None:
    """The queue fill and the report, each recorded as done once it is (a kill or an error here
    leaves them to the next run or `leanset show`)."""
    if draft.queue is not None:
        summary.labeling["queue"] = enqueue_task(str(store.root), draft.queue, version)
        finish.mark_done(store, version, finish.QUEUE, summary.labeling["queue"])
    path = store.layout.report(version)
    summary.report = html_report_task(path, summary, draft.decisions, data)
    finish.mark_done(store, version, finish.REPORT, summary.report)


def _finish_parent(store: Store, parent: JSON, data: LoadedDataset) -> None:
    """Finish the post-commit steps the run that committed the parent did not record as done."""
    from prefect.runtime import flow_run

    pending = finish.pending_steps(store, parent)
    if not pending:
        return
    logger = get_run_logger()
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
    """The table with decode errors marked, its matrix, what embedding did, the pair-index key."""

    table: pl.DataFrame
    matrix: np.ndarray | None
    info: JSON
    index_key: str | None


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
        _refuse_all_unreadable(data.table)
        return _Embedded(data.table, None, {}, None)
    with timer("embed"):
        res = embed_task(data, settings)
    meter.add_gpu(res.seconds, res.device)
    info = {
        "computed": res.computed,
        "cached": res.cached,
        "device": res.device,
        "fingerprint": res.fingerprint,
        "samples_per_s": round(res.computed / max(res.seconds, 1e-9), 1),
    }
    get_run_logger().info(
        "Embedded %d new samples, %d from cache (%s).", res.computed, res.cached, res.device
    )
    key = f"{res.fingerprint}|{settings.dedup.threshold}"
    table = _mark_unreadable(data.table, res.errors)
    _refuse_all_unreadable(table)
    return _Embedded(table, res.matrix, info, key)


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


def _label(
    table: pl.DataFrame,
    matrix: np.ndarray | None,
    settings: FlowSettings,
    data: LoadedDataset,
    store: Store,
) -> LabelingOutcome:
    """The labeling stages, with the user's own probabilities and the waiting queue."""
    if not (settings.label_noise or settings.active_learning):
        return LabelingOutcome(table, {})
    column = settings.label_noise.pred_probs_column if settings.label_noise else None
    given = data.column(column) if column else None
    pending = read_queue(store.root).filter(pl.col("status").is_in(list(PENDING)))
    outcome = labeling_task(table, matrix, settings, given, pending)
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
    embedded: _Embedded
    dedup: DedupResult
    labeling: JSON


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
    key = found.embedded.index_key
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
        labeling=found.labeling,
        post_commit=finish.steps_for(bool(settings.label_noise or settings.active_learning)),
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


def _queue_rows(decided: pl.DataFrame, settings: FlowSettings, data: LoadedDataset) -> pl.DataFrame:
    """Queue rows of this version; text tasks carry the text (or, for bare vectors, the source)."""
    rows = queue_rows(decided, settings.active_learning)
    if rows.height == 0 or data.modality == "image":
        return rows
    where = decided.select("sample_id", "position").join(rows.select("sample_id"), on="sample_id")
    texts = dict(zip(where["sample_id"], data.texts(where["position"].to_list()), strict=True))
    return rows.with_columns(pl.col("sample_id").replace_strict(texts).alias("text"))


def run_flow(config: str | Path, flow_name: str) -> JSON:
    """Run one flow through Prefect (its local ephemeral API unless PREFECT_API_URL is set)."""
    settings = load_flow(config, flow_name)  # fail fast, before Prefect starts, on a bad config
    check_store_location(settings.store, settings.source)
    return clean_flow(config_path=str(Path(config).resolve()), flow_name=flow_name)
