"""The report's threshold section: the nearest-neighbour similarity histogram with the threshold
drawn on it, and how many samples each nearby threshold would drop.

It draws the manifest's `calibration` object, written by the dedup stage with the threshold it
used (read off the data, or set in flows.yaml, with the evidence either way):

    {"threshold": 0.973, "rule": "how it was chosen",
     "nn_histogram": {"edges": [41 floats], "counts": [40 ints]},
     "drops_by_threshold": {"0.95": 812, "0.96": 401, ...}, "drops_note": "what the counts are",
     "reused": true,                                  # kept from the parent version
     "pixels": {the same keys, for the thumbnails' route}, "hashes": {"threshold", "rule"}}

`nn_histogram` counts each distinct content's cosine similarity to its nearest neighbour;
`drops_by_threshold` is how many samples each threshold would drop. Only `threshold` is required
of each signal: a record without a histogram (too few samples to draw one) is said in words, and
so is a version without any record.
"""

from __future__ import annotations

import html
import math
from typing import Any

from leanset.pipelines.store.manifest import JSON

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 24, 40  # plot margins in the SVG (the top one holds a label)
SIGNALS = (("pixels", "Thumbnails (pixels route)"), ("hashes", "Perceptual hashes"))
DROPS_NOTE = "samples each threshold would drop"


def calibration_section(manifest: JSON) -> str:
    """The section's HTML (a note when the manifest holds no calibration evidence)."""
    threshold = ((manifest.get("config") or {}).get("dedup") or {}).get("threshold")
    used = (
        f" The flow's <code>dedup.threshold</code> is <b>{_e(threshold)}</b>." if threshold else ""
    )
    cal = manifest.get("calibration")
    head = "<h2>Is the threshold right?</h2>"
    if not cal:
        return f"{head}<p class=sub>No calibration evidence in this version.{used}</p>"
    if not isinstance(cal, dict):
        return (
            f"{head}<p class=sub>The calibration evidence is malformed (not an object).{used}</p>"
        )
    reused = (
        "<p class=sub>Kept from the parent version: the data changed too little to read the "
        "threshold off it again.</p>"
        if cal.get("reused")
        else ""
    )
    parts = [head, reused, signal_block(cal, used)]
    for key, title in SIGNALS:
        sub = cal.get(key)
        if sub:
            parts.append(f"<h3>{title}</h3>" + signal_block(sub, "", bits=key == "hashes"))
    return "".join(parts)


def signal_block(cal: Any, used: str, bits: bool = False) -> str:
    """One signal's threshold, its rule, its histogram and drops (what of them it recorded);
    `bits`: the threshold is a Hamming distance budget, which has no similarity histogram."""
    try:
        line = float(cal["threshold"])
        hist = _histogram(cal) if cal.get("nn_histogram") else None
        drops = _drops(cal)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"<p class=sub>The calibration evidence is malformed ({_e(exc)}).{used}</p>"
    rule = f"<p>{_e(cal.get('rule', ''))}</p>" if cal.get("rule") else ""
    if bits:
        return f"<p class=sub>At most <b>{line:g}</b> bits apart.</p>{rule}"
    if hist is None:
        return (
            f"<p class=sub>Threshold <b>{line:g}</b>; no nearest-neighbour histogram was recorded "
            f"for it.{used}</p>{rule}{drops_table(drops, line, cal.get('drops_note'))}"
        )
    return (
        f"<p class=sub>Each distinct content's cosine similarity to its nearest neighbour "
        f"(log scale); near duplicates sit right of the red line at the threshold "
        f"<b>{line:.3f}</b>.{used}</p>{rule}{histogram_svg(*hist, line)}"
        f"{drops_table(drops, line, cal.get('drops_note'))}"
    )


def _histogram(cal: JSON) -> tuple[list[float], list[int]]:
    h = cal["nn_histogram"]
    edges = [float(x) for x in h["edges"]]
    counts = [int(x) for x in h["counts"]]
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"{len(edges)} edges for {len(counts)} counts; expected one more edge")
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError("histogram edges are not increasing")
    return edges, counts


