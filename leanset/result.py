"""`leanset.Result`: what one run decided, as tables, the input's own kept rows, the cost delta,
the CLI's summary, and a rendering for Jupyter."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from leanset.inputs import InputKind, Prepared, take_rows
from leanset.pipelines.core import RunResult
from leanset.pipelines.cost import CostDelta
from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.store import Store
from leanset.pipelines.store.manifest import JSON
from leanset.pipelines.store.versions import as_stored
from leanset.pipelines.summary import RunSummary

TOP = 8  # groups and label issues shown in a notebook
THUMB_PX = 64
NO_STORE = "decided in memory; nothing was written (pass store= to commit a version)"
ISSUE_COLUMNS = ("sample_id", "source", "split", "label", "suggested_label", "label_quality")


@dataclass
class Result:
    """What a run decided. `decisions`: one row per input sample, the columns of
    `leanset export --decisions` (`sample_id`, `kept`, `drop_reason`, `label_issue`, ...);
    `queue`: the rows for human review (uncertain samples, label issues, label conflicts);
    `cost`: the typed cost delta (None when the input was unchanged); `summary`: the text the CLI
    prints; `version`: the committed version (None when nothing was committed)."""

    decisions: pl.DataFrame
    queue: pl.DataFrame
    cost: CostDelta | None
    summary: str
    run: RunSummary
    version: int | None
    committed: bool
    manifest: JSON = field(default_factory=dict, repr=False)
    _input: Any = field(default=None, repr=False)
    _kind: InputKind = field(default="path", repr=False)
    _sizes: list[tuple[str, int]] = field(default_factory=list, repr=False)
    _cleaned: pl.DataFrame | None = field(default=None, repr=False)
    _thumbs: dict[str, str] = field(default_factory=dict, repr=False)

    def kept(self) -> Any:
        """The kept rows in the input's own type (pandas in, pandas out; polars, Arrow, a Hugging
        Face Dataset or DatasetDict likewise); for a path, the cleaned dataset as polars."""
        if self._kind == "path":
            if self._cleaned is not None:
                return self._cleaned
            return self.decisions.filter(pl.col("kept"))
        kept = self.decisions.filter(pl.col("kept")).sort("position")["position"].to_list()
        return take_rows(self._input, self._kind, kept, self._sizes)

    @property
    def duplicates(self) -> pl.DataFrame:
        """Duplicate groups, largest first: the kept sample, the dropped members, the lowest
        similarity in the group, and the evidence that accepted its pairs."""
        return duplicate_groups(self.decisions)

    @property
    def label_issues(self) -> pl.DataFrame:
        """Flagged labels, likeliest errors first: given and suggested label, label quality."""
        d = self.decisions
        if "label_issue" not in d.columns:
            return pl.DataFrame(schema={c: pl.Utf8 for c in ISSUE_COLUMNS[:-1]})
        cols = [c for c in (*ISSUE_COLUMNS, "label_action") if c in d.columns]
        issues = d.filter(pl.col("label_issue").fill_null(False)).select(cols)
        return issues.sort("label_quality", nulls_last=True)

    def __str__(self) -> str:
        return self.summary

    def _repr_html_(self) -> str:
        """Counts, the threshold's histogram, the top groups (thumbnails for images) and the top
        label issues."""
        return render_html(self)


def duplicate_groups(decisions: pl.DataFrame) -> pl.DataFrame:
    """One row per duplicate group: kept sample, members, size, similarity, evidence."""
    d = decisions.filter(pl.col("dup_group").is_not_null())
    evidence = pl.col("dup_evidence") if "dup_evidence" in d.columns else pl.lit(None, pl.Utf8)
    return (
        d.with_columns(evidence.alias("_ev"))
        .group_by("dup_group")
        .agg(
            pl.col("sample_id").filter(pl.col("kept")).first().alias("kept"),
            pl.col("sample_id").filter(~pl.col("kept")).alias("members"),
            pl.len().alias("size"),
            pl.col("dup_similarity").min().alias("similarity"),
            pl.col("_ev").drop_nulls().unique().sort().str.join(",").alias("evidence"),
            pl.col("drop_reason").drop_nulls().unique().sort().str.join(",").alias("reasons"),
        )
        .sort(["size", "dup_group"], descending=[True, False])
    )


def result_of(
    run: RunResult,
    data: Any,
    prepared: Prepared | None,
    committed: bool,
    options: dict[str, str] | None = None,
) -> Result:
    """The Result of a core run (an unchanged run: the current version's decisions);
    `options`: a bucket store's storage_options."""
    s = run.summary if committed else replace(run.summary, report=None)
    store = Store(run.summary.store, options)
    # as stored either way: the run's own decision columns are enums in memory
    decisions = as_stored(run.decisions) if run.decisions is not None else store.read("decisions")
    draft = run.draft
    manifest = draft.manifest.to_dict() if draft else store.manifest(s.version)
    queue = draft.queue if draft and draft.queue is not None else pl.DataFrame()
    return Result(
        decisions=decisions,
        queue=queue,
        cost=run.cost,
        summary=summary_text(s, committed),
        run=s,
        version=s.version if committed else None,
        committed=committed and not s.dry_run,
        manifest=manifest,
        _input=data,
        _kind=prepared.kind if prepared else "path",
        _sizes=prepared.split_sizes if prepared else [],
        _cleaned=draft.dataset if draft else None,
        _thumbs=_thumbnails(run.data, decisions),
    )


def summary_text(s: RunSummary, committed: bool = True) -> str:
    """What `leanset run` prints at the end, as plain text (without a store: its first line says
    nothing was written)."""
    from leanset.pipelines.cli.console import console, print_summary

    with console.capture() as out:
        print_summary(s)
    text = out.get().rstrip()
    if committed:
        return text
    return f"{s.flow}: {NO_STORE}\n" + text.partition("\n")[2]


def _thumbnails(data: LoadedDataset | None, decisions: pl.DataFrame) -> dict[str, str]:
    """Small PNGs of the samples a notebook shows (images only), read while the input exists."""
    if data is None or data.modality != "image":
        return {}
    groups = duplicate_groups(decisions).head(TOP)
    ids = set(groups["kept"].drop_nulls()) | {m for ms in groups["members"] for m in ms[:5]}
    if "label_issue" in decisions.columns:
        issues = decisions.filter(pl.col("label_issue").fill_null(False))
        ids |= set(issues.sort("label_quality").head(TOP)["sample_id"])
    rows = decisions.filter(pl.col("sample_id").is_in(sorted(ids))).select("sample_id", "position")
    out = {}
    for sid, pos in rows.iter_rows():
        uri = _png(data, pos)
        if uri:
            out[sid] = uri
    return out


def _png(data: LoadedDataset, pos: int) -> str | None:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data.read([pos])[0]))
        img.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    except (OSError, ValueError):
        return None  # an unreadable sample: shown by its id alone
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_html(r: Result) -> str:
    """The notebook view of a Result."""
    from leanset.pipelines.report.calibration import calibration_section

    e = html.escape
    c = r.run.counts
    reasons = "".join(f"<li>{e(k)}: {v:,}</li>" for k, v in c.reasons())
    head = (
        f"<h3>leanset: {c.input:,} samples, {c.kept:,} kept</h3><ul>{reasons}</ul>"
        f"<p>{e(r.run.statement)}</p>"
    )
    hist = calibration_section(r.manifest) if r.manifest.get("calibration") else ""
    return f"<div>{head}{hist}{_groups_html(r)}{_issues_html(r)}</div>"


