"""The `leanset` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def _quiet_prefect_defaults() -> None:
    """Telemetry off and leanset's own log lines routed through Prefect's logging."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "leanset")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_prefect_defaults()
    from pipelines.errors import USER_ERRORS

    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leanset", description="Make ML datasets cheaper to train on.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one flow of a flows.yaml as a Prefect flow run")
    run.add_argument("config", help="path to flows.yaml")
    run.add_argument("--flow", required=True, help="name of the flow in the file")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", help="make the bundled demo data, clean it, and score what was found"
    )
    demo.add_argument("--config", default="flows.yaml", help="flows.yaml holding the demo flow")
    demo.add_argument("--flow", default="demo")
    demo.add_argument(
        "--data", default=None, help="demo data folder (default: the flow's source parent)"
    )
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="serve every scheduled flow as a Prefect deployment")
    serve.add_argument("config", help="path to flows.yaml")
    serve.add_argument("--flow", action="append", help="serve only this flow (repeatable)")
    serve.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="set the leanset-gpu concurrency limit (default: create with 1 slot if missing)",
    )
    serve.set_defaults(func=cmd_serve)

    _queue_parser(sub)

    from pipelines.gc import add_gc_command

    add_gc_command(sub)

    versions = sub.add_parser("versions", help="list the versions in a store")
    versions.add_argument("store")
    versions.add_argument("--json", action="store_true")
    versions.set_defaults(func=cmd_versions)

    show = sub.add_parser("show", help="show one version's manifest and counts")
    show.add_argument("store")
    show.add_argument("--version", type=int, default=None)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    export = sub.add_parser("export", help="export a version as Parquet or a Hugging Face dataset")
    export.add_argument("store")
    export.add_argument("--version", type=int, default=None)
    export.add_argument("--format", choices=["parquet", "hf"], required=True)
    export.add_argument("--out", required=True)
    export.add_argument(
        "--decisions", action="store_true", help="export the decisions, not the dataset"
    )
    export.set_defaults(func=cmd_export)

    diff = sub.add_parser("diff", help="which samples entered or left between two versions")
    diff.add_argument("store")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    diff.add_argument("--json", action="store_true")
    diff.add_argument("--limit", type=int, default=20, help="rows to list per side")
    diff.set_defaults(func=cmd_diff)
    return p


def _queue_parser(sub: Any) -> None:
    queue = sub.add_parser("queue", help="the labeling queue: export tasks, import answers")
    qsub = queue.add_subparsers(dest="queue_command", required=True)
    exp = qsub.add_parser("export", help="write the pending queue as Label Studio tasks or a table")
    exp.add_argument("store")
    exp.add_argument("--format", choices=["label-studio", "csv", "parquet"], default="label-studio")
    exp.add_argument("--out", required=True)
    exp.add_argument(
        "--image-root",
        default=None,
        help="prefix for image paths in tasks (a folder, a URL, or Label Studio's "
        "/data/local-files/?d= prefix; default: the dataset folder of the latest version)",
    )
    exp.set_defaults(func=cmd_queue_export)
    imp = qsub.add_parser("import", help="record the answers of a Label Studio JSON export")
    imp.add_argument("store")
    imp.add_argument("annotations")
    imp.set_defaults(func=cmd_queue_import)
    show = qsub.add_parser("show", help="queue counts by status and reason")
    show.add_argument("store")
    show.set_defaults(func=cmd_queue_show)


# ---------------------------------------------------------------- run / demo


def run_flow(config: str, flow_name: str) -> dict[str, Any]:
    """Run one flow through Prefect (local ephemeral API unless PREFECT_API_URL is set)."""
    from pipelines.config import load_flow
    from pipelines.flows import clean_flow

    load_flow(config, flow_name)  # fail fast, before Prefect starts, on a bad config
    return clean_flow(config_path=str(Path(config).resolve()), flow_name=flow_name)


