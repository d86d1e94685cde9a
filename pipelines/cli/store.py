"""Commands that read or tidy a store: versions, show, export, diff, gc."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from pipelines.cli.console import console, print_summary
from pipelines.store import Store, StoreError
from pipelines.summary import RunSummary


def add_commands(sub: Any) -> None:
    """Register the store commands."""
    _add_gc(sub)
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

    verify = sub.add_parser(
        "verify", help="check every stored file against the checksums its manifest recorded"
    )
    verify.add_argument("store")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify)

    diff = sub.add_parser("diff", help="which samples entered or left between two versions")
    diff.add_argument("store")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    diff.add_argument("--json", action="store_true")
    diff.add_argument("--limit", type=int, default=20, help="rows to list per side")
    diff.set_defaults(func=cmd_diff)


def open_store(path: str) -> Store:
    """The store at `path`, which must be a folder."""
    if not Path(path).is_dir():
        raise StoreError(f"{path}: no store here (expected a folder written by `leanset run`)")
    return Store(path)


def cmd_versions(args: argparse.Namespace) -> int:
    manifests = open_store(args.store).manifests()
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
    from pipelines.finish import finish_version, pending_steps

    store = open_store(args.store)
    m = store.manifest(args.version)
    if pending_steps(store, m):  # a kill or an error stopped the run after its commit
        done = finish_version(store, m, run_id="leanset show")
        if not args.json:
            console.print(
                f"version {m['version']}: finished what its run left undone: {', '.join(done)}",
                highlight=False,
            )
    if args.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    summary = RunSummary.of(m.get("flow") or "", args.store, m, {}, unchanged=False)
    summary.labeling = {}
    print_summary(summary)
    console.print(
        f"created {m.get('created_at')} · config {m.get('config_hash')} · "
        f"input {m.get('input_fingerprint')}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.store.export import export_version

    out = export_version(
        open_store(args.store), args.version, args.format, args.out, args.decisions
    )
    console.print(f"wrote {out}", highlight=False)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit status 0 when nothing is damaged, 1 otherwise; each finding names its file."""
    from pipelines.store.verify import verify_store

    result = verify_store(open_store(args.store).root)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if result.ok else 1
    for f in result.findings:
        console.print(f"{f.severity}: {f.problem}", highlight=False, soft_wrap=True)
    verdict = "ok" if result.ok else "DAMAGED"
    console.print(
        f"store {result.store}: {verdict}: {len(result.versions)} version(s), "
        f"{result.files_checked} file(s) checked, {len(result.findings)} finding(s)",
        highlight=False,
        soft_wrap=True,
    )
    return 0 if result.ok else 1


def cmd_diff(args: argparse.Namespace) -> int:
    d = open_store(args.store).diff(args.a, args.b)
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


def _add_gc(sub: Any) -> None:
    """Add `leanset gc STORE --keep-last N | --keep V... [--dry-run] [--json]`."""
    gc = sub.add_parser(
        "gc",
        help="remove old versions (and what only they used); --dry-run lists without removing",
    )
    gc.add_argument("store")
    which = gc.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--keep-last", type=int, metavar="N", help="keep the newest N versions, remove the rest"
    )
    which.add_argument(
        "--keep",
        type=int,
        nargs="+",
        metavar="V",
        help="keep these versions (and always the newest), remove the rest",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    gc.add_argument("--json", action="store_true", help="print the plan as JSON")
    gc.set_defaults(func=cmd_gc)


def cmd_gc(args: argparse.Namespace) -> int:
    """Run `leanset gc` and print what was (or would be) removed."""
    from pipelines.store.gc import collect_garbage

    plan = collect_garbage(
        args.store, keep_last=args.keep_last, keep=args.keep, dry_run=args.dry_run
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    verb = "removed" if plan.applied else "would remove (dry run)"
    console.print(
        f"store {plan.store}: keeping version(s) {plan.keep or 'none'}; "
        f"{verb}: version(s) {plan.remove or 'none'}",
        highlight=False,
    )
    console.print(
        f"  {len(plan.manifests)} manifest(s), {len(plan.table_files)} Delta data file(s), "
        f"{len(plan.index_files)} pair index file(s), {len(plan.vector_files)} vector shard(s), "
        f"{len(plan.cache_dirs)} cache folder(s), "
        f"{len(plan.corrupt_shards)} corrupt shard(s), {len(plan.temp_files)} leftover "
        f"temporary file(s), {len(plan.reports)} report(s): {plan.bytes:,} bytes",
        highlight=False,
    )
    return 0
