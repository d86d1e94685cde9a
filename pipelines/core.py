"""The one run core: load → unchanged? → history → embed → dedup → labeling → decide → commit →
queue → report, over typed step results, with no Prefect in it.

The CLI (through the Prefect flow), the flow itself and `leanset.clean` all call `run_core`; the
flow passes `Hooks` whose steps are its Prefect tasks, the API the plain steps of
`pipelines/steps.py`. Nothing is handed over through module state: what a caller already read is
an argument (`Loaded`), what a run did is its return value (`RunResult`).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from leanset.dedup.config import DedupSettings
from leanset.dedup.guard import DedupGuardError, check_drops, split_drops
from leanset.dedup.imagesig import ImageSignal
from leanset.dedup.lexical import shingle_matrix
from leanset.dedup.matrix import Rows
from leanset.dedup.stage import DedupResult, Signals
from leanset.labeling.stage import (
    AnswerPolicy,
    LabelingOutcome,
    apply_answers,
    queue_rows,
    with_texts,
)
from leanset.pipelines import finish, steps
from leanset.pipelines.calibrate import read_calibration
from leanset.pipelines.checks import (
    Basis,
    Checked,
    run_checks,
    wants_queue,
    with_measures,
    with_review_rows,
)
from leanset.pipelines.config import FlowSettings
from leanset.pipelines.cost import ComputeMeter, CostDelta, config_hash, cost_delta, statement
from leanset.pipelines.decide import decide
from leanset.pipelines.report.balance import balance_info
from leanset.pipelines.sources import LoadedDataset, SourceError
from leanset.pipelines.sources.remote import source_mirrors
from leanset.pipelines.steps import CostMeasures, VersionDraft
from leanset.pipelines.store import Store
from leanset.pipelines.store.history import History
from leanset.pipelines.store.layout import EMBEDDINGS
from leanset.pipelines.store.location import check_store_location, check_writable
from leanset.pipelines.store.manifest import JSON, Counts, Manifest
from leanset.pipelines.store.queue import PENDING, read_answers, read_queue
from leanset.pipelines.store.storage import is_url
from leanset.pipelines.store.tables import (
    class_names,
    dataset_table,
    decisions_table,
    input_fingerprint,
)
from leanset.pipelines.store.vectors import KeptVectors
from leanset.pipelines.summary import RunSummary, Timer

TEXT_SIGNAL = "shingles-5-v1"  # what dedup.lexical computes (part of the pair index's basis)
log = logging.getLogger("leanset.flow")  # routed to Prefect's run logs when a flow runs it


def _new_run_id() -> str:
    return f"leanset-{uuid.uuid4()}"


def _dry_run_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="leanset-dry-run-"))


@dataclass(frozen=True)
class Hooks:
    """The steps a run calls (the flow passes its Prefect tasks; the defaults are plain calls)
    and the id of the run (recorded with the queue rows it adds)."""

    load: Callable[..., LoadedDataset] = steps.load
    embed: Callable[..., Any] = steps.embed
    image_signal: Callable[..., Any] = steps.image_signal
    dedup: Callable[..., DedupResult] = steps.dedup
    labeling: Callable[..., LabelingOutcome] = steps.labeling
    checks: Callable[..., Checked] = run_checks
    cost: Callable[..., CostMeasures] = steps.cost
    commit: Callable[..., JSON] = steps.commit
    fill_queue: Callable[..., JSON] = steps.fill_queue
    html_report: Callable[..., str] = steps.html_report
    run_id: Callable[[], str] = _new_run_id
    dry_run_folder: Callable[[], Path] = _dry_run_folder  # where a dry run's report goes


PLAIN = Hooks()


@dataclass(frozen=True)
class Loaded:
    """A dataset the caller already read for these settings, and the seconds that took."""

    settings: FlowSettings
    data: LoadedDataset
    seconds: float


@dataclass
class RunResult:
    """What one run did: its summary and, unless the input was unchanged, its decisions, the
    decided sample table (with access to the content), the draft it committed (or a dry run
    would) and the typed cost delta."""

    summary: RunSummary
    decisions: pl.DataFrame | None = None
    data: LoadedDataset | None = None
    draft: VersionDraft | None = None
    cost: CostDelta | None = field(default=None)


@dataclass
class _Run:
    """One run's fixed context: what it runs, where it writes, how it times and meters."""

    settings: FlowSettings
    store: Store
    hooks: Hooks
    run_id: str
    dry_run: bool
    force: bool
    timer: Timer = field(default_factory=Timer)
    meter: ComputeMeter = field(default_factory=ComputeMeter)


