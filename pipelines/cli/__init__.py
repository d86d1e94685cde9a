"""The `leanset` command: argument parsing and printing only (the work is in the flow and store)."""

from __future__ import annotations

import argparse
import logging
import os

from pipelines.cli import cost, queue, run, store
from pipelines.cli.console import console


def _quiet_prefect_defaults() -> None:
    """Telemetry off and leanset's own log lines routed through Prefect's logging."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "leanset")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_prefect_defaults()
    from pipelines.errors import USER_ERRORS

    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


def parser() -> argparse.ArgumentParser:
    """Every `leanset` command."""
    p = argparse.ArgumentParser(prog="leanset", description="Make ML datasets cheaper to train on.")
    sub = p.add_subparsers(dest="command", required=True)
    run.add_commands(sub)
    queue.add_commands(sub)
    store.add_commands(sub)
    cost.add_commands(sub)
    return p
