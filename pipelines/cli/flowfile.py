"""`leanset init` (a commented flow for a folder or file) and `leanset flows` (what a file holds)."""

from __future__ import annotations

import argparse
from typing import Any

from leanset.pipelines.cli.console import console, show_path


def add_commands(sub: Any) -> None:
    """Register `leanset init` and `leanset flows`."""
    init = sub.add_parser(
        "init",
        help="detect images, text or columns in a folder or file and add a commented flow for "
        "it to flows.yaml",
    )
    init.add_argument("path", help="a folder of images or tabular files, or one CSV/Parquet/JSON")
    init.add_argument(
        "--config",
        default="flows.yaml",
        help="the flows.yaml to add the flow to (created if missing; default: flows.yaml)",
    )
    init.add_argument(
        "--name", default=None, help="the flow's name (default: from the folder or file name)"
    )
    init.add_argument(
        "--offline",
        action="store_true",
        help="write an embedder that needs no download (packaged EfficientNet-Lite0 for photos, "
        "raw pixels for small images, exact duplicates only for text)",
    )
    init.set_defaults(func=cmd_init)

    flows = sub.add_parser("flows", help="list the flows of a flows.yaml (each one is checked)")
    flows.add_argument(
        "config", nargs="?", default="flows.yaml", help="path to flows.yaml (default: flows.yaml)"
    )
    flows.set_defaults(func=cmd_flows)


def cmd_init(args: argparse.Namespace) -> int:
    from leanset.pipelines.scaffold import add_flow

    name, block = add_flow(args.config, args.path, args.name, args.offline)
    console.print(f"added flow [bold]{name}[/] to {show_path(args.config)}:", highlight=False)
    console.print(block, highlight=False, markup=False, end="")
    console.print(
        f"check the commented choices, then: leanset run {show_path(args.config)} --flow {name} "
        f"--dry-run",
        highlight=False,
        markup=False,
    )
    return 0


def cmd_flows(args: argparse.Namespace) -> int:
    from leanset.pipelines.config import load_flows

    flows = load_flows(args.config)
    console.print(f"{len(flows)} flow(s) in {show_path(args.config)}:", highlight=False)
    for name, f in flows.items():
        src = f.source
        where = src.path or src.name or ", ".join(src.data_files or [])
        where = where if src.type == "hub" else show_path(where)
        embedder = f.embedder.type if f.embedder else "no embedder"
        when = ""
        if f.schedule:
            every = f.schedule.cron or f"every {f.schedule.interval_minutes:g} min"
            when = f"; scheduled {every} ({f.schedule.timezone})"
        console.print(
            f"  [bold]{name}[/]: {src.type} {where} -> {show_path(f.store)} ({embedder}{when})",
            highlight=False,
        )
        if f.description:
            console.print(f"      {f.description}", highlight=False, markup=False)
    return 0
