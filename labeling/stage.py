"""The labeling stages of a run: human answers in, label noise out, a labeling queue to fill.

Each function takes the sample table (and the embedding matrix) and returns a new table with more
columns; `pipelines/flows.py` wraps them in Prefect tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.matrix import Rows
from leanset.labeling.classorder import ClassOrder, check_class_order, resolve_class_order
from leanset.labeling.config import ActiveLearningSettings, LabelingError, LabelNoiseSettings
from leanset.labeling.noise import (
    Flags,
    LabelIssues,
    apply_noise_policy,
    judge_given_probs,
    judge_labels,
    noise_columns,
)
from leanset.labeling.probe import (
    EncodedLabels,
    encode_labels,
    stack_pred_probs,
    validate_pred_probs,
)
from leanset.labeling.select import select_batch

log = logging.getLogger("leanset.labeling")


# ---------------------------------------------------------------- human answers


@dataclass(frozen=True)
class AnswerPolicy:
    """How imported answers change the table: pool splits, where an answered pool sample moves
    (None: it stays), and the import time up to which the parent version applied answers."""

    pool_splits: tuple[str, ...] = ("unlabeled",)
    move_to: str | None = "train"
    applied_through: Any = None  # a datetime, or None when the parent applied none


def apply_answers(
    table: pl.DataFrame, answers: pl.DataFrame, policy: AnswerPolicy | None = None
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Imported human labels replace the source label; each change names its annotation, and a
    labeled pool sample moves to `policy.move_to` (`split_before_human` keeps where it was)."""
    policy = policy or AnswerPolicy()
    empty = [
        pl.lit(None, dtype=pl.Utf8).alias(c)
        for c in ("label_before_human", "relabel_source", "split_before_human")
    ]
    if answers.height == 0:
        return table.with_columns(empty), {"human_labels": 0, "human_labels_unmatched": 0}
    a = answers.select(
        "sample_id",
        pl.col("label").alias("_human"),
        ("label-studio:" + pl.col("annotation_id").fill_null("?")).alias("relabel_source"),
    )
    out = table.join(a, on="sample_id", how="left", maintain_order="left")
    changed = pl.col("_human").is_not_null() & (pl.col("_human") != pl.col("label")).fill_null(True)
    moved = pl.col("_human").is_not_null() & pl.col("split").is_in(list(policy.pool_splits))
    moved = moved & pl.lit(policy.move_to is not None)
    out = out.with_columns(
        pl.when(changed).then(pl.col("label")).otherwise(None).alias("label_before_human"),
        pl.when(changed).then(pl.col("relabel_source")).otherwise(None).alias("relabel_source"),
        pl.coalesce("_human", "label").alias("label"),
        pl.when(moved).then(pl.col("split")).otherwise(None).alias("split_before_human"),
        pl.when(moved).then(pl.lit(policy.move_to)).otherwise(pl.col("split")).alias("split"),
    ).drop("_human")
    matched = answers.join(table.select("sample_id"), on="sample_id", how="semi")
    unmatched = answers.height - matched.height
    if unmatched:
        log.warning(
            "%d imported answer(s) name samples that are no longer in the dataset", unmatched
        )
    return out, _answer_counts(out, matched, unmatched, policy)


def _answer_counts(
    out: pl.DataFrame, matched: pl.DataFrame, unmatched: int, policy: AnswerPolicy
) -> dict[str, Any]:
    """This run's answers (imported since the parent's commit) apart from the total in effect."""
    fresh = matched
    if policy.applied_through is not None:
        fresh = matched.filter(pl.col("imported_at") > policy.applied_through)
    newest = matched["imported_at"].max()
    return {
        "human_labels": fresh.height,
        "human_labels_total": matched.height,
        "human_relabels_in_effect": int(out["relabel_source"].is_not_null().sum()),
        "human_labels_moved_split": int(out["split_before_human"].is_not_null().sum()),
        "human_labels_unmatched": unmatched,
        "answers_imported_through": None if newest is None else str(newest),
    }


