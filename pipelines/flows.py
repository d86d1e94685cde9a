"""The Prefect flow: `run_core` (pipelines/core.py) with its heavy steps as thin Prefect tasks,
retries on the ones that do I/O, the GPU concurrency limit, run names, tags and artifacts.

Scheduled runs (`leanset serve`) and `leanset run` go through `clean_flow`; the input `run_flow`
already read to answer "unchanged" is passed to the flow run it then starts (an argument of a flow
built for that run, never module state).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import Flow, flow, task
from prefect.cache_policies import NO_CACHE

from leanset.dedup.config import DedupSettings
from leanset.dedup.matrix import Rows
from leanset.dedup.stage import DedupResult, PriorIndex, Signals
from leanset.labeling.stage import LabelingOutcome
from leanset.pipelines import steps
from leanset.pipelines.checks import Basis, Checked, run_checks
from leanset.pipelines.config import EngineSettings, FlowSettings, check_source_exists, load_flow
from leanset.pipelines.core import Hooks, Loaded, RunResult, answer_if_unchanged, run_core
from leanset.pipelines.embed import EmbedResult
from leanset.pipelines.embed.offline import check_fetchable
from leanset.pipelines.errors import USER_ERRORS
from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.steps import CostMeasures, VersionDraft
from leanset.pipelines.store import Store
from leanset.pipelines.store.location import check_store_location
from leanset.pipelines.store.manifest import JSON
from leanset.pipelines.summary import RunSummary

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


# ---------------------------------------------------------------- tasks: the steps, thin


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
    """Read the dataset and hash every sample's content (unchanged files: from the hash cache)."""
    return steps.load(settings, dry_run, loaded)


def _gpu_slot() -> AbstractContextManager[Any]:
    """One slot of the GPU concurrency limit shared by every flow run."""
    from prefect.concurrency.sync import concurrency

    return concurrency(GPU_LIMIT, occupy=1, strict=False)


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(data: LoadedDataset, settings: FlowSettings, dry_run: bool = False) -> EmbedResult:
    """Embed what the cache does not hold yet (one GPU slot at a time across flows)."""
    return steps.embed(data, settings, dry_run, gpu_slot=_gpu_slot)


@task(name="image-signal", cache_policy=NO_CACHE)
def signal_task(data: LoadedDataset, settings: FlowSettings, dry_run: bool = False) -> EmbedResult:
    """Grey thumbnails of the images: the second signal that confirms near duplicates."""
    return steps.image_signal(data, settings, dry_run)


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
    """Exact and near duplicates, confirmed by evidence, decided without chains."""
    return steps.dedup(table, matrix, settings, signals, prior, basis, engine)


@task(name="label-noise-and-selection", cache_policy=NO_CACHE)
def labeling_task(
    table: pl.DataFrame,
    matrix: Rows | None,
    settings: FlowSettings,
    pred_probs: list[Any] | None,
    pending: pl.DataFrame,
    threshold: float,
    class_label: list[str] | None = None,
) -> LabelingOutcome:
    """cleanlab label issues on out-of-fold probe probabilities, then the labeling selection."""
    return steps.labeling(table, matrix, settings, pred_probs, pending, threshold, class_label)


@task(name="quality-checks", cache_policy=NO_CACHE)
def checks_task(
    table: pl.DataFrame, matrix: Rows | None, settings: FlowSettings, basis: Basis
) -> Checked:
    """Outliers, unusable images, contamination against outside sets, split drift."""
    return run_checks(table, matrix, settings, basis)


@task(name="cost-and-quality", cache_policy=NO_CACHE)
def cost_task(
    decided: LoadedDataset,
    raw_labels: list[str | None],
    matrix: Rows | None,
    settings: FlowSettings,
) -> CostMeasures:
    """Cost units per split, and the probe's quality on the raw and the cleaned train split."""
    return steps.cost(decided, raw_labels, matrix, settings)


