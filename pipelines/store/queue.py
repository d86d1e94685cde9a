"""The labeling queue in the store (`STORE/labeling/`), and its round trip through Label Studio files.

Each file is a Parquet table rewritten whole through a temporary file and a rename, so a reader
sees the old or the new table; read-modify-write runs under an advisory lock:
- the queue: one row per queued sample (`QUEUE_SCHEMA`); status queued/exported/answered.
- the answers: one row per imported annotation (`ANSWER_SCHEMA`); `read_answers` gives the
  latest per sample, which the next run applies as a relabel traceable to the annotation id.
Parquet rather than Delta: the queue is small, is rewritten whole, and needs no time travel; the
versioned history of labels lives in the decisions table that the next run writes. The task and
export formats themselves are `labeling.labelstudio`'s.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from leanset.labeling.config import LabelingError
from leanset.labeling.labelstudio import (
    MODEL_VERSION,
    ImageRoot,
    annotator_of,
    choices_of,
    collect_answers,
    id_text,
    parse_export,
    task_for_row,
)
from leanset.pipelines.fsutil import atomic_write_bytes, locked
from leanset.pipelines.store.errors import IntegrityError
from leanset.pipelines.store.layout import StoreLayout
from leanset.pipelines.store.sealed import read_sealed, sum_path, write_sealed

logger = logging.getLogger(__name__)

REASONS = ("uncertain", "label_issue", "label_conflict", "outlier", "unusable_image")
PENDING = ("queued", "exported")
STATUSES = ("queued", "exported", "answered")
_TS = pl.Datetime("us", "UTC")
# the other samples of a label conflict, shown beside the queued one; an answer labels them all
TWIN = pl.Struct(
    {"sample_id": pl.String(), "label": pl.String(), "source": pl.String(), "text": pl.String()}
)
QUEUE_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String(),
        "source": pl.String(),
        "status": pl.String(),
        "reason": pl.String(),
        "al_score": pl.Float64(),
        "queue_rank": pl.Int64(),
        "label": pl.String(),
        "suggested_label": pl.String(),
        "suggested_score": pl.Float64(),
        "text": pl.String(),
        "queued_at": _TS,
        "exported_at": _TS,
        "answered_at": _TS,
        "run_id": pl.String(),
        "version": pl.Int64(),
        "twins": pl.List(TWIN),
    }
)
ADDED_LATER = ("twins",)  # columns older queue files lack: read as null
ROW_REQUIRED = ("sample_id", "source", "reason")
ROW_OPTIONAL = (
    "al_score",
    "queue_rank",
    "label",
    "suggested_label",
    "suggested_score",
    "text",
    "twins",
)
ANSWER_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String(),
        "label": pl.String(),
        "previous_label": pl.String(),
        "reason": pl.String(),
        "annotation_id": pl.String(),
        "task_id": pl.String(),
        "completed_by": pl.String(),
        "annotated_at": pl.String(),
        "imported_at": _TS,
        "source_file": pl.String(),
    }
)


@dataclass(frozen=True)
class EnqueueCounts:
    """What `enqueue` did with the rows it was given."""

    added: int
    skipped_pending: int
    skipped_answered: int
    requeued: int


@dataclass(frozen=True)
class ExportResult:
    """Where the tasks went and which samples they hold."""

    path: Path
    n_tasks: int
    sample_ids: tuple[str, ...]


@dataclass(frozen=True)
class ImportResult:
    """Counts of what an annotation import applied and skipped, with example unknown ids."""

    n_tasks: int
    applied: int = 0
    unchanged: int = 0
    skipped_unknown_id: int = 0
    skipped_no_sample_id: int = 0
    skipped_no_choice: int = 0
    skipped_cancelled: int = 0
    skipped_multiple_choices: int = 0
    skipped_unknown_label: int = 0
    skipped_duplicate_task: int = 0
    skipped_malformed: int = 0
    twins_labeled: int = 0  # other samples of an answered label conflict, given its label
    unknown_ids: tuple[str, ...] = field(default_factory=tuple)
    malformed: tuple[str, ...] = field(default_factory=tuple)  # the first bad tasks, named

    @property
    def skipped(self) -> int:
        """All tasks that did not become an answer."""
        return self.n_tasks - self.applied - self.unchanged


def labeling_dir(store: str | Path) -> Path:
    """`STORE/labeling`, refusing a store that is a file or a labeling folder that leaves it."""
    root = Path(store)
    if root.exists() and not root.is_dir():
        raise LabelingError(f"store {str(root)!r} is a file, expected a folder")
    folder = StoreLayout(root).labeling
    _check_inside(root, folder)
    return folder


def _check_inside(root: Path, path: Path) -> None:
    """`path` must resolve inside `root` (a symlink out of the store is refused)."""
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        raise LabelingError(f"{str(path)!r} resolves to {str(real)!r}, outside the store {root}")


def _store_file(store: str | Path, name: str) -> Path:
    """A labeling file (`queue`, `answers`) of the store, checked to stay inside the store."""
    labeling_dir(store)
    path: Path = getattr(StoreLayout(Path(store)), name)
    _check_inside(Path(store), path)
    return path


@contextlib.contextmanager
def _locked(store: str | Path) -> Iterator[None]:
    """Hold the store's labeling lock for a read-modify-write."""
    labeling_dir(store).mkdir(parents=True, exist_ok=True)
    with locked(StoreLayout(Path(store)).labeling_lock):
        yield