def run_core(
    settings: FlowSettings,
    *,
    dry_run: bool = False,
    force: bool = False,
    loaded: Loaded | None = None,
    hooks: Hooks = PLAIN,
) -> RunResult:
    """One run of a flow's settings. A dry run stops before the commit and writes its report
    outside the store. With `engine: ray` the cluster is connected and checked first, before any
    work. `loaded`: the input already read for these settings (else it is read here)."""
    check_store_location(settings.store, settings.source)
    run = _Run(settings, open_flow_store(settings), hooks, hooks.run_id(), dry_run, force)
    if loaded is not None and loaded.settings != settings:
        loaded = None
    with _engine(settings, run.run_id) as engine:
        return _pipeline(run, loaded, engine)


def open_flow_store(settings: FlowSettings) -> Store:
    """The store of a flow, with its `storage_options` (a bucket's credentials and endpoint)."""
    return Store(settings.store, settings.storage_options)


def _calibration(store: Store) -> JSON | None:
    """The store's `leanset calibrate` record (pulled first from a bucket)."""
    store.side.pull_file(store.side_rel(store.side_layout.calibration))
    return read_calibration(store.side_layout)


def answer_if_unchanged(settings: FlowSettings, dry_run: bool) -> RunSummary | Loaded:
    """The summary of an unchanged run, read without Prefect; else the loaded input, for the run
    that follows (so it does not read it again)."""
    store, timer = open_flow_store(settings), Timer()
    with timer("load"):
        data = steps.load_dataset(settings, dry_run)
    current = store.latest()
    labeled, _ = _with_answers(data, store, settings, current)
    hashed = config_hash(settings, _calibration(store))
    if current and is_current(current, input_fingerprint(labeled.table), hashed):
        if not dry_run:
            finish.finish_pending(store, current, labeled, "leanset run")
        return unchanged_summary(settings, store, current, timer)
    if not dry_run:
        check_writable(settings.store, "a run commits a version into it")
    return Loaded(settings, data, timer.seconds["load"])


@contextmanager
def _engine(settings: FlowSettings, run_id: str) -> Iterator[JSON]:
    """What the manifest records about the engine; with ray, connected to a checked cluster
    (resources, and the store and dataset visible from every node) for the whole run."""
    if settings.engine.type == "local":
        yield {"type": "local"}
        return
    from leanset.pipelines.engine import ray_session

    paths = _node_paths(settings)
    import datasets.config

    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)  # workers read the Arrow files there
    if hf_cache.is_dir():
        paths["the Hugging Face datasets cache (HF_DATASETS_CACHE)"] = hf_cache
    metadata = {"leanset_flow": settings.name, "prefect_flow_run_id": run_id}
    writable = [] if is_url(settings.store) else ["store"]  # a bucket: workers PUT their shards
    buckets = _node_buckets(settings)
    with ray_session(settings.engine, paths, writable, metadata, buckets) as info:
        log.info("Ray cluster %s: %s", info.address, info.resources)
        yield {"type": "ray", **info.to_dict()}


def _node_buckets(settings: FlowSettings) -> dict[str, tuple[str, dict[str, str] | None, bool]]:
    """What every Ray node must reach in buckets, with the options its tasks are given: a
    bucket store (workers PUT cache shards there) and an image folder in a bucket (workers
    fetch the files they embed)."""
    out: dict[str, tuple[str, dict[str, str] | None, bool]] = {}
    if is_url(settings.store):
        out["store"] = (str(settings.store), settings.storage_options, True)
    src = settings.source
    if src.type == "imagefolder" and src.path and is_url(src.path):
        out["source.path"] = (src.path, src.storage_options, False)
    return out


