"""The order of the user's pred_probs columns: set, taken from ClassLabel, recorded, and checked.

The data: scikit-learn's digits, each image once as drawn (classes c0..c9) and once transposed
(c10..c19), so 3,594 real images in 20 classes named c0..c19; 100 labels are flipped to another
class. The probabilities are a real classifier's (linear discriminant analysis) 5-fold
cross-validated probabilities on the flipped labels, their columns in the natural class order
c0, c1, c2, ..., c19 (as the classifier's own integer classes are).
"""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.labeling.classorder import (
    ClassOrder,
    ClassOrderError,
    check_class_order,
    natural_key,
    resolve_class_order,
)
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from tests.helpers import write_flows

NATURAL = [f"c{i}" for i in range(20)]


@pytest.fixture(scope="module")
def twenty() -> dict:
    """Digits in 20 classes c0..c19, 100 flipped labels, cross-validated LDA probabilities."""
    from sklearn.datasets import load_digits
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import cross_val_predict

    images = load_digits().images
    x = np.vstack([images, images.transpose(0, 2, 1)]).reshape(2 * len(images), -1) / 16
    y = np.concatenate([load_digits().target, load_digits().target + 10])
    rng = np.random.default_rng(0)
    noisy = y.copy()
    flipped = rng.choice(len(y), 100, replace=False)
    noisy[flipped] = (y[flipped] + rng.integers(1, 20, len(flipped))) % 20
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.1)
    probs = cross_val_predict(lda, x, noisy, cv=5, method="predict_proba")
    ids = [f"s{i:04d}" for i in range(len(y))]
    return {"x": x, "y": noisy, "probs": probs, "ids": ids, "flipped": {ids[i] for i in flipped}}


def _labels(data: dict) -> list[str]:
    return [f"c{i}" for i in data["y"]]


def _indices(labels: list[str], order: ClassOrder) -> np.ndarray:
    where = {c: i for i, c in enumerate(order.classes)}
    return np.array([where[v] for v in labels])


def test_sorted_names_put_c10_before_c2_and_the_check_names_the_natural_order(twenty):
    labels = _labels(twenty)
    order = resolve_class_order(labels)
    assert order.source == "sorted label names" and order.classes[2] == "c10"
    with pytest.raises(ClassOrderError) as err:
        check_class_order(_indices(labels, order), twenty["probs"], order)
    message = str(err.value)
    assert "c0, c1, c10, c11" in message  # the order it used
    assert "c0, c1, c2, c3" in message and "sorted naturally" in message  # the order that fits
    assert "label_noise.classes" in message and "classes=" in message  # how to set it


def test_the_natural_order_when_set_passes_with_the_classifier_accuracy(twenty):
    labels = _labels(twenty)
    order = resolve_class_order(labels, configured=NATURAL)
    check = check_class_order(_indices(labels, order), twenty["probs"], order)
    assert order.source == "label_noise.classes"
    assert check.accuracy > 0.8 and check.chance < 0.06 and check.best == tuple(NATURAL)


def test_probabilities_unrelated_to_the_labels_stop_at_chance(twenty):
    labels = _labels(twenty)
    order = resolve_class_order(labels, configured=NATURAL)
    noise = np.random.default_rng(1).dirichlet(np.ones(20), len(labels))
    with pytest.raises(ClassOrderError, match="about what chance gives"):
        check_class_order(_indices(labels, order), noise, order)


def test_two_swapped_columns_of_twenty_are_caught_and_the_fitting_order_named(twenty):
    labels = _labels(twenty)
    swapped = NATURAL.copy()
    swapped[3], swapped[15] = swapped[15], swapped[3]
    order = resolve_class_order(labels, configured=swapped)
    with pytest.raises(ClassOrderError, match="sorted naturally"):
        check_class_order(_indices(labels, order), twenty["probs"], order)
    flipped = NATURAL[10:] + NATURAL[:10]  # every column read as the other orientation
    order = resolve_class_order(labels, configured=flipped)
    with pytest.raises(ClassOrderError, match=r"on 0\.\d% .* but on 8\d\.\d% in the order c0, c1"):
        check_class_order(_indices(labels, order), twenty["probs"], order)


def test_a_weak_model_in_the_right_order_is_not_stopped(twenty):
    labels = _labels(twenty)
    order = resolve_class_order(labels, configured=NATURAL)
    noise = np.random.default_rng(2).dirichlet(np.ones(20), len(labels))
    weak = 0.1 * twenty["probs"] + 0.9 * noise
    check = check_class_order(_indices(labels, order), weak, order)
    assert 0.15 < check.accuracy < 0.6, check.accuracy


