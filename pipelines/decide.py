"""One place that turns stage columns into `kept` and `drop_reason`."""

from __future__ import annotations

import polars as pl

# Stage columns that may hold a drop reason, in priority order (the first non-null wins).
# A new stage that can drop samples adds its column here.
DROP_COLUMNS = ["dedup_drop", "contamination_drop", "noise_drop", "image_drop", "outlier_drop"]


def decide(table: pl.DataFrame) -> pl.DataFrame:
    """Add `kept` and `drop_reason` (unreadable first, then each stage's reason in order)."""
    reasons: list[pl.Expr] = [pl.when(pl.col("error").is_not_null()).then(pl.lit("unreadable"))]
    reasons += [pl.col(c) for c in DROP_COLUMNS if c in table.columns]
    drop_reason = pl.coalesce(reasons).cast(pl.Utf8).alias("drop_reason")
    out = table.with_columns(drop_reason)
    return out.with_columns(pl.col("drop_reason").is_null().alias("kept"))


def counts_by_reason(decisions: pl.DataFrame) -> dict[str, int]:
    """{drop_reason: count} over dropped rows, most frequent first."""
    dropped = decisions.filter(~pl.col("kept"))
    counts = (
        dropped.group_by("drop_reason").len().sort(["len", "drop_reason"], descending=[True, False])
    )
    return dict(zip(counts["drop_reason"].to_list(), counts["len"].to_list(), strict=True))