def _node_paths(settings: FlowSettings) -> dict[str, Path]:
    """What every Ray node must see at the driver's paths: the store folder (not a bucket
    store: its workers write to the bucket) and the source. Of a source in a bucket, only a
    `disk` source's mirror (its Arrow files); a worker fetches an image folder's files from the
    bucket itself, and `data_files` are read into the Arrow cache by the driver."""
    src = settings.source
    paths = {} if is_url(settings.store) else {"store": Path(settings.store)}
    if src.path and src.type in ("imagefolder", "disk") and not is_url(src.path):
        paths["source.path"] = Path(src.path)
    for n, f in enumerate(src.data_files or []):  # a glob: its folder
        if not is_url(f):
            paths[f"source.data_files[{n}]"] = Path(f).parent if set("*?[") & set(f) else Path(f)
    if src.type == "disk":  # its Arrow files, read by the workers; an image folder's files and
        for name, folder in source_mirrors(src).items():  # data_files' rows do not need it
            folder.mkdir(parents=True, exist_ok=True)  # filled by the first load
            paths[f"{name} (its local mirror)"] = folder
    return paths


def _pipeline(run: _Run, loaded: Loaded | None, engine: JSON) -> RunResult:
    settings, store, timer = run.settings, run.store, run.timer
    parent = store.latest()
    calibration = _calibration(store)
    with timer("load"):
        data = run.hooks.load(settings, run.dry_run, loaded.data if loaded else None)
    if loaded:
        timer.add("load", loaded.seconds)
    data, human = _with_answers(data, store, settings, parent)
    if parent and not run.dry_run:
        _finish_parent(store, parent, data, run.run_id)
    fingerprint, hashed = input_fingerprint(data.table), config_hash(settings, calibration)
    if parent and is_current(parent, fingerprint, hashed):
        return RunResult(unchanged_summary(settings, store, parent, timer))
    if not run.dry_run:
        check_writable(settings.store, "a run commits a version into it")
    with timer("history"):
        history = History.of(store, parent)
    history.warn_if_ids_changed(data.table)
    version = (parent["version"] if parent else 0) + 1
    data = data.with_table(history.mark_first_seen(data.table, version))
    store.cache.pull(EMBEDDINGS, new_names_only=True)  # a bucket store: the shards it lacks here
    embedded = _embed(run, data)
    prior = history.prior_index() if settings.dedup.near else None
    with timer("dedup"):
        dd = run.hooks.dedup(
            embedded.table,
            embedded.matrix,
            _dedup_settings(settings, data),
            embedded.signals,
            prior,
            embedded.basis,
            settings.engine,
        )
    guard = _guard(dd.table, run)
    with timer("labeling"):
        labels = settings.label_noise or settings.active_learning  # else _label needs no matrix
        matrix = embedded.matrix if labels else None  # engine ray: stays on the cluster
        labeled = _label(run, dd.table, matrix, data, dd.calibration)
    with timer("checks"):
        basis = Basis.of(
            settings, embedded.info.get("fingerprint", ""), dd.calibration, run.dry_run
        )
        checked = run.hooks.checks(labeled.table, _for_checks(embedded, settings), settings, basis)
    store.cache.push(EMBEDDINGS)  # the shards embedding and the geometric check wrote
    decided = data.with_table(decide(checked.table))
    measured = _measure_cost(run, decided, dd.table, embedded)
    seen = (fingerprint, hashed, embedded, dd, labeled.info | human, guard)
    found = _Found(*seen, measured, calibration, engine, checked.info)
    draft = _draft(run, decided, history, parent, found)
    if run.dry_run:
        summary = _dry_run(run, draft, decided, version)
        return RunResult(summary, draft.decisions, decided, draft, draft.cost)
    return _commit(run, decided, draft, parent)


def _dedup_settings(settings: FlowSettings, data: LoadedDataset) -> DedupSettings:
    """The dedup settings of the run; none of its searches for a table without content."""
    if data.modality != "none" and (settings.embedder or not settings.dedup.near):
        return settings.dedup
    log.warning(
        "Dedup skipped: it needs content (an image, text or embedding column, and an embedder); "
        "this run has ids, labels and probabilities only"
    )
    return dataclasses.replace(settings.dedup, exact=False, near=False)


def _commit(
    run: _Run, decided: LoadedDataset, draft: VersionDraft, parent: JSON | None
) -> RunResult:
    """The commit point, then what follows it."""
    settings, store = run.settings, run.store
    with run.timer("commit"):
        committed = run.hooks.commit(store, draft)
    log.info("Committed version %s of %s.", committed["version"], settings.store)
    summary = RunSummary.of(settings.name, settings.store, committed, run.timer.seconds, False)
    after = (run, summary, committed, decided, draft, parent)
    finish.after_commit(store, committed, lambda: _after_commit(*after))
    return RunResult(summary, draft.decisions, decided, draft, draft.cost)


