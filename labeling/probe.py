"""Out-of-sample class probabilities from a linear probe on the embeddings.

A multinomial logistic regression (scikit-learn on CPU, a torch linear head with full-batch LBFGS
on CUDA; both minimise the same objective) is fit k times on k-1 folds of the labeled rows and
predicts the held-out fold, so every labeled row gets probabilities from a model that never saw
it. Members of one duplicate group stay in one fold (StratifiedGroupKFold), so a near-copy in the
training folds cannot vouch for its twin. Unlabeled rows get probabilities from one more model fit
on all labeled rows.

The default inverse regularisation `c=20` was the best of 1..100 for out-of-fold accuracy and
label-issue recall on L2-normalised digits pixels (scikit-learn's default C=1 underfits
unit-norm features); pass another `c` for other embeddings.

`select_probe` is what the label-noise stage runs: it trains on one row per distinct content
(rows with one content hash are one training row, labeled by the majority of their labels; each
row is still judged on its own label), keeps duplicate groups and identical contents in one fold,
scores a few cheap candidates on the same folds (logistic regression at a few C, cosine kNN at a
few k, and the mean of the best of each), fits one temperature on each candidate's out-of-fold
probabilities, and keeps the candidate with the lowest out-of-fold log loss after that
temperature. Every candidate's scores are kept for the manifest. On the research benchmarks
(MiniLM text, EfficientNet-Lite0 photo crops and textiles, digits pixels) the winner was the mean
on text and textiles and kNN 10 (or the mean) on photos and digits; logistic regression at C=100
never won, so it is not a default candidate.

Labels are class indices with -1 for unlabeled; `encode_labels` maps text labels (null =
unlabeled) to indices over the sorted class list, and `decode_labels` maps them back.

A class with fewer labeled samples than `n_folds` is an error (naming the class and its count)
rather than a silent reduction of the folds: fewer folds would change every other class's
probabilities too, and the fix (lower `n_folds`, or label a few more of that class) is the user's.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanset.dedup.matrix import check_matrix, resolve_device
from leanset.labeling.config import LabelingError, LabelNoiseSettings

logger = logging.getLogger(__name__)

UNLABELED = -1
ROW_SUM_ATOL = 1e-3

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EncodedLabels:
    """Class indices per row (-1 = unlabeled) and the class list they index."""

    idx: np.ndarray
    classes: tuple[str, ...]


@dataclass(frozen=True)
class _ProbeSpec:
    """What every fold's fit shares: the backend and its settings."""

    fit: Callable[[np.ndarray, np.ndarray, _ProbeSpec, int], Predictor]
    n_classes: int
    c: float
    max_iter: int
    device: str
    backend: str

    def train(self, x: np.ndarray, y: np.ndarray, seed: int) -> Predictor:
        """Fit on (x, y) and return the predictor."""
        return self.fit(x, y, self, seed)


def _row_name(row: int, sample_ids: Sequence[str] | None) -> str:
    """How a message names a row: its sample id when known, and its position."""
    return f"row {row}" if sample_ids is None else f"sample {sample_ids[row]!r} (row {row})"


def encode_labels(
    labels: Sequence[str | None] | Any,
    *,
    classes: Sequence[str] | None = None,
    sample_ids: Sequence[str] | None = None,
) -> EncodedLabels:
    """Map text labels (None = unlabeled) to indices over `classes` (default: sorted labels)."""
    values = labels.to_list() if hasattr(labels, "to_list") else list(labels)
    for row, value in enumerate(values):
        if value is not None and not isinstance(value, str):
            raise LabelingError(
                f"label of {_row_name(row, sample_ids)} is {value!r} ({type(value).__name__}); "
                "expected text or null"
            )
    known = (
        tuple(sorted({v for v in values if v is not None})) if classes is None else tuple(classes)
    )
    lookup = {name: i for i, name in enumerate(known)}
    if len(lookup) != len(known):
        raise LabelingError(f"classes holds duplicates: {list(known)}")
    idx = np.full(len(values), UNLABELED, dtype=np.int64)
    for row, value in enumerate(values):
        if value is None:
            continue
        if value not in lookup:
            raise LabelingError(
                f"label {value!r} of {_row_name(row, sample_ids)} is not one of the known classes "
                f"{_preview(known)}"
            )
        idx[row] = lookup[value]
    return EncodedLabels(idx=idx, classes=known)


