"""A static HTML page per version: counts, the threshold's evidence, and the samples behind the
decisions.

Duplicate groups, leaks, label issues and human labels are shown with the samples themselves
(image thumbnails embedded in the page, or the text), so a person can judge the decisions at a
glance. Every duplicate group is reachable: they are listed as data in the page and shown a page
at a time, with a search over sources, labels, splits and reasons.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import polars as pl

from leanset.pipelines.report.calibration import calibration_section
from leanset.pipelines.report.checks import checks_sections
from leanset.pipelines.report.geometry import geometry_section
from leanset.pipelines.report.leaks import fanout_section
from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.store.manifest import JSON, Counts
from leanset.pipelines.summary import RunSummary

log = logging.getLogger("leanset.report")

THUMB_PX = 96
THUMB_QUALITY = 85  # JPEG: at 96 px as clear as PNG to the eye, ~20x cheaper to encode, 4x smaller
MAX_THUMBS = 4000  # samples with an embedded thumbnail in one page (groups beyond: text only)
GROUPS_PER_PAGE = 24
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;color:#222;max-width:1200px;padding:0 1rem}
h1{margin-bottom:0}.sub{color:#555;margin-top:.2rem}.banner{background:#fff3cd;padding:.5rem 1rem}
table.counts{border-collapse:collapse;margin:.5rem 0}
table.counts th,table.counts td{padding:2px 12px;border-bottom:1px solid #eee}
table.counts td.n,table.counts th.n{text-align:right;font-variant-numeric:tabular-nums}
.statement{background:#f3f7ee;border-left:4px solid #6a4;padding:.6rem 1rem;white-space:pre-line}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.group{display:inline-flex;flex-wrap:wrap;vertical-align:top;gap:8px;margin:.3rem;padding:.5rem;
border:1px solid #ccc;border-radius:4px;max-width:100%}
.card{width:132px;font-size:11px;text-align:center;line-height:1.35}
.card.wide{width:240px}
.card img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee;
display:block;margin:0 auto 2px}
.card .text{min-height:60px;max-height:120px;overflow:hidden;text-align:left;background:#f6f6f6;
padding:4px;white-space:pre-wrap;word-break:break-word;border:3px solid #ccc}
.card .src{word-break:break-all;color:#444}
.kept img,.kept .text{border:3px solid #3a3}.dropped img,.dropped .text{border:3px dashed #c33}
.reason{color:#b22;font-weight:600}.ok{color:#282;font-weight:600}.nowrap{white-space:nowrap}
.given{color:#b22}.suggested{color:#282}
input.search{font-size:14px;padding:4px 8px;width:22rem;margin:.3rem 0}
.pager button{margin:0 2px}.pager{margin:.4rem 0}.muted{color:#777}
svg text{font-size:11px;fill:#333}
del{background:#fdd;color:#900}ins{background:#dfd;color:#060;text-decoration:none}
table.diff td{vertical-align:top;padding:2px 8px;border-bottom:1px solid #eee;white-space:pre-wrap}
.fan{margin:.6rem 0;padding:.3rem .6rem;border-left:3px solid #c93}
"""


def write_html_report(
    path: str | Path,
    summary: RunSummary,
    decisions: pl.DataFrame,
    data: LoadedDataset,
    manifest: JSON | None = None,
    parent_report: str | Path | None = None,
    top: int = 12,
) -> Path:
    """Write the version's report page and return its path."""
    from leanset.pipelines.store.sealed import write_sealed

    link = _relative(parent_report, Path(path).parent) if parent_report else None
    page = render(summary, decisions, data, manifest or {}, link, top)
    return write_sealed(path, page.encode("utf-8"))


def _relative(target: str | Path, folder: Path) -> str:
    """A link from a page in `folder` to `target` (relative when both are on one drive)."""
    try:
        return Path(os.path.relpath(target, folder)).as_posix()
    except ValueError:
        return Path(target).resolve().as_uri()


