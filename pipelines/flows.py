"""The cleaning flow: thin Prefect tasks around the pure stage functions."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dedup.stage import DedupResult, PriorIndex, find_duplicates
from labeling.queue import PENDING, enqueue, read_answers, read_queue
from labeling.stage import apply_answers, label_noise, queue_rows, select_for_labeling
from pipelines.config import FlowSettings, load_flow
from pipelines.cost import ComputeMeter, cost_delta, statement
from pipelines.decide import counts_by_reason, decide
from pipelines.embed import EmbedResult, embed_dataset, make_embedder
from pipelines.sources import FileHashCache, LoadedDataset, load_source
from pipelines.store import Store
from pipelines.versioning import (
    History,
    base_manifest,
    dataset_table,
    decisions_table,
    input_fingerprint,
)

GPU_LIMIT = "leanset-gpu"  # Prefect global concurrency limit guarding GPU work


@dataclass
class RunSummary:
    """What a run did, in plain data (the flow's return value and the CLI's summary)."""

    flow: str
    store: str
    version: int | None
    parent: int | None
    unchanged: bool
    counts: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    statement: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    labeling: dict[str, Any] = field(default_factory=dict)
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls, settings: FlowSettings, m: dict[str, Any], timings: dict, unchanged: bool = False
    ) -> RunSummary:
        """The summary of the version a manifest describes."""
        return cls(
            flow=settings.name,
            store=settings.store,
            version=m["version"],
            parent=m.get("parent"),
            unchanged=unchanged,
            counts=m["counts"],
            cost=m["cost"],
            statement=m["statement"],
            timings=timings,
            embed=m.get("embed", {}),
            search=m.get("search", {}),
            labeling=m.get("labeling", {}),
        )


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry passing I/O failures; never bad input or a lost race for a version (same result)."""
    from pipelines.errors import USER_ERRORS

    try:
        state.result()
    except USER_ERRORS:  # includes StoreConflict: a retry cannot win the race it lost
        return False
    except Exception:  # noqa: BLE001 - anything else (a flaky disk or network) may pass next time
        return True
    return True


