"""Label issues found by cleanlab on out-of-sample probabilities, and the policy that acts on them.

`find_label_issues` scores every labeled row with `cleanlab.rank.get_label_quality_scores` and
flags issues with a filter from `ISSUE_FILTERS` (label -1 = unlabeled rows get no quality and are
never issues). The default, `calibrated_rank`, flags the lowest-quality rows, as many as
`cleanlab.count.num_label_issues(estimation_method="off_diagonal_calibrated")` estimates, the
cut-off cleanlab documents for use with its ranking functions. The other filters are the
`filter_by` methods of `cleanlab.filter.find_label_issues`.

Why that default (5% planted flips, uniform to another class, default probe, single pass):
- scikit-learn digits, raw pixels L2-normalised, 20 seeds: `calibrated_rank` precision 0.90 /
  recall 0.94 (means), both >= 0.8 on 20 of 20 seeds; `prune_by_noise_rate` (cleanlab's
  default) 0.86 / 0.84, 17 of 20; `both` 0.93 / 0.80, 10 of 20. cleanlab's confident joint only
  counts rows another class claims with confidence, and a linear probe is rarely that confident,
  so the filters undercount; the calibrated count does not.
- the bundled demo (16x16 pixel embedder, 66 flips in 1,618 train images, three fold seeds):
  `calibrated_rank` precision 0.86-0.98 / recall 0.83-0.91; `prune_by_noise_rate` 0.77-0.88 /
  0.68-0.71.

`detect_label_issues` runs the probe and cleanlab together; with `refit` it runs them a second time
with the first pass's issues left out of the training folds (every row still gets out-of-fold
probabilities), so mislabeled rows no longer pull the probe toward their wrong labels. With
`calibrated_rank` the refit gained little (digits 0.93 / 0.95; the demo no better) at twice the
probe's cost, so it is off by default.

`apply_noise_policy` turns issues into per-row actions; policies are looked up in `NOISE_POLICIES`:
- `flag`: every issue is kept, reported and queued for human review (the default);
- `drop`: every issue is dropped with drop_reason `label_issue`;
- `relabel`: an issue whose suggested label has probability >= the threshold takes that label
  (kept, action `relabeled`, `relabeled_from` = the old label); the others are flagged.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from labeling.config import LabelingError, NoiseFilter  # the one list of filter names
from labeling.probe import (
    UNLABELED,
    ProbeOptions,
    ProbeResult,
    decode_labels,
    fit_probe,
    validate_pred_probs,
)

logger = logging.getLogger(__name__)

CLEANLAB_FILTERS = tuple(f for f in typing.get_args(NoiseFilter) if f != "calibrated_rank")
SCORE_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
DROP_REASON = "label_issue"
IssueFilter = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LabelIssues:
    """Per-row label quality (NaN when unlabeled), issue flag, and the model's suggested label."""

    label_quality: np.ndarray
    label_issue: np.ndarray
    suggested_label: np.ndarray
    suggested_score: np.ndarray

    @property
    def n_issues(self) -> int:
        """How many rows are flagged."""
        return int(self.label_issue.sum())


@dataclass(frozen=True)
class NoiseDecisions:
    """What the policy does with each row: keep or drop, the label after it, review or not."""

    kept: np.ndarray
    drop_reason: list[str | None]
    label: np.ndarray
    relabeled_from: np.ndarray
    review: np.ndarray
    action: list[str | None]

    def counts(self) -> dict[str, int]:
        """Rows per action (flagged, dropped, relabeled)."""
        names = [a for a in self.action if a is not None]
        return {name: names.count(name) for name in sorted(set(names))}


@dataclass(frozen=True)
class NoiseResult:
    """The probe behind the issues, the issues, and how many the first pass flagged."""

    probe: ProbeResult
    issues: LabelIssues
    first_pass_issues: int


