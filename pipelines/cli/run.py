"""`leanset run`, `leanset demo` and `leanset serve`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines.cli.console import console, print_scores, print_summary
from pipelines.summary import RunSummary


def add_commands(sub: Any) -> None:
    """Register the commands that run flows."""
    run = sub.add_parser("run", help="run one flow of a flows.yaml as a Prefect flow run")
    run.add_argument("config", help="path to flows.yaml")
    run.add_argument("--flow", required=True, help="name of the flow in the file")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.add_argument(
        "--force",
        action="store_true",
        help="commit even when dedup would drop more of a split than dedup.max_drop_fraction",
    )
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


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.flows import run_flow

    summary = run_flow(args.config, args.flow, force=args.force)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(RunSummary.from_dict(summary))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import scheduled_flows, serve

    for f in scheduled_flows(args.config, args.flow):
        assert f.schedule is not None  # scheduled_flows returns only flows with a schedule
        when = f.schedule.cron or f"every {f.schedule.interval_minutes:g} min"
        console.print(f"serving [bold]{f.name}[/]: {when} ({f.schedule.timezone}) -> {f.store}")
    serve(args.config, args.flow, args.gpu_slots)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo.run import run_demo

    result = run_demo(args.config, args.flow, args.data)
    print_summary(RunSummary.from_dict(result["summary"]))
    print_scores(result["scores"])
    return 0
