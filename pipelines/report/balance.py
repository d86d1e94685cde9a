"""Class balance: what the cleaning removed from each class of the training splits, and the
classes that lost a disproportionate share (a cleaning that quietly erases a class is a bug in
the data or in the thresholds, and the person should hear of it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import polars as pl

from leanset.pipelines.store.manifest import JSON

MIN_RATIO = 1.5  # a warned class lost at least this many times the overall share ...
MAX_P = 0.001  # ... and the binomial chance of losing that many at the overall rate is below this


@dataclass(frozen=True)
class ClassLoss:
    """One class of the training splits: samples before and after, and what removed them."""

    label: str
    input: int
    kept: int
    removed_by: dict[str, int]
    removed_share: float
    p_value: float
    warn: bool


def class_balance(decisions: pl.DataFrame, eval_splits: Sequence[str]) -> list[ClassLoss]:
    """Per class of the labeled training rows, largest first; `warn` where the class lost a
    disproportionate share (MIN_RATIO x the overall share, binomial p < MAX_P / classes)."""
    from scipy.stats import binom

    rows = decisions.filter(
        ~pl.col("split").is_in(list(eval_splits)) & pl.col("label").is_not_null()
    )
    if rows.height == 0:
        return []
    overall = 1.0 - float(rows["kept"].sum()) / rows.height
    per = rows.group_by("label").agg(pl.len().alias("n"), pl.col("kept").sum().alias("kept"))
    reasons = _reasons_by_class(rows)
    out = []
    for r in per.sort(["n", "label"], descending=[True, False]).iter_rows(named=True):
        removed = r["n"] - int(r["kept"])
        share = removed / r["n"]
        p = float(binom.sf(removed - 1, r["n"], overall)) if removed else 1.0
        warn = removed > 0 and share >= MIN_RATIO * overall and p < MAX_P / per.height
        loss = ClassLoss(
            r["label"], r["n"], int(r["kept"]), reasons.get(r["label"], {}), share, p, warn
        )
        out.append(loss)
    return out


def _reasons_by_class(rows: pl.DataFrame) -> dict[str, dict[str, int]]:
    """{label: {drop_reason: count}} over the dropped rows."""
    counts = rows.filter(~pl.col("kept")).group_by("label", "drop_reason").len()
    out: dict[str, dict[str, int]] = {}
    for r in counts.sort("label", "drop_reason").iter_rows(named=True):
        out.setdefault(r["label"], {})[r["drop_reason"]] = int(r["len"])
    return out


def warnings(losses: Sequence[ClassLoss]) -> list[str]:
    """One sentence per class that lost a disproportionate share."""
    total_in = sum(c.input for c in losses)
    total_out = sum(c.input - c.kept for c in losses)
    overall = total_out / total_in if total_in else 0.0
    return [
        f"class {c.label!r} lost {c.input - c.kept:,} of its {c.input:,} training samples "
        f"({c.removed_share:.0%}, against {overall:.0%} overall; p = {c.p_value:.1e}): "
        + ", ".join(f"{n:,} {why}" for why, n in sorted(c.removed_by.items()))
        for c in losses
        if c.warn
    ]


def balance_info(decisions: pl.DataFrame, eval_splits: Sequence[str]) -> JSON:
    """The manifest's `balance`: per class before/after and by reason, and the warnings."""
    losses = class_balance(decisions, eval_splits)
    if not losses:
        return {}
    classes = {c.label: {k: v for k, v in asdict(c).items() if k != "label"} for c in losses}
    for c in classes.values():
        c["removed_share"] = round(c["removed_share"], 4)
        c["p_value"] = float(f"{c['p_value']:.3g}")
    sizes = [c.input for c in losses]
    kept = [c.kept for c in losses]
    return {
        "balance": {
            "classes": classes,
            "warnings": warnings(losses),
            "imbalance_before": round(max(sizes) / max(min(sizes), 1), 2),
            "imbalance_after": round(max(kept) / max(min(kept), 1), 2),
        }
    }
