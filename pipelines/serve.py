"""`leanset serve`: every scheduled flow of flows.yaml as a Prefect deployment, served here."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from leanset.pipelines.config import (
    ConfigError,
    FlowSettings,
    ScheduleSettings,
    did_you_mean,
    load_flows,
)

log = logging.getLogger("leanset.serve")


def scheduled_flows(config_path: str | Path, only: list[str] | None = None) -> list[FlowSettings]:
    """The flows that have a schedule (optionally only the named ones)."""
    flows = load_flows(config_path)
    unknown = sorted(set(only or []) - set(flows))
    if unknown:
        raise ConfigError(
            f"{config_path}: no flow named {unknown[0]!r}{did_you_mean(unknown[0], flows)}; "
            f"flows here: {', '.join(sorted(flows))}"
        )
    chosen = [f for name, f in flows.items() if f.schedule and (not only or name in only)]
    if not chosen:
        raise ConfigError(
            f"{config_path}: no flow to serve: give a flow a `schedule:` (cron or interval_minutes)"
        )
    for f in chosen:
        if bool(_when(f).cron) == bool(_when(f).interval_minutes):
            raise ConfigError(
                f"{config_path}: flow {f.name!r}: schedule: set exactly one of cron, interval_minutes"
            )
    return chosen


def _schedule(settings: FlowSettings) -> Any:
    from prefect.schedules import Cron, Interval

    s = _when(settings)
    if s.cron:
        return Cron(s.cron, timezone=s.timezone)
    return Interval(timedelta(minutes=s.interval_minutes or 0), timezone=s.timezone)


def _when(settings: FlowSettings) -> ScheduleSettings:
    """The schedule of a flow `scheduled_flows` returned (it has one)."""
    if settings.schedule is None:
        raise ConfigError(f"flow {settings.name!r}: no schedule")
    return settings.schedule


ENTRYPOINT = (
    "leanset.pipelines.flows.clean_flow"  # a module path: the same from any folder or worker
)


def deployments(config_path: str | Path, only: list[str] | None = None) -> list[Any]:
    """One Prefect deployment per scheduled flow, with its parameters and schedule.

    The entrypoint is the flow's module path (not a file path relative to the current folder),
    so a worker started anywhere that has leanset installed can run it; runs are tagged
    `leanset`, the flow's name and `deployment`."""
    from prefect.types.entrypoint import EntrypointType

    from leanset.pipelines.flows import clean_flow

    config = str(Path(config_path).resolve())
    return [
        clean_flow.to_deployment(
            name=f.name,
            schedules=[_schedule(f)],
            parameters={"config_path": config, "flow_name": f.name},
            description=f.description or f"leanset cleaning of {f.source.path or f.source.name}",
            tags=["leanset", f.name, "deployment"],
            concurrency_limit=1,  # a flow never runs twice at once
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for f in scheduled_flows(config_path, only)
    ]


def ensure_gpu_limit(slots: int | None = None) -> None:
    """Make sure the global concurrency limit GPU embedding takes a slot of exists.

    `slots` sets it; None creates it with one slot only when missing (a limit the user set stays).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from leanset.pipelines.flows import GPU_LIMIT

    with get_client(sync_client=True) as client:
        if slots is None:
            try:
                client.read_global_concurrency_limit_by_name(GPU_LIMIT)
                return
            except ObjectNotFound:
                slots = 1
        client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, slots)
        log.info("Prefect concurrency limit %s: %d slot(s)", GPU_LIMIT, slots)


def serve(
    config_path: str | Path, only: list[str] | None = None, gpu_slots: int | None = None
) -> None:
    """Serve the scheduled flows until interrupted (runs fire while this process lives)."""
    from prefect import serve as prefect_serve

    deps = deployments(config_path, only)
    ensure_gpu_limit(gpu_slots)
    prefect_serve(*deps)


def deploy_to_pool(
    config_path: str | Path,
    pool: str,
    only: list[str] | None = None,
    gpu_slots: int | None = None,
) -> list[str]:
    """Register the scheduled flows with a Prefect work pool; a worker on that pool runs them.

    The pool must exist (`prefect work-pool create NAME --type process`); the worker needs
    leanset installed and the data and stores at the paths flows.yaml names."""
    from prefect import deploy

    deps = deployments(config_path, only)
    ensure_gpu_limit(gpu_slots)
    try:
        ids = deploy(*deps, work_pool_name=pool, print_next_steps_message=False)
    except ValueError as exc:  # e.g. "Could not find work pool ..."
        raise ConfigError(f"work pool {pool!r}: {exc}") from exc
    if not isinstance(ids, list) or len(ids) != len(deps):
        raise ConfigError(
            f"{config_path}: not every deployment could be registered with work pool {pool!r} "
            f"(Prefect's table above names the failures)"
        )
    return [f"leanset-clean/{d.name}" for d in deps]
