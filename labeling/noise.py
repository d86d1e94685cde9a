"""Label issues on out-of-sample probabilities, and the policy that acts on them.

What the label-noise stage runs is `judge_labels` (or `judge_given_probs` for the user's own
probabilities): the probe `labeling.probe.select_probe` picks, temperature-calibrated, then
`flag_label_issues` under the flag rule of `LabelNoiseSettings`. Strong evidence (p(given) <= 0.1
while another class has >= 0.6) is always flagged; a cleanlab count filter (below) adds its rows only when the probe
corroborates it (its count <= 1.25 x the strong-evidence count and ECE after temperature <= 0.1),
and at most 20% of the labeled rows are flagged. With a weak probe the count filter mostly
counts the probe's own mistakes: on technical-documentation text (MiniLM, 12 overlapping areas,
5% planted flips) `calibrated_rank` alone flagged 11-24% of the rows at precision 0.23-0.46.

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

`judge_labels` runs the probe and the flag rule together; with `refit` it runs them a second time
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
from typing import Any

import numpy as np
import polars as pl

from leanset.labeling.config import (  # NoiseFilter: the one list of filter names
    LabelingError,
    LabelNoiseSettings,
    NoiseFilter,
)
from leanset.labeling.probe import (
    UNLABELED,
    ProbeSelection,
    SelectOptions,
    apply_temperature,
    decode_labels,
    score_probs,
    select_probe,
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


# ---------------------------------------------------------------- the flag rule


@dataclass(frozen=True)
class Flags:
    """The flagged rows, the rule that picked them and why (in words, for the summary)."""

    issue: np.ndarray
    rule: str  # "count": the count filter ran; "evidence": weak probe, strong evidence only
    reason: str
    n_count: int
    n_evidence: int
    limit: int
    capped: int

    def info(self) -> dict[str, Any]:
        """What the manifest records about the rule."""
        return {
            "flag_rule": self.rule,
            "flag_reason": self.reason,
            "flag_counts": {"count_filter": self.n_count, "strong_evidence": self.n_evidence},
            "flag_cap": self.limit,
            "flag_capped": self.capped,
        }


def strong_evidence(labels: np.ndarray, probs: np.ndarray, rule: LabelNoiseSettings) -> np.ndarray:
    """Rows whose given label is improbable while another class is probable (labeled rows)."""
    rows = np.arange(len(labels))
    p_given = probs[rows, labels]
    other = probs.copy()
    other[rows, labels] = -1.0
    out: np.ndarray = (p_given <= rule.evidence_p_given) & (
        other.max(axis=1) >= rule.evidence_p_other
    )
    return out


def flag_label_issues(
    labels: np.ndarray,
    calibrated: np.ndarray,
    *,
    accuracy: float,
    calibration_error: float,
    rule: LabelNoiseSettings | None = None,
) -> Flags:
    """Label issues among labeled rows (-1 = unlabeled) under `rule` (its flag-rule fields).

    Why the count filter needs corroboration: with a good probe its count and the strong
    evidence agree in size (0.92-1.07 x on digits pixels and photo crops at 5% and 15% flips);
    with a weak one most of its disagreements with the labels are its own errors and the count
    grows far past the evidence (1.6 x on technical-documentation text, 14 x on textile images).
    `accuracy` (out-of-fold, against the noisy labels) only goes into the reason: it mixes probe
    quality with the noise rate, so it decides nothing.
    """
    r = rule or LabelNoiseSettings()
    y = np.asarray(labels, dtype=np.int64)
    labeled = np.flatnonzero(y != UNLABELED)
    yl, p = y[labeled], calibrated[labeled]
    evidence = strong_evidence(yl, p, r)
    quality = p[np.arange(len(yl)), yl]
    count = ISSUE_FILTERS[r.filter_by](yl, p, quality)
    n_ev, n_ct = int(evidence.sum()), int(count.sum())
    agree = n_ct <= r.max_count_ratio * max(n_ev, 1)
    facts = (
        f"{r.filter_by} would flag {n_ct}, strong evidence {n_ev}; out-of-fold accuracy "
        f"{accuracy:.3f}, ECE after temperature {calibration_error:.3f}"
    )
    if agree and calibration_error <= r.max_ece:
        picked, name = count | evidence, "count"
        reason = f"the probe corroborates {r.filter_by}, flagged with the strong evidence ({facts})"
    else:
        picked, name = evidence, "evidence"
        reason = _weak_reason(r, n_ct, n_ev, agree, calibration_error, facts)
    limit = int(np.floor(r.max_flag_fraction * len(yl)))
    picked, capped = _cap(picked, quality, limit)
    if capped:
        reason += (
            f"; capped at {r.max_flag_fraction:.0%} of the {len(yl)} labeled rows "
            f"({capped} more not flagged)"
        )
    issue = np.zeros(len(y), dtype=bool)
    issue[labeled] = picked
    return Flags(issue, name, reason, n_ct, n_ev, limit, capped)


def _weak_reason(
    rule: LabelNoiseSettings, n_count: int, n_evidence: int, agree: bool, ece: float, facts: str
) -> str:
    """Why only strong evidence was flagged, in words."""
    why = []
    if not agree:
        why.append(
            f"{rule.filter_by}'s {n_count} is more than {rule.max_count_ratio:g} x the "
            f"strong evidence's {n_evidence}"
        )
    if ece > rule.max_ece:
        why.append(f"ECE after temperature {ece:.3f} > {rule.max_ece:g}")
    return (
        f"weak probe ({'; '.join(why)}): only strong evidence flagged (p(given) <= "
        f"{rule.evidence_p_given:g} and another class >= {rule.evidence_p_other:g}); {facts}"
    )


def _cap(picked: np.ndarray, p_given: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """At most `limit` rows, the lowest p(given) first; and how many the cap removed."""
    n = int(picked.sum())
    if n <= limit:
        return picked, 0
    order = np.argsort(np.where(picked, p_given, np.inf), kind="stable")
    keep = np.zeros_like(picked)
    keep[order[:limit]] = True
    return keep, n - limit


def issues_from_flags(labels: np.ndarray, calibrated: np.ndarray, flags: Flags) -> LabelIssues:
    """The per-row label-issue columns: quality (self-confidence) on the calibrated
    probabilities, the flags, and the most likely class."""
    y = np.asarray(labels, dtype=np.int64)
    labeled = np.flatnonzero(y != UNLABELED)
    quality = np.full(len(y), np.nan)
    quality[labeled] = calibrated[labeled, y[labeled]]
    suggested = calibrated.argmax(axis=1).astype(np.int64)
    logger.info(
        "label issues: %d of %d labeled rows (%s)", flags.issue.sum(), labeled.size, flags.rule
    )
    return LabelIssues(
        label_quality=quality,
        label_issue=flags.issue,
        suggested_label=suggested,
        suggested_score=calibrated[np.arange(len(y)), suggested],
    )


@dataclass(frozen=True)
class JudgedLabels:
    """The selected probe, its flags and the per-row issues, and the first pass's count."""

    selection: ProbeSelection
    flags: Flags
    issues: LabelIssues
    first_pass_issues: int


