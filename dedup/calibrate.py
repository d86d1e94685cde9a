"""`threshold: auto`: a similarity threshold chosen from the data itself, with its evidence.

A threshold means different things on different datasets and embedders: distinct photos of one
kind of object can sit at cosine 0.99 while re-encoded copies of photos of many kinds sit at
0.9. So the threshold is read off the data. Each sampled row's 5th to 10th nearest neighbours
(see K_NULL, K) are almost never its copies (groups of copies are smaller than that), so their similarities sample what
*distinct but close* looks like on this dataset: the null. The threshold sits `margin` of the way
from the null's 99.9th percentile to 1. A pair above it is closer than almost any two distinct
samples of this dataset are.

The evidence (kept in the manifest and drawn in the report) is the histogram of the sampled rows'
nearest-neighbour similarity, the null's quantile, and, for nearby thresholds, how many samples
would have a neighbour at least that close.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from leanset.dedup.near import Neighbours

K = 10  # neighbours looked at per sampled row
K_NULL = 5  # the null: each row's K_NULL-th to K-th neighbours (groups of copies are smaller)
HASH_Q = 0.05  # the hash null's low quantile: a copy must come within half of it
Q = 0.999  # the null's quantile the threshold must clear
SAMPLE = 2000  # rows sampled (exact neighbours against all rows)
HIST_BINS = 40
TOO_FEW = 0.999  # the threshold when a dataset has too few samples to read one off


@dataclass(frozen=True)
class Calibration:
    """A threshold and why: the rule, and the evidence it read."""

    threshold: float
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record (threshold, rule, histogram, drops by nearby threshold)."""
        return {"threshold": self.threshold, "rule": self.rule, **self.evidence}


def null_quantile(nb: Neighbours, n_rows: int, margin: float, what: str) -> Calibration:
    """The threshold `margin` of the way from the null's Q quantile to 1 (see the module)."""
    sims = nb.sim[:, K_NULL - 1 : K]
    null = sims[np.isfinite(sims)]
    if null.size == 0:
        return Calibration(
            TOO_FEW,
            f"{what}: too few samples to calibrate ({n_rows}); only pairs at {TOO_FEW} or above "
            f"(identical up to rounding) count",
        )
    top = float(np.quantile(null, Q))
    value = round(min(1.0, top + margin * (1.0 - top)), 6)
    rule = (
        f"{what}: {margin:g} of the way from {top:.4f} (the {Q:.1%} quantile of {null.size:,} "
        f"similarities of {len(nb.rows):,} sampled samples to their {K_NULL}th-{K}th nearest "
        f"neighbours, distinct but close on this data) to 1"
    )
    return Calibration(value, rule, evidence(nb, n_rows, value) | {"null_quantile": top})


def evidence(nb: Neighbours, n_rows: int, threshold: float) -> dict[str, Any]:
    """The nearest-neighbour histogram and, per nearby threshold, the samples it would touch."""
    nn1 = nb.sim[:, 0][np.isfinite(nb.sim[:, 0])]
    if nn1.size == 0:
        return {}
    lo = float(min(np.quantile(nn1, 0.01), threshold - 0.05))
    edges = np.linspace(max(lo, -1.0), 1.0, HIST_BINS + 1)
    counts, _ = np.histogram(np.clip(nn1, edges[0], 1.0), bins=edges)
    grid = sorted({round(threshold + d, 4) for d in (-0.03, -0.02, -0.01, 0.0, 0.01)} - {1.01})
    share = {f"{t:.4f}": int(round(float((nn1 >= t).mean()) * n_rows)) for t in grid if t <= 1.0}
    return {
        "nn_histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()},
        "drops_by_threshold": share,
        "drops_note": (
            f"samples with a neighbour at least that similar, estimated from {nn1.size:,} "
            f"sampled samples (an upper bound on what the threshold would drop)"
        ),
        "sampled": int(nn1.size),
    }


def hash_bits(null_distances: np.ndarray, most: int) -> Calibration:
    """The hashes route's bit budget: half the distance that the closest 5% of distinct-but-close
    pairs come within (a low quantile, robust to a few natural near-copy groups in the null),
    never more than `most`; under 2 bits the route stays off."""
    if null_distances.size == 0:
        return Calibration(0.0, "hashes: too few samples to calibrate; route off")
    low = float(np.quantile(null_distances, HASH_Q))
    bits = int(min(most, np.floor(low / 2)))
    state = f"{bits} bits" if bits >= 2 else "off (distinct samples hash too alike here)"
    rule = (
        f"hashes: {state}: half of {low:.1f} bits, within which the closest {HASH_Q:.0%} of "
        f"distinct-but-close samples come, at most {most}"
    )
    return Calibration(float(max(bits, 0)) if bits >= 2 else 0.0, rule, {"null_low_bits": low})


def fixed(threshold: float, nb: Neighbours | None, n_rows: int, what: str) -> Calibration:
    """A threshold the flow set explicitly, with the same evidence for the report."""
    ev = evidence(nb, n_rows, threshold) if nb is not None else {}
    return Calibration(float(threshold), f"{what}: set in flows.yaml", ev)


def as_dict(cal: Calibration) -> dict[str, Any]:
    """Plain data."""
    return asdict(cal)


def null_floor(nb: Neighbours, q: float) -> float | None:
    """The `q` quantile of the null (see the module): a loose floor for candidates that a second
    check confirms, derived from the same neighbours as the threshold."""
    sims = nb.sim[:, K_NULL - 1 : K]
    null = sims[np.isfinite(sims)]
    return round(float(np.quantile(null, q)), 6) if null.size else None
