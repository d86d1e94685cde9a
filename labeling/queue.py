"""The labeling queue in the store, and its round trip through Label Studio.

Files (under `STORE/labeling/`, each a Parquet file rewritten whole through a temporary file and a
rename, so a reader sees the old or the new table; read-modify-write runs under an advisory lock on
`STORE/labeling/.lock`):
- `queue.parquet`: one row per queued sample (`QUEUE_SCHEMA`); status queued/exported/answered.
- `answers.parquet`: one row per imported annotation (`ANSWER_SCHEMA`); `read_answers` gives the
  latest per sample, which the next run applies as a relabel traceable to the annotation id.
Parquet rather than Delta: the queue is small, is rewritten whole, and needs no time travel; the
versioned history of labels lives in the decisions table that the next run writes.

Label Studio: `export_label_studio` writes tasks for the labeling config `label_studio_config(...)`
returns (an `Image` or `Text` object named `image`/`text`, a single-choice `Choices` control named
`label`); each task carries `data.sample_id`, and the model's suggestion as a pre-annotation
(`predictions[0].result[0].value.choices`, with its `score`). `import_label_studio` reads Label
Studio's JSON export (a list of tasks with `annotations[].result[].value.choices`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import quoteattr

import polars as pl

from labeling.probe import LabelingError
from pipelines.fsutil import atomic_write_bytes

try:  # advisory locking is POSIX-only; elsewhere a single writer is assumed
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

QUEUE_FILE = "queue.parquet"
ANSWERS_FILE = "answers.parquet"
REASONS = ("uncertain", "label_issue", "label_conflict")
PENDING = ("queued", "exported")
STATUSES = ("queued", "exported", "answered")
_TS = pl.Datetime("us", "UTC")
QUEUE_SCHEMA: dict[str, pl.DataType] = {
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
}
ROW_REQUIRED = ("sample_id", "source", "reason")
ROW_OPTIONAL = ("al_score", "queue_rank", "label", "suggested_label", "suggested_score", "text")
ANSWER_SCHEMA: dict[str, pl.DataType] = {
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
    unknown_ids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def skipped(self) -> int:
        """All tasks that did not become an answer."""
        return self.n_tasks - self.applied - self.unchanged


def label_studio_config(
    classes: Sequence[str], *, kind: str = "image", from_name: str = "label"
) -> str:
    """The Label Studio labeling config (XML) the exported tasks assume."""
    if kind not in ("image", "text"):
        raise LabelingError(f"kind must be image or text, got {kind!r}")
    if not classes:
        raise LabelingError("label_studio_config needs at least one class")
    obj = "Image" if kind == "image" else "Text"
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View>\n  <{obj} name="{kind}" value="${kind}"/>\n'
        f'  <Choices name={quoteattr(from_name)} toName="{kind}" choice="single" '
        f'showInline="true">\n{choices}\n  </Choices>\n</View>\n'
    )


def labeling_dir(store: str | Path) -> Path:
    """`STORE/labeling`, refusing a store that is a file or a labeling folder that leaves it."""
    root = Path(store)
    if root.exists() and not root.is_dir():
        raise LabelingError(f"store {str(root)!r} is a file, expected a folder")
    folder = root / "labeling"
    _check_inside(root, folder)
    return folder


def _check_inside(root: Path, path: Path) -> None:
    """`path` must resolve inside `root` (a symlink out of the store is refused)."""
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        raise LabelingError(f"{str(path)!r} resolves to {str(real)!r}, outside the store {root}")


def _store_file(store: str | Path, name: str) -> Path:
    """A file under STORE/labeling, checked to stay inside the store."""
    path = labeling_dir(store) / name
    _check_inside(Path(store), path)
    return path


@contextlib.contextmanager
def _locked(store: str | Path) -> Iterator[None]:
    """Hold the store's labeling lock for a read-modify-write."""
    folder = labeling_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A stored table, or an empty one with its schema."""
    if not path.exists():
        return pl.DataFrame(schema=schema)
    return pl.read_parquet(path).select(list(schema)).cast(schema)


def _write(path: Path, frame: pl.DataFrame) -> Path:
    """Write a table as Parquet, atomically."""
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_queue(store: str | Path) -> pl.DataFrame:
    """The queue table (empty when nothing was ever queued)."""
    return _read(_store_file(store, QUEUE_FILE), QUEUE_SCHEMA)


def read_answers(store: str | Path, *, latest: bool = True) -> pl.DataFrame:
    """Imported answers; with `latest`, one per sample (the most recently imported)."""
    answers = _read(_store_file(store, ANSWERS_FILE), ANSWER_SCHEMA)
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
    `al_score`, `queue_rank`, `label` (current), `suggested_label`, `suggested_score`, `text`.
    Answered samples are skipped too, unless `requeue_answered`.
    """
    rows = _check_rows(rows)
    with _locked(store):
        path = _store_file(store, QUEUE_FILE)
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


