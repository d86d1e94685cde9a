"""What the `leanset` command prints: one end-of-run summary, the demo's scores, paths and sizes.

A run prints one summary at its end: what the run did (committed, found unchanged, or tried in a
dry run), counts by drop reason and split, label issues, the labeling queue, the cost delta
statement (once) and the report's path. Nothing here prints a Python repr.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leanset.pipelines.report.checks import check_lines
from leanset.pipelines.store.manifest import Counts
from leanset.pipelines.summary import RunSummary

console = Console(soft_wrap=True)  # prose is not cut at 80 columns when piped; tables fit

_POLICY = {
    "flag": "kept and queued for review",
    "drop": "dropped",
    "relabel": "relabeled where the probe is confident, the rest flagged",
}


def print_table(table: Table) -> None:
    """A table whole: on a terminal it fits the window; piped, it is as wide as its cells need
    (a pipe's 80 columns would cut names to `versi…`)."""
    if console.is_terminal:
        console.print(table)
        return
    need = console.measure(table, options=console.options.update_width(10_000)).maximum
    before = console.width
    console.width = max(before, need)  # print(width=...) is capped at the console's own width
    try:
        console.print(table)
    finally:
        console.width = before


def print_summary(s: RunSummary) -> None:
    """The end-of-run summary (also `leanset show`)."""
    say = console.print
    if s.unchanged:
        say(_headline(s), highlight=False)
        load = s.timings.get("load")
        took = f" in {load:,.1f} s" if load is not None else ""
        say(f"loaded {s.counts.input:,} samples{took}; nothing embedded, searched or written")
    else:
        say(_headline(s), highlight=False)
        say(counts_table(s.counts))
        say(_facts(s.counts), highlight=False)
        for line in detail_lines(s):
            say(line, highlight=False)
        if s.statement:  # wrapped here: rich's own wrapping leaves a space at each line's end
            text = "\n".join(
                textwrap.wrap(
                    f"Cost delta: {s.statement}",
                    max(console.width, 40),
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
            say("[bold]Cost delta:[/]" + escape(text[len("Cost delta:") :]), highlight=False)
    if s.report and Path(s.report).is_file():
        say(f"report: {show_path(s.report)}", highlight=False)


def _headline(s: RunSummary) -> str:
    store = show_path(s.store)
    if s.unchanged:
        return (
            f"[bold]{s.flow}[/]: unchanged: input and config match version {s.version} "
            f"of {store}; no new version"
        )
    if s.dry_run:
        return (
            f"[bold]{s.flow}[/]: dry run: version {s.version} would be committed to {store} "
            f"({_parent(s.parent)}); nothing was written"
        )
    return f"[bold]{s.flow}[/]: version {s.version} committed to {store} ({_parent(s.parent)})"


def _parent(parent: int | None) -> str:
    return f"parent version {parent}" if parent else "its first version"


def counts_table(c: Counts) -> Table:
    """Samples by decision (rows) and split (columns, train first)."""
    splits = sorted(c.by_split, key=lambda name: (name != "train", name))
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    t.add_column("samples")
    for name in [*splits, "all"]:
        t.add_column(name, justify="right")

    def per_split(key: str) -> list[str]:
        return [_n(c.by_split[s].get(key)) for s in splits]

    t.add_row("input", *per_split("input"), _n(c.input))
    t.add_row("kept", *per_split("kept"), _n(c.kept))
    for reason, n in c.reasons():
        cells = [_n(c.by_split_reason.get(s, {}).get(reason, 0)) for s in splits]
        if not c.by_split_reason:  # a version written before counts by split and reason
            cells = ["" for _ in splits]
        t.add_row(f"dropped: {reason}", *cells, _n(n))
    return t


def _facts(c: Counts) -> str:
    text = (
        f"{c.dup_groups:,} duplicate groups · {c.leaking_eval_samples:,} eval samples leaking "
        f"from train · {c.label_conflicts:,} samples in label-conflict groups"
    )
    return text + (f"\n{leak_fanout_line(c)}" if c.leak_fanout else "")


def leak_fanout_line(c: Counts) -> str:
    """The eval samples that removed several train rows each: a call a person should check."""
    fan = c.leak_fanout
    shown = ", ".join(f"{sid} ← {n}" for sid, n in list(fan.items())[:5])
    more = f" and {len(fan) - 5} more" if len(fan) > 5 else ""
    return (
        f"leaks that multiply: {len(fan):,} eval samples removed {sum(fan.values()):,} train "
        f"rows between them ({shown}{more}); the report shows each beside its train rows with "
        "the differences marked: if they are not copies, raise dedup.threshold (or leave shingles "
        "out of dedup.confirm)"
    )


def _n(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _verified_line(v: dict[str, Any], run_seconds: float) -> str:
    """The geometric check: pairs verified, confirmed, and its time and share of the run."""
    share = f", {v['seconds'] / run_seconds:.0%} of the run" if run_seconds > 0 else ""
    return (
        f"geometric check: {v['pairs']:,} candidate pairs of {v['images']:,} images verified, "
        f"{v['confirmed']:,} confirmed as copies, {v['seconds']:.1f} s{share}"
    )


def detail_lines(s: RunSummary) -> list[str]:
    """Embedding, label noise, human labels and queue, each when the run had them."""
    lines = []
    emb, lab = s.embed or {}, s.labeling or {}
    if emb:
        rate = emb.get("samples_per_s")
        speed = f", {rate:,.0f} samples/s" if emb.get("computed") and rate else ""
        lines.append(
            f"embedded {emb.get('computed', 0):,} new, {emb.get('cached', 0):,} from cache on "
            f"{emb.get('device', 'cpu')}{speed}; near-duplicate search: "
            f"{s.search.get('method', 'none')}"
        )
    if s.search.get("verified"):
        lines.append(_verified_line(s.search["verified"], sum(s.timings.values())))
    if "label_issues" in lab:
        lines += _label_lines(lab)
    if lab.get("human_labels_total", lab.get("human_labels")):
        total = lab.get("human_labels_total", lab.get("human_labels", 0))
        lines.append(
            f"human labels applied: {lab.get('human_labels', 0):,} new this run "
            f"({total:,} in effect)"
        )
    if "unjudged" in lab:
        lines.append(f"label noise: {lab['unjudged']['line']}")
    if "queue" in lab:
        lines.append(_queue_line(lab["queue"]))
    return lines + check_lines(s.checks or {})


def _issues_line(lab: dict[str, Any]) -> str:
    actions = lab.get("actions") or {}
    done = ", ".join(f"{n:,} {what}" for what, n in actions.items() if n)
    policy = lab.get("policy", "")
    probed = f" of {lab['probed']:,} labeled" if "probed" in lab else ""
    line = f"label issues: {lab['label_issues']:,}{probed}"
    if done:
        line += f" ({done}: {_POLICY.get(policy, policy)})"
    accuracy = lab.get("probe_accuracy")
    if isinstance(accuracy, (int, float)):
        probe = f" {lab['probe']}" if lab.get("probe") else ""
        line += f"; probe{probe} accuracy {accuracy:.1%} (out of fold)"
    return line


_REASONS = {"label_issue": "label issues", "uncertain": "to label", "label_conflict": "conflicts"}


def _queue_line(q: dict[str, Any]) -> str:
    line = f"labeling queue: {q.get('added', 0):,} added"
    parts = [f"{n:,} {_REASONS.get(r, r)}" for r, n in (q.get("by_reason") or {}).items() if n]
    if parts:
        line += f" ({', '.join(parts)})"
    if "waiting" not in q:
        if q.get("skipped_pending"):
            line += f", {q['skipped_pending']:,} proposed again but already waiting"
        return line
    added, again, waiting = q.get("added", 0), q.get("skipped_pending", 0), q["waiting"]
    parts = [f"{added:,} added now"]
    if again:
        parts.append(f"{again:,} proposed again (already waiting)")
    earlier = waiting - added - again
    if earlier > 0:
        parts.append(f"{earlier:,} from earlier runs")
    return line + f"; {waiting:,} waiting for a human in all = {' + '.join(parts)}"


def _label_lines(lab: dict[str, Any]) -> list[str]:
    """Label issues, the probe that judged them, and a warning when the rule held back or capped."""
    lines = [_issues_line(lab)]
    order = lab.get("class_order")
    if isinstance(order, dict):
        names = [str(c) for c in lab.get("pred_probs_classes") or []]
        shown = ", ".join(names[:24]) + (f", ... ({len(names)} in all)" if len(names) > 24 else "")
        lines.append(
            f"pred_probs columns read as classes {escape(shown)} (order from {order['source']}; "
            f"argmax agrees with {order['accuracy']:.1%} of labels, chance {order['chance']:.1%})"
        )
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


def show_path(path: str | Path) -> str:
    """A path as a person types it: relative to the current folder when inside it."""
    p = Path(path)
    try:
        rel = os.path.relpath(p)
    except ValueError:  # another drive (Windows)
        return str(p)
    return rel if not rel.startswith("..") else str(p)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size):,} bytes" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n:,} bytes"