def _drops(cal: JSON) -> list[tuple[float, int]]:
    raw = cal.get("drops_by_threshold") or {}
    return sorted((float(t), int(n)) for t, n in raw.items())


def histogram_svg(edges: list[float], counts: list[int], threshold: float) -> str:
    """Bars on a log scale, x from the first to the last edge, the threshold as a red line."""
    lo, hi = edges[0], edges[-1]
    top = max(max(counts), 1)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + (v - lo) / (hi - lo) * pw

    def y(n: float) -> float:  # log scale, a tenth of headroom above the tallest bar
        return TOP + ph - (math.log10(1 + n) / (1.1 * math.log10(1 + top))) * ph

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
        f"role='img' aria-label='nearest-neighbour similarity histogram'>",
        f"<rect x='{LEFT}' y='{TOP}' width='{pw}' height='{ph}' fill='#fafafa' stroke='#ccc'/>",
    ]
    for a, b, n in zip(edges, edges[1:], counts, strict=False):
        if n:
            parts.append(
                f"<rect x='{x(a):.1f}' y='{y(n):.1f}' width='{max(x(b) - x(a) - 1, 1):.1f}' "
                f"height='{TOP + ph - y(n):.1f}' fill='#4a7fb5'><title>{a:.3f}–{b:.3f}: "
                f"{n:,}</title></rect>"
            )
    parts += _axes(lo, hi, top, x, y)
    if lo <= threshold <= hi:
        tx = x(threshold)
        parts.append(
            f"<line x1='{tx:.1f}' x2='{tx:.1f}' y1='{TOP}' y2='{TOP + ph}' stroke='#d22' "
            f"stroke-width='2'/><text x='{tx:.1f}' y='{TOP - 8}' text-anchor='middle' "
            f"fill='#d22'>threshold {threshold:.3f}</text>"
        )
    return "".join(parts) + "</svg>"


def _axes(lo: float, hi: float, top: int, x: Any, y: Any) -> list[str]:
    """Ticks: similarity along x (about eight), counts 1, 10, 100 ... up the y axis."""
    out = []
    step = _nice_step((hi - lo) / 8)
    first = math.ceil(lo / step - 1e-9)
    for k in range(first, first + 100):
        v = k * step
        if v > hi + 1e-9:
            break
        out.append(
            f"<text x='{x(v):.1f}' y='{HEIGHT - BOTTOM + 14}' text-anchor='middle'>"
            f"{v:.{_decimals(step)}f}</text>"
        )
    n = 1
    while n <= top:
        out.append(
            f"<text x='{LEFT - 4}' y='{y(n) + 4:.1f}' text-anchor='end'>{n:,}</text>"
            f"<line x1='{LEFT}' x2='{LEFT + 4}' y1='{y(n):.1f}' y2='{y(n):.1f}' stroke='#999'/>"
        )
        n *= 10
    out.append(
        f"<text x='{LEFT + (WIDTH - LEFT - RIGHT) / 2}' y='{HEIGHT - 6}' text-anchor='middle'>"
        "cosine similarity to the nearest neighbour</text>"
    )
    return out


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 0.1
    mag = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw))


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step)))


def drops_table(drops: list[tuple[float, int]], threshold: float, note: Any = None) -> str:
    """Samples each nearby threshold would drop, the chosen one in bold; `note` says what the
    counts are when the record says (an estimate from a sample, say)."""
    if not drops:
        return ""
    nearest = min(drops, key=lambda d: abs(d[0] - threshold))[0]
    rows = "".join(
        f"<tr{' style=font-weight:700' if t == nearest else ''}><td class=n>{t:g}</td>"
        f"<td class=n>{n:,}</td></tr>"
        for t, n in drops
    )
    return (
        "<table class=counts><tr><th class=n>threshold</th><th class=n>samples dropped</th></tr>"
        f"{rows}</table><p class=sub>{_e(_sentence(note or DROPS_NOTE))}. A lower threshold "
        "drops more; if the extra samples are not duplicates (see the closest calls below), keep "
        "the higher one.</p>"
    )


def _sentence(text: Any) -> str:
    words = str(text)
    return words[:1].upper() + words[1:]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