def _measure_cost(
    run: _Run, decided: LoadedDataset, deduped: pl.DataFrame, embedded: _Embedded
) -> CostMeasures:
    """The cost inputs: units per split and the quality probe on raw and cleaned train rows (the
    raw labels are those before any noise policy)."""
    with run.timer("cost"):
        labels = deduped["label"].to_list()
        matrix = embedded.matrix if run.settings.cost.quality else None  # ray: stays there
        measured = run.hooks.cost(decided, labels, matrix, run.settings)
    run.meter.add_gpu(measured.gpu_seconds, "cuda" if measured.gpu_seconds else "cpu")
    return measured


def _after_commit(
    run: _Run,
    summary: RunSummary,
    committed: JSON,
    decided: LoadedDataset,
    draft: VersionDraft,
    parent: JSON | None,
) -> None:
    """What follows the commit point: the queue fill, the promotion gate and the report. The
    queue fill and the report are each recorded as done once they are (a kill or an error here
    leaves them to the next run or `leanset show`)."""
    settings, store, version = run.settings, run.store, committed["version"]
    if draft.queue is not None:
        filled = run.hooks.fill_queue(store, draft.queue, version, run.run_id)
        summary.labeling["queue"] = filled
        if "not_written" not in filled:  # the disk is full: left to the next run
            finish.mark_done(store, version, finish.QUEUE, filled)
    if settings.cost.promote:
        summary.statement += "\n" + _promote_after_run(store, version, settings)
    path = store.side_layout.report(version)
    parent_report = store.side_layout.report(parent["version"]) if parent else None
    written = run.hooks.html_report(
        path, summary, draft.decisions, decided, committed, parent_report
    )
    if written:
        store.side.push(store.side_rel(store.side_layout.report(version)))
        written = store.shown(Path(written))
    summary.report = written or None  # none when the disk is full: left to the next run
    if summary.report:
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
    summary.report = store.report_of(current["version"])
    return summary


def _dry_run(run: _Run, draft: VersionDraft, data: LoadedDataset, version: int) -> RunSummary:
    """The summary of the version a dry run would commit, with its report in a temporary folder."""
    settings = run.settings
    manifest = draft.manifest.to_dict() | {"version": version, "parent": draft.parent}
    summary = RunSummary.of(settings.name, settings.store, manifest, run.timer.seconds, False)
    summary.dry_run = True
    folder = run.hooks.dry_run_folder()
    path = folder / f"{settings.name}-v{version}-dry-run.html"
    parent_report = run.store.side_layout.report(draft.parent) if draft.parent else None
    summary.report = run.hooks.html_report(
        path, summary, draft.decisions, data, manifest, parent_report
    )
    log.info("Dry run: version %s was not committed; report at %s", version, path)
    return summary


def _finish_parent(store: Store, parent: JSON, data: LoadedDataset, run_id: str) -> None:
    """Finish the post-commit steps the run that committed the parent did not record as done."""
    finish.finish_pending(store, parent, data, run_id)


# ---------------------------------------------------------------- the steps' details
@dataclass
class _Embedded:
    """The table with decode errors marked, its matrix and second signals, what embedding did,
    and the fingerprints of what made them (the basis of a reusable pair index)."""

    table: pl.DataFrame
    matrix: Rows | None  # engine ray: kept on the cluster (every stage asks it for pieces)
    info: JSON
    signals: Signals | None = None
    basis: str = ""


def _for_checks(embedded: _Embedded, settings: FlowSettings) -> Rows | None:
    """The matrix for the checks that read it (leaks, outliers, drift); None when none runs.
    Kept on a Ray cluster, it stays there (the checks run as tasks over its blocks)."""
    wanted = settings.leaks.against or settings.outliers.policy != "off" or settings.drift.enabled
    return embedded.matrix if wanted else None


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
    with store.labeling() as root:
        answers = read_answers(root)
    labeled, human = apply_answers(data.table, answers, policy)
    return data.with_table(labeled), human


