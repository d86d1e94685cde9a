"""Active-learning selection: scores, budgets, and batches that never hold near-copies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leanset.labeling.config import LabelingError
from leanset.labeling.select import DIVERSITY, SELECTORS, select_batch


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pool(n: int = 300, k: int = 4, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random probabilities and unit embeddings."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(k) * 0.5, n), _unit(rng.normal(size=(n, d)))


def test_scores_on_known_rows() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    rng = np.random.default_rng(0)
    assert np.allclose(SELECTORS["margin"](probs, rng), [0.0, 1.0, 1.0])
    assert np.allclose(SELECTORS["least_confidence"](probs, rng), [0.0, 0.5, 2 / 3])
    assert np.allclose(SELECTORS["entropy"](probs, rng), [0.0, np.log(2) / np.log(3), 1.0])
    assert SELECTORS["random"](probs, rng).shape == (3,)


@pytest.mark.parametrize("strategy", sorted(SELECTORS))
@pytest.mark.parametrize("diversity", sorted(DIVERSITY))
def test_batch_respects_budget_candidates_and_groups(strategy: str, diversity: str) -> None:
    probs, emb = _pool()
    groups = np.repeat(np.arange(150), 2)  # every row has a twin
    cand = np.arange(0, 300, 1)[::3] if strategy == "random" else np.arange(300)
    sel = select_batch(
        probs,
        emb,
        budget=20,
        candidate_idx=cand,
        strategy=strategy,
        diversity=diversity,
        groups=groups,
        seed=1,
    )
    assert len(sel.indices) == 20
    assert len(set(sel.indices.tolist())) == 20
    assert set(sel.indices.tolist()) <= set(cand.tolist())
    assert len(set(groups[sel.indices].tolist())) == 20
    assert np.isnan(sel.al_score[np.setdiff1d(np.arange(300), cand)]).all()


def test_uncertainty_without_diversity_takes_the_top_scores() -> None:
    probs, emb = _pool()
    sel = select_batch(probs, emb, budget=10, diversity="none", max_similarity=None)
    margin = SELECTORS["margin"](probs, np.random.default_rng(0))
    assert np.allclose(np.sort(sel.scores)[::-1], np.sort(margin)[::-1][:10])
    assert (np.diff(sel.scores) <= 0).all()


def test_pool_limits_diversity_to_uncertain_rows() -> None:
    probs, emb = _pool()
    sel = select_batch(probs, emb, budget=10, pool_factor=3)
    margin = SELECTORS["margin"](probs, np.random.default_rng(0))
    assert sel.n_pool == 30
    assert sel.scores.min() >= np.sort(margin)[::-1][29]


@pytest.mark.parametrize("diversity", sorted(DIVERSITY))
def test_planted_near_copies_never_share_a_batch(diversity: str) -> None:
    # Every uncertain row has a near-copy (cosine > 0.99) and no group says so.
    rng = np.random.default_rng(3)
    base = _unit(rng.normal(size=(40, 32)))
    twins = _unit(base + rng.normal(scale=0.01, size=base.shape))
    emb = np.vstack([base, twins])
    probs = np.full((80, 2), 0.5)
    sel = select_batch(probs, emb, budget=30, diversity=diversity, pool_factor=3)
    sims = emb[sel.indices] @ emb[sel.indices].T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.95
    assert len(sel.indices) > 0


def test_excluded_groups_are_never_chosen() -> None:
    probs, emb = _pool()
    groups = np.arange(300) % 50
    sel = select_batch(probs, emb, budget=30, groups=groups, exclude_groups=range(0, 50, 2))
    assert (groups[sel.indices] % 2 == 1).all()
    assert len(sel.indices) == 25  # one per remaining group


def test_kcenter_spreads_over_clusters() -> None:
    # Five tight clusters of equally uncertain rows: k-center takes one from each.
    rng = np.random.default_rng(4)
    centers = _unit(rng.normal(size=(5, 8)))
    emb = _unit(np.repeat(centers, 20, axis=0) + rng.normal(scale=0.05, size=(100, 8)))
    probs = np.full((100, 3), 1 / 3)
    for diversity in ("kcenter", "kmeans"):
        sel = select_batch(probs, emb, budget=5, diversity=diversity, pool_factor=20)
        assert sorted((sel.indices // 20).tolist()) == [0, 1, 2, 3, 4], diversity


def test_same_seed_same_batch() -> None:
    probs, emb = _pool()
    a = select_batch(probs, emb, budget=15, strategy="random", diversity="kmeans", seed=5)
    b = select_batch(probs, emb, budget=15, strategy="random", diversity="kmeans", seed=5)
    assert a.indices.tolist() == b.indices.tolist()


def test_columns_hold_al_score_and_queue_rank() -> None:
    probs, emb = _pool(n=50)
    sel = select_batch(probs, emb, budget=5, candidate_idx=np.arange(10, 50))
    cols = sel.columns()
    assert cols.height == 50
    assert cols["al_score"].null_count() == 10
    ranks = cols["queue_rank"]
    assert sorted(ranks.drop_nulls().to_list()) == [1, 2, 3, 4, 5]
    assert cols["queue_rank"][int(sel.indices[0])] == 1


def test_zero_budget_and_empty_candidates_give_empty_batches() -> None:
    probs, emb = _pool(n=20)
    assert len(select_batch(probs, emb, budget=0).indices) == 0
    assert len(select_batch(probs, emb, budget=5, candidate_idx=np.array([], int)).indices) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "bald"}, "strategy must be one of margin, entropy"),
        ({"diversity": "dpp"}, "diversity must be one of"),
        ({"budget": -1}, "budget must be an integer >= 0"),
        ({"candidate_idx": np.array([3, 99])}, "candidate_idx holds 99, outside"),
        ({"candidate_idx": np.array([3, 3])}, "same row twice"),
        ({"groups": np.zeros(5, int)}, "groups must be 20 integers"),
        ({"pool_factor": 0.5}, "pool_factor must be >= 1"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message) -> None:
    probs, emb = _pool(n=20)
    args = {"budget": 3, **kwargs}
    with pytest.raises(LabelingError, match=message):
        select_batch(probs, emb, **args)


def test_probs_of_the_wrong_shape_are_an_error() -> None:
    probs, emb = _pool(n=20)
    with pytest.raises(LabelingError, match="pred_probs has 19 rows, the sample table 20"):
        select_batch(probs[:19], emb, budget=3)


@settings(max_examples=25, deadline=None)
@given(
    n_groups=st.integers(1, 30),
    budget=st.integers(0, 40),
    seed=st.integers(0, 1000),
    diversity=st.sampled_from(sorted(DIVERSITY)),
)
def test_a_batch_never_holds_two_members_of_one_group(n_groups, budget, seed, diversity) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    groups = rng.integers(-1, n_groups, n)  # -1: no group
    probs, emb = _pool(n=n, seed=seed)
    sel = select_batch(probs, emb, budget=budget, groups=groups, diversity=diversity, seed=seed)
    chosen = groups[sel.indices]
    grouped = chosen[chosen >= 0]
    assert len(grouped) == len(set(grouped.tolist()))
    assert len(sel.indices) <= budget