def decode_labels(idx: np.ndarray, classes: Sequence[str]) -> list[str | None]:
    """Map class indices back to text; -1 becomes None."""
    idx = np.asarray(idx)
    bad = np.flatnonzero((idx < UNLABELED) | (idx >= len(classes)))
    if bad.size:
        raise LabelingError(
            f"class index {int(idx[bad[0]])} at row {int(bad[0])} is outside 0..{len(classes) - 1}"
        )
    return [None if i == UNLABELED else classes[i] for i in idx.tolist()]


def _preview(items: Sequence[Any], limit: int = 12) -> str:
    """A short list for messages."""
    shown = ", ".join(repr(x) for x in list(items)[:limit])
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def validate_pred_probs(
    pred_probs: Any,
    n_rows: int,
    n_classes: int,
    *,
    sample_ids: Sequence[str] | None = None,
    atol: float = ROW_SUM_ATOL,
) -> np.ndarray:
    """Check user-given probabilities (shape, finite, in [0, 1], rows sum to 1); return float64."""
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2:
        raise LabelingError(f"pred_probs must be 2-D (rows x classes), got shape {probs.shape}")
    if probs.shape[0] != n_rows:
        raise LabelingError(f"pred_probs has {probs.shape[0]} rows, the sample table {n_rows}")
    if probs.shape[1] != n_classes:
        raise LabelingError(
            f"pred_probs has {probs.shape[1]} columns, expected {n_classes} (one per class)"
        )
    checks = (
        (~np.isfinite(probs).all(axis=1), "holds NaN or inf"),
        (((probs < 0) | (probs > 1)).any(axis=1), "has a value outside [0, 1]"),
    )
    for bad, what in checks:
        if bad.any():
            row = int(np.argmax(bad))
            raise LabelingError(f"pred_probs {_row_name(row, sample_ids)} {what}")
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        row = int(np.argmax(off))
        raise LabelingError(
            f"pred_probs {_row_name(row, sample_ids)} sums to {sums[row]:.6g}, "
            f"expected 1 (tolerance {atol})"
        )
    normalised: np.ndarray = probs / sums[:, None]
    return normalised


def stack_pred_probs(column: Any, *, sample_ids: Sequence[str] | None = None) -> np.ndarray:
    """Turn a list-valued `pred_probs` column into a matrix; null or ragged rows are errors."""
    rows = column.to_list() if hasattr(column, "to_list") else list(column)
    if not rows:
        return np.zeros((0, 0), dtype=np.float64)
    width = None
    for row, value in enumerate(rows):
        if value is None:
            raise LabelingError(f"pred_probs of {_row_name(row, sample_ids)} is null")
        width = len(value) if width is None else width
        if len(value) != width:
            raise LabelingError(
                f"pred_probs of {_row_name(row, sample_ids)} has {len(value)} values, "
                f"row 0 has {width}"
            )
    return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class ProbeOptions:
    """How the probe is fit: folds, seed, device and backend, and its regularisation.

    `c`: inverse L2 strength, as LogisticRegression's C. `device`: auto|cpu|cuda[:N];
    `backend`: auto (torch on CUDA, scikit-learn on CPU)|sklearn|torch.
    """

    n_folds: int = 5
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    c: float = 20.0
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise LabelingError(f"n_folds must be an integer >= 2, got {self.n_folds!r}")
        if not self.c > 0:
            raise LabelingError(f"c (inverse regularisation) must be > 0, got {self.c!r}")

    @classmethod
    def of(cls, settings: LabelNoiseSettings | None) -> ProbeOptions:
        """One logistic regression as `label_noise:` sets it (its strongest C candidate)."""
        if settings is None:
            return cls()
        return cls(seed=settings.seed, device=settings.device, c=max(settings.c_values))

    def spec(self, n_classes: int) -> _ProbeSpec:
        """The fit every fold shares (the device resolved, the backend chosen)."""
        device = resolve_device(self.device, error=LabelingError)
        backend = _resolve_backend(self.backend, device)
        return _ProbeSpec(BACKENDS[backend], n_classes, self.c, self.max_iter, device, backend)


