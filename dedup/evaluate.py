"""Pairwise precision/recall of found duplicate groups against a truth, and set P/R for flags.

Groups are scored by co-membership: every unordered pair of items inside one group is a pair. A
found pair is a true positive when both items are also in one truth group. Items are any hashable
ids (in leanset, paths relative to the dataset root). Singletons add no pairs, so an item that is
in no group simply counts as "not a duplicate". The groups of one side must be disjoint (a found
grouping from union-find is); an item listed twice in the same group counts once. Counting is by
group sizes, so it is linear in the number of items even when a group is huge.

Empty cases, by convention: with nothing found, precision is 1.0 (no wrong finds); with nothing
to find, recall is 1.0 (nothing missed). F1 is the harmonic mean, 0.0 when precision and recall
are both 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PairScore:
    """Pairwise precision, recall and F1 of found groups against truth groups."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    found_pairs: int
    truth_pairs: int

    def summary(self) -> str:
        """One line for reports."""
        return (
            f"precision {self.precision:.3f}  recall {self.recall:.3f}  f1 {self.f1:.3f}  "
            f"({self.true_positives} of {self.found_pairs} found pairs correct, "
            f"{self.truth_pairs} true pairs)"
        )


@dataclass(frozen=True)
class FlagScore:
    """Precision, recall and F1 of a set of flagged items against the truly bad items."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    flagged: int
    truth: int

    def summary(self) -> str:
        """One line for reports."""
        return (
            f"precision {self.precision:.3f}  recall {self.recall:.3f}  f1 {self.f1:.3f}  "
            f"({self.true_positives} of {self.flagged} flagged correct, {self.truth} to find)"
        )


def evaluate_groups(
    truth_groups: Sequence[Iterable[Hashable]], found_groups: Sequence[Iterable[Hashable]]
) -> PairScore:
    """Pairwise P/R of `found_groups` against `truth_groups` (each a list of disjoint groups)."""
    truth_of = _group_index(truth_groups, "truth_groups")
    found_of = _group_index(found_groups, "found_groups")
    truth_pairs = _pair_count(Counter(truth_of.values()).values())
    found_pairs = _pair_count(Counter(found_of.values()).values())
    both = Counter((g, truth_of[x]) for x, g in found_of.items() if x in truth_of)
    true_positives = _pair_count(both.values())
    precision, recall, f1 = _rates(true_positives, found_pairs, truth_pairs)
    return PairScore(precision, recall, f1, true_positives, found_pairs, truth_pairs)


def evaluate_flags(truth: Iterable[Hashable], flagged: Iterable[Hashable]) -> FlagScore:
    """Set P/R of `flagged` items against the `truth` items (e.g. samples with a wrong label)."""
    truth_set = _item_set(truth, "truth")
    flagged_set = _item_set(flagged, "flagged")
    true_positives = len(truth_set & flagged_set)
    precision, recall, f1 = _rates(true_positives, len(flagged_set), len(truth_set))
    return FlagScore(precision, recall, f1, true_positives, len(flagged_set), len(truth_set))


def _group_index(groups: Sequence[Iterable[Hashable]], name: str) -> dict[Hashable, int]:
    """{item: index of its group}; rejects strings as groups, unhashable items and overlaps."""
    if isinstance(groups, (str, bytes)):
        raise TypeError(f"{name}: expected a list of groups, got a {type(groups).__name__}")
    index: dict[Hashable, int] = {}
    for g, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, Iterable):
            raise TypeError(
                f"{name}[{g}]: expected a list of item ids, got {type(group).__name__} {group!r}"
            )
        for item in group:
            _check_hashable(item, f"{name}[{g}]")
            seen = index.setdefault(item, g)
            if seen != g:
                raise ValueError(
                    f"{name}: item {item!r} is in group {seen} and group {g}; "
                    "groups must be disjoint (merge overlapping groups first)"
                )
    return index


def _item_set(items: Iterable[Hashable], name: str) -> set[Hashable]:
    """`items` as a set; rejects a bare string and unhashable items."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"{name}: expected a set of item ids, got {type(items).__name__}")
    out = set()
    for item in items:
        _check_hashable(item, name)
        out.add(item)
    return out


def _check_hashable(item: object, where: str) -> None:
    """TypeError naming `where` when `item` cannot be an id."""
    if not isinstance(item, Hashable):
        raise TypeError(
            f"{where}: item {item!r} is a {type(item).__name__}; expected a hashable id"
        )


def _pair_count(sizes: Iterable[int]) -> int:
    """Number of unordered pairs inside groups of the given sizes."""
    return sum(n * (n - 1) // 2 for n in sizes)


def _rates(true_positives: int, found: int, truth: int) -> tuple[float, float, float]:
    """(precision, recall, f1) with 1.0 for an empty denominator (see the module docstring)."""
    precision = true_positives / found if found else 1.0
    recall = true_positives / truth if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
