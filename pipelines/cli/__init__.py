"""The `leanset` command: argument parsing and printing only (the work is in the flow and store).

Each module of this package registers the commands of one concern (`add_commands`), with one
line in `parser()` below.
"""

from __future__ import annotations

import argparse
import os
import sys

from rich.markup import escape

from leanset.pipelines.cli import cost, flowfile, queue, report, run, store
from leanset.pipelines.cli.console import console


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    from leanset.pipelines.cli import logs

    logs.configure(verbose=getattr(args, "verbose", False))
    from leanset.pipelines.errors import USER_ERRORS

    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except BrokenPipeError:  # `leanset show --json | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not raise again
        return 0


def parser() -> argparse.ArgumentParser:
    """Every `leanset` command."""
    p = argparse.ArgumentParser(
        prog="leanset",
        description="Make ML datasets cheaper to train on: find duplicates, leaks and label "
        "errors, write a cleaned version, and state the GPU-hours saved.",
    )
    p.add_argument("--version", action="version", version=f"leanset {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_commands(sub)
    flowfile.add_commands(sub)
    queue.add_commands(sub)
    store.add_commands(sub)
    report.add_commands(sub)
    cost.add_commands(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leanset")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"
