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


CheckPolicy = Literal["flag", "drop", "queue", "off"]  # what a quality check does with its finds


def _check_share(where: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise DedupError(f"{where}: expected a share in (0, 1], got {value!r}")


@dataclass(frozen=True)
class OutlierSettings:
    """Samples far from every other (flows.yaml's `outliers:`): the mean cosine distance to the
    `k` nearest distinct contents, as a robust z-score over this dataset; flagged at `z` or
    above, at most `max_fraction` of the scored rows (the most extreme). Above `sample` distinct
    contents, each one's neighbours are searched among a random `sample` of them (cost N x
    sample, not N x N)."""

    policy: CheckPolicy = "flag"
    k: int = 10
    z: float = 3.0
    max_fraction: float = 0.02
    sample: int = bounded(200_000, low=2)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise DedupError(f"outliers.k: expected an integer >= 1, got {self.k!r}")
        if not self.z > 0:
            raise DedupError(f"outliers.z: expected a number > 0, got {self.z!r}")
        _check_share("outliers.max_fraction", self.max_fraction)


@dataclass(frozen=True)
class ImageQualitySettings:
    """Unusable images (flows.yaml's `image_quality:`): each measure's limit is the dataset's
    median minus `z` robust deviations (MAD), and never looser than the fixed floor of the
    measure, so a dataset of fine images flags nothing; at most `max_fraction` per issue."""

    policy: CheckPolicy = "flag"
    z: float = 2.5
    max_fraction: float = 0.1
    min_side: int = 16  # pixels: a shorter side is tiny whatever the dataset
    max_aspect: float = 4.0  # a longer side this many times the shorter is extreme

    def __post_init__(self) -> None:
        if not self.z > 0:
            raise DedupError(f"image_quality.z: expected a number > 0, got {self.z!r}")
        _check_share("image_quality.max_fraction", self.max_fraction)
        if self.min_side < 1 or not self.max_aspect >= 1:
            raise DedupError(
                "image_quality: min_side must be >= 1 and max_aspect >= 1, got "
                f"{self.min_side!r} and {self.max_aspect!r}"
            )


@dataclass(frozen=True)
class DriftSettings:
    """Whether each eval split looks like the training rows (flows.yaml's `drift:`): a k-NN
    two-sample test on at most `sample` rows of each side, `permutations` label shuffles for its
    p-value; a p-value below `alpha` is reported as a shift."""

    enabled: bool = True
    k: int = 10
    sample: int = 1000
    permutations: int = 1000
    alpha: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.sample < 2 or self.permutations < 1:
            raise DedupError(
                "drift: k and permutations must be >= 1 and sample >= 2, got "
                f"{self.k!r}, {self.permutations!r} and {self.sample!r}"
            )
        _check_share("drift.alpha", self.alpha)
