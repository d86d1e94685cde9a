"""Label Studio's formats, as pure functions: the labeling config, tasks from queue rows, and the
answers in a JSON export.

Tasks are for the labeling config `label_studio_config(...)` returns (an `Image` or `Text` object
named `image`/`text`, a single-choice `Choices` control named `label`); each task carries
`data.sample_id`, `data.twins` (a label conflict's samples side by side with their labels, as
HTML: empty for other tasks), and the model's suggestion as a pre-annotation
(`predictions[0].result[0].value.choices`, with its `score`). An export is Label Studio's JSON
export: a list of tasks with `annotations[].result[].value.choices`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from leanset.labeling.config import LabelingError

Answer = tuple[dict[str, Any], dict[str, Any]]  # (task, the annotation applied)
MODEL_VERSION = "leanset"  # the predictions leanset puts on tasks (replaced on every push)
LOCAL_FILES = "/data/local-files/?d="  # where Label Studio serves files of a Local Storage


@dataclass(frozen=True)
class ImageLinks:
    """How a task names its image when a plain URL prefix will not do: `sign` turns the image's
    path relative to the dataset root into its URL (a presigned bucket URL, for instance)."""

    prefix: str  # what the URLs stand for (messages name it)
    sign: Callable[[str], str]


ImageRoot = str | ImageLinks  # a URL prefix joined with each relative path, or ImageLinks
REASON_TEXT = {
    "uncertain": "uncertain (the model is unsure)",
    "label_issue": "label issue (the given label looks wrong)",
    "label_conflict": "label conflict (near-copies carry different labels)",
}


def label_studio_config(
    classes: Sequence[str], *, kind: str = "image", from_name: str = "label"
) -> str:
    """The Label Studio labeling config (XML) the exported tasks assume: a header with the
    sample's current label and why it is queued (`$context`), the content, a label conflict's
    samples side by side (`$twins`, empty for other tasks), single-choice classes."""
    if kind not in ("image", "text"):
        raise LabelingError(f"kind must be image or text, got {kind!r}")
    if not classes:
        raise LabelingError("label_studio_config needs at least one class")
    obj = (
        '<Image name="image" value="$image" maxWidth="320px"/>'
        if kind == "image"
        else '<Text name="text" value="$text"/>'
    )
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View>\n  <Header value="$context"/>\n  {obj}\n'
        '  <HyperText name="twins" value="$twins" inline="true"/>\n'
        f'  <Choices name={quoteattr(from_name)} toName="{kind}" choice="single" '
        f'showInline="true">\n{choices}\n  </Choices>\n</View>\n'
    )


def context_line(label: str | None, reason: str, twins: Sequence[dict[str, Any]] = ()) -> str:
    """What the task view shows above the content: the current label and why it is queued (and,
    for a label conflict, the labels of its twins and that the answer labels them all)."""
    current = label if label is not None else "none (unlabeled)"
    line = f"Current label: {current} | queued because: {REASON_TEXT.get(reason, reason)}"
    if not twins:
        return line
    labels = ", ".join(_label_text(t["label"]) for t in twins)
    return f"{line} | {len(twins)} other sample(s) labeled {labels}: your answer labels them all"


def _label_text(label: str | None) -> str:
    return "none" if label is None else label


TWINS_SHOWN = 12  # a task shows this many of a conflict's samples; the answer labels them all


def twins_html(row: dict[str, Any], image_root: ImageRoot | None) -> str:
    """A label conflict's samples side by side with their labels (the queued one first), as
    HTML for the task's `twins` panel; empty for a task without twins."""
    twins = row.get("twins") or []
    if not twins:
        return ""
    members = [{**row, "this": True}] + [{**t, "this": False} for t in twins]
    cards = "".join(_card(m, image_root) for m in members[:TWINS_SHOWN])
    more = len(members) - TWINS_SHOWN
    tail = f"<p>and {more} more sample(s), labeled as listed above</p>" if more > 0 else ""
    return (
        f"<p><b>All {len(members)} samples of this label conflict</b> (one answer labels them "
        f'all)</p><div style="display:flex;flex-wrap:wrap;gap:12px">{cards}</div>{tail}'
    )


def _card(member: dict[str, Any], image_root: ImageRoot | None) -> str:
    """One sample of a conflict: its content, label and id."""
    sid = member["sample_id"]
    if image_root is not None:
        url = html.escape(image_ref(image_root, sid, member["source"]), quote=True)
        body = (
            f'<img src="{url}" style="max-width:200px;max-height:200px" alt="{html.escape(sid)}"/>'
        )
    else:
        text = member["text"] if member["text"] is not None else f"(no text: {member['source']})"
        body = f'<div style="white-space:pre-wrap;max-height:12em;overflow:auto">{html.escape(text)}</div>'
    which = " (this task)" if member["this"] else ""
    return (
        '<div style="border:1px solid #ccc;padding:6px;max-width:320px">'
        f"{body}<div><b>label: {html.escape(_label_text(member['label']))}</b>{which}</div>"
        f'<div style="font-size:80%;color:#666">{html.escape(sid)}</div></div>'
    )


def local_files_prefix(dataset_root: Path, document_root: Path) -> str:
    """The `--image-root` for Label Studio's Local Storage: `/data/local-files/?d=` plus the
    dataset folder's path relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (which must be
    above it: Label Studio refuses a storage at the document root itself)."""
    data, docs = dataset_root.resolve(), document_root.resolve()
    if docs not in data.parents:
        raise LabelingError(
            f"the dataset folder {data} is not inside the Label Studio document root {docs}; set "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (or --document-root) to a folder above it"
        )
    return LOCAL_FILES + quote(data.relative_to(docs).as_posix())