def judge_labels(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    keys: Sequence[str] | np.ndarray | None = None,
    groups: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    settings: LabelNoiseSettings | None = None,
    options: SelectOptions | None = None,
    sample_ids: Sequence[str] | None = None,
    on_fit: Callable[[], None] | None = None,
) -> JudgedLabels:
    """The label-noise stage's core: the selected probe on distinct contents, then the flag rule
    on its calibrated probabilities; with `settings.refit`, both once more with the first pass's
    issues left out of training (every row is still judged).

    `settings`: the `label_noise:` section (the probe's candidates and the flag rule; default:
    its defaults); `options`: the probe's options when not those `settings` give (a backend, a
    device). `keys`, `groups`, `classes` and `on_fit` are `select_probe`'s.
    """
    rule = settings or LabelNoiseSettings()
    options = options or SelectOptions.of(rule)

    def run(mask: np.ndarray | None) -> tuple[ProbeSelection, Flags]:
        sel = select_probe(
            embeddings,
            labels,
            keys=keys,
            groups=groups,
            classes=classes,
            train_mask=mask,
            options=options,
            sample_ids=sample_ids,
            on_fit=on_fit,
        )
        flags = flag_label_issues(
            labels, sel.calibrated, accuracy=sel.accuracy, calibration_error=sel.ece, rule=rule
        )
        return sel, flags

    sel, flags = run(None)
    first = int(flags.issue.sum())
    if rule.refit and first:
        sel, flags = run(~flags.issue)
    return JudgedLabels(sel, flags, issues_from_flags(labels, sel.calibrated, flags), first)


def judge_given_probs(
    labels: np.ndarray, probs: np.ndarray, rule: LabelNoiseSettings | None = None
) -> tuple[LabelIssues, Flags, dict[str, Any]]:
    """The flag rule on the user's own out-of-sample probabilities, after one temperature fitted
    on their labeled rows (as for the probe); and their scores for the manifest."""
    y = np.asarray(labels, dtype=np.int64)
    labeled = np.flatnonzero(y != UNLABELED)
    if len(np.unique(y[labeled])) < 2:
        raise LabelingError("label issues need labeled samples of at least 2 classes")
    score = score_probs(probs[labeled], y[labeled])
    calibrated = apply_temperature(probs, score.temperature)
    flags = flag_label_issues(
        y, calibrated, accuracy=score.accuracy, calibration_error=score.ece_calibrated, rule=rule
    )
    info = {"probe": "given pred_probs", "given_probs": score.to_dict()}
    return issues_from_flags(y, calibrated, flags), flags, info
