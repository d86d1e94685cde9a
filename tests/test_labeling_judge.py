"""Label noise independent of dedup: distinct-content training, group folds, probe selection by
calibrated log loss, the weak-probe rule and the cap (tiny data, planted flips, real cleanlab)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_limits

from leanset.dedup.config import DedupSettings
from leanset.dedup.stage import find_duplicates
from leanset.labeling.config import LabelingError, LabelNoiseSettings
from leanset.labeling.noise import flag_label_issues, judge_given_probs, judge_labels
from leanset.labeling.probe import (
    SelectOptions,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    select_probe,
)
from leanset.labeling.stage import label_noise
from leanset.pipelines.config import ConfigError, load_flow
from tests.helpers import write_flows

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


def flip(y: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rate` of the labels moved to another class, and which."""
    rng = np.random.default_rng(seed)
    k = int(y.max()) + 1
    idx = rng.choice(len(y), int(rate * len(y)), replace=False)
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, k, len(idx))) % k
    truth = np.zeros(len(y), dtype=bool)
    truth[idx] = True
    return noisy, truth


# ---------------------------------------------------------------- training rows and folds


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


def test_each_copy_is_judged_on_its_own_label() -> None:
    x, y = blobs(40, 2, 16, 0.2, seed=1)
    keys = np.array([f"h{i}" for i in range(len(y))], dtype=object)
    # row 0's content appears twice more: once with the same label, once with the other one
    x = np.vstack([x, x[[0, 0]]])
    y = np.concatenate([y, [y[0], 1 - y[0]]])
    keys = np.concatenate([keys, ["h0", "h0"]])
    res = judge_labels(x, y, keys=keys, options=CPU)
    assert res.selection.training_rows == 80
    assert res.issues.label_issue.tolist()[-2:] == [False, True]
    assert not res.issues.label_issue[0]
    assert np.array_equal(res.selection.probs[0], res.selection.probs[-1])


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


# ---------------------------------------------------------------- selection


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


# ---------------------------------------------------------------- the flag rule


def test_a_weak_probe_flags_only_strong_evidence_and_says_so() -> None:
    x, y = blobs(200, 3, 32, 0.45, seed=5)  # the classes barely separate
    noisy, truth = flip(y, 0.05, seed=5)
    res = judge_labels(x, noisy, options=CPU)
    flags, cal = res.flags, res.selection.calibrated
    assert res.selection.accuracy < 0.85
    assert flags.rule == "evidence"
    assert flags.n_count > 1.25 * max(flags.n_evidence, 1)
    assert flags.issue.sum() == flags.n_evidence < 0.1 * len(y)
    rows = np.flatnonzero(flags.issue)
    assert (cal[rows, noisy[rows]] <= 0.1).all()
    other = cal[rows].copy()
    other[np.arange(len(rows)), noisy[rows]] = 0
    assert (other.max(axis=1) >= 0.6).all()
    for words in ("weak probe", "only strong evidence", "calibrated_rank would flag", "ECE"):
        assert words in flags.reason
    assert f"{flags.n_count}" in flags.reason and f"{res.selection.accuracy:.3f}" in flags.reason


def test_a_strong_probe_runs_the_count_filter_and_finds_the_flips() -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    noisy, truth = flip(y.astype(np.int64), 0.05, seed=6)
    res = judge_labels(unit(x), noisy, options=CPU)
    assert res.flags.rule == "count", res.flags.reason
    assert res.flags.reason.startswith("the probe corroborates calibrated_rank")
    hits = int((res.issues.label_issue & truth).sum())
    precision, recall = hits / max(res.issues.n_issues, 1), hits / int(truth.sum())
    assert precision >= 0.85 and recall >= 0.85, (precision, recall)


def test_strong_evidence_is_flagged_even_when_the_count_filter_undercounts() -> None:
    # a confident, calibrated probe and two confident disagreements: cleanlab's calibrated count
    # finds none of them on 120 rows, the strong evidence finds both
    y = np.repeat([0, 1, 2], 40)
    probs = np.full((120, 3), 0.02)
    probs[np.arange(120), y] = 0.96
    probs[3], probs[50] = [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]
    flags = flag_label_issues(y, probs, accuracy=0.98, calibration_error=0.01)
    assert flags.rule == "count" and flags.n_count == 0 and flags.n_evidence == 2
    assert np.flatnonzero(flags.issue).tolist() == [3, 50]


def test_at_most_a_fifth_of_the_labeled_rows_is_flagged_lowest_p_given_first() -> None:
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 50)
    probs = np.where((y == 0)[:, None], [[0.95, 0.05]], [[0.05, 0.95]])
    wrong = rng.choice(100, 40, replace=False)  # 40% of the rows look mislabeled
    p_given = rng.uniform(0.001, 0.05, 40)
    probs[wrong, y[wrong]] = p_given
    probs[wrong, 1 - y[wrong]] = 1 - p_given
    labels = np.concatenate([y, [-1, -1]])  # unlabeled rows do not count
    probs = np.vstack([probs, [[0.5, 0.5]] * 2])
    flags = flag_label_issues(labels, probs, accuracy=0.6, calibration_error=0.0)
    assert flags.limit == 20 and flags.issue.sum() == 20 and flags.capped == 20
    assert set(np.flatnonzero(flags.issue)) == set(wrong[np.argsort(p_given)[:20]].tolist())
    assert "capped at 20% of the 100 labeled rows (20 more not flagged)" in flags.reason
    looser = flag_label_issues(
        labels,
        probs,
        accuracy=0.6,
        calibration_error=0.0,
        rule=LabelNoiseSettings(max_flag_fraction=0.5),
    )
    assert looser.issue.sum() == 40 and looser.capped == 0