def train_probe(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    options: ProbeOptions | None = None,
) -> Predictor:
    """Fit one probe on all labeled rows; return a function from embeddings to probabilities."""
    opts = options or ProbeOptions()
    x = _check_embeddings(embeddings, None)
    y = _check_labels(labels, len(x), n_classes, None)
    keep = y != UNLABELED
    if len(np.unique(y[keep])) < 2:
        raise LabelingError("the probe needs labeled samples of at least 2 classes")
    return opts.spec(n_classes).train(x[keep], y[keep], opts.seed)


def _resolve_backend(backend: str, device: str) -> str:
    """`auto` → torch on CUDA, scikit-learn on CPU."""
    if backend == "auto":
        return "torch" if device.startswith("cuda") else "sklearn"
    if backend not in BACKENDS:
        raise LabelingError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "sklearn" and device.startswith("cuda"):
        logger.info("probe: backend sklearn runs on CPU although device is cuda")
    return backend


def _check_embeddings(embeddings: np.ndarray, sample_ids: Sequence[str] | None) -> np.ndarray:
    """A finite, non-empty N x D float32 matrix (rows named by sample id when known)."""
    describe = (lambda r: f"sample {sample_ids[r]!r}") if sample_ids is not None else None
    return check_matrix(embeddings, nonempty=True, describe=describe, error=LabelingError)