def _image_ref(image_root: str, sample_id: str, source: str | None) -> str:
    """`image_root/source`, refusing sources that are absolute or climb out with '..'."""
    rel = PurePosixPath((source or "").replace("\\", "/"))
    if not source or rel.is_absolute() or ".." in rel.parts or ":" in rel.parts[0]:
        raise LabelingError(
            f"sample {sample_id!r} has source {source!r}; expected a path relative to the "
            "dataset root (no '..', not absolute)"
        )
    return f"{image_root.rstrip('/')}/{rel}"


def _task(row: dict[str, Any], image_root: str | None, from_name: str, model: str) -> dict:
    """One Label Studio task with the model's suggestion as a pre-annotation."""
    kind = "image" if image_root is not None else "text"
    if image_root is not None:
        content = _image_ref(image_root, row["sample_id"], row["source"])
    elif row["text"] is None:
        raise LabelingError(
            f"sample {row['sample_id']!r} has no text in the queue; pass image_root for image "
            "datasets, or enqueue rows with a text column"
        )
    else:
        content = row["text"]
    data = {
        kind: content,
        "sample_id": row["sample_id"],
        "source": row["source"],
        "reason": row["reason"],
        "given_label": row["label"],
    }
    task: dict[str, Any] = {"data": data}
    if row["suggested_label"] is not None:
        score = row["suggested_score"]
        value = {"choices": [row["suggested_label"]]}
        result = {
            "from_name": from_name,
            "to_name": kind,
            "type": "choices",
            "value": value,
            "score": score,
        }
        task["predictions"] = [{"model_version": model, "score": score, "result": [result]}]
    return task


def export_label_studio(
    store: str | Path,
    out_path: str | Path,
    *,
    image_root: str | None = None,
    statuses: Sequence[str] = PENDING,
    from_name: str = "label",
    model_version: str = "leanset",
    now: datetime | None = None,
) -> ExportResult:
    """Write the pending queue as Label Studio tasks (JSON) and mark those rows exported.

    `image_root`: prefix joined with each sample's `source` (a local folder, a URL, or Label
    Studio's `/data/local-files/?d=` prefix); without it the tasks carry the queue's `text`.
    """
    with _locked(store):
        path = _store_file(store, QUEUE_FILE)
        queue = _read(path, QUEUE_SCHEMA)
        rows = _pending_rows(queue, statuses)
        tasks = [_task(r, image_root, from_name, model_version) for r in rows.iter_rows(named=True)]
        out = atomic_write_bytes(out_path, (json.dumps(tasks, indent=2) + "\n").encode())
        ids = rows["sample_id"].to_list()
        if ids:
            _write(path, _mark(queue, ids, "exported", "exported_at", _now(now), only=("queued",)))
    logger.info("exported %d Label Studio tasks to %s", len(tasks), out)
    return ExportResult(path=Path(out), n_tasks=len(tasks), sample_ids=tuple(ids))


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
    """The queue as CSV (text column included)."""
    return frame.write_csv().encode()


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
    statuses: Sequence[str] = PENDING,
) -> ExportResult:
    """Write the queue rows in `statuses` as a plain CSV or Parquet table (status unchanged)."""
    if format not in TABLE_WRITERS:
        raise LabelingError(f"format must be one of {', '.join(TABLE_WRITERS)}; got {format!r}")
    rows = _pending_rows(read_queue(store), statuses)
    out = atomic_write_bytes(out_path, TABLE_WRITERS[format](rows))
    return ExportResult(path=Path(out), n_tasks=rows.height, sample_ids=tuple(rows["sample_id"]))


def _load_tasks(path: Path) -> list[dict[str, Any]]:
    """Label Studio's JSON export: a list of tasks, each with an `annotations` list."""
    if not path.is_file():
        raise LabelingError(f"annotation file {str(path)!r} does not exist")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelingError(f"annotation file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(tasks, list):
        raise LabelingError(
            f"annotation file {str(path)!r} holds a {type(tasks).__name__}; expected Label "
            "Studio's JSON export (a list of tasks)"
        )
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("annotations"), list):
            raise LabelingError(
                f"task {i} of {str(path)!r} has no 'annotations' list; export from Label Studio "
                "in the JSON format (not JSON-MIN or CSV)"
            )
    return tasks


def _sample_id(task: dict[str, Any]) -> str | None:
    """The sample id the export put into the task's data."""
    data = task.get("data")
    value = data.get("sample_id") if isinstance(data, dict) else None
    return None if value is None else str(value)