def test_given_probabilities_go_through_the_same_rule() -> None:
    y = np.repeat([0, 1], 30)
    probs = np.where((y == 0)[:, None], [[0.9, 0.1]], [[0.1, 0.9]])
    probs[[3, 40]] = probs[[3, 40], ::-1]  # two confident disagreements
    issues, flags, info = judge_given_probs(y, probs)
    assert np.flatnonzero(issues.label_issue).tolist() == [3, 40]
    assert info["probe"] == "given pred_probs" and "temperature" in info["given_probs"]
    assert flags.rule in ("count", "evidence")


# ---------------------------------------------------------------- the stage


def sample_table(x: np.ndarray, labels: list[str], hashes: list[str]) -> pl.DataFrame:
    n = len(labels)
    return pl.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "position": list(range(n)),
            "source": [f"s{i:03d}.png" for i in range(n)],
            "split": ["train"] * n,
            "label": labels,
            "content_hash": hashes,
            "size_bytes": [100] * n,
            "error": [None] * n,
        },
        schema_overrides={"label": pl.Utf8, "error": pl.Utf8},
    )


def test_rows_dedup_dropped_are_still_probed_and_judged() -> None:
    x, y = blobs(40, 2, 16, 0.2, seed=8)
    names = ["cat", "dog"]
    labels = [names[i] for i in y]
    hashes = [f"h{i}" for i in range(80)]
    # s080: an exact copy of s000 with the other label; s081: a near copy of s001, also flipped
    near = unit((x[1] + 0.01 * np.random.default_rng(8).normal(size=16))[None])[0]
    x = np.vstack([x, x[0], near]).astype(np.float32)
    labels += [names[1 - y[0]], names[1 - y[1]]]
    hashes += ["h0", "h81"]
    dd = find_duplicates(sample_table(x, labels, hashes), x, DedupSettings(threshold=0.99))
    assert dd.table["dedup_drop"].to_list()[80:] == ["exact_duplicate", "near_duplicate"]
    out = label_noise(dd.table, x, LabelNoiseSettings(device="cpu", policy="drop"))
    t = out.table
    assert t["label_issue"].to_list()[80:] == [True, True]  # judged on their own labels
    assert not t["label_issue"][:2].any()  # the kept originals are right
    assert t["label_action"].to_list()[80:] == [None, None]  # dedup already dropped them
    assert t["noise_drop"].to_list()[80:] == [None, None]
    assert not t["needs_review"][80:].any()
    info = out.info
    assert info["probed"] == 82 and info["probed_dedup_dropped"] == 2
    assert info["label_issues_dedup_dropped"] == 2
    assert info["probe_training_rows"] == 81  # s080 is s000's content
    assert {"flag_rule", "flag_reason", "probe_candidates", "probe_temperature"} <= set(info)


def test_label_noise_settings_load_from_flows_yaml(tmp_path) -> None:
    body = {
        "source": {"type": "imagefolder", "path": "images"},
        "embedder": {"type": "pixels", "size": 16},
        "label_noise": {"c": 20, "k": [], "max_flag_fraction": 0.1, "max_ece": 0.05},
        "store": "store",
    }
    (tmp_path / "images").mkdir()
    s = load_flow(write_flows(tmp_path, f=body), "f").label_noise
    assert s is not None and s.c_values == (20.0,) and s.k == [] and s.max_ece == 0.05
    bad = body | {"label_noise": {"max_flag_fraction": 1.5}}
    with pytest.raises(
        ConfigError, match=r"label_noise.max_flag_fraction: expected a number in \[0, 1\], got 1.5"
    ):
        load_flow(write_flows(tmp_path, f=bad), "f")


def test_label_issue_recall_holds_when_dedup_drops_the_flipped_rows() -> None:
    # 300 originals and a near copy of 60 of them; 15 originals and 15 copies get a wrong label.
    # dedup drops the copies, but the probe still judges them: every flip is a candidate.
    x, y = blobs(100, 3, 24, 0.3, seed=9)
    rng = np.random.default_rng(9)
    src = rng.choice(300, 60, replace=False)
    copies = unit(x[src] + rng.normal(scale=0.003, size=(60, 24)))
    x = np.vstack([x, copies]).astype(np.float32)
    y = np.concatenate([y, y[src]])
    flips = np.concatenate(
        [
            rng.choice(np.setdiff1d(np.arange(300), src), 15, replace=False),
            300 + rng.choice(60, 15, replace=False),
        ]
    )
    noisy = y.copy()
    noisy[flips] = (y[flips] + rng.integers(1, 3, 30)) % 3
    names = ["a", "b", "c"]
    table = sample_table(x, [names[i] for i in noisy], [f"h{i}" for i in range(360)])
    dd = find_duplicates(table, x, DedupSettings(threshold=0.99))
    dropped = dd.table["dedup_drop"].is_not_null().to_numpy()
    assert dropped[300:].all() and not dropped[:300].any()
    out = label_noise(dd.table, x, LabelNoiseSettings(device="cpu"))
    issue = out.table["label_issue"].fill_null(False).to_numpy()
    hits = issue[flips]
    assert hits[15:].sum() >= 14, "flips on rows dedup dropped must be found"
    assert hits.sum() >= 27 and issue.sum() <= 36, (hits.sum(), issue.sum())
    assert out.info["probed_dedup_dropped"] == 60 and out.info["label_issues_dedup_dropped"] >= 14
