"""What the cleaning costs in quality: the cheap probe trained on the raw and the cleaned train split.

`quality_delta` fits the linear probe (`labeling.probe.train_probe`, the same `ProbeOptions` and
seed for both) once on the raw training rows and once on the cleaned ones, predicts the same
untouched eval rows with both, and compares them sample by sample (`paired_difference`): the two
accuracies, their difference with a 95% confidence interval for matched proportions (Agresti and
Min's interval: half a count added to each of the four agree/disagree cells), and McNemar's exact
test on the samples only one model gets right. The compute each fit took is measured.

Eval rows that a removed train row leaked into (`leak_of`) are left out of the headline figure:
the raw probe had seen a copy of them, so on them it scores what it memorised, and counting them
would charge the cleaning for making the estimate honest. The all-rows figure is kept beside it.

Inputs are class indices (`labeling.probe.encode_labels`; -1 = unlabeled, never trained on or
scored) and boolean row masks over one embedding matrix.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from leanset.dedup.matrix import Rows
from leanset.labeling.config import LabelingError
from leanset.labeling.probe import UNLABELED, ProbeOptions, encode_labels, train_probe

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class FitCompute:
    """One probe fit: rows trained on, its accuracy on the eval rows, and the time it took."""

    n_train: int
    accuracy: float
    wall_seconds: float
    cpu_seconds: float
    device: str


@dataclass(frozen=True)
class PairedDifference:
    """Two models scored on the same samples: accuracy of each, and whether they differ."""

    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int  # samples model a gets right and model b gets wrong
    only_b: int
    ci_low: float  # 95% interval of accuracy_b - accuracy_a
    ci_high: float
    p_value: float  # McNemar's exact test (two-sided)

    @property
    def difference(self) -> float:
        return self.accuracy_b - self.accuracy_a

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"difference": self.difference}


@dataclass(frozen=True)
class QualityDelta:
    """The probe on the raw and on the cleaned train split, scored on the same eval rows."""

    raw: FitCompute
    clean: FitCompute
    paired: PairedDifference
    correct_raw: np.ndarray  # per eval row (in row order): did the raw model get it right
    correct_clean: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain data; the per-row outcomes as packed bits (base64) for later paired tests."""
        return {
            "raw": asdict(self.raw),
            "clean": asdict(self.clean),
            "paired": self.paired.to_dict(),
            "correct": {"raw": pack_bits(self.correct_raw), "clean": pack_bits(self.correct_clean)},
        }


def quality_delta(
    embeddings: np.ndarray,
    raw_labels: np.ndarray,
    clean_labels: np.ndarray,
    raw_train: np.ndarray,
    clean_train: np.ndarray,
    eval_rows: np.ndarray,
    n_classes: int,
    options: ProbeOptions | None = None,
) -> QualityDelta:
    """Fit the probe on `raw_train` rows (with `raw_labels`) and on `clean_train` rows (with
    `clean_labels`), score both on `eval_rows` against `raw_labels`, and compare them."""
    opts = options or ProbeOptions()
    n = len(embeddings)
    for name, arr in (("raw_labels", raw_labels), ("clean_labels", clean_labels)):
        if np.shape(arr) != (n,):
            raise LabelingError(f"{name} has shape {np.shape(arr)}, expected ({n},)")
    for name, mask in (("raw_train", raw_train), ("clean_train", clean_train), ("eval", eval_rows)):
        if np.shape(mask) != (n,) or np.asarray(mask).dtype != bool:
            raise LabelingError(f"{name} must be {n} booleans, got {np.asarray(mask).dtype}")
    truth = np.asarray(raw_labels)[eval_rows]
    scored = truth != UNLABELED
    if not scored.any():
        raise LabelingError("quality: no labeled eval rows to score the probe on")
    x_eval = embeddings[eval_rows][scored]
    raw_fit, raw_ok = _fit_and_score(
        embeddings, raw_labels, raw_train, x_eval, truth[scored], n_classes, opts
    )
    clean_fit, clean_ok = _fit_and_score(
        embeddings, clean_labels, clean_train, x_eval, truth[scored], n_classes, opts
    )
    return QualityDelta(
        raw=raw_fit,
        clean=clean_fit,
        paired=paired_difference(raw_ok, clean_ok),
        correct_raw=raw_ok,
        correct_clean=clean_ok,
    )