def cmd_run(args: argparse.Namespace) -> int:
    summary = run_flow(args.config, args.flow)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import scheduled_flows, serve

    for f in scheduled_flows(args.config, args.flow):
        when = f.schedule.cron or f"every {f.schedule.interval_minutes:g} min"
        console.print(f"serving [bold]{f.name}[/]: {when} ({f.schedule.timezone}) -> {f.store}")
    serve(args.config, args.flow, args.gpu_slots)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo_run import run_demo

    result = run_demo(args.config, args.flow, args.data)
    print_summary(result["summary"])
    _print_scores(result["scores"])
    return 0


def print_summary(s: dict[str, Any]) -> None:
    """Readable run summary: version, counts by reason, the cost delta statement."""
    c = s["counts"]
    title = (
        f"{s['flow']}: unchanged, version {s['version']} is current"
        if s["unchanged"]
        else f"{s['flow']}: version {s['version']} committed (parent {s['parent']})"
    )
    t = Table(title=title, show_header=True, title_justify="left")
    t.add_column("samples")
    t.add_column("count", justify="right")
    t.add_row("input", f"{c['input']:,}")
    t.add_row("kept", f"{c['kept']:,}")
    for reason, n in c.get("by_reason", {}).items():
        t.add_row(f"dropped: {reason}", f"{n:,}")
    t.add_row("duplicate groups", f"{c.get('dup_groups', 0):,}")
    t.add_row("eval samples leaking from train", f"{c.get('leaking_eval_samples', 0):,}")
    t.add_row("samples in label-conflict groups", f"{c.get('label_conflicts', 0):,}")
    console.print(t)
    emb = s.get("embed") or {}
    if emb:
        console.print(
            f"embedded {emb.get('computed', 0):,} new, {emb.get('cached', 0):,} from cache on {emb.get('device')}"
            f"; near-duplicate search: {s.get('search', {}).get('method', 'none')}",
            highlight=False,
        )
    lab = s.get("labeling") or {}
    if "label_issues" in lab:
        console.print(
            f"label issues: {lab['label_issues']:,} (policy {lab.get('policy')}: "
            f"{lab.get('actions') or 'none'}); probe accuracy {lab.get('probe_accuracy', 'n/a')}",
            highlight=False,
        )
    if lab.get("human_labels"):
        console.print(f"human labels applied: {lab['human_labels']:,}", highlight=False)
    if "queue" in lab:
        q = lab["queue"]
        console.print(
            f"labeling queue: {q.get('added', 0):,} added"
            + (f", {q['skipped_pending']:,} already waiting" if q.get("skipped_pending") else ""),
            highlight=False,
        )
    console.print(f"[bold]Cost delta:[/] {s['statement']}", highlight=False)
    console.print(f"store: {s['store']}", highlight=False)
    if s.get("report") and Path(s["report"]).is_file():
        console.print(f"report: {s['report']}", highlight=False)


def _print_scores(scores: dict[str, Any]) -> None:
    t = Table(title="Planted items found (demo truth)", title_justify="left")
    for col in ("what", "planted", "found", "precision", "recall"):
        t.add_column(col, justify="right" if col != "what" else "left")
    for name, sc in scores.items():
        t.add_row(
            name,
            str(sc["truth"]),
            str(sc["found"]),
            f"{sc['precision']:.3f}",
            f"{sc['recall']:.3f}",
        )
    console.print(t)


# ---------------------------------------------------------------- the labeling queue


def cmd_queue_export(args: argparse.Namespace) -> int:
    from labeling.queue import export_label_studio, export_table, label_studio_config

    store = _store(args.store)
    if args.format != "label-studio":
        out = export_table(store.root, args.out, format=args.format)
        console.print(f"wrote {out}", highlight=False)
        return 0
    latest = store.manifest()
    source = latest["config"]["source"]
    root = args.image_root or (source["path"] if source["type"] == "imagefolder" else None)
    res = export_label_studio(store.root, args.out, image_root=root)
    classes = _classes(store)
    kind = "image" if root else "text"
    xml = Path(args.out).with_suffix(".label_config.xml")
    xml.write_text(label_studio_config(classes, kind=kind))
    console.print(
        f"wrote {res.n_tasks} Label Studio tasks to {res.path} (labeling config: {xml})",
        highlight=False,
    )
    return 0


