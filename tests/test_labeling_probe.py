"""Out-of-fold probabilities: accuracy, group-aware folds, both backends, and clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_limits

from leanset.labeling.probe import (
    LabelingError,
    ProbeOptions,
    ProbeSelection,
    SelectOptions,
    decode_labels,
    encode_labels,
    select_probe,
    stack_pred_probs,
    train_probe,
    validate_pred_probs,
)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small fits run fastest single-threaded (BLAS threads thrash on a busy CI machine)."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits: raw 64-d pixels, L2-normalised, and their labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y.astype(np.int64)


def logreg(
    x: np.ndarray,
    y: np.ndarray,
    *,
    c: float = 20.0,
    backend: str = "auto",
    device: str = "cpu",
    **kw,
) -> ProbeSelection:
    """One logistic-regression candidate through `select_probe` (as the label-noise stage fits)."""
    opts = SelectOptions(device=device, backend=backend, c=(c,), k=(), mean=False)
    return select_probe(x, y, options=opts, **kw)


def test_encode_and_decode_labels_round_trip() -> None:
    enc = encode_labels(pl.Series(["dog", None, "cat", "dog"]))
    assert enc.classes == ("cat", "dog")
    assert enc.idx.tolist() == [1, -1, 0, 1]
    assert decode_labels(enc.idx, enc.classes) == ["dog", None, "cat", "dog"]


def test_encode_label_outside_known_classes_names_the_sample() -> None:
    with pytest.raises(LabelingError, match=r"'bird' of sample 's2' \(row 2\).*known classes"):
        encode_labels(["cat", None, "bird"], classes=["cat", "dog"], sample_ids=["s0", "s1", "s2"])


def test_probe_out_of_fold_accuracy_and_shapes(digits) -> None:
    x, y = digits
    labels = y.copy()
    labels[::5] = -1
    result = logreg(x, labels)
    assert result.backend == "sklearn" and result.n_folds == 5
    assert result.labeled_idx.shape == ((labels >= 0).sum(),) and result.probs.shape == (len(x), 10)
    assert np.allclose(result.probs.sum(axis=1), 1.0)
    assert result.accuracy > 0.93
    unlabeled = result.probs[result.unlabeled_idx]
    unlabeled_acc = np.mean(unlabeled.argmax(axis=1) == y[result.unlabeled_idx])
    assert unlabeled_acc > 0.93


def test_duplicate_groups_never_straddle_folds() -> None:
    # Two identical copies per group with a random label: only a twin in the training folds can
    # predict the label, so out-of-fold accuracy is near chance exactly when groups are respected.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 512)).astype(np.float32)
    x = np.repeat(base / np.linalg.norm(base, axis=1, keepdims=True), 2, axis=0)
    y = np.repeat(rng.integers(0, 2, 200), 2).astype(np.int64)
    groups = np.repeat(np.arange(200), 2)
    leaky = logreg(x, y, c=1000.0)
    grouped = logreg(x, y, c=1000.0, groups=groups)
    assert leaky.accuracy > 0.8  # ~4 in 5 twins sit in the training folds
    assert grouped.accuracy < 0.65  # chance is 0.5


@pytest.fixture
def torch_one_thread():
    """torch on one thread for the duration of a test (small problems, busy CI machines)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_torch_head_matches_logistic_regression_on_cpu(digits, torch_one_thread) -> None:
    x, y = digits
    x, y = x[:600], y[:600]
    sk = logreg(x, y, backend="sklearn")
    th = logreg(x, y, backend="torch")
    assert th.backend == "torch" and th.device == "cpu"
    assert abs(sk.accuracy - th.accuracy) < 0.02
    assert np.abs(sk.probs - th.probs).mean() < 0.01


@pytest.mark.gpu
def test_torch_head_on_cuda_matches_cpu(digits) -> None:
    x, y = digits
    labels = y.copy()
    labels[::4] = -1
    gpu = logreg(x, labels, device="auto")
    cpu = logreg(x, labels)
    assert gpu.device == "cuda" and gpu.backend == "torch"
    assert abs(gpu.accuracy - cpu.accuracy) < 0.02
    assert np.abs(gpu.probs - cpu.probs).mean() < 0.01