@task(
    name="load-source",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def load_task(settings: FlowSettings) -> LoadedDataset:
    """Read the dataset and hash every sample's content (unchanged files: from the hash cache)."""
    hashes = FileHashCache(Path(settings.store) / "cache" / "file-hashes.parquet")
    data = load_source(settings.source, settings.columns, hashes)
    hashes.save()
    return data


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(data: LoadedDataset, settings: FlowSettings, cache_root: str) -> EmbedResult:
    """Embed what the cache does not hold yet (one GPU slot at a time across flows)."""
    emb = settings.embedder
    embedder = make_embedder(emb, data.columns.embedding)
    run = partial(
        embed_dataset,
        data,
        embedder,
        cache_root,
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
    table: pl.DataFrame, matrix: np.ndarray | None, settings: FlowSettings, prior: PriorIndex | None
) -> DedupResult:
    """Exact and near duplicates, groups, leaks and label conflicts (incremental with a prior)."""
    return find_duplicates(table, matrix, settings.dedup, prior=prior)


@task(
    name="commit-version",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def commit_task(store: Store, version: VersionDraft) -> dict:
    """Write the new version (tables and pair index first, manifest last)."""
    return store.commit(
        version.dataset, version.decisions, version.manifest, version.parent, pairs=version.pairs
    )


@task(name="label-noise-and-selection", cache_policy=NO_CACHE)
def labeling_task(
    table: pl.DataFrame,
    matrix: np.ndarray | None,
    settings: FlowSettings,
    data: LoadedDataset,
    store: Store,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """cleanlab label issues on out-of-fold probe probabilities, then the labeling selection."""
    info: dict[str, Any] = {}
    probs = None
    if settings.label_noise:
        column = settings.label_noise.pred_probs_column
        given = data.column(column) if column else None
        out = label_noise(table, matrix, settings.label_noise, given)
        table, probs, info = out.table, out.probs, out.info
    if settings.active_learning:
        pending = read_queue(store.root).filter(pl.col("status").is_in(list(PENDING)))
        table, sel = select_for_labeling(
            table, matrix, probs, settings.active_learning, pending, settings.dedup.threshold
        )
        info["selection"] = sel
    return table, info


@task(name="fill-labeling-queue", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def enqueue_task(
    store: Store, table: pl.DataFrame, settings: FlowSettings, version: int, data: LoadedDataset
) -> dict:
    """Add this version's uncertain samples, label issues and label conflicts to the queue."""
    rows = queue_rows(table, settings.active_learning)
    if rows.height == 0:
        return {"added": 0}
    if data.modality != "image":  # text tasks carry the text (or, for bare vectors, the source)
        where = table.select("sample_id", "position").join(rows.select("sample_id"), on="sample_id")
        texts = dict(zip(where["sample_id"], data.texts(where["position"].to_list()), strict=True))
        rows = rows.with_columns(pl.col("sample_id").replace_strict(texts).alias("text"))
    counts = enqueue(store.root, rows, run_id=str(_run_id()), version=version)
    return asdict(counts)


def _run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.id


@task(name="publish-report", cache_policy=NO_CACHE)
def report_task(summary: RunSummary, decisions: pl.DataFrame | None) -> str:
    """Leave the run's summary (markdown) and its largest duplicate groups (table) as artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from pipelines.report import markdown_summary, top_groups, top_label_issues

    text = markdown_summary(summary, decisions)
    key = "leanset-" + "".join(c if c.isalnum() else "-" for c in summary.flow.lower())
    create_markdown_artifact(markdown=text, key=key, description=f"leanset run of {summary.flow}")
    if decisions is not None:
        groups = top_groups(decisions, 25)
        if groups.height:
            create_table_artifact(
                table=groups.to_dicts(), key=f"{key}-groups", description="largest duplicate groups"
            )
        issues = top_label_issues(decisions, 25)
        if issues.height:
            create_table_artifact(
                table=issues.to_dicts(),
                key=f"{key}-label-issues",
                description="likeliest label errors (lowest label quality)",
            )
    return text


@task(name="write-html-report", cache_policy=NO_CACHE)
def html_report_task(
    store: Store, summary: RunSummary, decisions: pl.DataFrame, data: LoadedDataset
) -> str | None:
    """A static HTML page of the version, with the samples behind its decisions."""
    from pipelines.html_report import write_html_report

    path = report_path(store, summary.version)
    return str(write_html_report(path, summary, decisions, data))


def report_path(store: Store, version: int) -> Path:
    """Where a version's HTML report lives."""
    return Path(store.root) / "reports" / f"v{version:06d}.html"


@flow(name="leanset-clean", flow_run_name="clean-{flow_name}", log_prints=False)
def clean_flow(config_path: str, flow_name: str) -> dict[str, Any]:
    """Clean one dataset from flows.yaml and commit a new version when anything changed."""
    settings = load_flow(config_path, flow_name)
    summary, decisions = run_pipeline(settings)
    report_task(summary, decisions)
    return summary.to_dict()


@dataclass
class VersionDraft:
    """Everything a commit writes."""

    dataset: pl.DataFrame
    decisions: pl.DataFrame
    manifest: dict[str, Any]
    parent: int | None
    pairs: pl.DataFrame | None


def run_pipeline(settings: FlowSettings) -> tuple[RunSummary, pl.DataFrame | None]:
    """The flow body: load → (unchanged? stop) → embed → dedup → decide → commit."""
    log = get_run_logger()
    meter = ComputeMeter()
    timings: dict[str, float] = {}
    store = Store(settings.store)
    parent_manifest = store.latest()
    parent = parent_manifest["version"] if parent_manifest else None

    data = _timed(timings, "load", lambda: load_task(settings))
    labeled, human = apply_answers(data.table, read_answers(store.root))
    data = LoadedDataset(labeled, data.modality, data.splits, data.columns)
    fingerprint = input_fingerprint(data.table)
    config_hash = settings.fingerprint()
    if parent_manifest and (
        parent_manifest["input_fingerprint"],
        parent_manifest["config_hash"],
    ) == (fingerprint, config_hash):
        log.info("Input and config unchanged since version %s: no new version.", parent)
        summary = RunSummary.of(settings, parent_manifest, timings, unchanged=True)
        summary.report = str(report_path(store, parent))
        return summary, None

    history = _timed(timings, "history", lambda: History.of(store, parent_manifest))
    table = history.mark_first_seen(data.table, (parent or 0) + 1)
    table, matrix, embed_info, index_key = _embed(data, table, settings, timings, meter)

    prior = history.prior_index(index_key) if settings.dedup.near else None
    dd = _timed(timings, "dedup", lambda: dedup_task(table, matrix, settings, prior))
    table, labeling_info = _timed(
        timings, "labeling", lambda: labeling_task(dd.table, matrix, settings, data, store)
    )
    decided = decide(table)
    decisions = decisions_table(decided)
    cleaned = _timed(
        timings,
        "build_version",
        lambda: dataset_table(
            LoadedDataset(decided, data.modality, data.splits, data.columns), decisions
        ),
    )
    counts = _counts(decisions, settings.dedup.eval_splits) | history.new_counts(decisions)
    cd = cost_delta(settings.cost, counts["input"], counts["kept"], meter.read())
    manifest = base_manifest(settings.to_dict(), config_hash, fingerprint) | {
        "counts": counts,
        "timings": timings,
        "cost": cd.to_dict(),
        "statement": statement(cd),
        "embed": embed_info,
        "search": dd.search,
        "index": {"key": index_key},
        "labeling": labeling_info | human,
    }
    draft = VersionDraft(cleaned, decisions, manifest, parent, dd.pairs if index_key else None)
    committed = _timed(timings, "commit", lambda: commit_task(store, draft))
    log.info("Committed version %s of %s.", committed["version"], settings.store)
    if settings.label_noise or settings.active_learning:
        manifest["labeling"]["queue"] = enqueue_task(
            store, decided, settings, committed["version"], data
        )
    summary = RunSummary.of(settings, committed | {"labeling": manifest["labeling"]}, timings)
    summary.report = html_report_task(store, summary, decisions, data)
    log.info(summary.statement)
    return summary, decisions


def _embed(
    data: LoadedDataset,
    table: pl.DataFrame,
    settings: FlowSettings,
    timings: dict,
    meter: ComputeMeter,
) -> tuple[pl.DataFrame, np.ndarray | None, dict[str, Any], str | None]:
    """Embed (cache first): the table with decode errors marked, the matrix, info, index key."""
    if settings.embedder is None:
        return table, None, {}, None
    cache_root = str(Path(settings.store) / "cache" / "embeddings")
    res = _timed(timings, "embed", lambda: embed_task(data, settings, cache_root))
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
    index_key = f"{res.fingerprint}|{settings.dedup.threshold}"
    return _mark_unreadable(table, res.errors), res.matrix, info, index_key


def _timed(timings: dict[str, float], name: str, fn: Any) -> Any:
    t0 = time.perf_counter()
    out = fn()
    timings[name] = round(time.perf_counter() - t0, 3)
    return out


def _mark_unreadable(table: pl.DataFrame, errors: dict[str, str]) -> pl.DataFrame:
    """Samples that failed to decode get their error (so they are dropped as unreadable)."""
    if not errors:
        return table
    found = pl.col("content_hash").replace_strict(errors, default=None, return_dtype=pl.Utf8)
    return table.with_columns(pl.coalesce(pl.col("error"), found).alias("error"))


def _counts(decisions: pl.DataFrame, eval_splits: list[str]) -> dict[str, Any]:
    kept = int(decisions["kept"].sum())
    return {
        "input": decisions.height,
        "kept": kept,
        "dropped": decisions.height - kept,
        "by_reason": counts_by_reason(decisions),
        "by_split": _by_split(decisions),
        "dup_groups": int(decisions["dup_group"].drop_nulls().n_unique()),
        "leaking_eval_samples": decisions.filter(
            pl.col("leak_of").is_not_null() & pl.col("split").is_in(eval_splits)
        ).height,
        "label_conflicts": int(decisions["label_conflict"].sum()),
    }


def _by_split(decisions: pl.DataFrame) -> dict[str, dict[str, int]]:
    rows = decisions.group_by("split").agg(
        pl.len().alias("input"), pl.col("kept").sum().alias("kept")
    )
    return {
        r["split"]: {"input": r["input"], "kept": int(r["kept"])}
        for r in rows.sort("split").iter_rows(named=True)
    }
