"""cleanlab Datalab on the same features leanset used, for the side-by-side rows.

* `near_duplicate` at its default settings (threshold 0.13 of the median nearest-neighbour
  distance, k = 10) on every sample: the flagged pairs are its near-duplicate sets.
* `label` on the train split, twice: with the features only (Datalab then fits its own k-NN on
  them), and with out-of-fold probabilities of a logistic regression on the same features (the
  kind of probe leanset trains; leanset does not store its own probe's probabilities).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OOF_FOLDS = 5
OOF_C = 10.0  # inverse regularisation of the out-of-fold logistic regression


@dataclass
class DatalabRun:
    """What one Datalab check found, how long it took, and the settings it reports."""

    pairs: set[tuple[int, int]] = field(default_factory=set)
    flagged: list[int] = field(default_factory=list)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def near_duplicates(features: np.ndarray, labels: list[str | None]) -> DatalabRun:
    """Datalab `near_duplicate` with its defaults: flagged pairs (row i < row j)."""
    from cleanlab import Datalab

    t0 = time.perf_counter()
    lab = Datalab(data={"label": [x or "" for x in labels]}, label_name="label", verbosity=0)
    lab.find_issues(features=features, issue_types={"near_duplicate": {}})
    issues = lab.get_issues("near_duplicate")
    pairs: set[tuple[int, int]] = set()
    flags = issues["is_near_duplicate_issue"].to_numpy()
    for i, (flag, near) in enumerate(zip(flags, issues["near_duplicate_sets"], strict=True)):
        if flag:
            pairs.update((min(i, int(j)), max(i, int(j))) for j in near)
    info = lab.get_info("near_duplicate")
    settings = {k: _plain(info[k]) for k in ("threshold", "metric", "k") if k in info}
    return DatalabRun(pairs=pairs, seconds=time.perf_counter() - t0, info=settings)


def label_issues(
    features: np.ndarray, labels: list[str], pred_probs: np.ndarray | None = None
) -> DatalabRun:
    """Datalab `label` on these rows: the rows it flags (given `pred_probs`: on those, else k-NN)."""
    from cleanlab import Datalab

    t0 = time.perf_counter()
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    if pred_probs is None:
        lab.find_issues(features=features, issue_types={"label": {}})
    else:
        lab.find_issues(pred_probs=pred_probs, issue_types={"label": {}})
    issues = lab.get_issues("label")
    flagged = np.flatnonzero(issues["is_label_issue"].to_numpy()).tolist()
    return DatalabRun(flagged=flagged, seconds=time.perf_counter() - t0)


def oof_probabilities(
    features: np.ndarray, labels: list[str], seed: int = 0
) -> tuple[np.ndarray, float]:
    """Out-of-fold class probabilities (columns: sorted classes) of a logistic regression, and
    its out-of-fold accuracy. Classes with fewer rows than folds are still predicted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(labels)
    folds = StratifiedKFold(OOF_FOLDS, shuffle=True, random_state=seed)
    model = LogisticRegression(C=OOF_C, max_iter=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny classes: "least populated class" warnings
        probs = cross_val_predict(model, features, y, cv=folds, method="predict_proba")
    classes = np.array(sorted(set(labels)))
    accuracy = float((classes[probs.argmax(axis=1)] == y).mean())
    return probs, accuracy


def _plain(value: Any) -> Any:
    """A numpy scalar as a plain Python value (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value
