"""The report's geometric confirmations: each copy beside its kept sample, with the region of the
larger image that the smaller one matched outlined, and the reason from the decisions table."""

from __future__ import annotations

import base64
import html
import io
import logging
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup import geometry
from leanset.pipelines.sources import LoadedDataset

log = logging.getLogger("leanset.report")

SHOW_PX = 160  # the longer side of each image as shown


def geometry_section(decisions: pl.DataFrame, data: LoadedDataset, top: int = 8) -> str:
    """Up to `top` pairs that geometry confirmed, side by side with the matched region."""
    if data.modality != "image" or "dup_evidence" not in decisions.columns:
        return ""
    rows = decisions.filter(
        pl.col("dup_evidence").cast(pl.Utf8).str.contains("geometry:", literal=True)
    )
    if rows.height == 0:
        return ""
    position = dict(zip(decisions["sample_id"], decisions["position"], strict=True))
    blocks = []
    for r in rows.head(top).iter_rows(named=True):
        ref = r["near_dup_of"] or r["leak_of"]
        if ref not in position:
            continue
        pair = outlined_pair(data, position[ref], r["position"])
        if pair is not None:
            blocks.append(_block(r, *pair))
    if not blocks:
        return ""
    return (
        f"<h2>Copies confirmed by geometry ({rows.height:,})</h2><p class=sub>Kept sample left, "
        "dropped copy right; the outline marks where the smaller image lies in the larger one. "
        "If these are not copies, set <code>dedup.confirm</code> to a list without "
        "<code>geometry</code>.</p>" + "".join(blocks)
    )


def _block(row: dict[str, Any], kept: str, copy: str) -> str:
    reason = str(row["dup_evidence"])
    return (
        f"<div class='group geometry'><div class='card kept'><img alt='' src='{kept}'></div>"
        f"<div class='card dropped'><img alt='' src='{copy}'>"
        f"<span class=src>{html.escape(str(row['source']))}</span><br>"
        f"<span class=reason>{html.escape(reason)}</span></div></div>"
    )


def outlined_pair(data: LoadedDataset, kept: int, copy: int) -> tuple[str, str] | None:
    """Both images as PNG data URIs, the matched region outlined on the larger; None when the
    images cannot be decoded or no longer match."""
    from PIL import Image

    try:
        a, b = (Image.open(io.BytesIO(c)).convert("RGB") for c in data.read([kept, copy]))
    except (OSError, ValueError) as exc:
        log.debug("no geometry view for rows %d, %d: %s", kept, copy, exc)
        return None
    fa, fb = (geometry.image_features(np.asarray(x.convert("L"))) for x in (a, b))
    m = geometry.verify(fa, fb)
    if not m.copy:
        return None
    fit = np.array(m.fit).reshape(2, 3)
    sa, sb = (geometry.SIDE / max(x.size) for x in (a, b))
    if fa.plain.width * fa.plain.height * m.scale**2 <= fb.plain.width * fb.plain.height:
        return _uri(a), _uri(b, _corners(fa.plain, fit, sb))  # a lies inside b
    inverse = np.vstack([fit, [0, 0, 1]])
    return _uri(a, _corners(fb.plain, np.linalg.inv(inverse)[:2], sa)), _uri(b)


def _corners(
    small: geometry.Features, fit: np.ndarray, big_scale: float
) -> list[tuple[float, float]]:
    """The smaller image's corners mapped into the larger one's original pixels."""
    w, h = small.width, small.height
    pts = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64) @ fit.T
    return [(float(x) / big_scale, float(y) / big_scale) for x, y in pts]


def _uri(image: Any, outline: list[tuple[float, float]] | None = None) -> str:
    """A small PNG data URI of the image, with the outline drawn (original pixel coordinates)."""
    from PIL import ImageDraw

    img = image.copy()
    f = SHOW_PX / max(img.size)
    img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))))
    if outline:
        ImageDraw.Draw(img).polygon(
            [(x * f, y * f) for x, y in outline], outline=(230, 0, 0), width=2
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