def cmd_queue_import(args: argparse.Namespace) -> int:
    from labeling.queue import import_label_studio

    store = _store(args.store)
    res = import_label_studio(store.root, args.annotations, classes=_classes(store))
    console.print(
        f"{res.applied} answer(s) recorded, {res.unchanged} unchanged, {res.skipped} skipped "
        f"of {res.n_tasks} task(s); the next run's version carries them",
        highlight=False,
    )
    skipped = {k: v for k, v in vars(res).items() if k.startswith("skipped_") and v}
    if skipped:
        console.print(f"skipped: {skipped}", highlight=False)
    if res.unknown_ids:
        console.print(f"unknown ids (first): {', '.join(res.unknown_ids[:5])}", highlight=False)
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    from labeling.queue import read_answers, read_queue

    store = _store(args.store)
    q = read_queue(store.root)
    t = Table(title=f"labeling queue of {args.store}", title_justify="left")
    for col in ("status", "reason", "samples"):
        t.add_column(col)
    for row in q.group_by("status", "reason").len().sort("status", "reason").iter_rows():
        t.add_row(*[str(v) for v in row])
    console.print(t)
    console.print(f"{read_answers(store.root).height} answered sample(s) recorded")
    return 0


def _classes(store: Any) -> list[str]:
    """The label set of the latest version (for the labeling config and to check answers)."""
    labels = store.read("decisions")["label"].drop_nulls().unique().sort()
    return labels.to_list()


# ---------------------------------------------------------------- reading a store


def _store(path: str) -> Any:
    from pipelines.store import Store, StoreError

    if not Path(path).is_dir():
        raise StoreError(f"{path}: no store here (expected a folder written by `leanset run`)")
    return Store(path)


def cmd_versions(args: argparse.Namespace) -> int:
    manifests = _store(args.store).manifests()
    rows = [
        {
            "version": m["version"],
            "parent": m.get("parent"),
            "created_at": m.get("created_at"),
            "flow": m.get("flow"),
            "input": m["counts"]["input"],
            "kept": m["counts"]["kept"],
            "dropped": m["counts"]["dropped"],
            "config_hash": m.get("config_hash"),
        }
        for m in manifests
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title=f"versions in {args.store}", title_justify="left")
    for col in rows[0] if rows else ["version"]:
        t.add_column(col)
    for r in rows:
        t.add_row(*[str(v) for v in r.values()])
    console.print(t)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    m = _store(args.store).manifest(args.version)
    if args.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    summary = {
        "flow": m.get("flow"),
        "version": m["version"],
        "parent": m.get("parent"),
        "unchanged": False,
        "counts": m["counts"],
        "statement": m.get("statement", ""),
        "store": args.store,
        "embed": m.get("embed"),
        "search": m.get("search"),
    }
    print_summary(summary)
    console.print(
        f"created {m.get('created_at')} · config {m.get('config_hash')} · input {m.get('input_fingerprint')}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.export import export_version

    out = export_version(_store(args.store), args.version, args.format, args.out, args.decisions)
    console.print(f"wrote {out}", highlight=False)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    d = _store(args.store).diff(args.a, args.b)
    parts = {"entered": d.entered, "left": d.left, "relabeled": d.relabeled}
    if args.json:
        print(
            json.dumps({"a": d.a, "b": d.b} | {k: v.to_dicts() for k, v in parts.items()}, indent=2)
        )
        return 0
    console.print(
        f"version {d.a} -> {d.b}: {d.entered.height:,} entered, {d.left.height:,} left, "
        f"{d.relabeled.height:,} relabeled"
    )
    for name, df in parts.items():
        if df.height:
            t = Table(title=f"{name} (first {min(args.limit, df.height)})", title_justify="left")
            for col in df.columns:
                t.add_column(col)
            for row in df.head(args.limit).iter_rows():
                t.add_row(*["" if v is None else str(v) for v in row])
            console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
