"""The labeling queue through Label Studio's API (label-studio-sdk): push tasks, pull answers.

`push` creates the project (or updates its labeling config), adds a Local Storage on the dataset
folder so task images display (never synced: the tasks come from leanset), and creates or updates
one task per waiting sample, keyed by `data.sample_id`: a second push of the same queue creates
nothing. `pull` lists the tasks updated since the previous pull (a new, edited or skipped
annotation bumps a task's `updated_at`), rewrites them in the JSON export's shape and records them
like `leanset queue import` does. The API key comes from `LABEL_STUDIO_API_KEY`, never from a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from leanset.labeling.config import LabelingError
from leanset.labeling.labelstudio import MODEL_VERSION, ImageRoot

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
PAGE_SIZE = 1000
# Label Studio parses Datetime filter values with exactly this format (an ISO offset is a 500)
FILTER_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class PushCounts:
    """What a push did, task by task."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0


def api_key(environ: dict[str, str] | None = None) -> str:
    """The API key (a legacy token or a personal access token) from the environment."""
    key = (environ if environ is not None else os.environ).get(API_KEY_ENV, "").strip()
    if not key:
        raise LabelingError(
            f"set {API_KEY_ENV} to your Label Studio API key (Account & Settings > "
            "Personal Access Token, or the legacy token); it is never read from flows.yaml"
        )
    return key


def connect(url: str, key: str) -> Any:
    """The SDK client for `url` (its default URL and port are not Label Studio's own)."""
    try:
        from label_studio_sdk import LabelStudio
    except ImportError as exc:
        raise LabelingError(
            "queue push/pull need label-studio-sdk: pip install -c constraints.txt "
            "'leanset[labelstudio]'"
        ) from exc
    return LabelStudio(base_url=url.rstrip("/"), api_key=key)


@contextmanager
def api_errors(url: str) -> Iterator[None]:
    """SDK and network errors as a LabelingError naming the server and what it answered."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as exc:
        hint = " (is LABEL_STUDIO_API_KEY right?)" if exc.status_code in (401, 403) else ""
        raise LabelingError(
            f"Label Studio at {url} answered {exc.status_code}: {_short(exc.body)}{hint}"
        ) from exc
    except httpx.HTTPError as exc:
        raise LabelingError(f"cannot reach Label Studio at {url}: {exc}") from exc


def _short(body: Any) -> str:
    text = json.dumps(body, default=str) if not isinstance(body, str) else body
    return text if len(text) <= 300 else text[:300] + "..."


# ---------------------------------------------------------------- project and storage


def ensure_project(client: Any, project: str, config: str) -> int:
    """The id of `project` (an id, or a title matched exactly), created or given `config`."""
    if project.isdigit():
        found = client.projects.get(int(project))
    else:  # the server's title filter matches substrings, case-insensitively
        matches = [p for p in client.projects.list(title=project) if p.title == project]
        if not matches:
            return int(client.projects.create(title=project, label_config=config).id)
        found = client.projects.get(matches[0].id)
    if found.label_config != config:
        client.projects.update(found.id, label_config=config)
    return int(found.id)


def ensure_local_storage(client: Any, project_id: int, folder: Path) -> int:
    """A Local Storage on the dataset folder: it lets the project's tasks show its files."""
    path = str(folder.resolve())
    for storage in client.import_storage.local.list(project=project_id):
        if storage.path == path:
            return int(storage.id)
    created = client.import_storage.local.create(
        project=project_id, path=path, title=f"leanset: {folder.name}", use_blob_urls=True
    )
    return int(created.id)


# ---------------------------------------------------------------- push


def project_tasks(client: Any, project_id: int) -> dict[str, Any]:
    """The project's tasks by `data.sample_id`, with their predictions."""
    tasks = client.tasks.list(project=project_id, fields="all", page_size=PAGE_SIZE)
    return {str(t.data["sample_id"]): t for t in tasks if "sample_id" in (t.data or {})}