def test_a_configured_order_must_name_every_label_once():
    with pytest.raises(ClassOrderError, match="label 'b' is not one of its classes"):
        resolve_class_order(["a", "b", None], configured=["a", "c"])
    with pytest.raises(ClassOrderError, match="names a class twice"):
        resolve_class_order(["a"], configured=["a", "a"])
    assert resolve_class_order(["b", "a"], class_label=["b", "a", "z"]).source == "ClassLabel"
    assert sorted(["c10", "c2", "c1"], key=natural_key) == ["c1", "c2", "c10"]


# ---------------------------------------------------------------- through the flow

FLOW = {
    "source": {"type": "files", "format": "parquet", "data_files": ["twenty.parquet"]},
    "columns": {"id": "id", "embedding": "emb", "label": "label"},
    "embedder": {"type": "precomputed"},
    "dedup": {"near": False},
    "label_noise": {"pred_probs_column": "probs"},
    "store": "store",
}


def _write(tmp_path: Path, data: dict, **noise: object) -> Path:
    pl.DataFrame(
        {
            "id": data["ids"],
            "emb": list(data["x"].astype(np.float32)),
            "label": _labels(data),
            "probs": list(data["probs"]),
        },
        schema={
            "id": pl.Utf8,
            "emb": pl.List(pl.Float32),
            "label": pl.Utf8,
            "probs": pl.List(pl.Float64),
        },
    ).write_parquet(tmp_path / "twenty.parquet")
    body = FLOW | {"label_noise": FLOW["label_noise"] | noise}  # type: ignore[operator]
    return write_flows(tmp_path, twenty=body)


def test_the_run_stops_before_any_commit_when_the_order_is_wrong(prefect_harness, tmp_path, twenty):
    config = _write(tmp_path, twenty)
    with pytest.raises(ClassOrderError, match="sorted label names: c0, c1, c10"):
        clean_flow(config_path=str(config), flow_name="twenty")
    assert not (tmp_path / "store" / "manifests").exists()


def test_the_order_set_in_flows_yaml_finds_the_flipped_labels_and_is_recorded(
    prefect_harness, tmp_path, twenty
):
    config = _write(tmp_path, twenty, classes=NATURAL)
    out = clean_flow(config_path=str(config), flow_name="twenty")
    store = Store(tmp_path / "store")
    manifest = store.latest()
    assert manifest is not None
    assert manifest["labeling"]["pred_probs_classes"] == NATURAL
    assert manifest["labeling"]["class_order"]["source"] == "label_noise.classes"
    assert out["labeling"]["class_order"]["accuracy"] > 0.8
    flagged = set(store.read("decisions").filter(pl.col("label_issue"))["sample_id"].to_list())
    found = len(flagged & twenty["flipped"])
    assert found >= 80, (found, len(flagged))


def test_a_class_label_feature_names_the_order(prefect_harness, tmp_path, twenty):
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "emb": datasets.Sequence(datasets.Value("float32")),
            "label": datasets.ClassLabel(names=NATURAL),
            "probs": datasets.Sequence(datasets.Value("float64")),
        }
    )
    rows = {
        "id": twenty["ids"],
        "emb": twenty["x"].astype(np.float32).tolist(),
        "label": twenty["y"].tolist(),
        "probs": twenty["probs"].tolist(),
    }
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows, features=features)}
    ).save_to_disk(str(tmp_path / "ds"))
    config = write_flows(tmp_path, twenty=FLOW | {"source": {"type": "disk", "path": "ds"}})
    out = clean_flow(config_path=str(config), flow_name="twenty")
    assert out["labeling"]["class_order"]["source"] == "ClassLabel"
    assert out["labeling"]["pred_probs_classes"] == NATURAL


def test_the_summary_prints_the_order_it_used():
    from leanset.pipelines.cli.console import detail_lines
    from leanset.pipelines.store.manifest import Counts
    from leanset.pipelines.summary import RunSummary

    lab = {
        "label_issues": 3,
        "probe": "given pred_probs",
        "pred_probs_classes": NATURAL,
        "class_order": {"source": "ClassLabel", "accuracy": 0.9, "chance": 0.05},
    }
    summary = RunSummary("f", "s", 1, None, False, Counts.from_dict({}), labeling=lab)
    line = next(x for x in detail_lines(summary) if "pred_probs columns" in x)
    assert "c0, c1, c2" in line and "order from ClassLabel" in line and "90.0%" in line
