"""What a run did, typed: the summary a flow returns and the CLI prints, and the stage timer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from leanset.pipelines.store.manifest import JSON, Counts


class Timer:
    """Seconds per named stage: `with timer("embed"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t0, 3)

    def add(self, name: str, seconds: float) -> None:
        """Count time spent on a stage elsewhere (e.g. before the flow run started)."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)


@dataclass
class RunSummary:
    """What a run did: the version it committed (or found current, or would commit in a dry
    run), counts and the cost delta."""

    flow: str
    store: str
    version: int | None
    parent: int | None
    unchanged: bool
    counts: Counts
    cost: JSON = field(default_factory=dict)
    statement: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    embed: JSON = field(default_factory=dict)
    search: JSON = field(default_factory=dict)
    labeling: JSON = field(default_factory=dict)
    report: str | None = None
    dry_run: bool = False
    checks: JSON = field(default_factory=dict)  # outliers, unusable images, balance, drift

    @classmethod
    def of(
        cls, flow: str, store: str, manifest: JSON, timings: dict[str, float], unchanged: bool
    ) -> RunSummary:
        """The summary of the version a stored manifest describes."""
        return cls(
            flow=flow,
            store=store,
            version=manifest["version"],
            parent=manifest.get("parent"),
            unchanged=unchanged,
            counts=Counts.from_dict(manifest.get("counts", {})),
            cost=manifest.get("cost", {}),
            statement=manifest.get("statement", ""),
            timings=timings,
            embed=manifest.get("embed", {}),
            search=manifest.get("search", {}),
            labeling=manifest.get("labeling", {}),
            checks=manifest.get("checks", {}),
        )

    @classmethod
    def from_dict(cls, data: JSON) -> RunSummary:
        """A summary from its `to_dict()` form (a flow run's return value)."""
        fields: dict[str, Any] = dict(data)
        fields["counts"] = Counts.from_dict(fields.get("counts", {}))
        return cls(**fields)

    def to_dict(self) -> JSON:
        """Plain data (the flow's return value, `leanset run --json`)."""
        return asdict(self)
