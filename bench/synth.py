"""Clustered synthetic embeddings with planted near-duplicate pairs at known cosine similarities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Synthetic:
    """Embeddings (float32, L2-normalised rows) and the planted pairs (i < j) with their cosines."""

    emb: np.ndarray
    planted_i: np.ndarray
    planted_j: np.ndarray
    planted_sim: np.ndarray
    params: dict


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (in place)."""
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _orthogonal_unit(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """One random unit vector per row of `x`, orthogonal to that row (rows of `x` are unit)."""
    u = rng.standard_normal(x.shape, dtype=np.float32)
    u -= np.einsum("ij,ij->i", u, x)[:, None] * x
    return _unit_rows(u)


def _cluster_sizes(rng: np.random.Generator, n: int, n_centres: int) -> np.ndarray:
    """Skewed (log-normal) cluster sizes summing to `n`."""
    w = rng.lognormal(mean=0.0, sigma=1.0, size=n_centres)
    sizes = np.floor(w / w.sum() * n).astype(np.int64)
    sizes[: n - int(sizes.sum())] += 1
    return sizes


def _centres(rng: np.random.Generator, n_centres: int, dim: int) -> np.ndarray:
    """Cluster centres grouped under super-centres (centres of one group have cosine ~0.5)."""
    n_super = max(1, n_centres // 10)
    sup = _unit_rows(rng.standard_normal((n_super, dim), dtype=np.float32))
    owner = rng.integers(0, n_super, size=n_centres)
    noise = _orthogonal_unit(rng, sup[owner])
    return _unit_rows(0.7 * sup[owner] + 0.7 * noise)


def _members(
    rng: np.random.Generator, centres: np.ndarray, sizes: np.ndarray, spread: tuple[float, float]
) -> np.ndarray:
    """Members around their centres, each at a cosine to its centre drawn from `spread`."""
    out = np.empty((int(sizes.sum()), centres.shape[1]), dtype=np.float32)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    step = 65536
    for s in range(0, len(owner), step):
        c = centres[owner[s : s + step]]
        cos = rng.uniform(spread[0], spread[1], size=len(c)).astype(np.float32)[:, None]
        out[s : s + step] = cos * c + np.sqrt(1.0 - cos**2) * _orthogonal_unit(rng, c)
    return _unit_rows(out)


def clustered_embeddings(
    n: int,
    dim: int,
    *,
    threshold: float = 0.9,
    planted_frac: float = 0.05,
    background_frac: float = 0.02,
    rows_per_centre: int = 1000,
    spread: tuple[float, float] = (0.5, 0.85),
    seed: int = 0,
) -> Synthetic:
    """Clustered rows plus planted pairs whose cosine is uniform in [threshold + 1e-4, 1].

    Centres sit under super-centres, cluster sizes are skewed, a `background_frac` share of the
    base rows is uniform on the sphere (the hard case for partitioned search), and `planted_frac`
    of all rows are near-copies of another row. Rows are shuffled.
    """
    if n < 2 or dim < 2:
        raise ValueError(f"need n >= 2 and dim >= 2, got n={n}, dim={dim}")
    rng = np.random.default_rng(seed)
    n_planted = int(round(n * planted_frac))
    n_base = n - n_planted
    n_background = int(round(n_base * background_frac))
    n_members = n_base - n_background
    n_centres = max(1, n_members // rows_per_centre)
    centres = _centres(rng, n_centres, dim)
    base = np.concatenate(
        [
            _members(rng, centres, _cluster_sizes(rng, n_members, n_centres), spread),
            _unit_rows(rng.standard_normal((n_background, dim), dtype=np.float32)),
        ]
    )
    src = rng.choice(n_base, size=n_planted, replace=n_planted > n_base)
    sim = rng.uniform(threshold + 1e-4, 1.0, size=n_planted).astype(np.float32)
    x = base[src]
    dup = _unit_rows(sim[:, None] * x + np.sqrt(1.0 - sim**2)[:, None] * _orthogonal_unit(rng, x))
    emb = np.concatenate([base, dup])
    perm = rng.permutation(n)
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    emb = np.ascontiguousarray(emb[perm])
    a, b = inv[src], inv[n_base + np.arange(n_planted)]
    i, j = np.minimum(a, b), np.maximum(a, b)
    true_sim = np.einsum("ij,ij->i", emb[i].astype(np.float64), emb[j].astype(np.float64))
    params = {
        "n": n,
        "dim": dim,
        "threshold": threshold,
        "planted_frac": planted_frac,
        "background_frac": background_frac,
        "n_centres": n_centres,
        "spread": list(spread),
        "seed": seed,
    }
    return Synthetic(emb, i, j, true_sim.astype(np.float32), params)


def with_threshold_pairs(
    emb: np.ndarray, share: float, threshold: float, seed: int = 0
) -> np.ndarray:
    """`emb` with a `share` of its rows replaced by partners of other rows whose cosine is the
    threshold within a few float32 ulps: where float32, fp16 and bf16 sums disagree."""
    rng = np.random.default_rng(seed)
    n = emb.shape[0]
    m = max(1, int(n * share))
    src, dst = rng.choice(n, size=(2, m), replace=False)
    x = emb[src]
    cos = (threshold + rng.choice([-3, -2, -1, 0, 1, 2, 3], size=m) * 6e-8).astype(np.float32)
    out = emb.copy()
    out[dst] = _unit_rows(
        cos[:, None] * x + np.sqrt(1.0 - cos**2)[:, None] * _orthogonal_unit(rng, x)
    )
    return out