def _field(obj: Any, key: str) -> Any:
    """A field of an SDK object or a dict."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _update_task(client: Any, task: Any, wanted: dict[str, Any]) -> bool:
    """Bring one existing task to the wanted data and suggestion; whether anything changed."""
    changed = False
    if task.data != wanted["data"]:
        client.tasks.update(str(task.id), data=wanted["data"])
        changed = True
    ours = [p for p in task.predictions or [] if _field(p, "model_version") == MODEL_VERSION]
    have = [(_field(p, "result"), _field(p, "score")) for p in ours]
    predictions = wanted.get("predictions", [])
    if have != [(p["result"], p["score"]) for p in predictions]:
        for old in ours:
            client.predictions.delete(_field(old, "id"))
        for new in predictions:
            client.predictions.create(task=task.id, **new)
        changed = True
    return changed


def push_tasks(client: Any, project_id: int, tasks: Iterable[dict[str, Any]]) -> PushCounts:
    """Create the tasks whose sample is new to the project, update the others in place."""
    known = project_tasks(client, project_id)
    fresh: list[dict[str, Any]] = []
    updated = unchanged = 0
    for wanted in tasks:
        current = known.get(str(wanted["data"]["sample_id"]))
        if current is None:
            fresh.append(wanted)
        elif _update_task(client, current, wanted):
            updated += 1
        else:
            unchanged += 1
    if fresh:
        client.projects.import_tasks(id=project_id, request=fresh)
    return PushCounts(created=len(fresh), updated=updated, unchanged=unchanged)


# ---------------------------------------------------------------- pull


def _updated_after(watermark: str) -> str:
    """A Data Manager query: the tasks updated after `watermark`."""
    item = {
        "filter": "filter:tasks:updated_at",
        "operator": "greater",
        "type": "Datetime",
        "value": watermark,
    }
    return json.dumps({"filters": {"conjunction": "and", "items": [item]}})


def filter_time(stamp: datetime) -> str:
    """A time as the Datetime filter wants it (UTC, microseconds, `Z`)."""
    return stamp.astimezone(timezone.utc).strftime(FILTER_TIME)


def _export_shape(task: Any, emails: dict[int, str]) -> dict[str, Any]:
    """A listed task as Label Studio's JSON export writes it, annotators named by email."""
    annotations = []
    for ann in task.annotations or []:
        who = ann.get("completed_by") if isinstance(ann, dict) else None
        named = {"id": who, "email": emails.get(who)} if isinstance(who, int) else who
        annotations.append({**ann, "completed_by": named} if isinstance(ann, dict) else ann)
    return {
        "id": task.id,
        "data": task.data,
        "annotations": annotations,
        "updated_at": filter_time(task.updated_at),
    }


def pull_tasks(client: Any, project_id: int, since: str | None) -> tuple[list[dict], str | None]:
    """Tasks with annotations (skips included) updated after `since`, and the next watermark."""
    query = _updated_after(since) if since else None
    listed = client.tasks.list(project=project_id, fields="all", query=query, page_size=PAGE_SIZE)
    emails = {int(u.id): u.email for u in client.users.list()}
    tasks = [_export_shape(t, emails) for t in listed if t.annotations]
    return tasks, max((t["updated_at"] for t in tasks), default=since)


# ---------------------------------------------------------------- images of a bucket source


def cloud_url(url: str) -> str:
    """A bucket URL as Label Studio's cloud storages name objects: ``s3://`` and ``gs://`` as
    they are, Azure (``az://container/...``, ``abfs[s]://container@account.../...``) as
    ``azure-blob://container/...``."""
    scheme, _, rest = url.rstrip("/").partition("://")
    if scheme.lower() not in ("az", "abfs", "abfss"):
        return url.rstrip("/")
    head, _, path = rest.partition("/")
    container = head.split("@", 1)[0]
    return f"azure-blob://{container}/{path}".rstrip("/")