def detect_label_issues(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    refit: bool = False,
    filter_by: str = "calibrated_rank",
    score_method: str = "self_confidence",
    probe: ProbeOptions | None = None,
    classes: Sequence[str] | None = None,
    groups: np.ndarray | None = None,
    sample_ids: Sequence[str] | None = None,
    on_fit: Callable[[], None] | None = None,
) -> NoiseResult:
    """Probe + cleanlab; with `refit`, once more with the first pass's issues out of training.

    `probe`, `classes`, `groups` and `on_fit` are `fit_probe`'s options, class names, fold
    groups and progress callback.
    """

    def fit(mask: np.ndarray | None) -> ProbeResult:
        return fit_probe(
            embeddings,
            labels,
            classes=classes,
            groups=groups,
            train_mask=mask,
            options=probe,
            sample_ids=sample_ids,
            on_fit=on_fit,
        )

    fitted = fit(None)
    issues = find_label_issues(
        labels, fitted.probs, filter_by=filter_by, score_method=score_method, sample_ids=sample_ids
    )
    first = issues.n_issues
    if refit and first:
        fitted = fit(~issues.label_issue)
        issues = find_label_issues(
            labels,
            fitted.probs,
            filter_by=filter_by,
            score_method=score_method,
            sample_ids=sample_ids,
        )
    return NoiseResult(probe=fitted, issues=issues, first_pass_issues=first)


def find_label_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    filter_by: str = "calibrated_rank",
    score_method: str = "self_confidence",
    sample_ids: Sequence[str] | None = None,
) -> LabelIssues:
    """cleanlab label issues and quality scores for labeled rows (-1 = unlabeled: no issue)."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise LabelingError(
            f"labels must be a 1-D integer array of class indices (-1 = unlabeled), got {y.dtype}"
        )
    probs = validate_pred_probs(pred_probs, len(y), np.shape(pred_probs)[-1], sample_ids=sample_ids)
    _check_choice("filter_by", filter_by, list(ISSUE_FILTERS))
    _check_choice("score_method", score_method, SCORE_METHODS)
    bad = (y < UNLABELED) | (y >= probs.shape[1])
    if bad.any():
        row = int(np.argmax(bad))
        who = f"row {row}" if sample_ids is None else f"sample {sample_ids[row]!r} (row {row})"
        raise LabelingError(
            f"label index {int(y[row])} of {who} is outside the classes 0..{probs.shape[1] - 1}"
        )
    labeled = np.flatnonzero(y != UNLABELED)
    if len(np.unique(y[labeled])) < 2:
        raise LabelingError("label issues need labeled samples of at least 2 classes")
    return _compute_issues(y, probs, labeled, filter_by, score_method)


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    """A setting must be one of the allowed names."""
    if value not in allowed:
        raise LabelingError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _compute_issues(
    y: np.ndarray, probs: np.ndarray, labeled: np.ndarray, filter_by: str, score_method: str
) -> LabelIssues:
    """Score and filter the labeled rows, and scatter the results back to every row."""
    from cleanlab.rank import get_label_quality_scores

    quality = np.full(len(y), np.nan)
    issue = np.zeros(len(y), dtype=bool)
    yl, pl_ = y[labeled], probs[labeled]
    quality[labeled] = get_label_quality_scores(yl, pl_, method=score_method)
    issue[labeled] = ISSUE_FILTERS[filter_by](yl, pl_, quality[labeled])
    suggested = probs.argmax(axis=1).astype(np.int64)
    logger.info("label issues: %d of %d labeled rows (%s)", issue.sum(), labeled.size, filter_by)
    return LabelIssues(
        label_quality=quality,
        label_issue=issue,
        suggested_label=suggested,
        suggested_score=probs[np.arange(len(y)), suggested],
    )


def _calibrated_rank(y: np.ndarray, probs: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """The lowest-quality rows, as many as cleanlab's calibrated count of label issues."""
    from cleanlab.count import num_label_issues

    n_issues = int(num_label_issues(y, probs, estimation_method="off_diagonal_calibrated"))
    flagged = np.zeros(len(y), dtype=bool)
    flagged[np.argsort(quality, kind="stable")[:n_issues]] = True
    return flagged


def _cleanlab_filter(filter_by: str) -> IssueFilter:
    """One of `cleanlab.filter.find_label_issues`'s own filters."""

    def run(y: np.ndarray, probs: np.ndarray, quality: np.ndarray) -> np.ndarray:
        from cleanlab.filter import find_label_issues as cleanlab_find

        return np.asarray(cleanlab_find(y, probs, filter_by=filter_by, n_jobs=1), dtype=bool)

    return run