# ---------------------------------------------------------------- label noise


@dataclass
class NoiseOutcome:
    """The table with the noise columns, the probe's probabilities for every row, and counts."""

    table: pl.DataFrame
    probs: np.ndarray | None
    classes: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def label_noise(
    table: pl.DataFrame,
    emb: Rows | None,
    settings: LabelNoiseSettings,
    pred_probs: Any = None,
    on_fit: Callable[[], None] | None = None,
    class_label: Sequence[str] | None = None,
) -> NoiseOutcome:
    """Label issues on out-of-sample probabilities, and the flow's noise policy.

    Every readable labeled row is judged on its own label, whatever dedup decided: the probe
    trains on one row per distinct content (`content_hash`) and keeps duplicate groups in one
    fold, so a dropped copy neither counts its content twice nor escapes the check. The policy
    acts on the rows dedup kept; a dropped row's issue is recorded in `label_issue` only. Given
    `pred_probs` (a column), no probe is trained; the same flag rule runs on them.

    `on_fit` is called after each probe fit (a progress display); `class_label`: the source's
    ClassLabel names, the order of the `pred_probs` columns unless `settings.classes` names it.
    """
    rows, small = _judged_rows(table, settings, given=pred_probs is not None)
    sub = table[rows]
    ids = sub["sample_id"].to_list()
    order = _column_order(table, settings, pred_probs, class_label)
    enc = encode_labels(sub["label"].to_list(), classes=order.classes or None, sample_ids=ids)
    if (enc.idx >= 0).sum() == 0:
        log.info("label noise: no labeled samples; skipped")
        return NoiseOutcome(_empty_noise(table), None, (), {"label_noise": "skipped: no labels"})
    if small and len(set(enc.idx[enc.idx >= 0].tolist())) < 2:
        why = "skipped: fewer than 2 classes with enough samples for the probe's folds"
        info = {"label_noise": why, "unjudged": _unjudged(small, settings)}
        return NoiseOutcome(_empty_noise(table), None, (), info)
    if pred_probs is not None:
        issues, probs, flags, info = _issues_from_given(
            pred_probs, rows, enc, ids, settings, order.source
        )
    else:
        issues, probs, flags, info = _issues_from_probe(emb, rows, sub, enc, ids, settings, on_fit)
    if flags.rule == "evidence" or flags.capped:
        log.warning("label noise: %s", flags.reason)
    kept = sub["dedup_drop"].is_null().to_numpy()
    dec = apply_noise_policy(
        enc.idx,
        replace(issues, label_issue=issues.label_issue & kept),
        policy=settings.policy,
        relabel_threshold=settings.relabel_threshold,
    )
    cols = noise_columns(issues, dec, enc.classes).with_columns(
        pl.Series("noise_drop", dec.drop_reason, dtype=pl.Utf8)
    )
    out = _relabeled(_scatter(table, rows, cols), settings)
    full = np.full((table.height, len(enc.classes)), np.nan)
    full[rows] = probs
    info |= flags.info() | _counts(enc.idx, issues.label_issue, kept)
    info |= {"actions": dec.counts(), "policy": settings.policy}
    if small:
        info["unjudged"] = _unjudged(small, settings)
    out = out.with_columns(_probs_column(full))
    info["pred_probs_classes"] = list(enc.classes)
    return NoiseOutcome(out, full, enc.classes, info)


def _column_order(
    table: pl.DataFrame,
    settings: LabelNoiseSettings,
    pred_probs: Any,
    class_label: Sequence[str] | None,
) -> ClassOrder:
    """The classes of the given probabilities' columns (every class of the whole dataset); no
    classes for the probe, which learns those of the rows it sees."""
    if pred_probs is None:
        return ClassOrder((), "probe")
    return resolve_class_order(table["label"].to_list(), settings.classes, class_label)