def render(
    summary: RunSummary,
    decisions: pl.DataFrame,
    data: LoadedDataset,
    manifest: JSON | None = None,
    parent_link: str | None = None,
    top: int = 12,
) -> str:
    """The whole page as a string."""
    manifest = manifest or {}
    thumbs = _Thumbs(data, decisions)
    by_id = {r["sample_id"]: r for r in decisions.iter_rows(named=True)}
    parts = [
        _header(summary, manifest, parent_link),
        f"<p class=statement>{_e(summary.statement)}</p>",
        _counts(summary.counts),
        _classes(decisions),
        calibration_section(manifest),
        _closest_calls(decisions, by_id, thumbs, top),
        geometry_section(decisions, data),
        _groups_section(decisions, thumbs),
        _leaks_section(decisions, by_id, thumbs, top * 2),
        fanout_section(decisions, summary.counts.leak_fanout, thumbs.text_of, thumbs.card),
        _conflicts_section(decisions, thumbs, top),
        _issues_section(decisions, thumbs, top * 4),
        _human_section(decisions, thumbs, top * 4),
        checks_sections(decisions, manifest, thumbs.note_card, top * 2),
        _footer(manifest),
    ]
    body = "\n".join(p for p in parts if p)
    title = f"leanset {_e(summary.flow)} v{summary.version}"
    return (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
        f"<style>{STYLE}</style><body>{body}</body></html>"
    )


def _header(s: RunSummary, manifest: JSON, parent_link: str | None) -> str:
    if s.parent is None:
        parent = "the first version"
    elif parent_link:
        parent = f"parent <a href='{_e(parent_link)}'>version {s.parent}</a>"
    else:
        parent = f"parent version {s.parent}"
    when = f" · {_e(manifest['created_at'])}" if manifest.get("created_at") else ""
    banner = (
        "<p class=banner>Dry run: this version was not committed; the store is unchanged.</p>"
        if s.dry_run
        else ""
    )
    return (
        f"<h1>leanset: {_e(s.flow)} · version {s.version}</h1>"
        f"<p class=sub>{parent} · {_e(s.store)}{when}</p>{banner}"
    )


def _counts(c: Counts) -> str:
    """Samples by decision and split (the console's table)."""
    splits = sorted(c.by_split, key=lambda name: (name != "train", name))
    head = "".join(f"<th class=n>{_e(s)}</th>" for s in [*splits, "all"])
    rows: list[tuple[str, list[int | None], int]] = [
        ("input", [c.by_split[s].get("input") for s in splits], c.input),
        ("kept", [c.by_split[s].get("kept") for s in splits], c.kept),
    ]
    for reason, n in c.reasons():
        cells: list[int | None] = [c.by_split_reason.get(s, {}).get(reason, 0) for s in splits]
        rows.append((f"dropped: {reason}", cells if c.by_split_reason else [None] * len(splits), n))
    body = "".join(
        f"<tr><td>{_e(name)}</td>{''.join(_num(v) for v in cells)}{_num(total)}</tr>"
        for name, cells, total in rows
    )
    facts = (
        f"{c.dup_groups:,} duplicate groups · {c.leaking_eval_samples:,} eval samples leaking "
        f"from train · {c.label_conflicts:,} samples in label-conflict groups"
    )
    return (
        f"<h2>Counts by split</h2><table class=counts><tr><th>samples</th>{head}</tr>{body}"
        f"</table><p class=sub>{facts}</p>"
    )


def _num(v: int | None) -> str:
    return f"<td class=n>{'' if v is None else f'{v:,}'}</td>"


