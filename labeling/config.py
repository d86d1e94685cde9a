"""The labeling stages' settings and their error (flows.yaml's `label_noise:` and
`active_learning:` sections are loaded into these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from leanset.dedup.bounds import bounded, fraction, problems, runtime


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
    """Label issues on a probe's out-of-fold probabilities, and what to do with them.

    The probe is the best of a few candidates (`c`: logistic regression at these inverse L2
    strengths; `k`: cosine kNN with these many neighbours; and the mean of the best of each) by
    out-of-fold log loss after one fitted temperature. The flag rule (`labeling.noise.flag_label_issues`):
    strong evidence (p(given) <= `evidence_p_given` and another class >= `evidence_p_other`) is
    always flagged; `filter_by` adds its rows only when the probe corroborates its count (at most
    `max_count_ratio` x the strong-evidence count, and ECE after temperature at most `max_ece`).
    At most `max_flag_fraction` of the labeled rows are ever flagged. `classes`: the class of
    each column of `pred_probs_column` (default: the source's ClassLabel order, else the label
    names sorted as text); see `labeling.classorder`.
    """

    policy: Literal["flag", "drop", "relabel"] = "flag"
    relabel_threshold: float = fraction(0.9, open_low=True)
    filter_by: NoiseFilter = "calibrated_rank"
    refit: bool = False
    pred_probs_column: str | None = None
    classes: list[str] | None = bounded(None, min_items=1)  # of each pred_probs column, in order
    n_folds: int = bounded(5, low=2)
    c: float | list[float] = bounded(factory=lambda: [1.0, 10.0], low=0, low_open=True, min_items=1)
    k: list[int] = bounded(factory=lambda: [10, 30], low=1)
    evidence_p_given: float = fraction(0.1)
    evidence_p_other: float = fraction(0.6)
    max_count_ratio: float = bounded(1.25, low=1)
    max_ece: float = fraction(0.1)
    max_flag_fraction: float = fraction(0.2)
    device: str = runtime("auto")
    seed: int = bounded(0, low=0)

    def __post_init__(self) -> None:
        for key, problem in problems(self):
            raise LabelingError(f"label_noise.{key}: {problem}")

    @property
    def c_values(self) -> tuple[float, ...]:
        """The logistic-regression candidates (one number is one candidate)."""
        return (float(self.c),) if isinstance(self.c, (int, float)) else tuple(self.c)


@dataclass(frozen=True)
class ActiveLearningSettings:
    """Which unlabeled samples go to the labeling queue each run.

    `budget` caps the selected samples waiting for a human (queued or exported, not answered): a
    run adds only what brings the waiting ones up to it. `labeled_pool_split`: the split a pool
    sample moves to once a human labeled it (None: it stays in its pool split)."""

    budget: int = bounded(100, low=1)
    strategy: Literal["margin", "entropy", "least_confidence", "random"] = "margin"
    diversity: Literal["kmeans", "kcenter", "none"] = "kmeans"
    pool_factor: float = bounded(5.0, low=1)
    max_similarity: float | None = fraction(None, open_low=True, also="null")
    queue_label_issues: bool = True
    labeled_pool_split: str | None = "train"
    seed: int = bounded(0, low=0)
