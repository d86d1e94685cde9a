"""Pairwise group precision/recall and flag precision/recall on hand-made cases."""

from __future__ import annotations

import itertools
import random

import pytest

from leanset.dedup.evaluate import FlagScore, PairScore, evaluate_flags, evaluate_groups


def _pairs(groups: list[list[object]]) -> set[frozenset[object]]:
    """All unordered pairs inside the groups (the brute-force definition)."""
    return {frozenset(p) for g in groups for p in itertools.combinations(set(g), 2)}


def test_known_answer() -> None:
    truth = [["a", "b", "c"], ["d", "e"]]  # pairs ab ac bc de
    found = [["a", "b"], ["c", "d", "e"]]  # pairs ab cd ce de: ab and de are right
    score = evaluate_groups(truth, found)
    assert score == PairScore(0.5, 0.5, 0.5, 2, 4, 4)


def test_items_outside_the_truth_are_false_positives() -> None:
    score = evaluate_groups([["a", "b", "c"], ["d", "e"]], [["a", "b", "x"]])
    assert (score.true_positives, score.found_pairs, score.truth_pairs) == (1, 3, 4)
    assert score.precision == pytest.approx(1 / 3)
    assert score.recall == pytest.approx(1 / 4)
    assert score.f1 == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))


def test_perfect_and_order_free() -> None:
    truth = [["train/1/a.png", "test/1/b.png"], ["x", "y", "z"]]
    found = [["z", "y", "x"], ("test/1/b.png", "train/1/a.png"), ["lonely"]]
    assert evaluate_groups(truth, found) == PairScore(1.0, 1.0, 1.0, 4, 4, 4)


def test_empty_inputs() -> None:
    assert evaluate_groups([], []) == PairScore(1.0, 1.0, 1.0, 0, 0, 0)
    nothing_found = evaluate_groups([["a", "b"]], [])
    assert (nothing_found.precision, nothing_found.recall, nothing_found.f1) == (1.0, 0.0, 0.0)
    nothing_to_find = evaluate_groups([], [["a", "b"]])
    assert (nothing_to_find.precision, nothing_to_find.recall) == (0.0, 1.0)
    singletons = evaluate_groups([["a"], ["b"]], [["a"], []])
    assert singletons == PairScore(1.0, 1.0, 1.0, 0, 0, 0)


def test_repeated_item_in_one_group_counts_once() -> None:
    assert evaluate_groups([["a", "b"]], [["a", "a", "b"]]) == PairScore(1.0, 1.0, 1.0, 1, 1, 1)


def test_any_hashable_ids() -> None:
    score = evaluate_groups([[1, 2], [(3, "x"), (4, "y")]], [[1, 2, (3, "x")]])
    assert (score.true_positives, score.found_pairs, score.truth_pairs) == (1, 3, 2)


def test_matches_brute_force_on_random_partitions() -> None:
    rng = random.Random(7)
    for _ in range(200):
        items = list(range(rng.randint(0, 30)))
        truth = _random_partition(items, rng)
        found = _random_partition(rng.sample(items, k=len(items) // 2) + [100, 101], rng)
        score = evaluate_groups(truth, found)
        t, f = _pairs(truth), _pairs(found)
        assert (score.true_positives, score.found_pairs, score.truth_pairs) == (
            len(t & f),
            len(f),
            len(t),
        )


def _random_partition(items: list[int], rng: random.Random) -> list[list[int]]:
    """Items split into random groups."""
    groups: list[list[int]] = []
    for item in items:
        if groups and rng.random() < 0.6:
            rng.choice(groups).append(item)
        else:
            groups.append([item])
    return groups


def test_overlapping_groups_are_rejected_naming_the_item() -> None:
    with pytest.raises(ValueError, match=r"found_groups: item 'b' is in group 0 and group 1"):
        evaluate_groups([["a", "b"]], [["a", "b"], ["b", "c"]])


def test_bad_group_shapes_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"truth_groups\[1\]: expected a list of item ids"):
        evaluate_groups([["a", "b"], "cd"], [])
    with pytest.raises(TypeError, match="found_groups: expected a list of groups"):
        evaluate_groups([], "ab")
    with pytest.raises(TypeError, match=r"found_groups\[0\]: item \['a'\] is a list"):
        evaluate_groups([], [[["a"], "b"]])


def test_flags_known_answer() -> None:
    score = evaluate_flags({"a", "b", "c", "d"}, {"c", "d", "e"})
    assert (score.true_positives, score.flagged, score.truth) == (2, 3, 4)
    assert score.precision == pytest.approx(2 / 3)
    assert score.recall == pytest.approx(1 / 2)
    assert score.f1 == pytest.approx(4 / 7)


def test_flags_empty_inputs() -> None:
    assert evaluate_flags(set(), set()) == FlagScore(1.0, 1.0, 1.0, 0, 0, 0)
    assert evaluate_flags({"a"}, set()) == FlagScore(1.0, 0.0, 0.0, 0, 0, 1)
    assert evaluate_flags(set(), ["a"]) == FlagScore(0.0, 1.0, 0.0, 0, 1, 0)
    with pytest.raises(TypeError, match="flagged: expected a set of item ids"):
        evaluate_flags({"a"}, "a")


def test_summaries_are_one_line() -> None:
    assert "\n" not in evaluate_groups([["a", "b"]], [["a", "b"]]).summary()
    assert "precision 1.000" in evaluate_flags({"a"}, {"a"}).summary()