def _classes(decisions: pl.DataFrame) -> str:
    """Samples by class: input, kept, dropped, and label issues when the stage ran."""
    issue = (
        pl.col("label_issue").fill_null(False).sum()
        if "label_issue" in decisions.columns
        else pl.lit(None)
    )
    per = (
        decisions.group_by("label")
        .agg(
            pl.len().alias("input"),
            pl.col("kept").sum().alias("kept"),
            issue.alias("issues"),
        )
        .sort("label", nulls_last=True)
    )
    if per.height == 0 or (per.height == 1 and per["label"][0] is None):
        return ""
    rows = "".join(
        f"<tr><td>{_e(r['label'] if r['label'] is not None else '(unlabeled)')}</td>"
        f"{_num(r['input'])}{_num(r['kept'])}{_num(r['input'] - r['kept'])}"
        f"{_num(r['issues'])}</tr>"
        for r in per.iter_rows(named=True)
    )
    return (
        "<h2>Counts by class</h2><table class=counts><tr><th>class</th><th class=n>input</th>"
        "<th class=n>kept</th><th class=n>dropped</th><th class=n>label issues</th></tr>"
        f"{rows}</table>"
    )


ROUTE_SETTINGS = {
    "embedding": "embedding cosine ≥ <code>dedup.threshold</code>: raise it",
    "pixels": "thumbnail correlation, calibrated on this data: leave <code>pixels</code> out of "
    "<code>dedup.confirm</code>",
    "hashes": "pHash and dHash agree: leave <code>hashes</code> out of <code>dedup.confirm</code>",
    "shingles": "shared character 5-grams: leave <code>shingles</code> out of "
    "<code>dedup.confirm</code>",
}


def route_advice(evidence: str | None) -> str:
    """Which routes accepted a pair and the setting that controls each (HTML)."""
    routes = [r for r in (evidence or "embedding").split("+") if r]
    parts = [f"<b>{_e(r)}</b> ({ROUTE_SETTINGS.get(r, 'see dedup.confirm')})" for r in routes]
    text = "accepted by " + "; ".join(parts)
    if len(routes) > 1:
        text += ". Every one of these routes accepted it: all must change to keep both"
    return text + "."


def _closest_calls(
    decisions: pl.DataFrame, by_id: dict[str, dict[str, Any]], thumbs: _Thumbs, top: int
) -> str:
    """Near duplicates with the lowest similarity: where the threshold is tested, each with the
    route that accepted it and the setting that controls that route."""
    near = decisions.filter(pl.col("near_dup_of").is_not_null()).sort("dup_similarity").head(top)
    if near.height == 0:
        return ""
    blocks = [
        f"<div class=group>{thumbs.card(r)}{thumbs.card(by_id[r['near_dup_of']])}"
        f"<p class=sub>{route_advice(r.get('dup_evidence'))}</p></div>"
        for r in near.iter_rows(named=True)
        if r["near_dup_of"] in by_id
    ]
    return (
        "<h2>Closest calls: near duplicates with the lowest similarity</h2>"
        "<p class=sub>If a pair is not a duplicate, change the setting of the route that "
        "accepted it (named under each pair): raising <code>dedup.threshold</code> separates "
        "only pairs the embedding alone accepted.</p>" + "".join(blocks)
    )