def _fit_and_score(
    embeddings: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    n_classes: int,
    opts: ProbeOptions,
) -> tuple[FitCompute, np.ndarray]:
    """One timed probe fit on the `train` rows; which eval rows it predicts right."""
    y = np.where(train, labels, UNLABELED).astype(np.int64)
    t0, c0 = time.perf_counter(), time.process_time()
    predict = train_probe(embeddings, y, n_classes, options=opts)
    correct = predict(x_eval).argmax(axis=1) == y_eval
    fit = FitCompute(
        n_train=int((y != UNLABELED).sum()),
        accuracy=float(correct.mean()),
        wall_seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        device=opts.spec(n_classes).device,
    )
    return fit, correct


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedDifference:
    """Compare two models' right/wrong outcomes on the same samples (b minus a)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise LabelingError(
            f"paired outcomes must be two equal, non-empty 1-D arrays; got {a.shape}, {b.shape}"
        )
    n = int(a.size)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    low, high = _matched_interval(n, only_a, only_b)
    return PairedDifference(
        n=n,
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        only_a=only_a,
        only_b=only_b,
        ci_low=low,
        ci_high=high,
        p_value=mcnemar_exact(only_a, only_b),
    )


def _matched_interval(n: int, only_a: int, only_b: int) -> tuple[float, float]:
    """95% interval of p_b - p_a for matched pairs (Agresti-Min: +0.5 in each of 4 cells)."""
    n2, da, db = n + 2.0, only_a + 0.5, only_b + 0.5
    diff = (db - da) / n2
    var = ((da + db) - (db - da) ** 2 / n2) / n2**2
    half = Z_95 * math.sqrt(max(var, 0.0))
    return max(-1.0, diff - half), min(1.0, diff + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against a fair coin."""
    k, m = min(only_a, only_b), only_a + only_b
    if m == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2.0 * binom.cdf(k, m, 0.5)))


