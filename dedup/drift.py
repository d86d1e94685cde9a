"""Do two splits look alike in embedding space? A k-nearest-neighbour two-sample test.

Pool a sample of each split; for every pooled row, its `k` nearest others. If the splits were
drawn from one distribution, the share of neighbours from a row's own split would be what a
random relabelling of the pool gives; an eval split that sits elsewhere (another source, another
time, a shifted class mix) has rows whose neighbours are mostly its own. The p-value is a
permutation test on the fixed neighbour graph, so its cost is bounded by the sample size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from leanset.dedup.config import DriftSettings
from leanset.dedup.matrix import Rows
from leanset.dedup.near import sample_neighbours


@dataclass(frozen=True)
class SplitTest:
    """The share of same-split neighbours, its expectation under no shift, and the p-value."""

    statistic: float
    expected: float
    p_value: float
    rows: tuple[int, int]  # how many rows of (train, eval) the test used
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        out = asdict(self)
        out["statistic"], out["expected"] = round(self.statistic, 4), round(self.expected, 4)
        out["p_value"] = float(f"{self.p_value:.3g}")
        return out


def _same_share(idx: np.ndarray, side: np.ndarray) -> float:
    """The share of (row, neighbour) pairs whose two rows are on the same side."""
    valid = idx >= 0
    same = side[:, None] == side[np.maximum(idx, 0)]
    return float((same & valid).sum() / max(valid.sum(), 1))


def split_shift(
    train: np.ndarray, other: np.ndarray, settings: DriftSettings, device: str = "auto"
) -> SplitTest:
    """The k-NN two-sample test of `other` (unit rows) against `train` (unit rows)."""
    rows = np.arange(len(train) + len(other))
    both = np.concatenate([train, other]) if len(rows) else train
    return split_shift_rows(both, rows[: len(train)], rows[len(train) :], settings, device)


def split_shift_rows(
    x: Rows, train: np.ndarray, other: np.ndarray, settings: DriftSettings, device: str = "auto"
) -> SplitTest:
    """`split_shift` of rows `other` of `x` against its rows `train`: only the sampled rows are
    read (a matrix kept on a cluster sends at most 2 x `settings.sample` rows here)."""
    rng = np.random.default_rng(settings.seed)
    ia = train[rng.permutation(len(train))[: settings.sample]]
    ib = other[rng.permutation(len(other))[: settings.sample]]
    pick = np.concatenate([ia, ib])
    got = x[pick] if isinstance(x, np.ndarray) else x.fetch(pick)
    pool = np.ascontiguousarray(got, dtype=np.float32)
    side = np.r_[np.zeros(len(ia), bool), np.ones(len(ib), bool)]
    k = min(settings.k, len(pool) - 1)
    nb = sample_neighbours(pool, k, len(pool), rows=np.arange(len(pool)), device=device)
    observed = _same_share(nb.idx, side)
    null = np.array(
        [_same_share(nb.idx, rng.permutation(side)) for _ in range(settings.permutations)]
    )
    p = float((1 + (null >= observed).sum()) / (1 + len(null)))
    verdict = "differs from train (not IID)" if p < settings.alpha else "looks like train"
    return SplitTest(observed, float(null.mean()), p, (len(ia), len(ib)), verdict)