ISSUE_FILTERS: dict[str, IssueFilter] = {
    "calibrated_rank": _calibrated_rank,
    **{name: _cleanlab_filter(name) for name in CLEANLAB_FILTERS},
}


def apply_noise_policy(
    labels: np.ndarray,
    issues: LabelIssues,
    *,
    policy: str = "flag",
    relabel_threshold: float = 0.9,
) -> NoiseDecisions:
    """Per-row decisions for the label issues under `policy` (a key of NOISE_POLICIES)."""
    if policy not in NOISE_POLICIES:
        raise LabelingError(f"policy must be one of {', '.join(NOISE_POLICIES)}; got {policy!r}")
    if not 0.0 < relabel_threshold <= 1.0:
        raise LabelingError(f"relabel_threshold must be in (0, 1], got {relabel_threshold!r}")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != issues.label_issue.shape:
        raise LabelingError(f"labels has {len(y)} rows, the label issues {len(issues.label_issue)}")
    return NOISE_POLICIES[policy](y, issues, relabel_threshold)


def _decisions(
    y: np.ndarray,
    flagged: np.ndarray,
    dropped: np.ndarray,
    moved: np.ndarray,
    new_label: np.ndarray,
) -> NoiseDecisions:
    """Assemble decisions from the three disjoint masks."""
    action = np.full(len(y), None, dtype=object)
    action[flagged], action[dropped], action[moved] = "flagged", "dropped", "relabeled"
    return NoiseDecisions(
        kept=~dropped,
        drop_reason=[DROP_REASON if d else None for d in dropped.tolist()],
        label=np.where(moved, new_label, y),
        relabeled_from=np.where(moved, y, UNLABELED),
        review=flagged,
        action=action.tolist(),
    )


def _flag(y: np.ndarray, issues: LabelIssues, threshold: float) -> NoiseDecisions:
    """Keep every issue and queue it for review."""
    none = np.zeros(len(y), dtype=bool)
    return _decisions(y, issues.label_issue.copy(), none, none, y)


def _drop(y: np.ndarray, issues: LabelIssues, threshold: float) -> NoiseDecisions:
    """Drop every issue with drop_reason label_issue."""
    none = np.zeros(len(y), dtype=bool)
    return _decisions(y, none, issues.label_issue.copy(), none, y)


def _relabel(y: np.ndarray, issues: LabelIssues, threshold: float) -> NoiseDecisions:
    """Take the suggested label when it is confident enough; flag the rest."""
    sure = issues.suggested_score >= threshold
    moved = issues.label_issue & sure & (issues.suggested_label != y)
    flagged = issues.label_issue & ~moved
    none = np.zeros(len(y), dtype=bool)
    return _decisions(y, flagged, none, moved, issues.suggested_label)


NOISE_POLICIES: dict[str, Callable[[np.ndarray, LabelIssues, float], NoiseDecisions]] = {
    "flag": _flag,
    "drop": _drop,
    "relabel": _relabel,
}


def noise_columns(
    issues: LabelIssues, decisions: NoiseDecisions, classes: Sequence[str]
) -> pl.DataFrame:
    """The columns this stage adds to the sample table, aligned with its rows."""
    return pl.DataFrame(
        {
            "label_quality": pl.Series(issues.label_quality, dtype=pl.Float64).fill_nan(None),
            "label_issue": pl.Series(issues.label_issue.tolist(), dtype=pl.Boolean),
            "suggested_label": pl.Series(
                decode_labels(issues.suggested_label, classes), dtype=pl.String
            ),
            "suggested_score": pl.Series(issues.suggested_score.tolist(), dtype=pl.Float64),
            "label_action": pl.Series(decisions.action, dtype=pl.String),
            "relabeled_from": pl.Series(
                decode_labels(decisions.relabeled_from, classes), dtype=pl.String
            ),
            "new_label": pl.Series(decode_labels(decisions.label, classes), dtype=pl.String),
            "needs_review": pl.Series(decisions.review.tolist(), dtype=pl.Boolean),
        }
    )
