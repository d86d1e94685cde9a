"""Commands that read or tidy a store: versions, show, export, diff, gc."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from leanset.pipelines.cli.console import (
    console,
    human_bytes,
    print_summary,
    print_table,
    show_path,
)
from leanset.pipelines.store import Store, StoreError
from leanset.pipelines.store.layout import StoreLayout
from leanset.pipelines.store.storage import is_url
from leanset.pipelines.summary import RunSummary

STORE_HELP = "the store folder (a flow's `store:`)"


def add_commands(sub: Any) -> None:
    """Register the store commands."""
    _add_gc(sub)
    versions = sub.add_parser("versions", help="list the versions in a store")
    versions.add_argument("store", help=STORE_HELP)
    versions.add_argument("--json", action="store_true", help="print the list as JSON")
    versions.set_defaults(func=cmd_versions)

    show = sub.add_parser("show", help="show one version's counts, cost delta and report path")
    show.add_argument("store", help=STORE_HELP)
    show.add_argument(
        "--version", type=int, default=None, help="the version to show (default: the latest)"
    )
    show.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    show.set_defaults(func=cmd_show)

    _add_export(sub)

    verify = sub.add_parser(
        "verify", help="check every stored file against the checksums its manifest recorded"
    )
    verify.add_argument("store", help=STORE_HELP)
    verify.add_argument("--json", action="store_true", help="print the findings as JSON")
    verify.set_defaults(func=cmd_verify)

    diff = sub.add_parser("diff", help="which samples entered or left between two versions")
    diff.add_argument("store", help=STORE_HELP)
    diff.add_argument("a", type=int, help="the older version")
    diff.add_argument("b", type=int, help="the newer version")
    diff.add_argument("--json", action="store_true", help="print every row as JSON")
    diff.add_argument("--limit", type=int, default=20, help="rows to list per side")
    diff.set_defaults(func=cmd_diff)


def open_store(path: str) -> Store:
    """The store at `path`: a folder holding committed versions (`manifests/`), or an
    object-storage URL (credentials and endpoint from the environment)."""
    if is_url(path):
        store = Store(path)
        if not store.manifests():
            raise StoreError(f"{path}: no store here (no manifests/ written by a commit)")
        return store
    root = Path(path)
    if not root.is_dir():
        raise StoreError(
            f"{path}: no store here (expected the `store:` folder of a flow, written by "
            f"`leanset run`)"
        )
    if not StoreLayout(root).manifests.is_dir():
        raise StoreError(
            f"{path}: not a leanset store, or one with no version yet (it has no manifests/ "
            f"folder; a store is the `store:` folder of a flow, written by `leanset run`)"
        )
    return Store(root)


def cmd_versions(args: argparse.Namespace) -> int:
    from leanset.pipelines.store.promotions import promoted_version

    store = open_store(args.store)
    manifests, promoted = store.manifests(), promoted_version(store)
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
            "promoted": m["version"] == promoted,
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
        t.add_row(
            *["" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in r.values()]
        )
    print_table(t)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from leanset.pipelines.finish import finish_version, pending_steps
    from leanset.pipelines.store.promotions import promotions

    store = open_store(args.store)
    m = store.manifest(args.version)
    if pending_steps(store, m):  # a kill or an error stopped the run after its commit
        done = finish_version(store, m, run_id="leanset show")
        if not args.json:
            console.print(
                f"version {m['version']}: finished what its run left undone: {', '.join(done)}",
                highlight=False,
            )
    records = promotions(store)
    mine = [r for r in records if r["version"] == m["version"]]
    if args.json:  # the manifest, plus (outside it) the promotion records naming this version
        print(json.dumps(m | {"promotions": mine}, indent=2, default=str))
        return 0
    summary = RunSummary.of(m.get("flow") or "", args.store, m, {}, unchanged=False)
    summary.report = store.report_of(m["version"])
    print_summary(summary)
    if summary.report is None:
        console.print(f"report: none written for version {m['version']}", highlight=False)
    console.print(
        f"created {m.get('created_at')} · config {m.get('config_hash')} · "
        f"input {m.get('input_fingerprint')}",
        highlight=False,
    )
    console.print(_promotion_line(m["version"], records), highlight=False)
    return 0


def _promotion_line(version: int, records: list[dict[str, Any]]) -> str:
    """Whether `version` is the promoted one, by whom and why."""
    current = records[-1]["version"] if records else None
    mine = [r for r in records if r["version"] == version]
    if not mine:
        return f"promoted: no (promoted version: {current or 'none'})"
    last = mine[-1]
    state = "yes" if current == version else f"earlier (now version {current})"
    return f"promoted: {state}, by {last['by']} at {last['at']}: {last['reason']}"


def _add_export(sub: Any) -> None:
    """Add `leanset export STORE --format parquet|hf|imagefolder --out OUT [...]`."""
    export = sub.add_parser(
        "export", help="export a version as Parquet, a Hugging Face dataset or an image folder"
    )
    export.add_argument("store", help=STORE_HELP)
    export.add_argument(
        "--version",
        type=int,
        default=None,
        help="the version to export (default: the promoted version, else the latest)",
    )
    export.add_argument(
        "--format",
        choices=["parquet", "hf", "imagefolder"],
        required=True,
        help="a Parquet file, a Hugging Face dataset folder (datasets.load_from_disk) or "
        "<out>/<split>/<label>/ image folders",
    )
    export.add_argument("--out", required=True, help="the file or folder to write")
    export.add_argument(
        "--decisions", action="store_true", help="export the decisions, not the dataset"
    )
    export.add_argument(
        "--with",
        dest="extras",
        default="",
        metavar="EXTRAS",
        help="comma-separated: embeddings (the cached vectors), pred_probs (the probe's "
        "out-of-fold probabilities), decisions (duplicate groups, label issues, ...)",
    )
    export.add_argument(
        "--embed-images",
        action="store_true",
        help="hf: put every image's bytes into the export (default: paths)",
    )
    export.add_argument(
        "--image-paths",
        choices=["relative", "absolute"],
        default="relative",
        help="hf without --embed-images: paths relative to the dataset folder, or absolute",
    )
    export.add_argument(
        "--link",
        choices=["copy", "symlink", "hardlink"],
        default="copy",
        help="imagefolder: copy the image files (default) or link them",
    )
    export.add_argument(
        "--allow-changed",
        action="store_true",
        help="export image files whose bytes changed after the commit anyway, and list them "
        "(default: refuse)",
    )
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from leanset.pipelines.store.export import ExportOptions, export_version, parse_extras
    from leanset.pipelines.store.promotions import promoted_version

    options = ExportOptions(
        extras=parse_extras(args.extras),
        embed_images=args.embed_images,
        image_paths=args.image_paths,
        link=args.link,
        allow_changed=args.allow_changed,
    )
    store = open_store(args.store)
    version = args.version if args.version is not None else promoted_version(store)
    changed: list[str] = []
    out = export_version(store, version, args.format, args.out, args.decisions, options, changed)
    which = (
        f"version {args.version}"
        if args.version is not None
        else f"promoted version {version}"
        if version is not None
        else "the latest version (none is promoted)"
    )
    console.print(f"wrote {out} ({which})", highlight=False)
    if changed:
        console.print(
            f"{len(changed)} image file(s) changed after the version was committed and were "
            f"exported as they are now (--allow-changed): {', '.join(changed[:10])}",
            highlight=False,
        )
    if args.format == "hf" and not args.embed_images and args.image_paths == "relative":
        root = store.manifest(version).get("config", {}).get("source", {}).get("path")
        if root:
            console.print(
                f"image paths are relative to {root} (load from there, or export with "
                "--embed-images or --image-paths absolute)",
                highlight=False,
            )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit status 0 when nothing is damaged, 1 otherwise; each finding names its file."""
    from leanset.pipelines.store.verify import verify_store

    result = verify_store(args.store if is_url(args.store) else open_store(args.store).root)
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
    parts = {
        "entered": d.entered,
        "left": d.left,
        "corrected": d.corrected,
        "first_labels": d.labeled,
    }
    if args.json:
        print(
            json.dumps({"a": d.a, "b": d.b} | {k: v.to_dicts() for k, v in parts.items()}, indent=2)
        )
        return 0
    console.print(
        f"version {d.a} -> {d.b}: {d.entered.height:,} entered, {d.left.height:,} left, "
        f"{d.corrected.height:,} labels corrected, {d.labeled.height:,} first labels "
        "(unlabeled samples labeled)"
    )
    for name, df in parts.items():
        if df.height:
            t = Table(
                title=f"{name.replace('_', ' ')} (first {min(args.limit, df.height)})",
                title_justify="left",
            )
            for col in df.columns:
                t.add_column(col)
            for row in df.head(args.limit).iter_rows():
                t.add_row(*["" if v is None else str(v) for v in row])
            print_table(t)
    return 0