def _groups_section(decisions: pl.DataFrame, thumbs: _Thumbs) -> str:
    """Every duplicate group, largest first, a page at a time, with a search box."""
    grouped = decisions.filter(pl.col("dup_group").is_not_null())
    if grouped.height == 0:
        return "<h2>Duplicate groups</h2><p>None found.</p>"
    sizes = grouped.group_by("dup_group").len().sort(["len", "dup_group"], descending=[True, False])
    order = {g: i for i, g in enumerate(sizes["dup_group"].to_list())}
    members = grouped.with_columns(
        pl.col("dup_group").replace_strict(order, return_dtype=pl.Int64).alias("_g")
    ).sort("_g", pl.col("kept").not_(), "position")
    groups: list[list[str]] = [[] for _ in order]
    for r in members.iter_rows(named=True):
        groups[r["_g"]].append(thumbs.card(r, budget=True))
    payload = json.dumps(["".join(g) for g in groups]).replace("</", "<\\/")
    omitted = thumbs.omitted
    note = (
        f" Thumbnails of {omitted:,} samples beyond the first {MAX_THUMBS:,} are left out."
        if omitted
        else ""
    )
    return (
        f"<h2 id=groups-title>Duplicate groups ({len(groups):,}, largest first)</h2>"
        f"<p class=sub>Each group keeps one sample (solid green); the others are dropped "
        f"(dashed red) with their reason.{note}</p>"
        "<input class=search id=gq placeholder='search: file, label, split, reason' "
        "oninput='gshow(0)'> <span id=gcount class=muted></span>"
        "<div class=pager id=gpager></div><div id=groups></div>"
        f"<script>const GROUPS={payload};const PER={GROUPS_PER_PAGE};{_GROUPS_JS}</script>"
        "<noscript><p>The group list needs JavaScript.</p></noscript>"
    )


_GROUPS_JS = """
const GTEXT=GROUPS.map(g=>g.replace(/<[^>]*>/g,' ').toLowerCase());
function gmatch(q){q=q.toLowerCase();const out=[];GTEXT.forEach((t,i)=>{if(!q||t.includes(q))out.push(i)});
return out}
function gshow(page){const hits=gmatch(document.getElementById('gq').value.trim());
const pages=Math.max(1,Math.ceil(hits.length/PER));page=Math.min(Math.max(page,0),pages-1);
document.getElementById('groups').innerHTML=hits.slice(page*PER,(page+1)*PER)
.map(i=>"<div class=group>"+GROUPS[i]+"</div>").join('');
document.getElementById('gcount').textContent=hits.length+' of '+GROUPS.length+' groups';
let p='';if(pages>1){p+="<button onclick='gshow("+(page-1)+")'>&lsaquo; prev</button>";
p+=' page '+(page+1)+' of '+pages+' ';p+="<button onclick='gshow("+(page+1)+")'>next &rsaquo;</button>"}
document.getElementById('gpager').innerHTML=p}
const q0=decodeURIComponent((location.hash.match(/^#q=(.*)$/)||[])[1]||'');
document.getElementById('gq').value=q0;gshow(0);
window.addEventListener('hashchange',()=>{const m=location.hash.match(/^#q=(.*)$/);
if(m){document.getElementById('gq').value=decodeURIComponent(m[1]);gshow(0);
document.getElementById('groups-title').scrollIntoView()}});
"""


def _leaks_section(
    decisions: pl.DataFrame, by_id: dict[str, dict[str, Any]], thumbs: _Thumbs, top: int
) -> str:
    leaks = decisions.filter(pl.col("drop_reason") == "test_leak")
    if leaks.height == 0:
        return ""
    blocks = []
    for r in leaks.head(top).iter_rows(named=True):
        other = by_id.get(r["leak_of"])
        blocks.append(
            f"<div class=group>{thumbs.card(r)}{thumbs.card(other) if other else ''}</div>"
        )
    more = (
        f" The first {top} of {leaks.height:,} are shown; <a href='#q=test_leak'>the groups "
        "holding a leak</a> list them all."
        if leaks.height > top
        else ""
    )
    return (
        f"<h2>Train samples leaking into evaluation splits ({leaks.height:,})</h2>"
        f"<p class=sub>Each train copy (dropped) beside the evaluation sample it duplicates.{more}</p>"
        + "".join(blocks)
    )