def image_ref(image_root: ImageRoot, sample_id: str, source: str | None) -> str:
    """`image_root/source` (or `image_root.sign(source)`), refusing sources that are absolute or
    climb out with '..'."""
    rel = PurePosixPath((source or "").replace("\\", "/"))
    if not source or rel.is_absolute() or ".." in rel.parts or ":" in rel.parts[0]:
        raise LabelingError(
            f"sample {sample_id!r} has source {source!r}; expected a path relative to the "
            "dataset root (no '..', not absolute)"
        )
    if isinstance(image_root, ImageLinks):
        return image_root.sign(rel.as_posix())
    return f"{image_root.rstrip('/')}/{quote(rel.as_posix())}"


def task_for_row(
    row: dict[str, Any], image_root: ImageRoot | None, from_name: str, model: str
) -> dict:
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
        "context": context_line(row["label"], row["reason"], row.get("twins") or ()),
        "twins": twins_html(row, image_root),
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
    except RecursionError as exc:
        raise LabelingError(
            f"annotation file {str(path)!r} is nested too deeply to be a Label Studio export; "
            "nothing was imported"
        ) from exc
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


_SCALAR_ID = (int, str)


def malformed(task: dict[str, Any]) -> str | None:
    """Why a task's annotations are not in Label Studio's export shape (None when they are)."""
    for k, ann in enumerate(task["annotations"]):
        where = f"annotation {k}"
        if not isinstance(ann, dict):
            return f"{where} is a {type(ann).__name__}, not an object"
        who = ann.get("completed_by")
        if who is not None and not isinstance(who, (int, str, dict)):
            return f"{where}: completed_by is a {type(who).__name__}"
        if ann.get("id") is not None and not isinstance(ann["id"], _SCALAR_ID):
            return f"{where}: id is a {type(ann['id']).__name__}, not a number or text"
        for key in ("created_at", "updated_at"):
            if ann.get(key) is not None and not isinstance(ann[key], str):
                return f"{where}: {key} is a {type(ann[key]).__name__}, not a date text"
        if ann.get("was_cancelled") not in (None, True, False):
            return f"{where}: was_cancelled is {ann['was_cancelled']!r}, not true or false"
        problem = _malformed_result(ann.get("result"))
        if problem:
            return f"{where}: {problem}"
    return None


def _malformed_result(result: Any) -> str | None:
    """Why an annotation's `result` is not a list of result objects with a `value` object."""
    if result is None:
        return None
    if not isinstance(result, list):
        return f"result is a {type(result).__name__}, not a list"
    for i, item in enumerate(result):
        if not isinstance(item, dict):
            return f"result[{i}] is a {type(item).__name__}, not an object"
        value = item.get("value")
        if value is not None and not isinstance(value, dict):
            return f"result[{i}].value is a {type(value).__name__}, not an object"
        picked = (value or {}).get("choices")
        if picked is not None and (
            not isinstance(picked, list) or not all(isinstance(c, str) for c in picked)
        ):
            return f"result[{i}].value.choices is not a list of texts"
    return None


def task_name(task: Any, index: int) -> str:
    """How a message names a task: its position in the file and its Label Studio id."""
    tid = task.get("id") if isinstance(task, dict) else None
    return f"task {index}" + (f" (id {tid!r})" if isinstance(tid, _SCALAR_ID) else "")


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
    seen: Mapping[tuple[str, str | None], str | None],
    classes: Sequence[str] | None,
    from_name: str,
) -> tuple[dict[str, int], dict[str, Answer], list[str], list[str]]:
    """Sort each task into applied/unchanged/skipped; the last task per sample wins.

    `seen`: the label recorded for each (sample, annotation id) already imported; an annotation
    edited since (another label) is applied again. Returns the counts, the answers to record, the
    unknown sample ids, and each malformed task with what is wrong with it."""
    counts: dict[str, int] = {}
    new: dict[str, Answer] = {}
    unknown: list[str] = []
    bad: list[str] = []
    for index, task in enumerate(tasks):
        outcome, annotation = classify_task(task, known, seen, classes, from_name)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "skipped_unknown_id":
            unknown.append(str(task_sample_id(task)))
        if outcome == "skipped_malformed":
            bad.append(f"{task_name(task, index)}: {malformed(task)}")
        if outcome == "applied":
            sid = str(task_sample_id(task))
            if sid in new:  # the same sample in two tasks: the later task wins
                counts["applied"] -= 1
                counts["skipped_duplicate_task"] = counts.get("skipped_duplicate_task", 0) + 1
            assert annotation is not None  # an applied task has its annotation
            new[sid] = (task, annotation)
    return counts, new, unknown, bad


def classify_task(
    task: dict[str, Any],
    known: dict[str, dict[str, Any]],
    seen: Mapping[tuple[str, str | None], str | None],
    classes: Sequence[str] | None,
    from_name: str,
) -> tuple[str, dict | None]:
    """What to do with one task, and the annotation to apply."""
    sid = task_sample_id(task)
    if sid is None:
        return "skipped_no_sample_id", None
    if malformed(task) is not None:
        return "skipped_malformed", None
    if sid not in known:
        return "skipped_unknown_id", None
    outcome, annotation = pick_annotation(task, from_name)
    if annotation is None:
        return outcome, None
    choice = choices_of(annotation, from_name)[0]
    if classes is not None and choice not in classes:
        return "skipped_unknown_label", None
    key = (sid, id_text(annotation.get("id")))
    if key in seen and seen[key] == choice:
        return "unchanged", None
    return "applied", annotation
