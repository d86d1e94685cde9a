"""The dedup stage's settings and its error (flows.yaml's `dedup:` section is loaded into these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from leanset.dedup.bounds import bounded, fraction

EVAL_SPLITS = ["test", "validation", "valid", "val", "eval", "dev"]
ROUTES = (
    "embedding",
    "pixels",
    "hashes",
    "geometry",
    "shingles",
)  # what may accept a pair (dedup.stage)


class DedupError(ValueError):
    """The dedup stage cannot run on this input; the message names the sample or setting."""


@dataclass(frozen=True)
class DedupSettings:
    """Exact and near-duplicate detection and the policies that decide what survives."""

    exact: bool = True
    near: bool = True
    # cosine; auto: calibrated on this data
    threshold: float | Literal["auto"] = fraction("auto", open_low=True, also="auto")
    confirm: Literal["auto", "embedding"] | list[str] = "auto"  # the routes that accept a pair
    keep: Literal["first", "last", "largest", "centroid"] = "first"
    eval_splits: list[str] = field(default_factory=lambda: list(EVAL_SPLITS))
    leakage: Literal["drop_train", "drop_eval", "report"] = "drop_train"
    dedup_eval: bool = False
    search: Literal["auto", "exact", "partitioned"] = "auto"
    exact_max_rows: int | None = bounded(None, low=1)  # None: 200k on CPU, 2M on a GPU
    # the guard: refuse to drop more of a split, or to put more of it into one group (None: off)
    max_drop_fraction: float | None = fraction(0.3, open_low=True, also="null")
    max_group_fraction: float | None = fraction(0.1, open_low=True, also="null")
    guard_min_rows: int = bounded(50, low=0)  # splits smaller than this are not judged