@task(
    name="commit-version",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def commit_task(store: Store, draft: VersionDraft) -> JSON:
    """Write the new version (tables and pair index first, manifest last)."""
    return steps.commit(store, draft)


@task(name="fill-labeling-queue", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def enqueue_task(store: Store, rows: pl.DataFrame, version: int, run_id: str) -> JSON:
    """Add this version's uncertain samples, label issues and label conflicts to the queue."""
    return steps.fill_queue(store, rows, version, run_id)


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
    return steps.html_report(path, summary, decisions, data, manifest, parent_report)


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


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


TASKS = Hooks(
    load=load_task,
    embed=embed_task,
    image_signal=signal_task,
    dedup=dedup_task,
    labeling=labeling_task,
    checks=checks_task,
    cost=cost_task,
    commit=commit_task,
    fill_queue=enqueue_task,
    html_report=html_report_task,
    run_id=_flow_run_id,
)


# ---------------------------------------------------------------- the flow


def _run_name() -> str:
    """`demo-v3`: the flow and the version this run would commit (renamed when it commits none)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    name = str(params.get("flow_name", "leanset"))
    try:
        settings = load_flow(params["config_path"], name, params.get("overrides") or ())
        latest = Store(settings.store, settings.storage_options).latest()
    except USER_ERRORS + (KeyError,):  # the flow itself reports a bad config
        return name
    version = (latest["version"] if latest else 0) + 1
    return f"{name}-v{version}" + ("-dry-run" if params.get("dry_run") else "")


def _clean(
    config_path: str,
    flow_name: str,
    overrides: list[str] | None,
    dry_run: bool,
    force: bool,
    loaded: Loaded | None,
) -> JSON:
    """The flow's body: the core with Prefect tasks, a run name that says what it did, artifacts."""
    settings = load_flow(config_path, flow_name, overrides or ())
    check_source_exists(settings, config_path)
    result = run_core(settings, dry_run=dry_run, force=force, loaded=loaded, hooks=TASKS)
    if result.summary.unchanged:
        _rename_run(f"{settings.name}-v{result.summary.version}-unchanged")
    report_task(result.summary, result.decisions)
    return result.summary.to_dict()


def _leanset_flow(fn: Callable[..., JSON]) -> Flow[..., JSON]:
    return flow(name="leanset-clean", flow_run_name=_run_name, log_prints=False)(fn)


@_leanset_flow
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
    return _clean(config_path, flow_name, overrides, dry_run, force, None)


def _flow_over(loaded: Loaded | None) -> Flow[..., JSON]:
    """`clean_flow` for one run in this process that starts from the input already `loaded`."""
    if loaded is None:
        return clean_flow

    def leanset_clean(
        config_path: str,
        flow_name: str,
        overrides: list[str] | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> JSON:
        return _clean(config_path, flow_name, overrides, dry_run, force, loaded)

    leanset_clean.__doc__ = clean_flow.fn.__doc__
    return _leanset_flow(leanset_clean)


def run_pipeline(
    settings: FlowSettings, dry_run: bool = False, force: bool = False
) -> tuple[RunSummary, pl.DataFrame | None]:
    """The core with the flow's tasks (inside a flow run; outside one, tasks run as plain calls)."""
    result: RunResult = run_core(settings, dry_run=dry_run, force=force, hooks=TASKS)
    return result.summary, result.decisions


def _rename_run(name: str) -> None:
    """Give the current flow run a name that says what it did."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        client.set_flow_run_name(flow_run_id=flow_run.id, name=name)


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
    check_fetchable(settings.embedder)  # an unreachable model: one message, before Prefect
    loaded = None
    if not _has_api():
        answer = answer_if_unchanged(settings, dry_run)
        if isinstance(answer, RunSummary):
            return answer.to_dict()
        loaded = answer
        from leanset.pipelines.orphans import guard

        guard()  # Prefect starts its temporary server next: it must end with this process
    from prefect import tags

    with tags("leanset", flow_name, trigger, *(["dry-run"] if dry_run else [])):
        return _flow_over(loaded)(
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
