"""bench.ray_engine's per-step growth: which step of the dedup stage holds memory per row."""

from __future__ import annotations

from typing import Any

from bench.ray_engine import step_growth


def _run(rows: int, steps: list[tuple[str, float, float]]) -> dict[str, Any]:
    """A `--stage` result: (step, RSS after it, peak so far) in MiB."""
    key = "steps_rss_anon_shmem_hwm_mib_s"
    return {"rows": rows, key: [[n, rss, 0, 0, hwm, 1.0] for n, rss, hwm in steps]}


def test_growth_per_row_of_each_step_its_increment_and_the_peak() -> None:
    mib = 2**20
    small = _run(mib, [("table", 200, 200), ("exact", 210, 260), ("columns", 290, 290)])
    large = _run(3 * mib, [("table", 400, 400), ("exact", 410, 560), ("columns", 650, 650)])
    assert step_growth(small, large) == [
        ["table", 100, 100, 100],  # 200 MiB more over 2 Mi rows
        ["exact", 100, 0, 150],  # holds nothing more per row once done; its peak does
        ["columns", 180, 80, 180],
    ]


def test_growth_stops_where_the_two_runs_took_different_steps() -> None:
    small = _run(1000, [("table", 1, 1), ("a", 2, 2)])
    large = _run(2000, [("table", 1, 1), ("b", 2, 2)])
    assert [g[0] for g in step_growth(small, large)] == ["table"]