def bucket_images(url: str, presign_s: float | None) -> ImageRoot:
    """Task images of an image source in a bucket: the objects' cloud URLs, which Label Studio
    opens through a Source Cloud Storage on that bucket, or (`presign_s`) presigned HTTPS URLs
    valid that many seconds, which any browser opens (credentials from the environment)."""
    if presign_s is None:
        return cloud_url(url)
    from leanset.labeling.labelstudio import ImageLinks
    from leanset.pipelines.store.storage import ObjectStorage

    storage = ObjectStorage(url)
    return ImageLinks(url, lambda rel: storage.signed_url(rel, presign_s))


def cloud_storage_hint(url: str) -> str:
    """How Label Studio must be set up to open `cloud_url` task images."""
    scheme, _, rest = cloud_url(url).partition("://")
    bucket, _, prefix = rest.partition("/")
    kind = {"s3": "Amazon S3", "gs": "Google Cloud Storage"}.get(scheme, "Azure Blob Storage")
    return (
        f"images: the tasks name them {scheme}://{bucket}/{prefix + '/' if prefix else ''}...; "
        f"in the project add a Source Cloud Storage ({kind}, bucket/container {bucket}, prefix "
        f"{prefix or '(none)'}) with 'Use pre-signed URLs' on, and do not sync it (leanset "
        "makes the tasks); or export with --presign SECONDS for links any browser opens"
    )


# ---------------------------------------------------------------- the store's queue, both ways


def sync_key(url: str, project_id: int) -> str:
    """How the store's sync state names one project of one server."""
    return f"{url.rstrip('/')}#{project_id}"


@dataclass(frozen=True)
class Target:
    """Where the queue goes: the server, the project (id or exact title), the image URLs."""

    url: str
    project: str
    image_root: ImageRoot | None  # None: text tasks
    dataset_root: Path | None  # a Local Storage goes on it (image datasets)
    classes: tuple[str, ...]


def push_queue(store: Path, target: Target, key: str) -> tuple[int, PushCounts]:
    """Create or update the project and one task per waiting sample; mark them exported."""
    from leanset.labeling.labelstudio import label_studio_config
    from leanset.pipelines.store.queue import (
        PENDING,
        mark_exported,
        pending_tasks,
        write_sync_state,
    )

    ids, tasks = pending_tasks(store, PENDING, target.image_root)
    kind = "image" if target.image_root is not None else "text"
    config = label_studio_config(list(target.classes), kind=kind)
    with api_errors(target.url):
        client = connect(target.url, key)
        project_id = ensure_project(client, target.project, config)
        if target.dataset_root is not None and target.image_root is not None:
            ensure_local_storage(client, project_id, target.dataset_root)
        counts = push_tasks(client, project_id, tasks)
    mark_exported(store, ids)
    write_sync_state(store, sync_key(target.url, project_id), {"project": target.project})
    return project_id, counts


def pull_queue(store: Path, target: Target, key: str, classes: list[str]) -> tuple[Path, Any]:
    """Fetch the tasks updated since the last pull and record their answers (an import)."""
    from leanset.pipelines.fsutil import atomic_write_bytes
    from leanset.pipelines.store.layout import StoreLayout
    from leanset.pipelines.store.queue import import_label_studio, read_sync_state, write_sync_state

    with api_errors(target.url):
        client = connect(target.url, key)
        project_id = ensure_project_id(client, target.project)
        state = read_sync_state(store).get(sync_key(target.url, project_id), {})
        tasks, watermark = pull_tasks(client, project_id, state.get("pulled_through"))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = StoreLayout(store).pull_file(stamp)
    atomic_write_bytes(path, (json.dumps(tasks, indent=1, default=str) + "\n").encode())
    result = import_label_studio(store, path, classes=classes)
    entry = {"project": target.project, "pulled_through": watermark}
    write_sync_state(store, sync_key(target.url, project_id), entry)
    return path, result


def ensure_project_id(client: Any, project: str) -> int:
    """The id of an existing project (an id, or a title matched exactly)."""
    if project.isdigit():
        return int(client.projects.get(int(project)).id)
    matches = [p for p in client.projects.list(title=project) if p.title == project]
    if not matches:
        raise LabelingError(f"no Label Studio project titled {project!r}; push the queue first")
    return int(matches[0].id)
