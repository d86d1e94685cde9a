"""`leanset queue`: export the labeling queue as tasks, import the answers, show the counts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from pipelines.cli.console import console, show_path
from pipelines.cli.store import STORE_HELP, open_store
from pipelines.store import Store


def add_commands(sub: Any) -> None:
    """Register `leanset queue export|import|show`."""
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
        "--image-root",
        default=None,
        help="prefix for image paths in tasks (a folder, a URL, or Label Studio's "
        "/data/local-files/?d= prefix; default: the dataset folder of the latest version)",
    )
    exp.set_defaults(func=cmd_queue_export)
    imp = qsub.add_parser("import", help="record the answers of a Label Studio JSON export")
    imp.add_argument("store", help=STORE_HELP)
    imp.add_argument("annotations", help="a Label Studio JSON export of the answered tasks")
    imp.set_defaults(func=cmd_queue_import)
    show = qsub.add_parser("show", help="queue counts by status and reason")
    show.add_argument("store", help=STORE_HELP)
    show.set_defaults(func=cmd_queue_show)


def cmd_queue_export(args: argparse.Namespace) -> int:
    from labeling.labelstudio import label_studio_config
    from pipelines.store.queue import export_label_studio, export_table

    store = open_store(args.store)
    if args.format != "label-studio":
        out = export_table(store.root, args.out, format=args.format)
        console.print(f"wrote {out}", highlight=False)
        return 0
    source = store.manifest()["config"]["source"]
    root = args.image_root or (source["path"] if source["type"] == "imagefolder" else None)
    res = export_label_studio(store.root, args.out, image_root=root)
    xml = Path(args.out).with_suffix(".label_config.xml")
    xml.write_text(label_studio_config(_classes(store), kind="image" if root else "text"))
    console.print(
        f"wrote {res.n_tasks} Label Studio tasks to {res.path} (labeling config: {xml})",
        highlight=False,
    )
    return 0


def cmd_queue_import(args: argparse.Namespace) -> int:
    from pipelines.store.queue import import_label_studio

    store = open_store(args.store)
    res = import_label_studio(store.root, args.annotations, classes=_classes(store))
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
    if res.unknown_ids:
        console.print(f"unknown ids (first): {', '.join(res.unknown_ids[:5])}", highlight=False)
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    from pipelines.store.queue import read_answers, read_queue

    store = open_store(args.store)
    q = read_queue(store.root)
    t = Table(title=f"labeling queue of {show_path(args.store)}", title_justify="left")
    for col in ("status", "reason", "samples"):
        t.add_column(col)
    for row in q.group_by("status", "reason").len().sort("status", "reason").iter_rows():
        t.add_row(*[str(v) for v in row])
    console.print(t)
    console.print(f"{read_answers(store.root).height:,} answered sample(s) recorded")
    return 0


def _classes(store: Store) -> list[str]:
    """The label set of the latest version (for the labeling config and to check answers)."""
    labels: list[str] = store.read("decisions")["label"].drop_nulls().unique().sort().to_list()
    return labels
