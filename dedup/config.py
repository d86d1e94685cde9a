"""The dedup stage's settings and its error (flows.yaml's `dedup:` section is loaded into these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    threshold: float | Literal["auto"] = "auto"  # cosine; auto: calibrated on this data
    confirm: Literal["auto", "embedding"] | list[str] = "auto"  # the routes that accept a pair
    keep: Literal["first", "last", "largest", "centroid"] = "first"
    eval_splits: list[str] = field(default_factory=lambda: list(EVAL_SPLITS))
    leakage: Literal["drop_train", "drop_eval", "report"] = "drop_train"
    dedup_eval: bool = False
    search: Literal["auto", "exact", "partitioned"] = "auto"
    exact_max_rows: int | None = None  # None: 200k on CPU, 2M on a GPU
    max_drop_fraction: float | None = 0.3  # the guard: refuse to drop more of a split (None: off)
    max_group_fraction: float | None = 0.1  # ... or to put more of a split into one group
    guard_min_rows: int = 50  # splits smaller than this are not judged