def _conflicts_section(decisions: pl.DataFrame, thumbs: _Thumbs, top: int) -> str:
    """Label conflicts: each group of copies that carry different labels, its samples side by side."""
    if "label_conflict" not in decisions.columns:
        return ""
    rows = decisions.filter(
        pl.col("label_conflict").fill_null(False) & pl.col("dup_group").is_not_null()
    )
    if rows.height == 0:
        return ""
    groups = rows.sort("dup_group", "position").partition_by("dup_group", maintain_order=True)
    blocks = [
        "<div class=group>" + "".join(thumbs.card(r) for r in g.iter_rows(named=True)) + "</div>"
        for g in groups[:top]
    ]
    more = f" The first {top} of {len(groups):,} are shown." if len(groups) > top else ""
    return (
        f"<h2>Label conflicts ({len(groups):,} groups, {rows.height:,} samples)</h2>"
        "<p class=sub>Copies of one sample that carry different labels, side by side: one of "
        f"the labels is wrong (the labeling queue asks a person which).{more}</p>" + "".join(blocks)
    )


def _issues_section(decisions: pl.DataFrame, thumbs: _Thumbs, top: int) -> str:
    if "label_issue" not in decisions.columns:
        return ""
    issues = decisions.filter(pl.col("label_issue").fill_null(False)).sort("label_quality")
    if issues.height == 0:
        return "<h2>Label issues</h2><p>None flagged.</p>"
    cards = "".join(thumbs.issue_card(r) for r in issues.head(top).iter_rows(named=True))
    more = f" (the {top} likeliest shown)" if issues.height > top else ""
    return (
        f"<h2>Likeliest label errors ({issues.height:,}){more}</h2>"
        "<p class=sub>The given label in red, the probe's suggestion in green with its "
        "probability; label quality is cleanlab's score of the given label (0 = surely wrong)."
        f"</p><div class=row>{cards}</div>"
    )


def _human_section(decisions: pl.DataFrame, thumbs: _Thumbs, top: int) -> str:
    """The labels people gave in Label Studio that this version applied."""
    if "relabel_source" not in decisions.columns:
        return ""
    human = decisions.filter(pl.col("relabel_source").is_not_null())
    if human.height == 0:
        return ""
    cards = "".join(thumbs.human_card(r) for r in human.head(top).iter_rows(named=True))
    more = f" (the first {top} shown)" if human.height > top else ""
    return (
        f"<h2>Human labels applied in this version ({human.height:,}){more}</h2>"
        f"<div class=row>{cards}</div>"
    )


def _footer(m: JSON) -> str:
    search = m.get("search") or {}
    bits = [
        f"config {m.get('config_hash', '')}",
        f"input {m.get('input_fingerprint', '')}",
        f"embedder {(m.get('embed') or {}).get('fingerprint', 'none')}",
        f"search {search.get('method', 'none')} at {search.get('threshold', '')}",
        f"leanset {m.get('leanset', '')}",
    ]
    return f"<hr><p class='sub muted'>{_e(' · '.join(bits))}</p>"


