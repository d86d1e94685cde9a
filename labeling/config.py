"""The labeling stages' settings and their error (flows.yaml's `label_noise:` and
`active_learning:` sections are loaded into these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class LabelingError(ValueError):
    """Bad input to a labeling stage; the message names the sample or key and what was expected."""


# How label issues are picked: leanset's calibrated ranking, or a cleanlab.filter method.
NoiseFilter = Literal[
    "calibrated_rank",
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
]


@dataclass(frozen=True)
class LabelNoiseSettings:
    """Label issues found by cleanlab on a probe's out-of-fold probabilities, and what to do."""

    policy: Literal["flag", "drop", "relabel"] = "flag"
    relabel_threshold: float = 0.9
    filter_by: NoiseFilter = "calibrated_rank"
    refit: bool = False
    pred_probs_column: str | None = None
    n_folds: int = 5
    c: float = 20.0
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class ActiveLearningSettings:
    """Which unlabeled samples go to the labeling queue each run.

    `budget` caps the selected samples waiting for a human (queued or exported, not answered): a
    run adds only what brings the waiting ones up to it. `labeled_pool_split`: the split a pool
    sample moves to once a human labeled it (None: it stays in its pool split)."""

    budget: int = 100
    strategy: Literal["margin", "entropy", "least_confidence", "random"] = "margin"
    diversity: Literal["kmeans", "kcenter", "none"] = "kmeans"
    pool_factor: float = 5.0
    max_similarity: float | None = None
    queue_label_issues: bool = True
    labeled_pool_split: str | None = "train"
    seed: int = 0
