"""How the Ray search packs clusters into group tasks (no cluster needed: pure planning)."""

from __future__ import annotations

import numpy as np

from leanset.pipelines.engine.search import lpt_groups


def test_groups_hold_at_most_task_rows_unless_one_cluster_alone_has_more() -> None:
    rng = np.random.default_rng(0)
    rows = rng.integers(1, 400, 300).astype(np.float64)
    rows[7] = 5000  # one cluster larger than a task may hold
    work = rows**2
    g = int(-(-rows.sum() // 1000)) + 2
    group_of = lpt_groups(work, g, rows, task_rows=1000)
    held = np.bincount(group_of, weights=rows, minlength=g)
    assert held[group_of[7]] == 5000  # alone in its group
    assert (np.delete(held, group_of[7]) <= 1000).all()
    assert sorted(set(group_of.tolist())) == list(range(g))


def test_without_a_row_bound_groups_balance_work_longest_first() -> None:
    work = np.array([10.0, 9.0, 8.0, 1.0, 1.0, 1.0])
    assert lpt_groups(work, 2).tolist() == [0, 1, 1, 0, 0, 0]
