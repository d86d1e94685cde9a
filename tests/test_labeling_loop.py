"""The labeling loop as a user runs it: a bounded queue, answers that count once, pool samples
that join the training split, and a diff that tells corrections from first labels."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from leanset.labeling.config import ActiveLearningSettings
from leanset.labeling.stage import AnswerPolicy, apply_answers, select_for_labeling
from leanset.pipelines.store import Store
from leanset.pipelines.store.queue import ANSWER_SCHEMA

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _pool_table(n_labeled: int = 40, n_pool: int = 60) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    n = n_labeled + n_pool
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = pl.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "split": ["train"] * n_labeled + ["unlabeled"] * n_pool,
            "label": [str(i % 2) for i in range(n_labeled)] + [None] * n_pool,
            "error": [None] * n,
            "dedup_drop": [None] * n,
            "dup_group": [None] * n,
        },
        schema_overrides={"label": pl.Utf8, "error": pl.Utf8, "dedup_drop": pl.Utf8},
    ).with_columns(pl.col("dup_group").cast(pl.Utf8))
    return table, emb


def _pending(ids: list[str], reason: str = "uncertain") -> pl.DataFrame:
    return pl.DataFrame(
        {"sample_id": ids, "reason": [reason] * len(ids)},
        schema={"sample_id": pl.Utf8, "reason": pl.Utf8},
    )


def test_the_budget_caps_what_waits_instead_of_adding_every_run() -> None:
    """Before: every run added `budget` picks whatever was still waiting (50 -> 107)."""
    table, emb = _pool_table()
    probs = np.full((table.height, 2), 0.5)
    settings = ActiveLearningSettings(budget=25, diversity="none")
    first, info = select_for_labeling(table, emb, probs, settings, _pending([]), 0.95)
    assert info["selected"] == 25
    waiting = first.filter(pl.col("queue_rank").is_not_null())["sample_id"].to_list()
    # ten of them were answered meanwhile; fifteen still wait: only ten more may join
    second, info = select_for_labeling(table, emb, probs, settings, _pending(waiting[10:]), 0.95)
    assert info["selected"] == 10 and info["budget_left"] == 10
    picked = set(second.filter(pl.col("queue_rank").is_not_null())["sample_id"])
    assert not picked & set(waiting[10:])
    # label issues waiting for review do not use up the selection's budget
    issues = _pending([f"s{i:03d}" for i in range(20)], reason="label_issue")
    _, info = select_for_labeling(table, emb, probs, settings, issues, 0.95)
    assert info["selected"] == 25
    _, info = select_for_labeling(table, emb, probs, settings, _pending(waiting), 0.95)
    assert info["selected"] == 0


def _answers(rows: list[tuple[str, str, datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"sample_id": s, "label": lab, "annotation_id": f"a-{s}", "imported_at": at}
            for s, lab, at in rows
        ],
        schema=ANSWER_SCHEMA,
    )


def test_a_labeled_pool_sample_moves_to_train_and_answers_count_once() -> None:
    """Before: pool samples stayed in `unlabeled` (training on split == 'train' missed them), and
    'human labels applied' counted every answer ever imported, on every run."""
    table, _ = _pool_table(4, 4)
    answers = _answers(
        [("s004", "1", T0), ("s001", "0", T0), ("s005", "0", T0 + timedelta(hours=1))]
    )
    out, counts = apply_answers(table, answers, AnswerPolicy(applied_through=T0))
    rows = {r["sample_id"]: r for r in out.iter_rows(named=True)}
    assert (rows["s004"]["split"], rows["s004"]["split_before_human"]) == ("train", "unlabeled")
    assert rows["s004"]["label"] == "1" and rows["s004"]["label_before_human"] is None
    assert rows["s001"]["split"] == "train" and rows["s001"]["split_before_human"] is None
    assert rows["s001"]["label_before_human"] == "1"  # a correction of a given label
    assert rows["s006"]["split"] == "unlabeled"  # no answer: stays in the pool
    assert counts["human_labels"] == 1  # only s005 was imported after the parent's commit
    assert counts["human_labels_total"] == 3 and counts["human_labels_moved_split"] == 2

    kept, _ = apply_answers(table, answers, AnswerPolicy(move_to=None))
    assert kept.filter(pl.col("sample_id") == "s004")["split"].item() == "unlabeled"
    assert apply_answers(table, answers)[1]["human_labels"] == 3  # no parent: all are new


def test_diff_tells_corrections_from_first_labels(tmp_path) -> None:
    """Before: one 'relabeled' list mixed both."""
    store = Store(tmp_path / "s")

    def commit(labels: list[str | None], parent: int | None) -> None:
        d = pl.DataFrame(
            {
                "sample_id": ["a", "b", "c"],
                "source": ["x/a.png", "x/b.png", "x/c.png"],
                "split": ["train", "train", "unlabeled"],
                "label": labels,
                "kept": [True] * 3,
                "drop_reason": [None] * 3,
            },
            schema_overrides={"label": pl.Utf8, "drop_reason": pl.Utf8},
        )
        store.commit(d.select("sample_id"), d, {"counts": {}}, parent)

    commit(["cat", "dog", None], None)
    commit(["cat", "cat", "dog"], 1)
    d = store.diff(1, 2)
    assert d.corrected.select("sample_id", "label_before", "label").rows() == [("b", "dog", "cat")]
    assert d.labeled.select("sample_id", "label").rows() == [("c", "dog")]
    assert d.relabeled.height == 2
