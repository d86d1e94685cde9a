"""Probe selection: distinct-content training, group folds, the candidates scored by calibrated
log loss (tiny data, real scikit-learn and FAISS)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from labeling.config import LabelingError
from labeling.probe import (
    SelectOptions,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    select_probe,
)

CPU = SelectOptions(device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small fits run fastest single-threaded (BLAS threads thrash on a busy CI machine)."""
    with threadpool_limits(1):
        yield


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(
    n_per_class: int, n_classes: int, dim: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around one axis per class; `spread` is the noise scale (large: weak probe)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = np.eye(n_classes, dim)[y] + rng.normal(scale=spread, size=(len(y), dim))
    return unit(x), y.astype(np.int64)


def test_copies_of_one_content_train_once_and_cannot_vouch_for_each_other() -> None:
    # 150 contents, each twice with its own random label: a copy in the training folds would
    # predict its twin perfectly; one training row per content leaves only chance.
    rng = np.random.default_rng(0)
    x = np.repeat(unit(rng.normal(size=(150, 64))), 2, axis=0)
    y = np.repeat(rng.integers(0, 2, 150), 2).astype(np.int64)
    keys = np.repeat([f"h{i}" for i in range(150)], 2)
    opts = SelectOptions(device="cpu", c=(), k=(1,), mean=False)
    leaky = select_probe(x, y, options=opts)
    distinct = select_probe(x, y, keys=keys, options=opts)
    assert leaky.accuracy > 0.8  # ~4 in 5 twins sit in the training folds
    assert distinct.accuracy < 0.65  # chance is 0.5
    assert distinct.training_rows == 150 and leaky.training_rows == 300
    assert np.array_equal(distinct.probs[0::2], distinct.probs[1::2])  # one content, one answer


def test_near_duplicate_groups_stay_in_one_fold() -> None:
    # twins that differ slightly (two contents) but share a duplicate group
    rng = np.random.default_rng(2)
    base = unit(rng.normal(size=(150, 64)))
    x = unit(np.repeat(base, 2, axis=0) + rng.normal(scale=0.01, size=(300, 64)))
    y = np.repeat(rng.integers(0, 2, 150), 2).astype(np.int64)
    opts = SelectOptions(device="cpu", c=(), k=(1,), mean=False)
    free = select_probe(x, y, options=opts)
    grouped = select_probe(x, y, groups=np.repeat(np.arange(150), 2), options=opts)
    assert free.accuracy > 0.8
    assert grouped.accuracy < 0.65
    assert grouped.fold_groups == 150


def test_a_shared_content_joins_groups_for_the_folds() -> None:
    # rows 0 and 1 share a content, as do rows 2 and 3; rows 0, 2 and 4 are one duplicate group:
    # the contents of rows 0-4 (three of them) must be one fold group
    x, y = blobs(20, 2, 8, 0.1, seed=3)
    keys = np.array([f"h{i}" for i in range(40)], dtype=object)
    keys[1], keys[3] = keys[0], keys[2]
    groups = np.full(40, -1)
    groups[[0, 2, 4]] = 0
    sel = select_probe(x, y, keys=keys, groups=groups, options=CPU)
    assert sel.training_rows == 38
    assert sel.fold_groups == 36


def test_selection_picks_the_lowest_calibrated_log_loss_and_records_every_candidate() -> None:
    # each class is two antipodal blobs: no linear probe separates them, kNN does
    rng = np.random.default_rng(4)
    centres = np.eye(4, 16)
    side = rng.choice([-1.0, 1.0], 240)
    y = np.repeat(np.arange(4), 60)
    x = unit(centres[y] * side[:, None] + rng.normal(scale=0.15, size=(240, 16)))
    sel = select_probe(x, y.astype(np.int64), options=CPU)
    names = {"logreg_c1", "logreg_c10", "knn_10", "knn_30"}
    assert names <= set(sel.scores)
    assert any(n.startswith("mean(") for n in sel.scores)
    best = min(sel.scores.values(), key=lambda s: s.log_loss_calibrated)
    assert sel.scores[sel.winner] == best
    assert sel.winner.startswith("knn_")
    assert sel.scores["logreg_c1"].accuracy < 0.6 < 0.95 < sel.accuracy
    info = sel.info()
    assert info["probe"] == sel.winner and set(info["probe_candidates"]) == set(sel.scores)
    for scores in info["probe_candidates"].values():
        assert set(scores) == {
            "accuracy",
            "log_loss",
            "ece",
            "temperature",
            "log_loss_calibrated",
            "ece_calibrated",
        }


def test_temperature_softens_overconfidence_and_ece_measures_it() -> None:
    y = np.array([0, 1] * 100)
    right = np.arange(200) % 5 != 0  # 80% right, at confidence 0.99
    probs = np.where((right == (y == 0))[:, None], [[0.99, 0.01]], [[0.01, 0.99]])
    assert expected_calibration_error(probs, y) == pytest.approx(0.19, abs=1e-9)
    t = fit_temperature(probs, y)
    assert t > 1.0
    cal = apply_temperature(probs, t)
    assert cal.max(axis=1) == pytest.approx(np.full(200, 0.8), abs=0.01)
    assert expected_calibration_error(cal, y) < 0.01


def test_bad_selection_options_are_errors() -> None:
    with pytest.raises(LabelingError, match="at least one candidate"):
        SelectOptions(c=(), k=())
    with pytest.raises(LabelingError, match="k .kNN neighbours. must be an integer >= 1"):
        SelectOptions(k=(0,))
    with pytest.raises(LabelingError, match="keys must be 3 values"):
        select_probe(np.eye(3, dtype=np.float32), np.array([0, 1, 0]), keys=["a"])
