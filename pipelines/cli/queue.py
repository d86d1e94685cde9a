"""`leanset queue`: export the labeling queue as tasks (or push it to Label Studio), import (or
pull) the answers, show the counts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from leanset.labeling.labelstudio import ImageRoot
from leanset.pipelines.cli.console import console, print_table, show_path
from leanset.pipelines.cli.store import STORE_HELP, open_store
from leanset.pipelines.store import Store
from leanset.pipelines.store.errors import StoreError
from leanset.pipelines.store.location import check_writable

STATUS_CHOICES = {"new": ("queued",), "exported": ("exported",), "all": None}
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"


def add_commands(sub: Any) -> None:
    """Register `leanset queue export|import|push|pull|show`."""
    queue = sub.add_parser("queue", help="the labeling queue: export tasks, import answers")
    qsub = queue.add_subparsers(dest="queue_command", required=True)
    exp = qsub.add_parser("export", help="write the pending queue as Label Studio tasks or a table")
    exp.add_argument("store", help=STORE_HELP)
    exp.add_argument(
        "--format",
        choices=["label-studio", "csv", "parquet"],
        default="label-studio",
        help="Label Studio tasks (JSON, with a labeling config beside it) or a table",
    )
    exp.add_argument("--out", required=True, help="the file to write")
    exp.add_argument(
        "--status",
        choices=list(STATUS_CHOICES),
        default="new",
        help="new: not exported yet (default; they are marked exported), exported: handed out "
        "and not answered, all: every queued sample",
    )
    _image_arguments(exp)
    exp.set_defaults(func=cmd_queue_export)
    imp = qsub.add_parser("import", help="record the answers of a Label Studio JSON export")
    imp.add_argument("store", help=STORE_HELP)
    imp.add_argument("annotations", help="a Label Studio JSON export of the answered tasks")
    imp.set_defaults(func=cmd_queue_import)
    for name, func, text in (
        ("push", cmd_queue_push, "create or update a Label Studio project's tasks (API)"),
        ("pull", cmd_queue_pull, "record the annotations made since the last pull (API)"),
    ):
        cmd = qsub.add_parser(name, help=f"{text}; the API key from $LABEL_STUDIO_API_KEY")
        cmd.add_argument("store", help=STORE_HELP)
        cmd.add_argument(
            "--url", required=True, help="the Label Studio server, e.g. http://host:8080"
        )
        cmd.add_argument("--project", required=True, help="the project's title (or its id)")
        if name == "push":
            _image_arguments(cmd)
        cmd.set_defaults(func=func)
    show = qsub.add_parser("show", help="queue counts by status and reason")
    show.add_argument("store", help=STORE_HELP)
    show.set_defaults(func=cmd_queue_show)


def _image_arguments(cmd: argparse.ArgumentParser) -> None:
    """Where task images point: Label Studio's Local Storage, or another URL prefix."""
    cmd.add_argument(
        "--document-root",
        default=None,
        help=f"Label Studio's {DOCUMENT_ROOT_ENV} (default: that variable, else the folder "
        "above the dataset folder); task images become /data/local-files/?d=<path below it>",
    )
    cmd.add_argument(
        "--image-root",
        default=None,
        help="any other URL prefix for task images (joined with each image's path relative to "
        "the dataset folder)",
    )
    cmd.add_argument(
        "--presign",
        type=float,
        default=None,
        metavar="SECONDS",
        help="an image source in a bucket: presigned HTTPS links valid this long instead of "
        "s3://, gs://, azure-blob:// URLs (those need a Cloud Storage in the project)",
    )


def image_root(
    store: Store, args: argparse.Namespace
) -> tuple[ImageRoot | None, Path | None, Path]:
    """The URL prefix of task images (None for text datasets), the dataset folder, and the
    Label Studio document root the prefix assumes."""
    from leanset.labeling.labelstudio import local_files_prefix
    from leanset.pipelines.labelstudio import bucket_images
    from leanset.pipelines.store.storage import is_url

    source = store.manifest()["config"]["source"]
    in_bucket = is_url(source.get("path") or "")
    if getattr(args, "presign", None) is not None and not (in_bucket and not args.image_root):
        raise StoreError("--presign: only for an image source in a bucket (without --image-root)")
    dataset = Path(source["path"]).resolve() if source.get("path") and not in_bucket else None
    if args.image_root:
        return args.image_root, dataset, Path("/")
    if source["type"] != "imagefolder" or not source.get("path"):
        return None, None, Path("/")
    if in_bucket or dataset is None:  # no Local Storage: the bucket's own URLs, or presigned links
        return bucket_images(source["path"], args.presign), None, Path("/")
    docs = Path(args.document_root or os.environ.get(DOCUMENT_ROOT_ENV) or dataset.parent)
    return local_files_prefix(dataset, docs), dataset, docs.resolve()