class _Thumbs:
    """Cards for samples: a thumbnail (images) or a snippet (text), with the decision."""

    def __init__(self, data: LoadedDataset, decisions: pl.DataFrame):
        self.data = data
        self.position = dict(zip(decisions["sample_id"], decisions["position"], strict=True))
        self._uris: dict[int, str | None] = {}
        self.omitted = 0

    def card(self, row: dict[str, Any], budget: bool = False) -> str:
        """A sample with its split, label and decision (`budget`: no thumbnail past the cap)."""
        kept = bool(row.get("kept"))
        status = "kept" if kept else row.get("drop_reason") or "dropped"
        sim = row.get("dup_similarity")
        extra = (
            f"<br><span class=nowrap>sim {sim:.3f}</span>" if sim is not None and not kept else ""
        )
        css = "ok" if kept else "reason"
        lines = (
            f"<span class=src>{_e(row['source'])}</span><br>"
            f"<span class=nowrap>{_e(row['split'])} · {_label_text(row.get('label'))}</span><br>"
            f"<span class={css}>{_e(status)}</span>{extra}"
        )
        return self._wrap(row, kept, lines, budget)

    def issue_card(self, row: dict[str, Any]) -> str:
        """A suspected label error: the given label, the suggestion and its probability."""
        score = row.get("suggested_score")
        p = f" ({score:.0%})" if score is not None else ""
        action = row.get("label_action") or ""
        lines = (
            f"<span class=src>{_e(row['source'])}</span><br>"
            f"given <b class=given>{_e(row.get('label'))}</b> → suggested "
            f"<b class=suggested>{_e(row.get('suggested_label'))}</b>{p}<br>"
            f"<span class=nowrap>label quality {_e(_quality(row.get('label_quality')))}</span>"
            f"{' · ' + _e(action) if action else ''}"
        )
        return self._wrap(row, bool(row.get("kept")), lines, False)

    def human_card(self, row: dict[str, Any]) -> str:
        """A label a person changed: before, after, and the annotation it came from."""
        before = row.get("label_before_human")
        where = str(row.get("relabel_source") or "").replace("label-studio:", "Label Studio #")
        lines = (
            f"<span class=src>{_e(row['source'])}</span><br>"
            f"<b class=given>{_e(before if before is not None else '(unlabeled)')}</b> → "
            f"<b class=suggested>{_e(row.get('label'))}</b><br>"
            f"<span class='src muted'>{_e(where)}</span>"
        )
        return self._wrap(row, bool(row.get("kept")), lines, False)

    def note_card(self, row: dict[str, Any], lines: str) -> str:
        """A sample with the check's own lines (already escaped) under it."""
        return self._wrap(row, bool(row.get("kept")), lines, False)

    def _wrap(self, row: dict[str, Any], kept: bool, lines: str, budget: bool) -> str:
        wide = " wide" if self.data.modality != "image" else ""
        css = "kept" if kept else "dropped"
        return f"<div class='card {css}{wide}'>{self._visual(row, budget)}{lines}</div>"

    def text_of(self, sample_id: str) -> str | None:
        """A text sample's whole text (None for other modalities or unreadable samples)."""
        pos = self.position.get(sample_id)
        if self.data.modality != "text" or pos is None:
            return None
        return str(self.data.read([pos])[0])

    def _visual(self, row: dict[str, Any], budget: bool) -> str:
        pos = self.position.get(row["sample_id"])
        if row.get("error") is not None or pos is None:
            return f"<div class=text>{_e(row.get('error') or '')}</div>"
        if self.data.modality == "text":
            return f"<div class=text>{_e(str(self.data.read([pos])[0])[:300])}</div>"
        if self.data.modality != "image":
            return ""
        if pos not in self._uris:
            if budget and len(self._uris) >= MAX_THUMBS:
                self.omitted += 1
                return "<div class=text>thumbnail left out</div>"
            self._uris[pos] = _thumbnail(self.data, pos)
        uri = self._uris[pos]
        return f"<img alt='' src='{uri}'>" if uri else "<div class=text>no thumbnail</div>"


def _label_text(label: str | None) -> str:
    """`label cat`, or `unlabeled` for a row without one."""
    return "unlabeled" if label is None else f"label {_e(label)}"


def _quality(q: float | None) -> str:
    """cleanlab's label quality, readable: 0.42, 0.031, <0.001."""
    if q is None:
        return "n/a"
    return "<0.001" if q < 0.001 else f"{q:.3f}" if q < 0.1 else f"{q:.2f}"


def _thumbnail(data: LoadedDataset, pos: int) -> str | None:
    """A data URI with a small JPEG of the sample, or None when it cannot be decoded (a page
    shows up to MAX_THUMBS of them: as PNG their encoding was most of a 10k-image report)."""
    from PIL import Image

    from leanset.pipelines.embed.protocol import to_8bit

    try:
        img = to_8bit(Image.open(io.BytesIO(data.read([pos])[0])))
        img.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=THUMB_QUALITY)
    except (OSError, ValueError) as exc:
        log.debug("no thumbnail for row %d: %s", pos, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