def _check_classes(labels: np.ndarray, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The class names: given, or '0'..'K-1' from the largest index."""
    if classes is not None:
        return tuple(classes)
    y = np.asarray(labels)
    if not y.size or not np.issubdtype(y.dtype, np.integer):
        return ()  # _check_labels reports the problem
    return tuple(str(i) for i in range(int(y.max()) + 1))


def _check_labels(
    labels: np.ndarray, n_rows: int, n_classes: int, sample_ids: Sequence[str] | None
) -> np.ndarray:
    """Integer class indices in -1..K-1, one per embedding row."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise LabelingError(
            f"labels must be a 1-D integer array of class indices (-1 = unlabeled), "
            f"got dtype {y.dtype} and shape {y.shape}"
        )
    if len(y) != n_rows:
        raise LabelingError(f"labels has {len(y)} rows, the embeddings {n_rows}")
    bad = (y < UNLABELED) | (y >= n_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise LabelingError(
            f"label index {int(y[row])} of {_row_name(row, sample_ids)} is outside the known "
            f"classes 0..{n_classes - 1} (-1 = unlabeled)"
        )
    return y.astype(np.int64, copy=False)


def _fold_groups(groups: np.ndarray | None, n_rows: int) -> np.ndarray:
    """Fold group id per row (one fold per group); a negative id becomes a group of its own."""
    if groups is None:
        return np.arange(n_rows, dtype=np.int64)
    g = np.asarray(groups)
    if g.shape != (n_rows,) or not np.issubdtype(g.dtype, np.integer):
        raise LabelingError(
            f"groups must be {n_rows} integers (one per row, negative = no group), "
            f"got dtype {g.dtype} and shape {g.shape}"
        )
    g = g.astype(np.int64)
    loose = g < 0
    start = int(g.max()) + 1 if (~loose).any() else 0
    g[loose] = start + np.arange(int(loose.sum()))
    return g


def _check_mask(train_mask: np.ndarray | None, n_rows: int) -> np.ndarray:
    """Boolean training mask, one per row (default: every row)."""
    if train_mask is None:
        return np.ones(n_rows, dtype=bool)
    m = np.asarray(train_mask)
    if m.shape != (n_rows,) or m.dtype != bool:
        raise LabelingError(f"train_mask must be {n_rows} booleans, got {m.dtype} {m.shape}")
    return m


def _check_class_counts(y: np.ndarray, classes: tuple[str, ...], n_folds: int) -> None:
    """At least two classes, each present class with at least n_folds labeled samples."""
    counts = np.bincount(y, minlength=len(classes))
    present = np.flatnonzero(counts)
    if present.size == 0:
        raise LabelingError("no labeled samples: the probe needs labels of at least 2 classes")
    if present.size == 1:
        only = int(present[0])
        raise LabelingError(
            f"the probe needs labeled samples of at least 2 classes; found only class "
            f"{classes[only]!r} ({int(counts[only])} samples)"
        )
    small = [int(k) for k in present if counts[k] < n_folds]
    if small:
        desc = ", ".join(f"{classes[k]!r} has {int(counts[k])}" for k in small[:10])
        raise LabelingError(
            f"too few labeled samples for {n_folds} folds: {desc} (each class needs at least "
            f"n_folds={n_folds}); lower n_folds (minimum 2) or label more samples of that class"
        )


def _check_group_count(groups: np.ndarray, n_folds: int) -> None:
    """Enough distinct groups among labeled rows to fill every fold."""
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise LabelingError(
            f"labeled samples fall into only {n_groups} duplicate groups, fewer than "
            f"n_folds={n_folds}; lower n_folds"
        )


def _compute_folds(
    y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each duplicate group inside one fold."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    dummy = np.zeros((len(y), 1))
    if len(np.unique(groups)) == len(groups):
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return list(splitter.split(dummy, y))
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        return list(splitter.split(dummy, y, groups))


def _fit_sklearn(x: np.ndarray, y: np.ndarray, spec: _ProbeSpec, seed: int) -> Predictor:
    """Multinomial logistic regression (lbfgs); classes absent from training get probability 0."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=spec.c, max_iter=spec.max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    seen = model.classes_.astype(np.int64)

    def predict(z: np.ndarray) -> np.ndarray:
        out = np.zeros((len(z), spec.n_classes), dtype=np.float64)
        out[:, seen] = model.predict_proba(z)
        return out

    return predict


def _fit_torch(x: np.ndarray, y: np.ndarray, spec: _ProbeSpec, seed: int) -> Predictor:
    """A linear head with the same objective as LogisticRegression, full-batch LBFGS in torch."""
    import torch

    torch.manual_seed(seed)
    device, n_classes = spec.device, spec.n_classes
    dtype = torch.float64 if device == "cpu" else torch.float32
    xt = torch.as_tensor(x, device=device, dtype=dtype)
    yt = torch.as_tensor(y, device=device)
    weight = torch.zeros(x.shape[1], n_classes, device=device, dtype=dtype, requires_grad=True)
    bias = torch.zeros(n_classes, device=device, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=spec.max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    # sklearn minimises C * sum(loss) + |W|^2 / 2; dividing by C * n gives this mean-loss form.
    l2 = 1.0 / (2.0 * spec.c * len(x))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = weight.detach(), bias.detach()

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = torch.as_tensor(z, device=device, dtype=dtype) @ w + b
            return torch.softmax(logits, dim=1).double().cpu().numpy()

    return predict


BACKENDS: dict[str, Callable[[np.ndarray, np.ndarray, _ProbeSpec, int], Predictor]] = {
    "sklearn": _fit_sklearn,
    "torch": _fit_torch,
}


# ---------------------------------------------------------------- probe selection

KNN_SMOOTHING = 0.5  # kNN vote shares: (votes + this) / (k + this * classes), never 0 or 1
KNN_MAX_ROWS = {"cpu": 300_000, "cuda": 5_000_000}  # kNN candidates above this many contents: off
TEMPERATURE_BOUNDS = (0.05, 20.0)
ECE_BINS = 15
_KNN_BLOCK = 8192  # query rows per kNN block on CUDA

Fit = Callable[[np.ndarray, np.ndarray, int], Predictor]  # (x, y, seed) -> predictor


@dataclass(frozen=True)
class SelectOptions:
    """The candidate probes `select_probe` scores, and the folds, seed and device they share.

    `c`: logistic regression candidates (inverse L2 strength, as LogisticRegression's C);
    `k`: cosine kNN candidates (neighbours); `mean`: also the mean of the best of each kind.
    `knn_max_rows`: kNN candidates are skipped above this many training contents (default: 300k
    on CPU, 5M on CUDA), as their cost grows with the square of it.
    """

    n_folds: int = 5
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    c: tuple[float, ...] = (1.0, 10.0)
    k: tuple[int, ...] = (10, 30)
    mean: bool = True
    max_iter: int = 1000
    knn_max_rows: int | None = None

    def __post_init__(self) -> None:
        ProbeOptions(n_folds=self.n_folds)  # the same fold check
        if not self.c and not self.k:
            raise LabelingError("the probe needs at least one candidate: c or k must not be empty")
        for c in self.c:
            if not c > 0:
                raise LabelingError(f"c (inverse regularisation) must be > 0, got {c!r}")
        for k in self.k:
            if not isinstance(k, int) or k < 1:
                raise LabelingError(f"k (kNN neighbours) must be an integer >= 1, got {k!r}")

    @classmethod
    def of(cls, settings: LabelNoiseSettings) -> SelectOptions:
        """The candidates, folds, seed and device `label_noise:` sets (the rest at defaults)."""
        c, k = settings.c_values, tuple(settings.k)
        return cls(n_folds=settings.n_folds, seed=settings.seed, device=settings.device, c=c, k=k)

    def logreg(self, c: float) -> ProbeOptions:
        """The options of one logistic-regression candidate."""
        return ProbeOptions(self.n_folds, self.seed, self.device, self.backend, c, self.max_iter)


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's out-of-fold scores against the given labels, before and after its
    temperature (log loss, and top-label ECE over 15 equal-width confidence bins)."""

    accuracy: float
    log_loss: float
    ece: float
    temperature: float
    log_loss_calibrated: float
    ece_calibrated: float

    def to_dict(self) -> dict[str, float]:
        """Rounded, for the manifest."""
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ProbeSelection:
    """The winning probe's probabilities for every row (out-of-fold where labeled, a fit on every
    training content elsewhere), the same after its temperature, and every candidate's scores."""

    winner: str
    probs: np.ndarray
    calibrated: np.ndarray
    temperature: float
    scores: dict[str, CandidateScore]
    labeled_idx: np.ndarray
    unlabeled_idx: np.ndarray
    classes: tuple[str, ...]
    backend: str
    device: str
    n_folds: int
    training_rows: int
    fold_groups: int
    notes: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        """The winner's out-of-fold accuracy against the given labels."""
        return self.scores[self.winner].accuracy

    @property
    def ece(self) -> float:
        """The winner's ECE after its temperature."""
        return self.scores[self.winner].ece_calibrated

    def info(self) -> dict[str, Any]:
        """What the manifest records about the probe."""
        return {
            "probe": self.winner,
            "probe_backend": self.backend,
            "probe_device": self.device,
            "probe_accuracy": round(self.accuracy, 4),
            "probe_ece": round(self.ece, 4),
            "probe_temperature": round(self.temperature, 4),
            "probe_candidates": {name: s.to_dict() for name, s in self.scores.items()},
            "probe_training_rows": self.training_rows,
            "probe_fold_groups": self.fold_groups,
            "probe_notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Contents:
    """Labeled rows folded into distinct contents: the first row of each (`reps`), its majority
    label over all its rows (folds) and over its trainable rows (training), and per row the
    position of its content (-1: unlabeled)."""

    reps: np.ndarray
    label: np.ndarray
    train_label: np.ndarray
    trainable: np.ndarray
    rep_of: np.ndarray


def select_probe(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    keys: Sequence[str] | np.ndarray | None = None,
    groups: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    train_mask: np.ndarray | None = None,
    options: SelectOptions | None = None,
    sample_ids: Sequence[str] | None = None,
    on_fit: Callable[[], None] | None = None,
) -> ProbeSelection:
    """Out-of-fold probabilities of the best candidate probe, chosen by calibrated log loss.

    `keys`: content identity per row (the content hash; default every row distinct); rows with
    one key are one training row. `groups`: fold group per row (negative = none), e.g. duplicate
    groups; a group and every row sharing a content with it stay in one fold. `train_mask`: rows
    whose labels may train (all rows are still judged). `on_fit` is called after each candidate's
    out-of-fold fits and after the winner's fit on all rows, for a progress display.
    """
    opts = options or SelectOptions()
    x = _check_embeddings(embeddings, sample_ids)
    names = _check_classes(labels, classes)
    y = _check_labels(labels, len(x), len(names), sample_ids)
    row_groups = _fold_groups(groups, len(x))
    content = _distinct_contents(_check_keys(keys, len(x)), y, _check_mask(train_mask, len(x)))
    _check_class_counts(content.label, names, opts.n_folds)
    fold_groups = _content_groups(content, row_groups, y)
    _check_group_count(fold_groups, opts.n_folds)
    device = resolve_device(opts.device, error=LabelingError)
    backend = _resolve_backend(opts.backend, device)
    fits, notes = _candidate_fits(opts, device, len(names), len(content.reps))
    folds = _compute_folds(content.label, fold_groups, opts.n_folds, opts.seed)
    labeled = np.flatnonzero(y != UNLABELED)
    rep_probs, scores = _score_candidates(x, y, labeled, content, folds, fits, opts, on_fit)
    winner = min(scores, key=lambda n: (scores[n].log_loss_calibrated, n))
    logger.info(
        "probe selection: %s won (%s)",
        winner,
        ", ".join(f"{n} {s.log_loss_calibrated:.3f}" for n, s in scores.items()),
    )
    probs = _all_rows(x, y, content, rep_probs[winner], _winner_fit(winner, fits), opts.seed)
    if on_fit:
        on_fit()
    return ProbeSelection(
        winner=winner,
        probs=probs,
        calibrated=apply_temperature(probs, scores[winner].temperature),
        temperature=scores[winner].temperature,
        scores=scores,
        labeled_idx=labeled,
        unlabeled_idx=np.flatnonzero(y == UNLABELED),
        classes=names,
        backend=backend,
        device=device,
        n_folds=opts.n_folds,
        training_rows=len(content.reps),
        fold_groups=len(np.unique(fold_groups)),
        notes=tuple(notes),
    )


def _score_candidates(
    x: np.ndarray,
    y: np.ndarray,
    labeled: np.ndarray,
    content: _Contents,
    folds: list[tuple[np.ndarray, np.ndarray]],
    fits: dict[str, Fit],
    opts: SelectOptions,
    on_fit: Callable[[], None] | None,
) -> tuple[dict[str, np.ndarray], dict[str, CandidateScore]]:
    """Each candidate's out-of-fold probabilities on the distinct contents, and its scores on the
    labeled rows (plus the mean of the best of each kind, with `opts.mean`)."""
    xr = np.ascontiguousarray(x[content.reps])
    rep_probs: dict[str, np.ndarray] = {}
    for name, fit in fits.items():
        rep_probs[name] = _content_oof(xr, content, folds, fit, opts.seed)
        if on_fit:
            on_fit()
    scores = {n: score_probs(p[content.rep_of[labeled]], y[labeled]) for n, p in rep_probs.items()}
    if opts.mean:
        _add_mean(rep_probs, scores, content.rep_of[labeled], y[labeled])
    return rep_probs, scores


def _check_keys(keys: Sequence[str] | np.ndarray | None, n_rows: int) -> np.ndarray:
    """One content key per row (default: every row its own content)."""
    if keys is None:
        return np.arange(n_rows)
    k = np.asarray(keys)
    if k.shape != (n_rows,):
        raise LabelingError(f"keys must be {n_rows} values (one per row), got shape {k.shape}")
    if k.dtype == object and any(v is None for v in k.tolist()):
        row = next(i for i, v in enumerate(k.tolist()) if v is None)
        raise LabelingError(f"keys: row {row} has no content key (null)")
    return k


def _distinct_contents(keys: np.ndarray, y: np.ndarray, mask: np.ndarray) -> _Contents:
    """Labeled rows grouped by key, in row order; majority labels (ties: the smaller class)."""
    labeled = np.flatnonzero(y != UNLABELED)
    _, first, inverse = np.unique(keys[labeled], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rep_of = np.full(len(y), -1, dtype=np.int64)
    rep_of[labeled] = rank[inverse.ravel()]
    n_classes = int(y.max()) + 1 if labeled.size else 1
    votes = np.zeros((len(order), n_classes), dtype=np.int64)
    np.add.at(votes, (rep_of[labeled], y[labeled]), 1)
    train_votes = np.zeros_like(votes)
    sure = labeled[mask[labeled]]
    np.add.at(train_votes, (rep_of[sure], y[sure]), 1)
    return _Contents(
        reps=labeled[first[order]],
        label=votes.argmax(axis=1),
        train_label=train_votes.argmax(axis=1),
        trainable=train_votes.sum(axis=1) > 0,
        rep_of=rep_of,
    )


def _content_groups(content: _Contents, groups: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fold group per content: contents sharing a row group (directly or through another
    content) are one group; `groups` already gives every ungrouped row a group of its own."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labeled = np.flatnonzero(y != UNLABELED)
    n = len(content.reps)
    uniq, g = np.unique(groups[labeled], return_inverse=True)
    size = n + len(uniq)
    graph = coo_matrix(
        (np.ones(labeled.size), (content.rep_of[labeled], n + g.ravel())), shape=(size, size)
    )
    _, component = connected_components(graph, directed=False)
    return np.asarray(component[:n], dtype=np.int64)


def _candidate_fits(
    opts: SelectOptions, device: str, n_classes: int, n_rows: int
) -> tuple[dict[str, Fit], list[str]]:
    """The candidates' fits by name, and a note for each kind skipped."""
    fits: dict[str, Fit] = {}
    for c in opts.c:
        fits[f"logreg_c{c:g}"] = _logreg_fit(opts.logreg(c).spec(n_classes))
    notes = []
    limit = opts.knn_max_rows or KNN_MAX_ROWS["cuda" if device.startswith("cuda") else "cpu"]
    if opts.k and n_rows > limit:
        notes.append(f"kNN candidates skipped: {n_rows} training contents > {limit}")
    elif opts.k:
        for k in opts.k:
            fits[f"knn_{k}"] = _knn_fit(k, n_classes, device)
    if not fits:
        raise LabelingError(f"no probe candidate left to run ({'; '.join(notes)}); set c")
    return fits, notes


def _logreg_fit(spec: _ProbeSpec) -> Fit:
    """A logistic-regression candidate (the backend `spec` chose)."""
    return lambda x, y, seed: spec.train(x, y, seed)


def _content_oof(
    x: np.ndarray,
    content: _Contents,
    folds: list[tuple[np.ndarray, np.ndarray]],
    fit: Fit,
    seed: int,
) -> np.ndarray:
    """Out-of-fold probabilities per content (trained on the other folds' trainable contents)."""
    parts: dict[int, np.ndarray] = {}
    for fold, (tr, te) in enumerate(folds):
        train = tr[content.trainable[tr]]
        parts[fold] = fit(x[train], content.train_label[train], seed + fold)(x[te])
    out = np.zeros((len(content.reps), parts[0].shape[1]), dtype=np.float64)
    for fold, (_, te) in enumerate(folds):
        out[te] = parts[fold]
    return out


def _add_mean(
    rep_probs: dict[str, np.ndarray],
    scores: dict[str, CandidateScore],
    rows: np.ndarray,
    y: np.ndarray,
) -> None:
    """Score the mean of the best logistic regression and the best kNN (both out-of-fold on the
    same folds, so their mean is out-of-fold too)."""
    best = []
    for kind in ("logreg_", "knn_"):
        names = [n for n in scores if n.startswith(kind)]
        if names:
            best.append(min(names, key=lambda n: (scores[n].log_loss_calibrated, n)))
    if len(best) == 2:
        name = f"mean({best[0]},{best[1]})"
        rep_probs[name] = (rep_probs[best[0]] + rep_probs[best[1]]) / 2.0
        scores[name] = score_probs(rep_probs[name][rows], y)


def _winner_fit(winner: str, fits: dict[str, Fit]) -> Fit:
    """The winner's fit (a mean averages its two parts' predictions)."""
    if not winner.startswith("mean("):
        return fits[winner]
    parts = [fits[n] for n in winner[len("mean(") : -1].split(",")]

    def fit(x: np.ndarray, y: np.ndarray, seed: int) -> Predictor:
        models = [f(x, y, seed) for f in parts]

        def predict(z: np.ndarray) -> np.ndarray:
            out: np.ndarray = np.mean([m(z) for m in models], axis=0)
            return out

        return predict

    return fit


def _all_rows(
    x: np.ndarray,
    y: np.ndarray,
    content: _Contents,
    rep_probs: np.ndarray,
    fit: Fit,
    seed: int,
) -> np.ndarray:
    """Probabilities for every row: the content's out-of-fold ones where labeled, a fit on every
    trainable content for unlabeled rows."""
    out = np.zeros((len(y), rep_probs.shape[1]), dtype=np.float64)
    labeled = np.flatnonzero(y != UNLABELED)
    out[labeled] = rep_probs[content.rep_of[labeled]]
    unlabeled = np.flatnonzero(y == UNLABELED)
    if unlabeled.size:
        train = content.reps[content.trainable]
        out[unlabeled] = fit(x[train], content.train_label[content.trainable], seed)(x[unlabeled])
    return out


def _knn_fit(k: int, n_classes: int, device: str) -> Fit:
    """Cosine k nearest neighbours; probabilities are smoothed vote shares."""

    def fit(x: np.ndarray, y: np.ndarray, seed: int) -> Predictor:
        base = _unit(x)
        kk = min(k, len(base))

        def predict(z: np.ndarray) -> np.ndarray:
            idx = _top_k(_unit(z), base, kk, device)
            votes = np.zeros((len(z), n_classes), dtype=np.float64)
            np.add.at(votes, (np.repeat(np.arange(len(z)), kk), y[idx].ravel()), 1.0)
            out: np.ndarray = (votes + KNN_SMOOTHING) / (kk + KNN_SMOOTHING * n_classes)
            return out

        return predict

    return fit


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _top_k(q: np.ndarray, c: np.ndarray, k: int, device: str) -> np.ndarray:
    """Indices of each query's k most similar corpus rows (FAISS on CPU, torch on CUDA)."""
    if not device.startswith("cuda"):
        import faiss

        index = faiss.IndexFlatIP(c.shape[1])
        index.add(c)
        return np.asarray(index.search(q, k)[1], dtype=np.int64)
    import torch

    ct = torch.as_tensor(c, device=device)
    parts = []
    for s in range(0, len(q), _KNN_BLOCK):
        qt = torch.as_tensor(q[s : s + _KNN_BLOCK], device=device)
        parts.append(torch.topk(qt @ ct.T, k, dim=1).indices.cpu().numpy())
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, k), np.int64)


# ---------------------------------------------------------------- scores and temperature


def log_loss(probs: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> float:
    """Mean negative log probability of the given labels (clipped at `eps`)."""
    p = probs[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(p, eps, 1.0))))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width confidence bin, weighted by size."""
    conf = probs.max(axis=1)
    hit = probs.argmax(axis=1) == y
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    size = np.bincount(bins, minlength=n_bins).astype(np.float64)
    gap = np.abs(
        np.bincount(bins, hit.astype(np.float64), n_bins) - np.bincount(bins, conf, n_bins)
    )
    return float(gap.sum() / max(size.sum(), 1.0))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T (within TEMPERATURE_BOUNDS) minimising the log loss of softmax(log p / T)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(probs, 1e-12, 1.0))
    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    res = minimize_scalar(
        lambda log_t: log_loss(_soften(logp, float(np.exp(log_t))), y),
        bounds=(lo, hi),
        method="bounded",
    )
    return float(np.exp(res.x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row."""
    return _soften(np.log(np.clip(probs, 1e-12, 1.0)), temperature)


def _soften(logp: np.ndarray, temperature: float) -> np.ndarray:
    z = logp / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def score_probs(probs: np.ndarray, y: np.ndarray) -> CandidateScore:
    """Accuracy, log loss and ECE of out-of-sample probabilities, before and after the one
    temperature fitted on them."""
    t = fit_temperature(probs, y)
    cal = apply_temperature(probs, t)
    return CandidateScore(
        accuracy=float(np.mean(probs.argmax(axis=1) == y)),
        log_loss=log_loss(probs, y),
        ece=expected_calibration_error(probs, y),
        temperature=t,
        log_loss_calibrated=log_loss(cal, y),
        ece_calibrated=expected_calibration_error(cal, y),
    )
