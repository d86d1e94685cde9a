"""Label issues: planted flips on real digits are found; policies act as documented."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_limits

from leanset.labeling.config import LabelingError
from leanset.labeling.noise import (
    NOISE_POLICIES,
    LabelIssues,
    apply_noise_policy,
    find_label_issues,
    noise_columns,
)
from leanset.labeling.probe import ProbeOptions, SelectOptions, select_probe


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small fits run fastest single-threaded (BLAS threads thrash on a busy CI machine)."""
    with threadpool_limits(1):
        yield


def planted_flips(seed: int, rate: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits pixels (L2-normalised), labels with `rate` of them flipped to another class, truth."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(y), int(rate * len(y)), replace=False)
    noisy = y.astype(np.int64)
    noisy[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10
    truth = np.zeros(len(y), dtype=bool)
    truth[flip] = True
    return x, noisy, truth


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_folds": 1}, "n_folds must be an integer >= 2"), ({"c": 0.0}, "must be > 0")],
)
def test_bad_probe_options_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(LabelingError, match=message):
        ProbeOptions(**kwargs)


def test_a_class_nobody_labeled_is_no_problem() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), 60)
    labels = probs.argmax(axis=1) % 3  # class 3 has a column but no labeled row
    labels[:5] = (labels[:5] + 1) % 3
    issues = find_label_issues(labels, probs)
    assert 0 < issues.n_issues < 60


def test_unlabeled_rows_are_never_issues() -> None:
    x, noisy, _ = planted_flips(seed=1)
    noisy[::3] = -1
    probe = select_probe(x, noisy, options=SelectOptions(device="cpu", c=(20.0,), k=()))
    issues = find_label_issues(noisy, probe.probs)
    assert not issues.label_issue[noisy < 0].any()
    assert np.isnan(issues.label_quality[noisy < 0]).all()
    assert not np.isnan(issues.label_quality[noisy >= 0]).any()
    assert (issues.suggested_label == probe.probs.argmax(axis=1)).all()


def _issues() -> tuple[np.ndarray, LabelIssues]:
    """Four rows: clean, a confident issue, an unsure issue, unlabeled."""
    labels = np.array([0, 0, 1, -1])
    return labels, LabelIssues(
        label_quality=np.array([0.9, 0.02, 0.3, np.nan]),
        label_issue=np.array([False, True, True, False]),
        suggested_label=np.array([0, 1, 0, 1]),
        suggested_score=np.array([0.9, 0.97, 0.6, 0.8]),
    )


def test_flag_policy_keeps_and_queues_issues() -> None:
    labels, issues = _issues()
    out = apply_noise_policy(labels, issues)
    assert out.kept.all()
    assert out.review.tolist() == [False, True, True, False]
    assert out.action == [None, "flagged", "flagged", None]
    assert out.label.tolist() == labels.tolist()


def test_drop_policy_drops_issues_with_reason() -> None:
    labels, issues = _issues()
    out = apply_noise_policy(labels, issues, policy="drop")
    assert out.kept.tolist() == [True, False, False, True]
    assert out.drop_reason == [None, "label_issue", "label_issue", None]
    assert not out.review.any()


def test_relabel_policy_takes_only_confident_suggestions() -> None:
    labels, issues = _issues()
    out = apply_noise_policy(labels, issues, policy="relabel", relabel_threshold=0.9)
    assert out.kept.all()
    assert out.label.tolist() == [0, 1, 1, -1]
    assert out.relabeled_from.tolist() == [-1, 0, -1, -1]
    assert out.action == [None, "relabeled", "flagged", None]
    assert out.review.tolist() == [False, False, True, False]
    assert out.counts() == {"flagged": 1, "relabeled": 1}


def test_noise_columns_decode_labels() -> None:
    labels, issues = _issues()
    out = apply_noise_policy(labels, issues, policy="relabel")
    frame = noise_columns(issues, out, ["cat", "dog"])
    assert frame.height == 4
    assert frame["suggested_label"].to_list() == ["cat", "dog", "cat", "dog"]
    assert frame["relabeled_from"].to_list() == [None, "cat", None, None]
    assert frame["new_label"].to_list() == ["cat", "dog", "dog", None]
    assert frame["label_quality"].null_count() == 1
    assert frame.schema["label_issue"] == pl.Boolean


def test_policies_are_a_dict() -> None:
    assert set(NOISE_POLICIES) == {"flag", "drop", "relabel"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.array([0, 1, 5])}, "label index 5 of row 2 is outside the classes 0..1"),
        ({"pred_probs": np.full((3, 2), 0.4)}, r"row 0 sums to 0.8"),
        ({"filter_by": "magic"}, "filter_by must be one of"),
        ({"labels": np.array([0, 0, -1])}, "at least 2 classes"),
        ({"labels": np.array([0.0, 1.0, 0.0])}, "integer array"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, message) -> None:
    args = {"labels": np.array([0, 1, 0]), "pred_probs": np.full((3, 2), 0.5), **kwargs}
    labels, probs = args.pop("labels"), args.pop("pred_probs")
    with pytest.raises(LabelingError, match=message):
        find_label_issues(labels, probs, **args)


def test_unknown_policy_is_an_error() -> None:
    labels, issues = _issues()
    with pytest.raises(LabelingError, match="policy must be one of flag, drop, relabel"):
        apply_noise_policy(labels, issues, policy="delete")


def test_the_labeling_stage_bar_steps_once_per_probe_fit_and_once_for_the_selection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import leanset.labeling.stage as stage
    from leanset.labeling.config import ActiveLearningSettings, LabelNoiseSettings

    x, noisy, _ = planted_flips(seed=3)
    x, noisy = x[:300], noisy[:300]
    labels = [str(v) if i < 240 else None for i, v in enumerate(noisy)]  # 60 unlabeled rows
    table = pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(300)],
            "position": list(range(300)),
            "split": ["train"] * 300,
            "label": labels,
            "error": [None] * 300,
            "dedup_drop": [None] * 300,
            "dup_group": [None] * 300,
            "content_hash": [f"h{i}" for i in range(300)],
        },
        schema_overrides={"error": pl.Utf8, "dedup_drop": pl.Utf8, "dup_group": pl.Utf8},
    )
    totals: list[int] = []
    step = stage._StageProgress.step
    monkeypatch.setattr(
        stage._StageProgress, "step", lambda bar: (totals.append(bar.total), step(bar))
    )
    noise = LabelNoiseSettings()
    stage.label_and_select(table, x, noise, ActiveLearningSettings(), progress=True)
    # each candidate's out-of-fold fits, the winner's fit on all rows, then the selection
    steps = len(noise.c_values) + len(noise.k) + 2
    assert len(totals) == steps and set(totals) == {steps}
