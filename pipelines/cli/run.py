"""`leanset run`, `leanset demo` and `leanset serve`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TextIO

from leanset.pipelines.cli.console import console, print_scores, print_summary
from leanset.pipelines.limits import check_address_space
from leanset.pipelines.summary import RunSummary


def verbosity() -> argparse.ArgumentParser:
    """The `-v` option of every command that runs flows."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Prefect's, datasets' and leanset's INFO logs (default: warnings only)",
    )
    return p


def add_commands(sub: Any) -> None:
    """Register the commands that run flows."""
    run = sub.add_parser(
        "run", parents=[verbosity()], help="run one flow of a flows.yaml as a Prefect flow run"
    )
    run.add_argument("config", help="path to flows.yaml")
    run.add_argument("--flow", required=True, help="name of the flow in the file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one setting of the flow, checked like the file "
        "(e.g. --set dedup.threshold=0.97; repeatable; the value is read as YAML)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="load, embed and decide, print the summary and write the report to a temporary "
        "folder; commit nothing and leave the store unchanged",
    )
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.add_argument(
        "--force",
        action="store_true",
        help="commit even when dedup would drop more of a split than dedup.max_drop_fraction",
    )
    run.set_defaults(func=cmd_run)
    _add_demo_and_serve(sub)


def _add_demo_and_serve(sub: Any) -> None:
    """`leanset demo` and `leanset serve`."""
    demo = sub.add_parser(
        "demo",
        parents=[verbosity()],
        help="make the bundled demo data, clean it, and score what was found",
    )
    demo.add_argument("--config", default="flows.yaml", help="flows.yaml holding the demo flow")
    demo.add_argument("--flow", default="demo", help="name of the demo flow (default: demo)")
    demo.add_argument(
        "--data", default=None, help="demo data folder (default: the flow's source parent)"
    )
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser(
        "serve",
        parents=[verbosity()],
        help="serve every scheduled flow as a Prefect deployment (needs a Prefect server)",
    )
    serve.add_argument("config", help="path to flows.yaml")
    serve.add_argument(
        "--flow", action="append", help="serve only this flow (repeatable; default: all)"
    )
    serve.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="set the leanset-gpu concurrency limit (default: create with 1 slot if missing)",
    )
    serve.add_argument(
        "--pool",
        default=None,
        metavar="WORK_POOL",
        help="register the deployments with this Prefect work pool and exit, instead of "
        "serving them here (a `prefect worker start --pool WORK_POOL` runs them)",
    )
    serve.set_defaults(func=cmd_serve)


def cmd_run(args: argparse.Namespace) -> int:
    check_address_space("run")
    from leanset.pipelines.flows import run_flow

    run = {"overrides": args.overrides, "dry_run": args.dry_run, "force": args.force}
    if not args.json:
        print_summary(RunSummary.from_dict(run_flow(args.config, args.flow, **run)))
        return 0
    with stdout_to_stderr() as stdout:  # Ray prints a dead worker's lines to stdout
        summary = run_flow(args.config, args.flow, **run)
        stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


@contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """Point file descriptor 1 at stderr (what Python, Ray's threads, C libraries and child
    processes print goes there) and yield a stream on the real stdout, for `--json`."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w", encoding="utf-8", closefd=True)
    try:
        yield real
    finally:
        sys.stdout.flush()
        with suppress(BrokenPipeError):  # already raised by the write, for `main` to handle
            real.close()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_serve(args: argparse.Namespace) -> int:
    check_address_space("serve")
    from leanset.pipelines.serve import deploy_to_pool, scheduled_flows, serve

    verb = f"deploying to work pool {args.pool}" if args.pool else "serving"
    for f in scheduled_flows(args.config, args.flow):
        assert f.schedule is not None  # scheduled_flows returns only flows with a schedule
        when = f.schedule.cron or f"every {f.schedule.interval_minutes:g} min"
        console.print(
            f"{verb} [bold]{f.name}[/]: {when} ({f.schedule.timezone}) -> {f.store}",
            highlight=False,
        )
    if args.pool is None:
        serve(args.config, args.flow, args.gpu_slots)
        return 0
    for name in deploy_to_pool(args.config, args.pool, args.flow, args.gpu_slots):
        console.print(f"deployment {name} is registered with work pool {args.pool}")
    console.print(f"start a worker to run them: prefect worker start --pool {args.pool}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    check_address_space("demo")
    from leanset.pipelines.demo.run import run_demo

    result = run_demo(args.config, args.flow, args.data)
    print_summary(RunSummary.from_dict(result["summary"]))
    print_scores(result["scores"])
    return 0
