"""Human-readable summaries: a markdown artifact for Prefect and a console summary for the CLI."""

from __future__ import annotations

import polars as pl

from leanset.pipelines.report.checks import check_lines
from leanset.pipelines.summary import RunSummary


def markdown_summary(summary: RunSummary, decisions: pl.DataFrame | None, top: int = 10) -> str:
    """The run summary as markdown (counts by reason, cost delta statement, top groups, the
    report's path); an unchanged run gets three lines."""
    c = summary.counts
    head = f"# leanset: {summary.flow}\n\n"
    report = f"Report: `{summary.report}`\n" if summary.report else "No HTML report.\n"
    if summary.unchanged:
        return (
            head + f"Input and config unchanged: version **{summary.version}** of "
            f"`{summary.store}` is current; nothing was written.\n\n" + report
        )
    if summary.dry_run:
        head += (
            f"Dry run: version **{summary.version}** (parent {summary.parent}) was not "
            f"committed; `{summary.store}` is unchanged.\n\n"
        )
    else:
        head += (
            f"New version **{summary.version}** (parent {summary.parent}) in `{summary.store}`.\n\n"
        )
    lines = [head, report, "## Cost delta\n", summary.statement.replace("\n", "  \n") + "\n"]
    lines.append("## Counts\n")
    lines.append("| | samples |\n|---|---:|")
    lines += [f"| {name} | {n:,} |" for name, n in c.rows()] + [""]
    if found := check_lines(summary.checks or {}):
        lines += ["## Checks\n", *[f"- {line}" for line in found], ""]
    if decisions is not None:
        lines.append(_top_groups(decisions, top))
        lines.append(_top_issues(decisions, top))
    lines.append("## Timings (s)\n")
    lines.append(" · ".join(f"{k} {v:.2f}" for k, v in summary.timings.items()) + "\n")
    return "\n".join(lines)


def top_groups(decisions: pl.DataFrame, top: int = 10) -> pl.DataFrame:
    """The largest duplicate groups: anchor, size, splits, labels."""
    groups = decisions.filter(pl.col("dup_group").is_not_null())
    return (
        groups.group_by("dup_group")
        .agg(
            pl.len().alias("size"),
            pl.col("kept").sum().alias("kept"),
            pl.col("split").unique().sort().str.join(",").alias("splits"),
            pl.col("label").drop_nulls().unique().sort().str.join(",").alias("labels"),
            pl.col("drop_reason").drop_nulls().unique().sort().str.join(",").alias("reasons"),
        )
        .sort(["size", "dup_group"], descending=[True, False])
        .head(top)
    )


def top_label_issues(decisions: pl.DataFrame, top: int = 10) -> pl.DataFrame:
    """The flagged labels with the lowest label quality (empty without the label-noise stage)."""
    if "label_issue" not in decisions.columns:
        return pl.DataFrame()
    cols = [
        "sample_id",
        "source",
        "split",
        "label",
        "suggested_label",
        "label_quality",
        "label_action",
    ]
    return (
        decisions.filter(pl.col("label_issue").fill_null(False))
        .sort("label_quality")
        .head(top)
        .select([c for c in cols if c in decisions.columns])
    )


def _top_groups(decisions: pl.DataFrame, top: int) -> str:
    df = top_groups(decisions, top)
    if df.height == 0:
        return "No duplicate groups.\n"
    rows = [
        "## Largest duplicate groups\n",
        "| group (kept anchor) | size | kept | splits | labels | dropped as |",
        "|---|---:|---:|---|---|---|",
    ]
    rows += [
        f"| `{r['dup_group']}` | {r['size']} | {r['kept']} | {r['splits']} | {r['labels']} | {r['reasons']} |"
        for r in df.iter_rows(named=True)
    ]
    return "\n".join(rows) + "\n"


def _top_issues(decisions: pl.DataFrame, top: int) -> str:
    df = top_label_issues(decisions, top)
    if df.height == 0:
        return ""
    rows = [
        "## Likeliest label errors\n",
        "| sample | source | label | suggested | quality | action |",
        "|---|---|---|---|---:|---|",
    ]
    rows += [
        f"| `{r['sample_id']}` | {r['source']} | {r['label']} | {r['suggested_label']} | "
        f"{r['label_quality']:.3g} | {r['label_action']} |"
        for r in df.iter_rows(named=True)
    ]
    return "\n".join(rows) + "\n"