def _read(path: Path, schema: pl.Schema) -> pl.DataFrame:
    """A stored table checked against its seal before polars parses it, or an empty one."""
    raw = read_sealed(path, _restore_hint(path))
    if raw is None:
        return pl.DataFrame(schema=schema)
    try:
        frame = pl.read_parquet(io.BytesIO(raw))
        older = [pl.lit(None).alias(c) for c in ADDED_LATER if c in schema and c not in frame]
        return frame.with_columns(older).select(list(schema)).cast(schema)
    except pl.exceptions.PolarsError as exc:  # unsealed (older) file that does not parse
        raise IntegrityError(f"{path} is unreadable ({exc}); {_restore_hint(path)}") from exc


def _restore_hint(path: Path) -> str:
    return (
        f"restore {path.name} and {sum_path(path).name} from a backup of the store's labeling/ "
        f"folder (`leanset verify STORE` lists every damaged file)"
    )


def _write(path: Path, frame: pl.DataFrame) -> Path:
    """Write a table as Parquet, atomically and sealed."""
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return write_sealed(path, buf.getvalue())


def read_queue(store: str | Path) -> pl.DataFrame:
    """The queue table (empty when nothing was ever queued)."""
    return _read(_store_file(store, "queue"), QUEUE_SCHEMA)


def read_answers(store: str | Path, *, latest: bool = True) -> pl.DataFrame:
    """Imported answers; with `latest`, one per sample (the most recently imported)."""
    answers = _read(_store_file(store, "answers"), ANSWER_SCHEMA)
    if not latest:
        return answers
    ordered = answers.sort(["imported_at", "annotated_at"], nulls_last=False)
    return ordered.unique("sample_id", keep="last", maintain_order=True).sort("sample_id")


def _now(now: datetime | None) -> datetime:
    """The given time (tests) or the current UTC time."""
    return now if now is not None else datetime.now(timezone.utc)