def _card(r: Result, sid: str, note: str) -> str:
    uri = r._thumbs.get(sid)
    img = f"<img src='{uri}' width={THUMB_PX}><br>" if uri else ""
    return f"<span style='display:inline-block;margin:2px;font-size:10px'>{img}{html.escape(note)}</span>"


def _groups_html(r: Result) -> str:
    groups = r.duplicates.head(TOP)
    if groups.height == 0:
        return "<p>No duplicate groups.</p>"
    rows = []
    for g in groups.iter_rows(named=True):
        cards = _card(r, g["kept"] or "", f"kept {g['kept']}") + "".join(
            _card(r, m, f"dropped {m}") for m in g["members"][:5]
        )
        sim = f"{g['similarity']:.4f}" if g["similarity"] is not None else "exact"
        rows.append(
            f"<tr><td>{g['size']}</td><td>{sim}</td><td>{html.escape(g['evidence'] or '')}</td>"
            f"<td>{cards}</td></tr>"
        )
    return (
        f"<h4>Largest duplicate groups ({r.duplicates.height:,})</h4><table><tr><th>size</th>"
        f"<th>lowest similarity</th><th>evidence</th><th>samples</th></tr>{''.join(rows)}</table>"
    )


def _issues_html(r: Result) -> str:
    issues = r.label_issues.head(TOP)
    if issues.height == 0:
        return ""
    rows = "".join(
        f"<tr><td>{_card(r, i['sample_id'], i['sample_id'])}</td><td>{html.escape(str(i['label']))}"
        f"</td><td>{html.escape(str(i['suggested_label']))}</td><td>{i['label_quality']:.3f}</td></tr>"
        for i in issues.iter_rows(named=True)
    )
    return (
        f"<h4>Likeliest label errors ({r.label_issues.height:,})</h4><table><tr><th>sample</th>"
        f"<th>given</th><th>suggested</th><th>quality</th></tr>{rows}</table>"
    )
