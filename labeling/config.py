"""The labeling stages' settings and their error (flows.yaml's `label_noise:` and
`active_learning:` sections are loaded into these)."""

from __future__ import annotations

from dataclasses import dataclass, field
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


def check_rule_values(*, max_count_ratio: float, **shares: float) -> None:
    """The flag rule's thresholds: shares in [0, 1], the count ratio at least 1."""
    for key, value in shares.items():
        if not 0.0 <= value <= 1.0:
            raise LabelingError(f"label_noise.{key} must be in [0, 1], got {value!r}")
    if not max_count_ratio >= 1.0:
        raise LabelingError(f"label_noise.max_count_ratio must be >= 1, got {max_count_ratio!r}")


@dataclass(frozen=True)
class LabelNoiseSettings:
    """Label issues on a probe's out-of-fold probabilities, and what to do with them.

    The probe is the best of a few candidates (`c`: logistic regression at these inverse L2
    strengths; `k`: cosine kNN with these many neighbours; and the mean of the best of each) by
    out-of-fold log loss after one fitted temperature. The flag rule (see `labeling.noise.FlagRule`):
    strong evidence (p(given) <= `evidence_p_given` and another class >= `evidence_p_other`) is
    always flagged; `filter_by` adds its rows only when the probe corroborates its count (at most
    `max_count_ratio` x the strong-evidence count, and ECE after temperature at most `max_ece`).
    At most `max_flag_fraction` of the labeled rows are ever flagged. `classes`: the class of
    each column of `pred_probs_column` (default: the source's ClassLabel order, else the label
    names sorted as text); see `labeling.classorder`.
    """

    policy: Literal["flag", "drop", "relabel"] = "flag"
    relabel_threshold: float = 0.9
    filter_by: NoiseFilter = "calibrated_rank"
    refit: bool = False
    pred_probs_column: str | None = None
    classes: list[str] | None = None  # the class of each pred_probs column, in column order
    n_folds: int = 5
    c: float | list[float] = field(default_factory=lambda: [1.0, 10.0])
    k: list[int] = field(default_factory=lambda: [10, 30])
    evidence_p_given: float = 0.1
    evidence_p_other: float = 0.6
    max_count_ratio: float = 1.25
    max_ece: float = 0.1
    max_flag_fraction: float = 0.2
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_rule_values(
            evidence_p_given=self.evidence_p_given,
            evidence_p_other=self.evidence_p_other,
            max_ece=self.max_ece,
            max_flag_fraction=self.max_flag_fraction,
            max_count_ratio=self.max_count_ratio,
        )
        for c in self.c_values:
            if not c > 0:
                raise LabelingError(f"label_noise.c: every value must be > 0, got {c!r}")
        for k in self.k:
            if k < 1:
                raise LabelingError(f"label_noise.k: every value must be >= 1, got {k!r}")
        if not self.c_values and not self.k:
            raise LabelingError("label_noise: c and k are both empty; the probe needs a candidate")

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

    budget: int = 100
    strategy: Literal["margin", "entropy", "least_confidence", "random"] = "margin"
    diversity: Literal["kmeans", "kcenter", "none"] = "kmeans"
    pool_factor: float = 5.0
    max_similarity: float | None = None
    queue_label_issues: bool = True
    labeled_pool_split: str | None = "train"
    seed: int = 0
