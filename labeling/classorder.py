"""Which class each column of the user's `pred_probs` stands for, and a check that it fits.

The order comes from `label_noise.classes` when set, else from the source's `ClassLabel` feature,
else from the label names sorted as text. A wrong order is a silent disaster (every row looks
mislabeled, or none does), so before any label issue is judged the order is checked against the
labels: the argmax of the probabilities must agree with the labels clearly more often than chance
(a one-sided binomial test against the agreement of independent labels and predictions), and no
other assignment of columns to classes may agree clearly better (the best one is found by matching
columns to classes on the confusion counts; "clearly": 2 points more of the rows, and an exact
McNemar test on the rows where only one order is right). A model trained on these labels in this
order puts most rows of a class in its own column, so only a wrong order loses to another one. Either failure stops the run and names the order it
used, the order that fits (when one does) and how to set it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanset.labeling.config import LabelingError

ALPHA = 1e-3  # the evidence a check needs before it calls agreement "above chance" or "better"
CHANCE_MARGIN = 0.1  # agreement this far above chance is never "about chance", whatever the rows
MIN_GAIN = 0.02  # another order must agree on this many more rows (as a share) to be "better"
HOW_TO_SET = (
    "set label_noise.classes in flows.yaml (or classes= in leanset.clean) to the class of each "
    "probability column, in column order"
)


class ClassOrderError(LabelingError):
    """The probability columns do not fit the class order used; the message names both."""


@dataclass(frozen=True)
class ClassOrder:
    """The class of each probability column and where that order came from."""

    classes: tuple[str, ...]
    source: str  # "label_noise.classes", "ClassLabel" or "sorted label names"


@dataclass(frozen=True)
class OrderCheck:
    """How well the probabilities agree with the labels in the order used and in the best one."""

    rows: int
    accuracy: float
    chance: float
    p_value: float
    best_accuracy: float
    best: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return {
            "rows": self.rows,
            "accuracy": round(self.accuracy, 4),
            "chance": round(self.chance, 4),
            "p_value": float(f"{self.p_value:.3g}"),
            "best_accuracy": round(self.best_accuracy, 4),
        }


def natural_key(name: str) -> list[Any]:
    """Sort key that reads digit runs as numbers (c2 before c10)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def resolve_class_order(
    labels: Sequence[str | None],
    configured: Sequence[str] | None = None,
    class_label: Sequence[str] | None = None,
) -> ClassOrder:
    """The class order of the probability columns: configured, else ClassLabel, else sorted."""
    seen = sorted({v for v in labels if v is not None})
    if configured:
        order = ClassOrder(tuple(str(c) for c in configured), "label_noise.classes")
    elif class_label:
        order = ClassOrder(tuple(str(c) for c in class_label), "ClassLabel")
    else:
        return ClassOrder(tuple(seen), "sorted label names")
    if len(set(order.classes)) != len(order.classes):
        raise ClassOrderError(f"{order.source}: names a class twice: {list(order.classes)}")
    missing = [c for c in seen if c not in set(order.classes)]
    if missing:
        raise ClassOrderError(
            f"{order.source}: label {missing[0]!r} is not one of its classes "
            f"({_preview(order.classes)}); it must name every label of the data"
        )
    return order


def check_class_order(y: np.ndarray, probs: np.ndarray, order: ClassOrder) -> OrderCheck:
    """Refuse probabilities that agree with the labels only by chance in this order, or far
    better in another; `y` indexes `order.classes` (-1 = unlabeled)."""
    check = measure_order(y, probs, order.classes)
    if _far_better(y, probs, check, order):
        raise ClassOrderError(_better_message(check, order))
    if check.accuracy - check.chance < CHANCE_MARGIN and check.p_value > ALPHA:
        raise ClassOrderError(_chance_message(check, order))
    return check


def measure_order(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> OrderCheck:
    """Agreement of argmax and label in this order, chance agreement, and the best order."""
    from scipy.optimize import linear_sum_assignment
    from scipy.stats import binomtest

    labeled = np.flatnonzero(y >= 0)
    truth, pred = y[labeled], probs[labeled].argmax(axis=1)
    k = len(classes)
    n = max(len(labeled), 1)
    counts = np.zeros((k, k), dtype=np.int64)  # [label, column]
    np.add.at(counts, (truth, pred), 1)
    correct = int(np.trace(counts))
    chance = float((counts.sum(axis=1) / n) @ (counts.sum(axis=0) / n))
    p_value = binomtest(correct, n, min(chance, 1.0), alternative="greater").pvalue
    label_of, column = linear_sum_assignment(-counts)
    best = [""] * k
    for cls, col in zip(label_of, column, strict=True):
        best[col] = classes[cls]
    best_correct = int(counts[label_of, column].sum())
    return OrderCheck(
        len(labeled), correct / n, chance, float(p_value), best_correct / n, tuple(best)
    )


def _far_better(y: np.ndarray, probs: np.ndarray, check: OrderCheck, order: ClassOrder) -> bool:
    """The best order agrees on more rows, not by luck (exact McNemar test on the rows where
    exactly one of the two orders is right), and clearly above chance (on noise, the matching
    always finds some order a little better than the one used)."""
    from scipy.stats import binomtest

    gain, over_chance = check.best_accuracy - check.accuracy, check.best_accuracy - check.chance
    if gain < MIN_GAIN or over_chance < CHANCE_MARGIN:
        return False
    labeled = np.flatnonzero(y >= 0)
    truth, pred = y[labeled], probs[labeled].argmax(axis=1)
    label_of_column = np.array([order.classes.index(c) for c in check.best])
    used_right, best_right = pred == truth, label_of_column[pred] == truth
    wins, losses = int((best_right & ~used_right).sum()), int((used_right & ~best_right).sum())
    return bool(binomtest(wins, max(wins + losses, 1), 0.5, alternative="greater").pvalue < ALPHA)


def _chance_message(check: OrderCheck, order: ClassOrder) -> str:
    return (
        f"label_noise: the given pred_probs agree with the labels on {check.accuracy:.1%} of "
        f"{check.rows:,} labeled rows, about what chance gives ({check.chance:.1%}), in the "
        f"class order used ({order.source}: {_preview(order.classes)}); {HOW_TO_SET}. If that "
        f"order is right, these probabilities say nothing about the labels"
    )


def _better_message(check: OrderCheck, order: ClassOrder) -> str:
    natural = tuple(sorted(order.classes, key=natural_key))
    which = (
        "the labels sorted naturally"
        if check.best == natural
        else "the order that fits the labels best"
    )
    return (
        f"label_noise: the given pred_probs agree with the labels on {check.accuracy:.1%} of "
        f"{check.rows:,} labeled rows in the class order used ({order.source}: "
        f"{_preview(order.classes)}), but on {check.best_accuracy:.1%} in the order "
        f"{_preview(check.best)} ({which}); {HOW_TO_SET}"
    )


def _preview(items: Sequence[str], limit: int = 24) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
