"""Unusable images: dark, overexposed, blurry, nearly uniform, tiny, extreme aspect ratio.

The measures are taken from each image's grey levels at the scale a model sees (the longer side
at most `MEASURE_SIDE` pixels) while the embed stage decodes it (`measure_grey`), and cached with
the embeddings. Each issue's limit is calibrated on the dataset: the median minus (or plus) `z`
robust deviations, and never looser than a fixed bound, so a dataset of night photos or of 8 x 8
digits does not flag itself whole, and a dataset of good photos flags none that merely vary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.checks import Robust, cap, policy_columns
from leanset.dedup.config import ImageQualitySettings

MEASURE_SIDE = 256
# one value per image, in this order (the cache stores them so, as float16)
MEASURES = ("brightness_p90", "brightness_p10", "sharpness", "entropy", "log2_width", "log2_height")
REASON = "unusable_image"


def measure_grey(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    """The measures of one image from its grey levels (uint8, at most MEASURE_SIDE a side) and
    its size as stored."""
    g = grey.astype(np.float32)
    p10, p90 = np.percentile(g, [10, 90]) / 255.0
    lap = (
        g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
        if min(g.shape) >= 3
        else np.zeros(1, np.float32)
    )
    detail = np.log((lap.var() + 1e-3) / (g.var() + 1e-3))  # blur, whatever the exposure
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return np.array(
        [p90, p10, detail, entropy, np.log2(max(width, 1)), np.log2(max(height, 1))],
        dtype=np.float32,
    )


@dataclass(frozen=True)
class Issue:
    """One kind of unusable image: its measure, the side that is bad, the fixed bound, a text."""

    name: str
    value: Callable[[np.ndarray], np.ndarray]
    low: bool  # a low value is bad (dark, blurry) rather than a high one (overexposed)
    bound: Callable[[ImageQualitySettings], float]
    words: Callable[[float, float], str]  # (the image's value, the dataset's median) -> reason


def _aspect(m: np.ndarray) -> np.ndarray:
    return np.asarray(np.abs(m[:, 4] - m[:, 5]))


ISSUES = (
    Issue(
        "dark",
        lambda m: m[:, 0],
        True,
        lambda s: 0.3,
        lambda v, med: f"dark: 90% of its pixels at or below {v:.0%} brightness (median {med:.0%})",
    ),
    Issue(
        "overexposed",
        lambda m: m[:, 1],
        False,
        lambda s: 0.8,
        lambda v, med: (
            f"overexposed: 90% of its pixels at or above {v:.0%} brightness (median {med:.0%})"
        ),
    ),
    Issue(
        "blurry",
        lambda m: m[:, 2],
        True,
        lambda s: -1.0,
        lambda v, med: (
            f"blurry: sharpness {v:.1f} (median {med:.1f}; log of Laplacian over "
            "grey-level variance)"
        ),
    ),
    Issue(
        "low_information",
        lambda m: m[:, 3],
        True,
        lambda s: 1.0,
        lambda v, med: f"nearly uniform: {v:.1f} bits of grey-level entropy (median {med:.1f})",
    ),
    Issue(
        "tiny",
        lambda m: np.minimum(m[:, 4], m[:, 5]),
        True,
        lambda s: float(np.log2(s.min_side)),
        lambda v, med: f"tiny: shorter side {2**v:.0f} px (median {2**med:.0f} px)",
    ),
    Issue(
        "odd_aspect",
        _aspect,
        False,
        lambda s: float(np.log2(s.max_aspect)),
        lambda v, med: f"extreme aspect ratio {2**v:.1f}:1 (median {2**med:.1f}:1)",
    ),
)


@dataclass(frozen=True)
class ImageFlags:
    """Per row: the issues in words (None: fine or not measured); per issue: its limit and count."""

    issues: list[str | None]
    limits: dict[str, float]
    found: dict[str, int]

    @property
    def flagged(self) -> np.ndarray:
        """Rows with at least one issue."""
        return np.array([i is not None for i in self.issues], dtype=bool)


def judge_images(measures: np.ndarray, settings: ImageQualitySettings) -> ImageFlags:
    """Each measured row's issues (NaN rows are not measured: unreadable or not an image)."""
    ok = np.isfinite(measures).all(axis=1)
    words: list[list[str]] = [[] for _ in range(len(measures))]
    limits, found = {}, {}
    for issue in ISSUES:
        value = np.where(ok, issue.value(np.nan_to_num(measures)), np.nan)
        centre = Robust.of(value[ok])
        sign = -1.0 if issue.low else 1.0
        robust = centre.median + sign * settings.z * centre.scale
        bound = issue.bound(settings)
        limit = min(robust, bound) if issue.low else max(robust, bound)
        beyond = sign * (np.nan_to_num(value, nan=limit) - limit) > 0
        hit = cap(
            beyond, sign * centre.z(np.nan_to_num(value)), settings.max_fraction, int(ok.sum())
        )
        for r in np.flatnonzero(hit):
            words[r].append(issue.words(float(value[r]), centre.median))
        limits[issue.name], found[issue.name] = float(limit), int(hit.sum())
    return ImageFlags(["; ".join(w) if w else None for w in words], limits, found)


def image_columns(
    table: pl.DataFrame,
    measures: np.ndarray,
    flags: ImageFlags,
    settings: ImageQualitySettings,
    eval_splits: Sequence[str],
) -> pl.DataFrame:
    """The table with its measures, `image_issue` (words) and the policy's drop/review columns."""
    size = np.where(np.isfinite(measures[:, 4:6]), np.exp2(np.nan_to_num(measures[:, 4:6])), np.nan)
    cols = [
        pl.Series("img_width", np.rint(size[:, 0])).fill_nan(None).cast(pl.Int64),
        pl.Series("img_height", np.rint(size[:, 1])).fill_nan(None).cast(pl.Int64),
    ]
    cols += [
        pl.Series(f"img_{name}", measures[:, k].astype(np.float64)).fill_nan(None)
        for k, name in enumerate(MEASURES[:4])
    ]
    cols.append(pl.Series("image_issue", flags.issues, dtype=pl.Utf8))
    policy = policy_columns(
        table, flags.flagged, settings.policy, REASON, eval_splits, prefix="image"
    )
    return table.with_columns(cols + policy)


def info(flags: ImageFlags, settings: ImageQualitySettings) -> dict[str, Any]:
    """What the manifest records: the policy, the calibrated limits and the counts per issue."""
    shown = {
        "dark": lambda v: f"brightness p90 < {v:.0%}",
        "overexposed": lambda v: f"brightness p10 > {v:.0%}",
        "blurry": lambda v: f"sharpness < {v:.2f}",
        "low_information": lambda v: f"entropy < {v:.2f} bits",
        "tiny": lambda v: f"shorter side < {2**v:.0f} px",
        "odd_aspect": lambda v: f"aspect > {2**v:.1f}:1",
    }
    return {
        "policy": settings.policy,
        "found": {k: n for k, n in flags.found.items() if n},
        "limits": {k: shown[k](v) for k, v in flags.limits.items()},
        "flagged": int(flags.flagged.sum()),
    }
