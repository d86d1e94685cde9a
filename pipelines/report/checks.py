"""The report's sections for the quality checks: class balance, split drift, outliers and
unusable images, each with the samples behind it (a card per sample, drawn by the page)."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import polars as pl

from leanset.pipelines.store.manifest import JSON

Card = Callable[[dict[str, Any], str], str]  # (decision row, escaped lines) -> a card's HTML


def checks_sections(decisions: pl.DataFrame, manifest: JSON, card: Card, top: int) -> str:
    """Every check's section that has something to show."""
    checks = manifest.get("checks") or {}
    parts = [
        balance_section(checks.get("balance") or {}),
        drift_section(checks.get("drift") or {}),
        outliers_section(decisions, checks.get("outliers") or {}, card, top),
        images_section(decisions, checks.get("image_quality") or {}, card, top),
    ]
    return "\n".join(p for p in parts if p)


def balance_section(balance: JSON) -> str:
    """Per class of the training splits: before, after, the share removed and by what."""
    classes = balance.get("classes") or {}
    if not classes:
        return ""
    rows = "".join(
        f"<tr><td>{_e(name)}{' ⚠' if c.get('warn') else ''}</td><td class=n>{c['input']:,}</td>"
        f"<td class=n>{c['kept']:,}</td><td class=n>{c['removed_share']:.1%}</td>"
        f"<td>{_e(', '.join(f'{n:,} {why}' for why, n in sorted(c['removed_by'].items())))}</td>"
        "</tr>"
        for name, c in classes.items()
    )
    warnings = "".join(f"<p class=banner>{_e(w)}</p>" for w in balance.get("warnings") or [])
    ratio = (
        f"<p class=sub>Largest / smallest class: {balance.get('imbalance_before')} before, "
        f"{balance.get('imbalance_after')} after cleaning.</p>"
    )
    return (
        "<h2>Class balance of the training splits</h2>"
        f"{warnings}<table class=counts><tr><th>class</th><th class=n>before</th>"
        "<th class=n>after</th><th class=n>removed</th><th>removed by</th></tr>"
        f"{rows}</table>{ratio}"
    )


def drift_section(drift: JSON) -> str:
    """Whether each eval split looks like the training rows in embedding space."""
    tests = drift.get("splits") or {}
    if not tests:
        return ""
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=n>{t['statistic']:.3f}</td>"
        f"<td class=n>{t['expected']:.3f}</td><td class=n>{t['p_value']:.3g}</td>"
        f"<td>{_e(t['verdict'])}</td></tr>"
        for name, t in tests.items()
    )
    return (
        "<h2>Eval splits against the training split</h2><p class=sub>A k-nearest-neighbour "
        "two-sample test in embedding space: the share of each sample's neighbours from its own "
        "split, against what it would be if the splits were drawn alike (a permutation test).</p>"
        "<table class=counts><tr><th>split</th><th class=n>same-split neighbours</th>"
        "<th class=n>expected</th><th class=n>p-value</th><th>verdict</th></tr>"
        f"{rows}</table>"
    )


def outliers_section(decisions: pl.DataFrame, info: JSON, card: Card, top: int) -> str:
    """The most extreme samples by outlier score, flagged or not."""
    if "outlier_score" not in decisions.columns or not info:
        return ""
    worst = decisions.filter(pl.col("outlier_score").is_not_null()).sort(
        "outlier_score", descending=True
    )
    cards = "".join(
        card(
            r, f"{_src(r)}<br>score {r['outlier_score']:.1f}{' · flagged' if r['outlier'] else ''}"
        )
        for r in worst.head(top).iter_rows(named=True)
    )
    return (
        f"<h2>Outliers ({info.get('flagged', 0):,} flagged, policy {_e(info.get('policy'))})</h2>"
        "<p class=sub>Score: how many robust deviations a sample's mean distance to its "
        f"{info.get('k')} nearest neighbours lies above the dataset's median; flagged at "
        f"{info.get('z')} or above. The most extreme {min(top, worst.height)} are shown.</p>"
        f"<div class=row>{cards}</div>"
    )


def images_section(decisions: pl.DataFrame, info: JSON, card: Card, top: int) -> str:
    """Images flagged as unusable, with the reason in words."""
    if "image_issue" not in decisions.columns or not info:
        return ""
    found = decisions.filter(pl.col("image_issue").is_not_null())
    limits = info.get("limits") or {}
    said = " · ".join(f"{_e(k)} {_e(v)}" for k, v in limits.items())
    cards = "".join(
        card(r, f"{_src(r)}<br><span class=reason>{_e(r['image_issue'])}</span>")
        for r in found.head(top).iter_rows(named=True)
    )
    return (
        f"<h2>Unusable images ({found.height:,}, policy {_e(info.get('policy'))})</h2>"
        f"<p class=sub>Limits calibrated on this dataset: {said}</p><div class=row>{cards}</div>"
    )


def _src(row: dict[str, Any]) -> str:
    return f"<span class=src>{_e(row['source'])}</span> · {_e(row['split'])}"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def check_lines(checks: JSON) -> list[str]:
    """One line per check that ran (console and markdown), then the balance warnings."""
    lines = []
    if out := checks.get("outliers"):
        lines.append(
            f"outliers: {out['flagged']:,} of {out['scored']:,} flagged (policy {out['policy']}, "
            f"z >= {out['z']})"
        )
    if img := checks.get("image_quality"):
        found = ", ".join(f"{n:,} {issue}" for issue, n in (img.get("found") or {}).items())
        lines.append(f"unusable images: {found or 'none'} (policy {img['policy']})")
    for name, t in ((checks.get("drift") or {}).get("splits") or {}).items():
        lines.append(f"split {name} against train: {t['verdict']} (p = {t['p_value']:.3g})")
    bal = checks.get("balance") or {}
    lines += [f"class balance: {w}" for w in bal.get("warnings") or []]
    return lines