def _relabeled(out: pl.DataFrame, settings: LabelNoiseSettings) -> pl.DataFrame:
    """Under the relabel policy, the suggested label replaces a relabeled row's label."""
    if settings.policy != "relabel":
        return out
    return out.with_columns(
        pl.when(pl.col("label_action") == "relabeled")
        .then(pl.col("new_label"))
        .otherwise(pl.col("label"))
        .alias("label")
    )


def _judged_rows(
    table: pl.DataFrame, settings: LabelNoiseSettings, given: bool
) -> tuple[np.ndarray, dict[str, int]]:
    """The readable rows the probe judges, and the classes too small for its folds (left out)."""
    readable = table["error"].is_null().to_numpy()
    small = {} if given else too_small_classes(table, readable, settings.n_folds)
    if small:
        log.warning("label noise: %s", unjudged_line(small, settings.n_folds))
    too_small = table["label"].is_in(list(small)).fill_null(False).to_numpy()  # unlabeled: null
    return np.flatnonzero(readable & ~too_small), small


def too_small_classes(table: pl.DataFrame, readable: np.ndarray, n_folds: int) -> dict[str, int]:
    """Classes with fewer distinct labeled contents than the probe's folds, and their counts:
    out-of-fold probabilities cannot be made for them (a fold would hold none to learn from)."""
    sub = table.filter(pl.Series(readable) & pl.col("label").is_not_null())
    counts = sub.group_by("label").agg(pl.col("content_hash").n_unique().alias("n"))
    small = counts.filter(pl.col("n") < n_folds).sort("label")
    return dict(zip(small["label"].to_list(), small["n"].to_list(), strict=True))


def unjudged_line(small: dict[str, int], n_folds: int) -> str:
    """One line naming the classes left unjudged and why."""
    named = ", ".join(f"{label!r} ({n})" for label, n in small.items())
    return (
        f"classes left unjudged, fewer distinct samples than label_noise.n_folds={n_folds}: "
        f"{named}; label more of them or lower label_noise.n_folds (minimum 2)"
    )


def _unjudged(small: dict[str, int], settings: LabelNoiseSettings) -> dict[str, Any]:
    return {"classes": small, "line": unjudged_line(small, settings.n_folds)}


def _probs_column(full: np.ndarray) -> pl.Series:
    """`pred_probs`: each row's out-of-sample class probabilities (null where none were made)."""
    seen = ~np.isnan(full).any(axis=1)
    values = [row.tolist() if ok else None for row, ok in zip(full, seen, strict=True)]
    return pl.Series("pred_probs", values, dtype=pl.List(pl.Float64))


def _counts(y: np.ndarray, issue: np.ndarray, kept: np.ndarray) -> dict[str, int]:
    """Rows judged and flagged, and how many of each dedup dropped."""
    labeled = y >= 0
    return {
        "probed": int(labeled.sum()),
        "probed_dedup_dropped": int((labeled & ~kept).sum()),
        "label_issues": int(issue.sum()),
        "label_issues_dedup_dropped": int((issue & ~kept).sum()),
    }


def _issues_from_given(
    pred_probs: Any,
    rows: np.ndarray,
    enc: EncodedLabels,
    ids: list[str],
    settings: LabelNoiseSettings,
    source: str,
) -> tuple[LabelIssues, np.ndarray, Flags, dict[str, Any]]:
    """Label issues on the user's own out-of-sample probabilities (a column per class of
    `enc.classes`, an order from `source`), once that order is seen to fit the labels."""
    probs = validate_pred_probs(
        stack_pred_probs([pred_probs[i] for i in rows], sample_ids=ids),
        len(rows),
        len(enc.classes),
        sample_ids=ids,
    )
    fit = check_class_order(enc.idx, probs, ClassOrder(enc.classes, source))
    issues, flags, info = judge_given_probs(enc.idx, probs, settings)
    return issues, probs, flags, info | {"class_order": {"source": source} | fit.to_dict()}