def _add_gc(sub: Any) -> None:
    """Add `leanset gc STORE --keep-last N | --keep V... [--dry-run] [--json]`."""
    gc = sub.add_parser(
        "gc",
        help="remove old versions (and what only they used); --dry-run lists without removing",
    )
    gc.add_argument("store", help=STORE_HELP)
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
    from leanset.pipelines.store.gc import collect_garbage

    plan = collect_garbage(
        open_store(args.store), keep_last=args.keep_last, keep=args.keep, dry_run=args.dry_run
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    verb = "removed" if plan.applied else "would remove (dry run)"
    console.print(
        f"store {show_path(plan.store)}: keeping version(s) {_versions(plan.keep)}; "
        f"{verb}: version(s) {_versions(plan.remove)}",
        highlight=False,
    )
    console.print(
        f"  {len(plan.manifests)} manifest(s), {len(plan.table_files)} Delta data file(s), "
        f"{len(plan.index_files)} pair index file(s), {len(plan.vector_files)} vector shard(s), "
        f"{len(plan.cache_dirs)} cache folder(s), "
        f"{len(plan.corrupt_shards)} corrupt shard(s), {len(plan.temp_files)} leftover "
        f"temporary file(s), {len(plan.reports)} report(s): {human_bytes(plan.bytes)}",
        highlight=False,
    )
    return 0


def _versions(versions: Any) -> str:
    return ", ".join(str(v) for v in versions) if versions else "none"
