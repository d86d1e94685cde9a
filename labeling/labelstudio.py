"""Label Studio's formats, as pure functions: the labeling config, tasks from queue rows, and the
answers in a JSON export.

Tasks are for the labeling config `label_studio_config(...)` returns (an `Image` or `Text` object
named `image`/`text`, a single-choice `Choices` control named `label`); each task carries
`data.sample_id`, and the model's suggestion as a pre-annotation
(`predictions[0].result[0].value.choices`, with its `score`). An export is Label Studio's JSON
export: a list of tasks with `annotations[].result[].value.choices`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import quoteattr

from labeling.config import LabelingError

Answer = tuple[dict[str, Any], dict[str, Any]]  # (task, the annotation applied)


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


def image_ref(image_root: str, sample_id: str, source: str | None) -> str:
    """`image_root/source`, refusing sources that are absolute or climb out with '..'."""
    rel = PurePosixPath((source or "").replace("\\", "/"))
    if not source or rel.is_absolute() or ".." in rel.parts or ":" in rel.parts[0]:
        raise LabelingError(
            f"sample {sample_id!r} has source {source!r}; expected a path relative to the "
            "dataset root (no '..', not absolute)"
        )
    return f"{image_root.rstrip('/')}/{rel}"


def task_for_row(row: dict[str, Any], image_root: str | None, from_name: str, model: str) -> dict:
    """One Label Studio task with the model's suggestion as a pre-annotation."""
    kind = "image" if image_root is not None else "text"
    if image_root is not None:
        content = image_ref(image_root, row["sample_id"], row["source"])
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


def parse_export(data: bytes, path: Path) -> list[dict[str, Any]]:
    """Label Studio's JSON export (the bytes of `path`): a list of tasks with `annotations` lists."""
    try:
        tasks = json.loads(data.decode("utf-8"))
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


def task_sample_id(task: dict[str, Any]) -> str | None:
    """The sample id the export put into the task's data."""
    data = task.get("data")
    value = data.get("sample_id") if isinstance(data, dict) else None
    return None if value is None else str(value)


def choices_of(annotation: dict[str, Any], from_name: str) -> list[str]:
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


def id_text(value: Any) -> str | None:
    """An id as text (Label Studio ids are integers), None kept."""
    return None if value is None else str(value)


def annotator_of(annotation: dict[str, Any]) -> str | None:
    """Who completed the annotation (user id or email), as text."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return id_text(who)


def pick_annotation(task: dict[str, Any], from_name: str) -> tuple[str, dict[str, Any] | None]:
    """The latest non-cancelled annotation with choices, or why there is none."""
    live = [a for a in task["annotations"] if isinstance(a, dict) and not a.get("was_cancelled")]
    if task["annotations"] and not live:
        return "skipped_cancelled", None
    with_choice = [a for a in live if choices_of(a, from_name)]
    if not with_choice:
        return "skipped_no_choice", None
    latest = max(
        enumerate(with_choice),
        key=lambda ia: (str(ia[1].get("updated_at") or ia[1].get("created_at") or ""), ia[0]),
    )[1]
    if len(set(choices_of(latest, from_name))) > 1:
        return "skipped_multiple_choices", None
    return "applied", latest


def collect_answers(
    tasks: list[dict[str, Any]],
    known: dict[str, dict[str, Any]],
    seen: set[tuple[str, str]],
    classes: Sequence[str] | None,
    from_name: str,
) -> tuple[dict[str, int], dict[str, Answer], list[str]]:
    """Sort each task into applied/unchanged/skipped; the last task per sample wins."""
    counts: dict[str, int] = {}
    new: dict[str, Answer] = {}
    unknown: list[str] = []
    for task in tasks:
        outcome, annotation = classify_task(task, known, seen, classes, from_name)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "skipped_unknown_id":
            unknown.append(str(task_sample_id(task)))
        if outcome == "applied":
            sid = str(task_sample_id(task))
            if sid in new:  # the same sample in two tasks: the later task wins
                counts["applied"] -= 1
                counts["skipped_duplicate_task"] = counts.get("skipped_duplicate_task", 0) + 1
            assert annotation is not None  # an applied task has its annotation
            new[sid] = (task, annotation)
    return counts, new, unknown


def classify_task(
    task: dict[str, Any],
    known: dict[str, dict[str, Any]],
    seen: set[tuple[str, str]],
    classes: Sequence[str] | None,
    from_name: str,
) -> tuple[str, dict | None]:
    """What to do with one task, and the annotation to apply."""
    sid = task_sample_id(task)
    if sid is None:
        return "skipped_no_sample_id", None
    if sid not in known:
        return "skipped_unknown_id", None
    outcome, annotation = pick_annotation(task, from_name)
    if annotation is None:
        return outcome, None
    if classes is not None and choices_of(annotation, from_name)[0] not in classes:
        return "skipped_unknown_label", None
    if (sid, id_text(annotation.get("id"))) in seen:
        return "unchanged", None
    return "applied", annotation
