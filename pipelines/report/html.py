"""A static HTML page per version: counts, the cost delta, and the samples behind the decisions.

Duplicate groups, leaks and label issues are shown with the samples themselves (image thumbnails
embedded in the page, or the text), so a person can judge the decisions at a glance.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.sources import LoadedDataset
from pipelines.store.manifest import Counts
from pipelines.summary import RunSummary

log = logging.getLogger("leanset.report")

THUMB_PX = 96
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2rem}
table.counts td{padding:2px 12px}table.counts td:last-child{text-align:right}
.statement{background:#f3f7ee;border-left:4px solid #6a4;padding:.6rem 1rem;white-space:pre-line}
.group{display:inline-flex;vertical-align:top;gap:8px;margin:.3rem;padding:.5rem;border:1px solid #ddd}
.card{width:132px;font-size:11px;text-align:center;word-break:break-all}
.card img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}
.card .text{height:96px;overflow:hidden;text-align:left;background:#f6f6f6;padding:2px}
.kept{border:3px solid #4a4}.dropped{border:3px solid #c44;opacity:.85}
.reason{color:#c44}.ok{color:#4a4}
"""


def write_html_report(
    path: str | Path,
    summary: RunSummary,
    decisions: pl.DataFrame,
    data: LoadedDataset,
    top: int = 12,
) -> Path:
    """Write the version's report page and return its path."""
    from pipelines.fsutil import atomic_write_bytes

    page = render(summary, decisions, data, top)
    return atomic_write_bytes(path, page.encode("utf-8"))


def render(summary: RunSummary, decisions: pl.DataFrame, data: LoadedDataset, top: int = 12) -> str:
    """The whole page as a string."""
    thumbs = _Thumbs(data, decisions)
    parts = [
        f"<h1>leanset: {_e(summary.flow)}</h1>",
        f"<p class=sub>version {summary.version} (parent {summary.parent}) · {_e(summary.store)}</p>",
        f"<p class=statement>{_e(summary.statement)}</p>",
        _counts(summary.counts),
        _groups_section(decisions, thumbs, top // 2),
        _closest_calls(decisions, thumbs, top),
        _leaks_section(decisions, thumbs, top),
        _issues_section(decisions, thumbs, top * 2),
    ]
    body = "\n".join(p for p in parts if p)
    return f"<!doctype html><meta charset=utf-8><title>leanset {_e(summary.flow)} v{summary.version}</title><style>{STYLE}</style>{body}"


def _counts(c: Counts) -> str:
    cells = "".join(f"<tr><td>{_e(k)}</td><td>{v:,}</td></tr>" for k, v in c.rows())
    return f"<h2>Counts</h2><table class=counts>{cells}</table>"


def _groups_section(decisions: pl.DataFrame, thumbs: _Thumbs, top: int) -> str:
    grouped = decisions.filter(pl.col("dup_group").is_not_null())
    if grouped.height == 0:
        return "<h2>Duplicate groups</h2><p>None found.</p>"
    sizes = grouped.group_by("dup_group").len().sort(["len", "dup_group"], descending=[True, False])
    blocks = []
    for gid in sizes["dup_group"].head(top).to_list():
        members = grouped.filter(pl.col("dup_group") == gid).sort("position")
        blocks.append(
            f"<div class=group>{''.join(thumbs.card(r) for r in members.iter_rows(named=True))}</div>"
        )
    return f"<h2>Largest duplicate groups ({sizes.height:,} in all)</h2>" + "".join(blocks)


def _closest_calls(decisions: pl.DataFrame, thumbs: _Thumbs, top: int) -> str:
    """Near duplicates with the lowest similarity: where the threshold is tested."""
    near = decisions.filter(pl.col("near_dup_of").is_not_null()).sort("dup_similarity").head(top)
    if near.height == 0:
        return ""
    by_id = {r["sample_id"]: r for r in decisions.iter_rows(named=True)}
    blocks = [
        f"<div class=group>{thumbs.card(r)}{thumbs.card(by_id[r['near_dup_of']])}</div>"
        for r in near.iter_rows(named=True)
        if r["near_dup_of"] in by_id
    ]
    return (
        "<h2>Closest calls: near duplicates with the lowest similarity</h2>"
        "<p class=sub>If these are not duplicates, raise <code>dedup.threshold</code>.</p>"
        + "".join(blocks)
    )


def _leaks_section(decisions: pl.DataFrame, thumbs: _Thumbs, top: int) -> str:
    leaks = decisions.filter(pl.col("drop_reason") == "test_leak").head(top)
    if leaks.height == 0:
        return ""
    by_id = {r["sample_id"]: r for r in decisions.iter_rows(named=True)}
    blocks = []
    for r in leaks.iter_rows(named=True):
        other = by_id.get(r["leak_of"])
        cards = thumbs.card(r) + (thumbs.card(other) if other else "")
        blocks.append(f"<div class=group>{cards}</div>")
    return "<h2>Train samples leaking into evaluation splits</h2>" + "".join(blocks)


def _issues_section(decisions: pl.DataFrame, thumbs: _Thumbs, top: int) -> str:
    if "label_issue" not in decisions.columns:
        return ""
    issues = (
        decisions.filter(pl.col("label_issue").fill_null(False)).sort("label_quality").head(top)
    )
    if issues.height == 0:
        return "<h2>Label issues</h2><p>None flagged.</p>"
    cards = "".join(thumbs.card(r, issue=True) for r in issues.iter_rows(named=True))
    return f"<h2>Likeliest label errors</h2><div class=group>{cards}</div>"


class _Thumbs:
    """Cards for samples: a thumbnail (images) or a snippet (text), with the decision."""

    def __init__(self, data: LoadedDataset, decisions: pl.DataFrame):
        self.data = data
        self.position = dict(zip(decisions["sample_id"], decisions["position"], strict=True))

    def card(self, row: dict[str, Any], issue: bool = False) -> str:
        kept = bool(row.get("kept"))
        status = "kept" if kept else row.get("drop_reason") or "dropped"
        label = _e(row.get("label"))
        if issue:
            label += f" → {_e(row.get('suggested_label'))} (q {row.get('label_quality') or 0:.2g})"
        sim = row.get("dup_similarity")
        extra = f" · sim {sim:.3f}" if sim is not None else ""
        css = "ok" if kept else "reason"
        return (
            f"<div class=card>{self._visual(row, kept)}<br>{_e(row['source'])}<br>"
            f"{_e(row['split'])} · label {label}<br><span class={css}>{_e(status)}</span>{extra}</div>"
        )

    def _visual(self, row: dict[str, Any], kept: bool) -> str:
        css = "kept" if kept else "dropped"
        pos = self.position.get(row["sample_id"])
        if self.data.modality == "text" and pos is not None:
            return f"<div class='text {css}'>{_e(str(self.data.read([pos])[0])[:200])}</div>"
        if self.data.modality == "image" and pos is not None and row.get("error") is None:
            uri = _thumbnail(self.data, pos)
            if uri:
                return f"<img class={css} src='{uri}'>"
        return f"<div class='text {css}'>{_e(row.get('error') or '')}</div>"


def _thumbnail(data: LoadedDataset, pos: int) -> str | None:
    """A data URI with a small PNG of the sample, or None when it cannot be decoded."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data.read([pos])[0]))
        img.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    except (OSError, ValueError) as exc:
        log.debug("no thumbnail for row %d: %s", pos, exc)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