def _embed(run: _Run, data: LoadedDataset) -> _Embedded:
    """Embed (cache first) when an embedder is configured."""
    settings, dry_run = run.settings, run.dry_run
    if settings.embedder is None:
        _refuse_all_unreadable(data.table)
        return _Embedded(data.table, None, {})
    with run.timer("embed"):
        res = run.hooks.embed(data, settings, dry_run)
        wanted = _wants_signal(settings, data, ("pixels", "hashes", "geometry"), "image")
        thumbs = run.hooks.image_signal(data, settings, dry_run) if wanted else None
    run.meter.add_gpu(res.seconds, res.device)
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
    table = with_measures(_mark_unreadable(data.table, res.errors), res.measures)
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
    features = steps.image_features(data, settings, run.dry_run) if geometric else None
    signals = Signals(image=ImageSignal.of(thumbs.matrix), features=features)
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


def _guard(table: pl.DataFrame, run: _Run) -> JSON:
    """The guard's verdict on what dedup would drop (raises when it refuses, unless forced)."""
    settings, force = run.settings.dedup, run.force
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
    run: _Run,
    table: pl.DataFrame,
    matrix: Rows | None,
    data: LoadedDataset,
    calibration: JSON,
) -> LabelingOutcome:
    """The labeling stages, with the user's own probabilities and the waiting queue; two picks
    are never closer than the dedup threshold (as calibrated)."""
    settings = run.settings
    if not (settings.label_noise or settings.active_learning):
        return LabelingOutcome(table, {})
    column = settings.label_noise.pred_probs_column if settings.label_noise else None
    given = data.column(column) if column else None
    with run.store.labeling() as root:
        pending = read_queue(root).filter(pl.col("status").is_in(list(PENDING)))
    t = settings.dedup.threshold
    threshold = float(calibration.get("threshold", 0.95)) if t == "auto" else float(t)
    names = data.label_names() if given is not None else None  # the pred_probs column order
    outcome = run.hooks.labeling(
        table, matrix, settings, given, pending, min(threshold, 0.999), names
    )
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
    checks: JSON


def _draft(
    run: _Run, decided: LoadedDataset, history: History, parent: JSON | None, found: _Found
) -> VersionDraft:
    """The tables, the manifest and the pair index of the version this run commits."""
    settings, timer = run.settings, run.timer
    decisions = decisions_table(decided.table)
    with timer("build_version"):
        cleaned = dataset_table(decided, decisions)
    counts = Counts.of(decisions, settings.dedup.eval_splits, history.new_counts(decisions))
    m = found.cost
    cd = cost_delta(
        settings.cost, m.accounting, run.meter.read(), found.cost_calibration, m.quality
    )
    key = found.dedup.index_key
    manifest = Manifest(
        flow=settings.name,
        config_hash=found.config_hash,
        config=settings.to_record(),
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
        post_commit=finish.steps_for(_queues(settings)),
        engine=found.engine,
        checks=_checks_info(found.checks, decisions, settings),
    )
    parent_version = parent["version"] if parent else None
    pairs = found.dedup.pairs if key else None
    queue = _queue_rows(decided.table, settings, decided) if _queues(settings) else None
    vectors = None
    if decided.modality == "embedding":
        kept = decisions.filter(pl.col("kept")).unique("content_hash", maintain_order=True)
        vectors = KeptVectors(decided, kept.select("content_hash", "position"))
    return VersionDraft(cleaned, decisions, manifest, parent_version, pairs, queue, vectors, cd)


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


def _checks_info(checks: JSON, decisions: pl.DataFrame, settings: FlowSettings) -> JSON:
    """The checks' findings plus the class balance; its warnings go to the run's log."""
    balance = balance_info(decisions, settings.dedup.eval_splits)
    for warning in balance.get("balance", {}).get("warnings", []):
        log.warning("Class balance: %s", warning)
    return checks | balance


def _queues(settings: FlowSettings) -> bool:
    """The version adds rows to the labeling queue (label stages, or a check with policy queue)."""
    return bool(settings.label_noise or settings.active_learning) or wants_queue(settings)


def _queue_rows(decided: pl.DataFrame, settings: FlowSettings, data: LoadedDataset) -> pl.DataFrame:
    """Queue rows of this version; text tasks carry the text (or, for bare vectors, the source)."""
    rows = with_review_rows(queue_rows(decided, settings.active_learning), decided)
    if rows.height == 0 or data.modality == "image":
        return rows
    return with_texts(rows, decided, data.texts)