def test_train_probe_predicts_held_out_rows(digits) -> None:
    x, y = digits
    predict = train_probe(x[:1200], y[:1200], 10, options=ProbeOptions(device="cpu"))
    assert np.mean(predict(x[1200:]).argmax(axis=1) == y[1200:]) > 0.9


def test_single_class_is_an_error() -> None:
    x = np.eye(12, dtype=np.float32)
    y = np.array([0] * 10 + [-1, -1])
    with pytest.raises(LabelingError, match=r"at least 2 classes; found only class 'cat' \(10"):
        logreg(x, y, classes=["cat", "dog"])


def test_class_with_fewer_samples_than_folds_is_named() -> None:
    x = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32)
    y = np.array([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(LabelingError, match=r"'bird' has 3 .*n_folds=5"):
        logreg(x, y, classes=["cat", "dog", "bird"])


def test_label_index_outside_classes_names_the_sample() -> None:
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(LabelingError, match=r"label index 7 of sample 'd' \(row 3\)"):
        logreg(x, np.array([0, 1, 0, 7]), classes=["a", "b"], sample_ids=list("abcd"))


@pytest.mark.parametrize(
    ("embeddings", "labels", "message"),
    [
        (np.zeros((3, 2), np.float32), np.array([0, 1]), "labels has 2 rows, the embeddings 3"),
        (np.array([[1.0, np.nan], [0, 1]]), np.array([0, 1]), "row 1|row 0"),
        (np.zeros((2, 2), np.float32), np.array([0.0, 1.0]), "integer array"),
        (np.zeros(4, np.float32), np.array([0, 1]), "N x D"),
    ],
)
def test_bad_shapes_and_values(embeddings, labels, message) -> None:
    with pytest.raises(LabelingError, match=message):
        logreg(embeddings, labels)


def test_cuda_without_a_gpu_is_an_error() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LabelingError, match="no CUDA GPU"):
        select_probe(
            np.eye(10, dtype=np.float32),
            np.arange(10) % 2,
            options=SelectOptions(device="cuda", n_folds=2, c=(1.0,), k=()),
        )


def test_validate_pred_probs_accepts_and_renormalises() -> None:
    probs = np.array([[0.2, 0.8], [0.5, 0.5004]])
    out = validate_pred_probs(probs, 2, 2)
    assert np.allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (np.full((3, 3), 1 / 3), "has 3 columns, expected 2"),
        (np.full((2, 2), 0.5), "has 2 rows, the sample table 3"),
        (np.array([[0.5, 0.5], [0.3, 0.6], [0.5, 0.5]]), r"sample 'b' \(row 1\) sums to 0.9"),
        (np.array([[0.5, 0.5], [0.5, 0.5], [np.nan, 1.0]]), r"sample 'c' \(row 2\) holds NaN"),
        (np.array([[1.5, -0.5], [0.5, 0.5], [0.5, 0.5]]), r"sample 'a' \(row 0\) has a value"),
        (np.full(3, 0.5), "must be 2-D"),
    ],
)
def test_validate_pred_probs_names_the_first_bad_row(probs, message) -> None:
    with pytest.raises(LabelingError, match=message):
        validate_pred_probs(probs, 3, 2, sample_ids=["a", "b", "c"])


def test_stack_pred_probs_rejects_null_and_ragged_rows() -> None:
    assert stack_pred_probs(pl.Series([[0.1, 0.9], [1.0, 0.0]])).shape == (2, 2)
    with pytest.raises(LabelingError, match=r"sample 'b' \(row 1\) is null"):
        stack_pred_probs(pl.Series([[0.1, 0.9], None]), sample_ids=["a", "b"])
    with pytest.raises(LabelingError, match="row 1 has 3 values, row 0 has 2"):
        stack_pred_probs([[0.1, 0.9], [0.2, 0.3, 0.5]])
