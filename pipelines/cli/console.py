"""What the `leanset` command prints: the run summary and the demo's scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.summary import RunSummary

console = Console()


def print_summary(s: RunSummary) -> None:
    """Readable run summary: version, counts by reason, the cost delta statement."""
    title = (
        f"{s.flow}: unchanged, version {s.version} is current"
        if s.unchanged
        else f"{s.flow}: version {s.version} committed (parent {s.parent})"
    )
    t = Table(title=title, show_header=True, title_justify="left")
    t.add_column("samples")
    t.add_column("count", justify="right")
    for name, n in s.counts.rows():
        t.add_row(name, f"{n:,}")
    console.print(t)
    for line in _detail_lines(s):
        console.print(line, highlight=False)
    console.print(f"[bold]Cost delta:[/] {s.statement}", highlight=False)
    console.print(f"store: {s.store}", highlight=False)
    if s.report and Path(s.report).is_file():
        console.print(f"report: {s.report}", highlight=False)


def _detail_lines(s: RunSummary) -> list[str]:
    """Embedding, label noise, human labels and queue, each when the run had them."""
    lines = []
    emb, lab = s.embed or {}, s.labeling or {}
    if emb:
        lines.append(
            f"embedded {emb.get('computed', 0):,} new, {emb.get('cached', 0):,} from cache on "
            f"{emb.get('device')}; near-duplicate search: {s.search.get('method', 'none')}"
        )
    if "label_issues" in lab:
        lines += _label_lines(lab)
    if lab.get("human_labels"):
        lines.append(f"human labels applied: {lab['human_labels']:,}")
    if "queue" in lab:
        q = lab["queue"]
        waiting = q.get("skipped_pending")
        lines.append(
            f"labeling queue: {q.get('added', 0):,} added"
            + (f", {waiting:,} already waiting" if waiting else "")
        )
    return lines


def _label_lines(lab: dict[str, Any]) -> list[str]:
    """Label issues, the probe that judged them, and a warning when the rule held back or capped."""
    probed = f" of {lab['probed']:,} labeled" if "probed" in lab else ""
    lines = [
        f"label issues: {lab['label_issues']:,}{probed} (policy {lab.get('policy')}: "
        f"{lab.get('actions') or 'none'}); probe {lab.get('probe', 'n/a')}, out-of-fold "
        f"accuracy {lab.get('probe_accuracy', 'n/a')}"
    ]
    if lab.get("flag_rule") == "evidence" or lab.get("flag_capped"):
        lines.append(f"[yellow]label issues: {escape(str(lab.get('flag_reason')))}[/]")
    return lines


def print_scores(scores: dict[str, dict[str, Any]]) -> None:
    """The demo's planted items against what the run found."""
    t = Table(title="Planted items found (demo truth)", title_justify="left")
    for col in ("what", "planted", "found", "precision", "recall"):
        t.add_column(col, justify="right" if col != "what" else "left")
    for name, sc in scores.items():
        t.add_row(
            name,
            str(sc["truth"]),
            str(sc["found"]),
            f"{sc['precision']:.3f}",
            f"{sc['recall']:.3f}",
        )
    console.print(t)
