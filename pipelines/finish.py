"""The steps after a commit — filling the labeling queue, writing the HTML report — recorded as
done per version, and finished later when a kill or an error stopped them.

A manifest lists its version's post-commit steps (`post_commit.steps`) and, when the queue fill is
one, names the rows it adds (a Parquet file written before the manifest, with its digest). After
each step the run rewrites `after-commit/vN.done.json` (atomically), so a step is either recorded
as done or is done again: the queue fill is idempotent (a waiting sample is never queued twice) and
the report is rewritten whole. The next run finishes its parent's missing steps, and
`leanset show` finishes the shown version's; the manifest itself never changes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from leanset.pipelines.fsutil import digest, is_disk_full
from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.store import IntegrityError, Store, StoreError
from leanset.pipelines.store.layout import FILE_HASHES
from leanset.pipelines.store.manifest import JSON
from leanset.pipelines.store.sealed import check_file, read_sealed, write_sealed
from leanset.pipelines.store.storage import is_url
from leanset.pipelines.summary import RunSummary

log = logging.getLogger("leanset.store")

QUEUE, REPORT = "queue", "report"
T = TypeVar("T")


def steps_for(labeling: bool) -> JSON:
    """The `post_commit` a manifest records: the steps that follow its commit."""
    return {"steps": [QUEUE, REPORT] if labeling else [REPORT]}


def done_steps(store: Store, version: int) -> JSON:
    """{step: its result} for the finished post-commit steps of a version."""
    path = store.side_layout.completion(version)
    store.side.pull_file(store.side_rel(path))
    try:
        raw = read_sealed(path, "its post-commit steps are redone (they are idempotent)")
        data = json.loads(raw) if raw is not None else {}
    except (OSError, ValueError) as exc:  # damaged: the steps are redone (they are idempotent)
        log.warning("%s is unreadable (%s); its post-commit steps are redone", path, exc)
        return {}
    steps = data.get("steps") if isinstance(data, dict) else None
    return steps if isinstance(steps, dict) else {}


def pending_steps(store: Store, manifest: JSON) -> list[str]:
    """The post-commit steps of a version not recorded as done (none for older manifests)."""
    wanted = (manifest.get("post_commit") or {}).get("steps") or []
    version = int(manifest["version"])
    done = done_steps(store, version)
    if REPORT in done and _report_problem(store, version) is not None:
        log.warning("version %s: its report is damaged; it is written again", version)
        done.pop(REPORT)
    return [s for s in wanted if s not in done]


def mark_done(store: Store, version: int, step: str, result: Any) -> None:
    """Record one finished step (the record is rewritten whole, atomically, after each step)."""
    steps = done_steps(store, version) | {step: result}
    record = {"version": version, "steps": steps}
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    path = write_sealed(store.side_layout.completion(version), text.encode())
    store.side.push(store.side_rel(path))


def queue_rows(store: Store, manifest: JSON) -> pl.DataFrame:
    """The rows a version's queue fill adds, checked against the digest its manifest recorded."""
    post = manifest.get("post_commit") or {}
    rel = post.get("queue_rows")
    if not rel:
        return pl.DataFrame()
    path = store.storage.show(rel)
    try:
        raw = store.storage.read(rel)
    except OSError as exc:
        raise StoreError(
            f"version {manifest['version']}: its queue rows {path} cannot be read ({exc}); "
            f"restore the file from a backup, or queue samples by a new run"
        ) from exc
    if digest(raw) != post.get("queue_rows_digest"):
        raise IntegrityError(
            f"version {manifest['version']}: queue rows {path} do not match the checksum its "
            f"manifest recorded; restore the file from a backup, or queue samples by a new run"
        )
    return pl.read_parquet(io.BytesIO(raw))


def finish_queue(store: Store, manifest: JSON, run_id: str | None) -> JSON:
    """Add a version's queue rows to the queue (idempotent) and record the step."""
    from leanset.pipelines.store.queue import enqueue

    rows = queue_rows(store, manifest)
    version = int(manifest["version"])
    counts: JSON = {}
    if rows.height:
        with store.labeling(write=True) as root:
            counts = asdict(enqueue(root, rows, run_id=run_id, version=version))
    result = counts or {"added": 0}
    mark_done(store, version, QUEUE, result)
    return result