def _issues_from_probe(
    emb: Rows | None,
    rows: np.ndarray,
    sub: pl.DataFrame,
    enc: EncodedLabels,
    ids: list[str],
    settings: LabelNoiseSettings,
    on_fit: Callable[[], None] | None = None,
) -> tuple[LabelIssues, np.ndarray, Flags, dict[str, Any]]:
    """Label issues on the calibrated out-of-fold probabilities of the selected probe."""
    if emb is None:
        raise LabelingError("label_noise: needs an embedder (for the probe) or pred_probs_column")
    args: dict[str, Any] = dict(
        keys=sub["content_hash"].to_numpy(),
        groups=_groups(sub),
        classes=enc.classes,
        settings=settings,
        sample_ids=ids,
    )
    if isinstance(emb, np.ndarray):
        res = judge_labels(emb[rows], enc.idx, **args, on_fit=on_fit)
    else:  # kept on a cluster: the probe's folds run in one task there, over the judged rows
        res = emb.apply(rows, judge_labels, enc.idx, **args)
    info = res.selection.info() | {"first_pass_issues": res.first_pass_issues}
    return res.issues, res.selection.calibrated, res.flags, info


def _groups(sub: pl.DataFrame) -> np.ndarray:
    """Duplicate groups as integers (-1 = in no group), so a group stays in one fold."""
    g = sub["dup_group"]
    codes = g.cast(pl.Categorical).to_physical().cast(pl.Int64).fill_null(-1)
    return codes.to_numpy()


def _scatter(table: pl.DataFrame, rows: np.ndarray, cols: pl.DataFrame) -> pl.DataFrame:
    """Columns computed for `rows` placed into the full table (null elsewhere)."""
    idx = pl.DataFrame({"_i": rows.astype(np.int64)}).hstack(cols)
    base = table.with_row_index("_i").with_columns(pl.col("_i").cast(pl.Int64))
    return base.join(idx, on="_i", how="left", maintain_order="left").drop("_i")


def _empty_noise(table: pl.DataFrame) -> pl.DataFrame:
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "label_quality": pl.Float64,
        "label_issue": pl.Boolean,
        "suggested_label": pl.Utf8,
        "suggested_score": pl.Float64,
        "label_action": pl.Utf8,
        "relabeled_from": pl.Utf8,
        "new_label": pl.Utf8,
        "needs_review": pl.Boolean,
        "noise_drop": pl.Utf8,
        "pred_probs": pl.List(pl.Float64),
    }
    return table.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in schema.items()])


# ---------------------------------------------------------------- both, as the flow runs them


@dataclass
class LabelingOutcome:
    """The table with the label-noise and selection columns, and what each stage found."""

    table: pl.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def label_and_select(
    table: pl.DataFrame,
    emb: Rows | None,
    noise: LabelNoiseSettings | None,
    selection: ActiveLearningSettings | None,
    *,
    pred_probs: Any = None,
    class_label: Sequence[str] | None = None,
    pending: pl.DataFrame | None = None,
    threshold: float = 0.95,
    progress: bool = True,
) -> LabelingOutcome:
    """Label noise (when configured), then the selection of unlabeled samples (when configured).

    `class_label`: the source's ClassLabel names (see `label_noise`);
    `pending`: queue rows still waiting for a human (their samples are not picked again);
    `threshold`: the dedup threshold, the default for how similar two picks may be;
    `progress`: one progress bar for the whole stage (probe fits, then the selection) on a
    terminal."""
    info: dict[str, Any] = {}
    probs = None
    with _StageProgress(noise, selection, enabled=progress) as bar:
        if noise is not None:
            out = label_noise(table, emb, noise, pred_probs, bar.step, class_label)
            table, probs, info = out.table, out.probs, out.info
        if selection is not None and (emb is not None or selection.diversity == "none"):
            waiting = (
                pending
                if pending is not None
                else pl.DataFrame({"sample_id": []}, schema={"sample_id": pl.Utf8})
            )
            table, info["selection"] = select_for_labeling(
                table, emb, probs, selection, waiting, threshold
            )
            bar.step()
    return LabelingOutcome(table, info)


