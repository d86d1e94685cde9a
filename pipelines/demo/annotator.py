"""The demo's simulated annotator: answers Label Studio tasks from the demo's truth."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from leanset.pipelines.demo.data import ANNOTATOR, LABELS, DemoTruth, image_relpath


def task_image_path(truth: DemoTruth, task: Any) -> str:
    """The demo image (relative to images/) a task shows: from `data.image`, else `data.source`."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"task {_task_name(task)}: no 'data' object")
    refs = [str(data[k]) for k in ("image", "source") if isinstance(data.get(k), str)]
    if not refs:
        raise ValueError(
            f"task {_task_name(task)}: no data.image or data.source; the demo annotator answers "
            "image tasks exported with an image root"
        )
    errors = []
    for ref in refs:
        try:
            rel = image_relpath(ref)
            truth.true_label(rel)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if truth.images_dir.is_dir() and not (truth.images_dir / rel).is_file():
            errors.append(f"{ref!r}: no such demo image {truth.images_dir / rel}")
            continue
        return rel
    raise ValueError(f"task {_task_name(task)}: {'; '.join(errors)}")


def answer_tasks(
    truth: DemoTruth,
    tasks: Sequence[dict[str, Any]],
    accuracy: float = 1.0,
    seed: int = 0,
    *,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Label Studio's JSON export of `tasks` after a (simulated) human answered every one.

    `tasks` are the tasks `leanset queue export --format label-studio` wrote for the demo. Each
    returned task is a copy with an `id` (its 1-based position when it had none) and one
    annotation choosing the image's true digit (`truth.true_label`), or, with probability
    1 - `accuracy`, a uniformly drawn wrong digit. Draws depend only on `seed` and task order.
    Annotation ids are derived from the tasks, the seed and the answer, so answering the same
    export again gives the same ids (a re-import changes nothing), and another export new ones.
    """
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be between 0 and 1, got {accuracy}")
    if not isinstance(tasks, Sequence) or isinstance(tasks, (str, bytes)):
        raise ValueError(f"expected a list of tasks, got {type(tasks).__name__}")
    rng = np.random.default_rng(seed)
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    created = stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    digest = hashlib.blake2b(
        json.dumps(list(tasks), sort_keys=True, default=str).encode(), digest_size=16
    ).hexdigest()
    out = []
    for number, task in enumerate(tasks, start=1):
        rel = task_image_path(truth, task)
        label = truth.true_label(rel)
        if rng.random() >= accuracy:
            label = LABELS[(LABELS.index(label) + int(rng.integers(1, 10))) % 10]
        answered = copy.deepcopy(dict(task))
        answered.setdefault("id", number)
        from_name, to_name = _control_names(task)
        key = f"{digest}:{seed}:{number}:{task['data'].get('sample_id')}:{label}".encode()
        h = hashlib.blake2b(key, digest_size=16).digest()
        result = {
            "id": h[8:13].hex()[:10],
            "from_name": from_name,
            "to_name": to_name,
            "type": "choices",
            "value": {"choices": [label]},
            "origin": "manual",
        }
        answered["annotations"] = [
            {
                "id": int.from_bytes(h[:6], "big"),  # < 2**48: exact in every JSON reader
                "completed_by": dict(ANNOTATOR),
                "result": [result],
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": created,
                "updated_at": created,
                "task": answered["id"],
            }
        ]
        out.append(answered)
    return out


def _control_names(task: dict[str, Any]) -> tuple[str, str]:
    """(from_name, to_name) of the task's pre-annotation, else leanset's ("label", "image")."""
    predictions = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    for item in (i for p in predictions for i in p.get("result") or []):
        if isinstance(item, dict) and item.get("type", "choices") == "choices":
            return str(item.get("from_name", "label")), str(item.get("to_name", "image"))
    return "label", "image"


def _task_name(task: Any) -> str:
    """How to name a task in an error: its sample id, else its id."""
    data = task.get("data") if isinstance(task, dict) else None
    if isinstance(data, dict) and data.get("sample_id") is not None:
        return repr(data["sample_id"])
    return repr(task.get("id")) if isinstance(task, dict) else repr(task)