def pack_bits(flags: np.ndarray) -> str:
    """Booleans as base64 of their packed bits (the length is stored beside them)."""
    return base64.b64encode(np.packbits(np.asarray(flags, dtype=bool)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The inverse of `pack_bits` for `n` booleans."""
    raw = np.frombuffer(base64.b64decode(text.encode()), dtype=np.uint8)
    bits = np.unpackbits(raw)
    if bits.size < n:
        raise LabelingError(f"packed outcomes hold {bits.size} bits, expected {n}")
    return bits[:n].astype(bool)


def table_quality(
    table: Any,
    raw_labels: Sequence[str | None],
    embeddings: Rows,
    train_splits: Sequence[str],
    eval_splits: Sequence[str],
    options: ProbeOptions | None = None,
) -> dict[str, Any]:
    """The quality delta of a decided sample table (a polars frame with `split`, `label`, `kept`,
    `error`, `sample_id`), as plain data; `{"skipped": why}` when it cannot be measured.

    Raw train: readable rows of `train_splits` with `raw_labels` (the labels the run was given);
    cleaned train: the kept ones with the table's labels (a relabel policy's labels); eval: the
    readable rows of `eval_splits` with `raw_labels`, kept or not (untouched by the cleaning).
    """
    split = np.asarray(table["split"].to_list(), dtype=object)
    readable = table["error"].is_null().to_numpy()
    kept = table["kept"].to_numpy().astype(bool)
    raw = list(raw_labels)
    clean = table["label"].to_list()
    raw_train = np.isin(split, list(train_splits)) & readable
    eval_rows = np.isin(split, list(eval_splits)) & readable
    used = raw_train | eval_rows
    trained_clean = raw_train & kept
    names = sorted(
        {v for v, u in zip(raw, used, strict=True) if u and v is not None}
        | {v for v, k in zip(clean, trained_clean, strict=True) if k and v is not None}
    )
    if not eval_rows.any() or all(raw[i] is None for i in np.flatnonzero(eval_rows)):
        return {"skipped": f"no labeled, readable samples in the eval splits {list(eval_splits)}"}
    keep = np.flatnonzero(used)
    enc_raw = encode_labels([raw[i] for i in keep], classes=names).idx
    enc_clean = encode_labels([clean[i] for i in keep], classes=names).idx
    args = (enc_raw, enc_clean, raw_train[keep], trained_clean[keep], eval_rows[keep])
    try:
        if isinstance(embeddings, np.ndarray):
            delta = quality_delta(embeddings[keep], *args, len(names), options)
        else:  # kept on a cluster: both fits run in one task there, over the rows they use
            delta = embeddings.apply(keep, quality_delta, *args, len(names), options)
    except LabelingError as exc:
        return {"skipped": str(exc)}
    leaked = leaked_eval_rows(table, raw_train & ~kept)
    return _with_leaks(delta, table, raw, keep[eval_rows[keep]], leaked) | {
        "train_splits": list(train_splits),
        "eval_splits": sorted(set(split[eval_rows].tolist())),
    }


def _with_leaks(
    delta: QualityDelta, table: Any, raw: list[Any], eval_idx: np.ndarray, leaked: np.ndarray
) -> dict[str, Any]:
    """The delta as data, the leak-free figures, and which eval samples were scored."""
    scored_idx = eval_idx[np.array([raw[i] is not None for i in eval_idx], dtype=bool)]
    ids = table["sample_id"].gather(scored_idx).to_list()
    truth = [raw[i] for i in scored_idx]
    return (
        delta.to_dict()
        | leak_free_figures(delta, leaked[scored_idx])
        | {"eval_fingerprint": eval_fingerprint(ids, truth)}
    )


def leaked_eval_rows(table: Any, removed_train: np.ndarray) -> np.ndarray:
    """Per row: is it an eval row that a removed train row leaked into (by `leak_of`, either
    direction)? The raw probe saw a copy of such a row, the cleaned one did not."""
    if "leak_of" not in table.columns:
        return np.zeros(table.height, dtype=bool)
    ids = np.asarray(table["sample_id"].to_list(), dtype=object)
    leak_of = np.asarray(table["leak_of"].to_list(), dtype=object)
    removed_ids = set(ids[removed_train].tolist())
    targets = {t for t in leak_of[removed_train].tolist() if t is not None}
    named = np.array([t in removed_ids for t in leak_of.tolist()], dtype=bool)
    return np.asarray(np.isin(ids, list(targets)) | named, dtype=bool)


def leak_free_figures(delta: QualityDelta, leaked: np.ndarray) -> dict[str, Any]:
    """The comparison on the scored eval rows without a removed train copy (the honest figure),
    with the all-rows figure beside it: leaks there made the raw probe look better than it is."""
    free = ~np.asarray(leaked, dtype=bool)
    if not free.any():  # nothing honest left to score: keep every row and say so
        free = np.ones_like(free)
    k = int((~free).sum())
    out: dict[str, Any] = {
        "all_rows": {
            "paired": delta.paired.to_dict(),
            "note": f"inflated by leaks: {k:,} of these rows had a train copy the cleaning removed",
        },
        "excluded": {
            "rows": k,
            "why": "a train row the cleaning removed (test_leak) was a copy of them, so the raw "
            "probe had seen them",
        },
        "n_scored": int(free.size),
        "leak_free": pack_bits(free),
    }
    out["paired"] = paired_difference(delta.correct_raw[free], delta.correct_clean[free]).to_dict()
    return out


def eval_fingerprint(sample_ids: Sequence[str], labels: Sequence[str]) -> str:
    """Which eval samples (and labels) were scored, in order: paired tests need the same ones."""
    h = hashlib.blake2b(digest_size=16)
    for sid, label in zip(sample_ids, labels, strict=True):
        h.update(f"{sid}\x1f{label}\x1e".encode())
    return h.hexdigest()