class _StageProgress:
    """One bar for the labeling stage: a step per probe fit and one for the selection."""

    def __init__(
        self,
        noise: LabelNoiseSettings | None,
        selection: ActiveLearningSettings | None,
        enabled: bool,
    ):
        # each candidate probe's out-of-fold fits, then the winner's on all rows (twice with refit)
        fits = (
            (len(noise.c_values) + len(noise.k) + 1) * (2 if noise.refit else 1)
            if noise and not noise.pred_probs_column
            else 0
        )
        self.total = fits + (1 if selection else 0)
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> _StageProgress:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total,
            desc="labeling",
            unit="step",
            leave=False,  # the run ends with its summary, not a finished bar
            disable=not self.enabled or None,
        )
        return self

    def step(self) -> None:
        self.bar.update(1)

    def __exit__(self, *exc: object) -> None:
        if not exc[0]:  # fewer fits than planned (no unlabeled rows, no refit): end full
            self.bar.total = self.bar.n
            self.bar.refresh()
        self.bar.close()


# ---------------------------------------------------------------- selection and the queue


def select_for_labeling(
    table: pl.DataFrame,
    emb: Rows | None,
    probs: np.ndarray | None,
    settings: ActiveLearningSettings,
    pending: pl.DataFrame,
    threshold: float,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Uncertain, diverse unlabeled samples for the queue: adds `al_score`, `queue_rank`.

    Without embeddings (`diversity: none` on a table of probabilities) the picks follow the
    scores alone: there is nothing to measure a near copy by."""
    none = table.with_columns(
        pl.lit(None, dtype=pl.Float64).alias("al_score"),
        pl.lit(None, dtype=pl.Int64).alias("queue_rank"),
    )
    if probs is None:
        return none, {"selected": 0, "note": "no probabilities (no labeled samples)"}
    waiting = table["sample_id"].is_in(pending["sample_id"].implode()).to_numpy()
    unlabeled = (_alive(table) & pl.col("label").is_null()).alias("_c")
    cand = np.flatnonzero(table.select(unlabeled)["_c"].to_numpy() & ~waiting)
    budget = max(settings.budget - waiting_picks(pending), 0)  # a cap on what waits, not a rate
    if cand.size == 0 or budget == 0:
        return none, {"selected": 0, "candidates": int(cand.size), "budget_left": budget}
    groups = _groups(table)
    busy = tuple(int(c) for c in np.unique(groups[waiting]) if c >= 0)  # their group is queued
    x = emb if emb is not None else np.ones((table.height, 1), np.float32)
    sel = select_batch(
        np.nan_to_num(probs, nan=1.0 / max(probs.shape[1], 1)),
        x,
        budget=budget,
        candidate_idx=cand,
        strategy=settings.strategy,
        diversity=settings.diversity,
        pool_factor=settings.pool_factor,
        groups=groups,
        exclude_groups=busy,
        max_similarity=(settings.max_similarity or threshold) if emb is not None else None,
        seed=settings.seed,
    )
    return table.hstack(sel.columns()), {
        "selected": len(sel.indices),
        "candidates": int(cand.size),
        "budget_left": budget,
        "strategy": settings.strategy,
        "diversity": settings.diversity,
    }


def waiting_picks(pending: pl.DataFrame) -> int:
    """Selected (uncertain) samples still waiting for a human: they count against the budget."""
    if "reason" not in pending.columns:
        return pending.height
    return int((pending["reason"].cast(pl.Utf8) == "uncertain").sum())


def _alive(table: pl.DataFrame) -> pl.Expr:
    """Readable and not dropped by any stage so far."""
    alive = pl.col("error").is_null() & pl.col("dedup_drop").is_null()
    return alive & pl.col("noise_drop").is_null() if "noise_drop" in table.columns else alive


def queue_rows(table: pl.DataFrame, settings: ActiveLearningSettings | None) -> pl.DataFrame:
    """Rows for the labeling queue: selected (uncertain), label issues and label conflicts."""
    has = set(table.columns)
    reasons = []
    if "queue_rank" in has:
        reasons.append(pl.when(pl.col("queue_rank").is_not_null()).then(pl.lit("uncertain")))
    if "needs_review" in has and (settings is None or settings.queue_label_issues):
        reasons.append(pl.when(pl.col("needs_review").fill_null(False)).then(pl.lit("label_issue")))
    if settings is None or settings.queue_label_issues:
        reasons.append(
            pl.when(pl.col("label_conflict") & _alive(table)).then(pl.lit("label_conflict"))
        )
    if not reasons:
        return pl.DataFrame()
    cols = ["sample_id", "source", "reason", "label"] + [
        c for c in ("al_score", "queue_rank", "suggested_label", "suggested_score") if c in has
    ]
    rows = (
        table.with_columns(pl.coalesce(reasons).alias("reason"))
        .filter(pl.col("reason").is_not_null())
        .unique("sample_id", keep="first", maintain_order=True)
        .select(cols)
    )
    return _with_twins(_one_per_conflict(rows, table), table)


_CONFLICT = pl.col("reason") == "label_conflict"
_TWIN = pl.Struct({"sample_id": pl.Utf8, "label": pl.Utf8, "source": pl.Utf8, "text": pl.Utf8})


def _one_per_conflict(rows: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """One task per label-conflict group (its kept sample when queued, else the first): the
    others are shown in it as twins, so one answer settles the group."""
    where = table.select("sample_id", "dup_group", "position")
    joined = rows.join(where, on="sample_id", how="left", maintain_order="left")
    chosen = (
        joined.filter(_CONFLICT)
        .sort([pl.col("sample_id") != pl.col("dup_group"), pl.col("position")])
        .unique("dup_group", keep="first")["sample_id"]
    )
    keep = ~_CONFLICT | pl.col("sample_id").is_in(chosen.implode())
    return joined.filter(keep).drop("dup_group", "position")


def _with_twins(rows: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """`twins`: the other samples of each label-conflict row's group (id, label, source; the text
    is filled by `with_texts`), null for other rows."""
    groups = table.filter(pl.col("dup_group").is_not_null()).select(
        "dup_group", "sample_id", "label", "source", "position"
    )
    asked = rows.filter(_CONFLICT).select("sample_id").join(groups, on="sample_id")
    twin = pl.struct(
        pl.col("twin_id").alias("sample_id"),
        pl.col("label"),
        pl.col("source"),
        pl.lit(None, dtype=pl.Utf8).alias("text"),
    )
    twins = (
        asked.select("sample_id", "dup_group")
        .join(groups.rename({"sample_id": "twin_id"}), on="dup_group")
        .filter(pl.col("twin_id") != pl.col("sample_id"))
        .sort("position")
        .group_by("sample_id", maintain_order=True)
        .agg(twin.alias("twins"))
    )
    return rows.join(twins, on="sample_id", how="left", maintain_order="left")


def with_texts(
    rows: pl.DataFrame, table: pl.DataFrame, texts: Callable[[list[int]], list[str]]
) -> pl.DataFrame:
    """Queue rows of a text dataset with `text` filled, theirs and their twins' (`texts`: the
    contents of the table's rows at the given positions)."""
    if "twins" not in rows.columns:
        rows = rows.with_columns(pl.lit(None).alias("twins"))
    twin_ids = [t["sample_id"] for ts in rows["twins"].to_list() if ts for t in ts]
    ids = rows["sample_id"].to_list() + twin_ids
    where = table.select("sample_id", "position").filter(pl.col("sample_id").is_in(ids))
    text = dict(zip(where["sample_id"], texts(where["position"].to_list()), strict=True))
    twins = [
        [t | {"text": text.get(t["sample_id"])} for t in ts] if ts else None
        for ts in rows["twins"].to_list()
    ]
    return rows.with_columns(
        pl.col("sample_id").replace_strict(text, default=None, return_dtype=pl.Utf8).alias("text"),
        pl.Series("twins", twins, dtype=pl.List(_TWIN)),
    )