def _choices(annotation: dict[str, Any], from_name: str) -> list[str]:
    """The choices an annotation made in the `from_name` control."""
    picked: list[str] = []
    for item in annotation.get("result") or []:
        if (
            item.get("type", "choices") != "choices"
            or item.get("from_name", from_name) != from_name
        ):
            continue
        picked.extend(str(c) for c in (item.get("value") or {}).get("choices") or [])
    return picked


def _text(value: Any) -> str | None:
    """An id as text (Label Studio ids are integers), None kept."""
    return None if value is None else str(value)


def _annotator(annotation: dict[str, Any]) -> str | None:
    """Who completed the annotation (user id or email), as text."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return _text(who)


def _pick_annotation(task: dict[str, Any], from_name: str) -> tuple[str, dict[str, Any] | None]:
    """The latest non-cancelled annotation with choices, or why there is none."""
    live = [a for a in task["annotations"] if isinstance(a, dict) and not a.get("was_cancelled")]
    if task["annotations"] and not live:
        return "skipped_cancelled", None
    with_choice = [a for a in live if _choices(a, from_name)]
    if not with_choice:
        return "skipped_no_choice", None
    latest = max(
        enumerate(with_choice),
        key=lambda ia: (str(ia[1].get("updated_at") or ia[1].get("created_at") or ""), ia[0]),
    )[1]
    if len(set(_choices(latest, from_name))) > 1:
        return "skipped_multiple_choices", None
    return "applied", latest


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
    Re-importing the same file changes nothing (`unchanged`).
    """
    path = Path(annotations_path)
    tasks = _load_tasks(path)
    stamp = _now(now)
    with _locked(store):
        qpath, apath = _store_file(store, QUEUE_FILE), _store_file(store, ANSWERS_FILE)
        queue, answers = _read(qpath, QUEUE_SCHEMA), _read(apath, ANSWER_SCHEMA)
        known = {r["sample_id"]: r for r in queue.iter_rows(named=True)}
        seen = set(
            zip(answers["sample_id"].to_list(), answers["annotation_id"].to_list(), strict=True)
        )
        counts, new, unknown = _collect(tasks, known, seen, classes, from_name)
        fresh = _answer_frame(new, known, stamp, path.name, from_name)
        if fresh.height:
            _write(apath, pl.concat([answers, fresh]))
            _write(
                qpath, _mark(queue, fresh["sample_id"].to_list(), "answered", "answered_at", stamp)
            )
    result = ImportResult(n_tasks=len(tasks), unknown_ids=tuple(unknown[:10]), **counts)
    if result.skipped:
        logger.warning(
            "annotation import skipped %d of %d tasks: %s", result.skipped, result.n_tasks, result
        )
    return result


def _collect(
    tasks: list[dict[str, Any]],
    known: dict[str, dict[str, Any]],
    seen: set[tuple[str, str]],
    classes: Sequence[str] | None,
    from_name: str,
) -> tuple[dict[str, int], dict[str, tuple[dict, dict]], list[str]]:
    """Sort each task into applied/unchanged/skipped; the last task per sample wins."""
    counts: dict[str, int] = {}
    new: dict[str, tuple[dict, dict]] = {}
    unknown: list[str] = []
    for task in tasks:
        outcome, annotation = _classify(task, known, seen, classes, from_name)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "skipped_unknown_id":
            unknown.append(str(_sample_id(task)))
        if outcome == "applied":
            sid = str(_sample_id(task))
            if sid in new:  # the same sample in two tasks: the later task wins
                counts["applied"] -= 1
                counts["skipped_duplicate_task"] = counts.get("skipped_duplicate_task", 0) + 1
            new[sid] = (task, annotation)
    return counts, new, unknown


def _classify(
    task: dict[str, Any],
    known: dict[str, dict[str, Any]],
    seen: set[tuple[str, str]],
    classes: Sequence[str] | None,
    from_name: str,
) -> tuple[str, dict | None]:
    """What to do with one task, and the annotation to apply."""
    sid = _sample_id(task)
    if sid is None:
        return "skipped_no_sample_id", None
    if sid not in known:
        return "skipped_unknown_id", None
    outcome, annotation = _pick_annotation(task, from_name)
    if annotation is None:
        return outcome, None
    if classes is not None and _choices(annotation, from_name)[0] not in classes:
        return "skipped_unknown_label", None
    if (sid, _text(annotation.get("id"))) in seen:
        return "unchanged", None
    return "applied", annotation


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
            "label": _choices(ann, from_name)[0],
            "previous_label": known[sid]["label"],
            "reason": known[sid]["reason"],
            "annotation_id": _text(ann.get("id")),
            "task_id": _text(task.get("id")),
            "completed_by": _annotator(ann),
            "annotated_at": ann.get("updated_at") or ann.get("created_at"),
            "imported_at": now,
            "source_file": name,
        }
        for sid, (task, ann) in new.items()
    ]
    return pl.DataFrame(records, schema=ANSWER_SCHEMA)