def _check_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Selection rows: required columns, known optional ones, one row per sample, known reasons."""
    if not isinstance(rows, pl.DataFrame):
        raise LabelingError(f"rows must be a polars DataFrame, got {type(rows).__name__}")
    missing = [c for c in ROW_REQUIRED if c not in rows.columns]
    if missing:
        raise LabelingError(f"queue rows lack column(s) {missing}; expected {list(ROW_REQUIRED)}")
    unknown = [c for c in rows.columns if c not in ROW_REQUIRED + ROW_OPTIONAL]
    if unknown:
        raise LabelingError(
            f"queue rows have unknown column(s) {unknown}; "
            f"allowed: {list(ROW_REQUIRED + ROW_OPTIONAL)}"
        )
    if rows["sample_id"].null_count():
        raise LabelingError("queue rows hold a null sample_id")
    dup = rows.filter(pl.col("sample_id").is_duplicated())
    if dup.height:
        raise LabelingError(f"queue rows hold sample {dup['sample_id'][0]!r} more than once")
    bad = rows.filter(~pl.col("reason").is_in(list(REASONS)) | pl.col("reason").is_null())
    if bad.height:
        raise LabelingError(
            f"queue row for sample {bad['sample_id'][0]!r} has reason {bad['reason'][0]!r}; "
            f"expected one of {', '.join(REASONS)}"
        )
    return rows


def enqueue(
    store: str | Path,
    rows: pl.DataFrame,
    *,
    run_id: str | None = None,
    version: int | None = None,
    requeue_answered: bool = False,
    now: datetime | None = None,
) -> EnqueueCounts:
    """Add rows to the queue; samples waiting for a human (queued/exported) are not re-queued.

    `rows` holds `sample_id`, `source`, `reason` (uncertain|label_issue|label_conflict) and any of
    `al_score`, `queue_rank`, `label` (current), `suggested_label`, `suggested_score`, `text`,
    `twins` (a label conflict's other samples: `sample_id`, `label`, `source`, `text`).
    Answered samples are skipped too, unless `requeue_answered`.
    """
    rows = _check_rows(rows)
    with _locked(store):
        path = _store_file(store, "queue")
        queue = _read(path, QUEUE_SCHEMA)
        status = dict(zip(queue["sample_id"].to_list(), queue["status"].to_list(), strict=True))
        ids = rows["sample_id"].to_list()
        pending = {s for s in ids if status.get(s) in PENDING}
        answered = {s for s in ids if status.get(s) == "answered"}
        blocked = pending if requeue_answered else pending | answered
        fresh = _queue_rows(
            rows.filter(~pl.col("sample_id").is_in(list(blocked))), run_id, version, _now(now)
        )
        replaced = answered if requeue_answered else set()
        kept = queue.filter(~pl.col("sample_id").is_in(list(replaced)))
        if fresh.height:
            _write(path, pl.concat([kept, fresh]))
    counts = EnqueueCounts(
        added=fresh.height - len(replaced),
        skipped_pending=len(pending),
        skipped_answered=0 if requeue_answered else len(answered),
        requeued=len(replaced),
    )
    logger.info("queue: %s", counts)
    return counts


def _queue_rows(
    rows: pl.DataFrame, run_id: str | None, version: int | None, now: datetime
) -> pl.DataFrame:
    """Selection rows completed to the queue schema, status queued."""
    filled = {c: rows[c] if c in rows.columns else None for c in ROW_REQUIRED + ROW_OPTIONAL}
    extra = {
        "status": "queued",
        "queued_at": now,
        "exported_at": None,
        "answered_at": None,
        "run_id": run_id,
        "version": version,
    }
    columns = [
        v.alias(k) if isinstance(v, pl.Series) else pl.lit(v).alias(k)
        for k, v in {**filled, **extra}.items()
    ]
    try:
        return rows.select(columns).select(list(QUEUE_SCHEMA)).cast(QUEUE_SCHEMA)
    except pl.exceptions.PolarsError as exc:
        expected = {c: str(QUEUE_SCHEMA[c]) for c in ROW_REQUIRED + ROW_OPTIONAL}
        raise LabelingError(
            f"queue rows have a column of the wrong type ({exc}); expected {expected}"
        ) from exc


def _pending_rows(queue: pl.DataFrame, statuses: Sequence[str]) -> pl.DataFrame:
    """Queue rows in the given statuses, oldest run first, then by rank."""
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise LabelingError(f"unknown status(es) {unknown}; expected some of {list(STATUSES)}")
    chosen = queue.filter(pl.col("status").is_in(list(statuses)))
    return chosen.sort(["queued_at", "queue_rank", "sample_id"], nulls_last=True)


def pending_tasks(
    store: str | Path,
    statuses: Sequence[str],
    image_root: ImageRoot | None,
    from_name: str = "label",
    model_version: str = MODEL_VERSION,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The sample ids and Label Studio tasks of the queue rows in `statuses`."""
    rows = _pending_rows(read_queue(store), statuses)
    tasks = [
        task_for_row(r, image_root, from_name, model_version) for r in rows.iter_rows(named=True)
    ]
    return rows["sample_id"].to_list(), tasks


def mark_exported(store: str | Path, ids: Sequence[str], now: datetime | None = None) -> None:
    """Queued rows of `ids` become exported (they are in Label Studio or a task file now)."""
    if not ids:
        return
    with _locked(store):
        path = _store_file(store, "queue")
        queue = _read(path, QUEUE_SCHEMA)
        _write(path, _mark(queue, ids, "exported", "exported_at", _now(now), only=("queued",)))


def export_label_studio(
    store: str | Path,
    out_path: str | Path,
    *,
    image_root: ImageRoot | None = None,
    statuses: Sequence[str] = ("queued",),
    from_name: str = "label",
    model_version: str = MODEL_VERSION,
    now: datetime | None = None,
) -> ExportResult:
    """Write the queue rows in `statuses` (default: not exported yet) as Label Studio tasks (JSON)
    and mark them exported, so the next export does not hand out the same tasks again.

    `image_root`: the URL prefix joined with each sample's `source`, percent-encoded (Label
    Studio's `/data/local-files/?d=<folder>`, or any URL); without it the tasks carry the text.
    """
    with _locked(store):
        ids, tasks = pending_tasks(store, statuses, image_root, from_name, model_version)
        out = atomic_write_bytes(out_path, (json.dumps(tasks, indent=2) + "\n").encode())
        path = _store_file(store, "queue")
        if ids:
            queue = _read(path, QUEUE_SCHEMA)
            _write(path, _mark(queue, ids, "exported", "exported_at", _now(now), only=("queued",)))
    logger.info("exported %d Label Studio tasks to %s", len(tasks), out)
    return ExportResult(path=Path(out), n_tasks=len(tasks), sample_ids=tuple(ids))


def read_sync_state(store: str | Path) -> dict[str, Any]:
    """`{url#project: {"project_id", "pulled_through"}}` of the Label Studio projects used."""
    path = _store_file(store, "label_studio_sync")
    fix = f"delete {path.name} and {sum_path(path).name} to pull every annotation again"
    raw = read_sealed(path, fix)
    if raw is None:
        return {}
    try:
        state = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelingError(
            f"{path} is unreadable ({exc}); delete it to pull every annotation again"
        ) from exc
    return state if isinstance(state, dict) else {}


def write_sync_state(store: str | Path, key: str, entry: dict[str, Any]) -> None:
    """Record one project's push/pull state."""
    with _locked(store):
        state = read_sync_state(store)
        state[key] = {**state.get(key, {}), **entry}
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        write_sealed(_store_file(store, "label_studio_sync"), data)


def _mark(
    queue: pl.DataFrame,
    ids: Sequence[str],
    status: str,
    stamp: str,
    now: datetime,
    only: Sequence[str] = STATUSES,
) -> pl.DataFrame:
    """Set `status` and its timestamp column on the given samples (in the `only` statuses)."""
    hit = pl.col("sample_id").is_in(list(ids)) & pl.col("status").is_in(list(only))
    return queue.with_columns(
        pl.when(hit).then(pl.lit(status)).otherwise(pl.col("status")).alias("status"),
        pl.when(hit).then(pl.lit(now).cast(_TS)).otherwise(pl.col(stamp)).alias(stamp),
    )


def _csv_bytes(frame: pl.DataFrame) -> bytes:
    """The queue as CSV (text column included; a conflict's twins as a JSON list)."""
    twins = [json.dumps(t) if t else None for t in frame["twins"].to_list()]
    return frame.with_columns(pl.Series("twins", twins, dtype=pl.String)).write_csv().encode()


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    """The queue as Parquet."""
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


TABLE_WRITERS: dict[str, Callable[[pl.DataFrame], bytes]] = {
    "csv": _csv_bytes,
    "parquet": _parquet_bytes,
}


def export_table(
    store: str | Path,
    out_path: str | Path,
    *,
    format: str = "csv",
    statuses: Sequence[str] = ("queued",),
) -> ExportResult:
    """Write the queue rows in `statuses` as a plain CSV or Parquet table (status unchanged)."""
    if format not in TABLE_WRITERS:
        raise LabelingError(f"format must be one of {', '.join(TABLE_WRITERS)}; got {format!r}")
    rows = _pending_rows(read_queue(store), statuses)
    out = atomic_write_bytes(out_path, TABLE_WRITERS[format](rows))
    return ExportResult(path=Path(out), n_tasks=rows.height, sample_ids=tuple(rows["sample_id"]))


def import_label_studio(
    store: str | Path,
    annotations_path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    from_name: str = "label",
    now: datetime | None = None,
) -> ImportResult:
    """Record the human labels of a Label Studio JSON export; unknown ids are skipped and counted.

    Only samples in the queue are accepted; with `classes`, a label outside them is skipped.
    Re-importing the same file changes nothing (`unchanged`). The label chosen for a label
    conflict's task is recorded for each of its twins too (the person saw them all), unless a
    twin's own task in the same file answered it.
    """
    path = Path(annotations_path)
    if not path.is_file():
        raise LabelingError(f"annotation file {str(path)!r} does not exist")
    tasks = parse_export(path.read_bytes(), path)
    stamp = _now(now)
    with _locked(store):
        qpath, apath = _store_file(store, "queue"), _store_file(store, "answers")
        queue, answers = _read(qpath, QUEUE_SCHEMA), _read(apath, ANSWER_SCHEMA)
        known = {r["sample_id"]: r for r in queue.iter_rows(named=True)}
        seen = {
            (s, a): label
            for s, a, label in answers.sort("imported_at")
            .select("sample_id", "annotation_id", "label")
            .iter_rows()
        }
        counts, new, unknown, bad = collect_answers(tasks, known, seen, classes, from_name)
        fresh = _answer_frame(new, known, stamp, path.name, from_name)
        twins = _twin_answers(fresh, known)
        if fresh.height:
            _write(apath, pl.concat([answers, fresh, twins]))
            _write(
                qpath, _mark(queue, fresh["sample_id"].to_list(), "answered", "answered_at", stamp)
            )
    result = ImportResult(
        n_tasks=len(tasks),
        twins_labeled=twins.height,
        unknown_ids=tuple(unknown[:10]),
        malformed=tuple(bad[:10]),
        **counts,
    )
    for problem in bad:
        logger.warning("annotation file %s: %s; task skipped", path, problem)
    if result.skipped:
        logger.warning(
            "annotation import skipped %d of %d tasks: %s", result.skipped, result.n_tasks, result
        )
    return result


def _answer_frame(
    new: dict[str, tuple[dict, dict]],
    known: dict[str, dict[str, Any]],
    now: datetime,
    name: str,
    from_name: str,
) -> pl.DataFrame:
    """Answer rows for the applied annotations."""
    records = [
        {
            "sample_id": sid,
            "label": choices_of(ann, from_name)[0],
            "previous_label": known[sid]["label"],
            "reason": known[sid]["reason"],
            "annotation_id": id_text(ann.get("id")),
            "task_id": id_text(task.get("id")),
            "completed_by": annotator_of(ann),
            "annotated_at": ann.get("updated_at") or ann.get("created_at"),
            "imported_at": now,
            "source_file": name,
        }
        for sid, (task, ann) in new.items()
    ]
    return pl.DataFrame(records, schema=ANSWER_SCHEMA)


def _twin_answers(fresh: pl.DataFrame, known: dict[str, dict[str, Any]]) -> pl.DataFrame:
    """The answer of each label-conflict task repeated for its twins (the samples shown beside
    it), except twins answered by their own task; previous label and source are the twin's."""
    answered = set(fresh["sample_id"].to_list())
    records = [
        answer | {"sample_id": twin["sample_id"], "previous_label": twin["label"]}
        for answer in fresh.iter_rows(named=True)
        for twin in known[answer["sample_id"]]["twins"] or ()
        if twin["sample_id"] not in answered
    ]
    return pl.DataFrame(records, schema=ANSWER_SCHEMA).unique(
        "sample_id", keep="first", maintain_order=True
    )
