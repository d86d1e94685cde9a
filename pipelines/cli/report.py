"""`leanset report`: where a version's HTML report is, or open it in a browser."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

from leanset.pipelines.cli.console import console
from leanset.pipelines.cli.store import STORE_HELP, open_store
from leanset.pipelines.store import IntegrityError, StoreError
from leanset.pipelines.store.sealed import check_file


def add_commands(sub: Any) -> None:
    """Register `leanset report STORE [--version N] [--open]`."""
    report = sub.add_parser("report", help="print the path of a version's HTML report, or open it")
    report.add_argument("store", help=STORE_HELP)
    report.add_argument(
        "--version", type=int, default=None, help="the version (default: the latest)"
    )
    report.add_argument(
        "--open", action="store_true", help="open the report in the default web browser"
    )
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    version = store.manifest(args.version)["version"]
    if store.storage.remote:  # a copy in the bucket store's local mirror, to open
        rel = store.side_rel(store.side_layout.report(version))
        store.cache.pull_file(rel)
        path = store.cache.root / rel
    else:
        path = store.layout.report(version).resolve()
    if not path.is_file():
        raise StoreError(
            f"store {args.store}: version {version} has no report ({path} is missing; it is "
            f"written after the version is committed, and a run stopped there left none)"
        )
    if check_file(path) is not None:
        raise IntegrityError(
            f"store {args.store}: the report of version {version} ({path}) is damaged (it does "
            f"not match its checksum); `leanset show {args.store} --version {version}` writes it "
            f"again"
        )
    print(path)
    if args.open:
        console.print(open_in_browser(path), highlight=False)
    return 0


def open_in_browser(path: Path) -> str:
    """Open `path` in a browser when this machine can show one; what was done, in words."""
    graphical = sys.platform in ("darwin", "win32") or any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    )
    if not graphical:
        return "not opened: no display here (DISPLAY is unset); open the path above elsewhere"
    if not webbrowser.open(path.as_uri()):
        return "not opened: no web browser found; open the path above"
    return "opened in the default web browser"