def cmd_queue_export(args: argparse.Namespace) -> int:
    from leanset.labeling.labelstudio import label_studio_config
    from leanset.pipelines.store.queue import STATUSES, export_label_studio, export_table

    store = open_store(args.store)
    statuses = STATUS_CHOICES[args.status] or STATUSES
    if args.format != "label-studio":
        with store.labeling() as here:
            out = export_table(here, args.out, format=args.format, statuses=statuses)
        console.print(f"wrote {out.n_tasks} queue rows to {out.path}", highlight=False)
        return 0
    check_writable(store.where, "a Label Studio export marks the queue rows exported")
    root, dataset, docs = image_root(store, args)
    with store.labeling(write=True) as here:
        res = export_label_studio(here, args.out, image_root=root, statuses=statuses)
    xml = Path(args.out).with_suffix(".label_config.xml")
    xml.write_text(label_studio_config(_classes(store), kind="image" if root else "text"))
    console.print(
        f"wrote {res.n_tasks} Label Studio tasks ({args.status}) to {res.path} (labeling "
        f"config: {xml}); they are marked exported",
        highlight=False,
    )
    if dataset is not None and not args.image_root:
        _storage_hint(docs, dataset)
    _cloud_hint(store, args, root)
    return 0


def _cloud_hint(store: Store, args: argparse.Namespace, root: ImageRoot | None) -> None:
    """For task images named by their bucket URLs: how Label Studio opens them."""
    from leanset.pipelines.labelstudio import cloud_storage_hint

    path = store.manifest()["config"]["source"].get("path") or ""
    if isinstance(root, str) and not args.image_root and "://" in root:
        console.print(cloud_storage_hint(path), highlight=False)


def _storage_hint(docs: Path, dataset: Path) -> None:
    """How Label Studio must be set up for the task images to display."""
    console.print(
        f"images: start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
        f"{DOCUMENT_ROOT_ENV}={docs}, and add a Local Storage with the absolute path {dataset} "
        "to the project (do not sync it)",
        highlight=False,
    )


def cmd_queue_import(args: argparse.Namespace) -> int:
    from leanset.pipelines.store.queue import import_label_studio

    store = open_store(args.store)
    check_writable(store.where, "an import records the answers in its labeling/ folder")
    classes = _classes(store)
    with store.labeling(write=True) as here:
        res = import_label_studio(here, args.annotations, classes=classes)
    _print_import(res)
    return 0


def _print_import(res: Any) -> None:
    """What an import recorded and skipped, naming malformed tasks and unknown ids."""
    console.print(
        f"{res.applied} answer(s) recorded, {res.unchanged} unchanged, {res.skipped} skipped "
        f"of {res.n_tasks} task(s); the next run's version carries them",
        highlight=False,
    )
    skipped = [
        f"{v:,} {k.removeprefix('skipped_').replace('_', ' ')}"
        for k, v in vars(res).items()
        if k.startswith("skipped_") and v
    ]
    if skipped:
        console.print(f"skipped: {', '.join(skipped)}", highlight=False)
    if res.twins_labeled:
        console.print(
            f"{res.twins_labeled} twin(s) of label conflicts given the same label", highlight=False
        )
    for problem in res.malformed:
        console.print(f"malformed: {problem}", highlight=False)
    if res.unknown_ids:
        console.print(f"unknown ids (first): {', '.join(res.unknown_ids[:5])}", highlight=False)


def _target(store: Store, args: argparse.Namespace, images: bool) -> Any:
    from leanset.pipelines.labelstudio import Target

    root, dataset, _ = image_root(store, args) if images else (None, None, Path("/"))
    if images and args.image_root:  # images served elsewhere: no Local Storage to add
        dataset = None
    return Target(args.url, args.project, root, dataset, tuple(_classes(store)))


def cmd_queue_push(args: argparse.Namespace) -> int:
    from leanset.pipelines.labelstudio import api_key, push_queue

    store = open_store(args.store)
    target = _target(store, args, images=True)
    with store.labeling(write=True) as here:
        project_id, counts = push_queue(here, target, api_key())
    console.print(
        f"project {args.project!r} (id {project_id}) at {args.url}: {counts.created} task(s) "
        f"created, {counts.updated} updated, {counts.unchanged} unchanged",
        highlight=False,
    )
    _cloud_hint(store, args, target.image_root)
    return 0


def cmd_queue_pull(args: argparse.Namespace) -> int:
    from leanset.pipelines.labelstudio import api_key, pull_queue

    store = open_store(args.store)
    target, classes = _target(store, args, images=False), _classes(store)
    with store.labeling(write=True) as here:
        path, res = pull_queue(here, target, api_key(), classes)
    console.print(f"pulled {res.n_tasks} task(s) updated since the last pull ({path})")
    _print_import(res)
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    from leanset.pipelines.store.queue import read_answers, read_queue

    store = open_store(args.store)
    with store.labeling() as here:
        q, answers = read_queue(here), read_answers(here)
    t = Table(title=f"labeling queue of {show_path(args.store)}", title_justify="left")
    for col in ("status", "reason", "samples"):
        t.add_column(col)
    for row in q.group_by("status", "reason").len().sort("status", "reason").iter_rows():
        t.add_row(*[str(v) for v in row])
    print_table(t)
    console.print(f"{answers.height:,} answered sample(s) recorded")
    return 0


def _classes(store: Store) -> list[str]:
    """The label set of the latest version (for the labeling config and to check answers)."""
    from leanset.pipelines.store.export import version_classes

    manifest = store.manifest()
    return version_classes(manifest, store.read("decisions", manifest["version"]))