def finish_report(
    store: Store, manifest: JSON, data: LoadedDataset, decisions: pl.DataFrame | None = None
) -> str:
    """Write a version's HTML report from its stored decisions and the source's samples, and
    record the step; refused when the source no longer holds the version's samples."""
    from leanset.pipelines.report.html import write_html_report

    version = int(manifest["version"])
    if decisions is None:
        decisions = store.read("decisions", version)
    stored = decisions.sort("position")["sample_id"]
    if not stored.equals(data.table["sample_id"]):
        raise StoreError(
            f"version {version}: its report cannot be written again: the source no longer holds "
            f"the samples it was made from (`leanset export` still gives its decisions)"
        )
    summary = RunSummary.of(manifest.get("flow") or "", store.where, manifest, {}, False)
    summary.labeling["queue"] = done_steps(store, version).get(QUEUE)
    parent = manifest.get("parent")
    parent_report = store.side_layout.report(int(parent)) if parent else None
    path = write_html_report(
        store.side_layout.report(version), summary, decisions, data, manifest, parent_report
    )
    store.side.push(store.side_rel(Path(path)))
    mark_done(store, version, REPORT, store.shown(Path(path)))
    return store.shown(Path(path))


def finish_version(
    store: Store, manifest: JSON, data: LoadedDataset | None = None, run_id: str | None = None
) -> JSON:
    """Finish whatever post-commit steps of a version are not recorded as done.

    `data`: the loaded source (the report reads its samples); loaded from the version's own config
    when not given and the report is missing."""
    out: JSON = {}
    for step in pending_steps(store, manifest):
        if step == QUEUE:
            out[QUEUE] = finish_queue(store, manifest, run_id)
        elif step == REPORT:
            data = data if data is not None else _load(store, manifest)
            out[REPORT] = finish_report(store, manifest, data)
    return out


def finish_pending(store: Store, manifest: JSON, data: LoadedDataset, run_id: str | None) -> JSON:
    """What `leanset run` does first, whatever it decides next (unchanged input included): finish
    the latest version's missing post-commit steps; a step that cannot be done is a warning."""
    pending = pending_steps(store, manifest)
    if not pending:
        return {}
    from leanset.pipelines.errors import USER_ERRORS

    try:
        done = finish_version(store, manifest, data, run_id=run_id)
    except USER_ERRORS + (OSError,) as exc:
        log.warning(
            "Version %s: its %s could not be finished: %s", manifest["version"], pending, exc
        )
        return {}
    log.info("Version %s: finished what its run left undone: %s", manifest["version"], done)
    return done


def _report_problem(store: Store, version: int) -> str | None:
    """Why a version's report does not match its seal. In a bucket an object is whole or absent
    (`leanset verify` checks its seal), so only its presence is asked (one HEAD, not its bytes)."""
    path = store.side_layout.report(version)
    if store.storage.remote:
        return None if store.storage.size(store.side_rel(path)) is not None else "it is missing"
    return check_file(path)


def unless_disk_full(call: Callable[[], T], fallback: T) -> T:
    """`call()`, or `fallback` when the disk is full (a post-commit step is then left pending)."""
    try:
        return call()
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        return fallback


def after_commit(store: Store, manifest: JSON, steps: Callable[[], None]) -> None:
    """Run a new version's post-commit `steps`; a full disk stops them with one warning saying the
    version is committed and what the next run finishes (any other error propagates)."""
    try:
        steps()
    except (OSError, StoreError) as exc:
        if not is_disk_full(exc):
            raise
    pending = pending_steps(store, manifest)
    if pending:
        log.warning(
            "Version %s is committed, but no space is left on the store's disk for its %s: free "
            "some space; the next `leanset run` (or `leanset show %s`) finishes them",
            manifest["version"],
            " and ".join(pending),
            store.where,
        )


def _load(store: Store, manifest: JSON) -> LoadedDataset:
    """The source of a version, loaded as its config says (content hashes from the store's cache)."""
    from leanset.pipelines.config import ConfigError, flow_from_dict
    from leanset.pipelines.sources import FileHashCache, load_source

    try:
        settings = flow_from_dict(manifest.get("config") or {})
        source = settings.source
        opts = getattr(store.storage, "options", None)  # a bucket store's own options
        if opts and is_url(source.path or (source.data_files or [""])[0]):
            source = dataclasses.replace(source, storage_options=opts)
    except ConfigError as exc:
        raise StoreError(
            f"version {manifest['version']}: its config cannot be read by this leanset ({exc}); "
            f"its report cannot be written again"
        ) from exc
    store.side.pull_file(FILE_HASHES)
    hashes = FileHashCache(store.side_layout.file_hashes)
    return load_source(source, settings.columns, hashes)
