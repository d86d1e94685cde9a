"""The safety guard: a run that would drop an implausible share of a split stops before it commits.

Near-duplicate decisions rest on a threshold; on data where distinct samples sit close together a
wrong threshold drops most of a split. Whatever dedup would drop (exact and near duplicates,
leaks) is counted per split; more than `max_drop_fraction` of a split, or one group holding more
than `max_group_fraction` of it, is refused with one message that names the split, the numbers,
the largest group and what to try. Splits smaller than `guard_min_rows` are not judged (a share
of a handful of samples says nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from leanset.dedup.config import DedupError, DedupSettings


class DedupGuardError(DedupError):
    """Dedup would drop more of a split than the guard allows; nothing was committed."""


@dataclass(frozen=True)
class SplitDrops:
    """What dedup would do to one split."""

    split: str
    samples: int
    dropped: int
    by_reason: dict[str, int]
    largest_group: str | None
    largest_group_size: int

    @property
    def fraction(self) -> float:
        return self.dropped / max(self.samples, 1)

    @property
    def group_fraction(self) -> float:
        return self.largest_group_size / max(self.samples, 1)


def split_drops(table: pl.DataFrame) -> list[SplitDrops]:
    """Per split: samples, dedup drops by reason, the largest group (members in this split)."""
    out = []
    for split, part in sorted(table.group_by("split"), key=lambda kv: str(kv[0][0])):
        dropped = part.filter(pl.col("dedup_drop").is_not_null())
        reasons = dropped.group_by("dedup_drop").len().sort("len", descending=True)
        groups = part.filter(pl.col("dup_group").is_not_null()).group_by("dup_group").len()
        top = groups.sort(["len", "dup_group"], descending=[True, False]).head(1)
        out.append(
            SplitDrops(
                split=str(split[0]),
                samples=part.height,
                dropped=dropped.height,
                by_reason=dict(zip(reasons["dedup_drop"], reasons["len"], strict=True)),
                largest_group=top["dup_group"][0] if top.height else None,
                largest_group_size=int(top["len"][0]) if top.height else 0,
            )
        )
    return out


def check_drops(table: pl.DataFrame, settings: DedupSettings) -> list[SplitDrops]:
    """Raise DedupGuardError when a split would lose more than the guard allows; else the drops."""
    drops = split_drops(table)
    for d in drops:
        if d.samples < settings.guard_min_rows:
            continue
        too_many = (
            settings.max_drop_fraction is not None and d.fraction > settings.max_drop_fraction
        )
        too_big = (
            settings.max_group_fraction is not None
            and d.group_fraction > settings.max_group_fraction
        )
        if too_many or too_big:
            raise DedupGuardError(_message(d, settings, too_many))
    return drops


def _message(d: SplitDrops, s: DedupSettings, too_many: bool) -> str:
    reasons = ", ".join(f"{n:,} {r}" for r, n in d.by_reason.items())
    limit = (
        f"more than dedup.max_drop_fraction {s.max_drop_fraction}"
        if too_many
        else f"its largest group is more than dedup.max_group_fraction {s.max_group_fraction}"
    )
    return (
        f"split {d.split!r}: this run would drop {d.fraction:.0%} of its {d.samples:,} samples "
        f"({reasons or 'none'}), {limit}; its largest group holds {d.largest_group_size:,} "
        f"samples ({d.group_fraction:.0%} of the split) around sample {d.largest_group}. "
        f"Nothing was committed. Look at the near pairs in the report of a dry run "
        f"(closest calls, similarity histogram); raise dedup.threshold (now {s.threshold}) or "
        f"use threshold: auto; confirm pairs with a second signal (dedup.confirm). If these "
        f"drops are right, raise dedup.max_drop_fraction / dedup.max_group_fraction or rerun "
        f"with --force."
    )
