"""Scores of duplicate, leak and label-issue decisions against a built set's truth.json.

Rows are the truth's samples in order (`Truth.paths`, relative to the set's images folder, as
leanset's `source` column names them).

* **pairs**: pairwise precision / recall / F1 of group co-membership against the truth groups
  (an original with all its planted copies, in any split; copy-copy pairs count too), as
  `dedup.evaluate.evaluate_groups` counts them, except that a found pair inside a natural group
  (truth.json `natural_groups`: near copies by nature, such as a fixed camera's background) that
  is not a planted pair counts neither way. `pair_precision_strict` counts those as wrong.
  For a method that reports pairs rather than groups (Datalab) the found pairs are scored as such.
* **per kind**: the share of planted (original, copy) pairs of each kind found together.
* **leaks**: a planted leak is found when its train original is dropped as `test_leak`, points to
  a member of its truth group, and the test copy is kept (`leak_recall`, the strict figure).
  `leak_recall_closed` also counts an original dropped as `test_leak` of a natural near copy of
  it in test (a calibration frame's same background tile): the original is kept out of training
  all the same and the test copy kept, but the planted copy is not the one it is linked to.
* **originals dropped**: train originals with no planted copy and in no natural group
  ("innocent") that were dropped, for any reason: the cost of false duplicates. Each is listed
  with its provenance and what it was matched to, so a person can look at it.
* **label issues**: flagged train samples against the planted label flips (set P/R/F1).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.evaluate import evaluate_flags, evaluate_groups

DUP_REASONS = ("exact_duplicate", "near_duplicate", "test_leak")


@dataclass(frozen=True)
class PlantedPair:
    """One planted (original, copy) pair, as rows."""

    original: int
    copy: int
    kind: str
    leak: bool


@dataclass(frozen=True)
class Truth:
    """truth.json indexed by row."""

    paths: list[str]
    row_of: dict[str, int]
    keys: list[str]
    group_of: np.ndarray  # int64 truth group per row, -1 = in none
    natural_of: np.ndarray  # int64 natural group per row, -1 = in none
    is_original: np.ndarray
    split: np.ndarray
    pairs: list[PlantedPair]
    flipped: frozenset[int]
    match_on: str = "source"  # the decisions column that holds a sample's truth path

    @property
    def innocent(self) -> np.ndarray:
        """Train originals with no planted copy and no natural near copy."""
        alone = (self.group_of < 0) & (self.natural_of < 0)
        return np.asarray(self.is_train & self.is_original & alone, bool)

    @property
    def is_train(self) -> np.ndarray:
        return np.asarray(self.split == "train", bool)


@dataclass(frozen=True)
class Decisions:
    """A leanset version's decisions, by truth row."""

    kept: np.ndarray
    reason: list[str | None]
    ref: np.ndarray  # the row it points to (leak_of for a leak, else the kept duplicate), -1 none
    group: np.ndarray  # the row of its group's anchor, -1 = in no group
    similarity: np.ndarray  # dup_similarity, NaN when none
    label_issue: np.ndarray | None  # bool, None when label noise did not run
    evidence: list[str | None]  # dup_evidence: what accepted a dropped duplicate (None: none)


def _index(members: Iterable[list[str]], row_of: dict[str, int], n: int) -> np.ndarray:
    out = np.full(n, -1, np.int64)
    for g, group in enumerate(members):
        out[[row_of[m] for m in group]] = g
    return out


def load_truth(truth: dict[str, Any]) -> Truth:
    """Index a truth.json by its samples' order."""
    samples = truth["samples"]
    paths = [s["path"] for s in samples]
    row_of = {p: i for i, p in enumerate(paths)}
    n = len(paths)
    pairs = [
        PlantedPair(row_of[p["a"]], row_of[p["b"]], p["kind"], p["leak"]) for p in truth["pairs"]
    ]
    return Truth(
        paths=paths,
        row_of=row_of,
        keys=[s["key"] for s in samples],
        group_of=_index(truth["groups"], row_of, n),
        natural_of=_index(truth.get("natural_groups", []), row_of, n),
        is_original=np.array([s["role"] == "original" for s in samples]),
        split=np.array([s["split"] for s in samples]),
        pairs=pairs,
        flipped=frozenset(row_of[f["path"]] for f in truth.get("label_flips", [])),
        match_on=truth.get("match_on", "source"),
    )


def rows_of_sources(sources: list[str], truth: Truth) -> np.ndarray:
    """Truth rows of leanset's `source` (or, for text, `sample_id`) values (ValueError when the
    table and the set differ)."""
    norm = [s.replace("\\", "/") for s in sources]
    unknown = [s for s in norm if s not in truth.row_of]
    if unknown or len(set(norm)) != len(truth.paths):
        raise ValueError(
            f"the decisions do not describe this set: {len(unknown)} sources not in truth.json "
            f"(e.g. {unknown[:2]}), {len(set(norm))} distinct sources for {len(truth.paths)} "
            f"samples; was the set rebuilt after the run?"
        )
    return np.array([truth.row_of[s] for s in norm], np.int64)


def decisions_from_table(table: pl.DataFrame, truth: Truth) -> Decisions:
    """A leanset decisions table as per-row Decisions in the truth's row order."""
    rows = rows_of_sources(table[truth.match_on].to_list(), truth)
    row_of_id = dict(zip(table["sample_id"].to_list(), rows.tolist(), strict=True))
    n = len(truth.paths)
    kept, ref, group = np.ones(n, bool), np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    reason: list[str | None] = [None] * n
    similarity = np.full(n, np.nan)
    issue = np.zeros(n, bool) if "label_issue" in table.columns else None
    evidence: list[str | None] = [None] * n
    for i, r in zip(rows.tolist(), table.iter_rows(named=True), strict=True):
        kept[i], reason[i] = bool(r["kept"]), r["drop_reason"]
        evidence[i] = r.get("dup_evidence")
        leak = r["leak_of"] if r["drop_reason"] == "test_leak" else None
        target = leak or r["near_dup_of"] or r["exact_dup_of"]
        ref[i] = row_of_id[target] if target else -1
        group[i] = row_of_id[r["dup_group"]] if r["dup_group"] else -1
        if r["dup_similarity"] is not None:
            similarity[i] = r["dup_similarity"]
        if issue is not None:
            issue[i] = bool(r["label_issue"])
    return Decisions(kept, reason, ref, group, similarity, issue, evidence)


def found_groups(group: np.ndarray) -> list[list[int]]:
    """Groups of two or more rows from each row's anchor (-1 = alone)."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group.tolist()):
        if g >= 0:
            members[g].append(i)
    return [m for m in members.values() if len(m) > 1]


def _pairs_in(counts: Iterable[int]) -> int:
    return sum(c * (c - 1) // 2 for c in counts)


def _prf(true: int, judged: int, total: int) -> dict[str, float]:
    p = true / judged if judged else 1.0
    r = true / total if total else 1.0
    return {"pair_precision": p, "pair_recall": r, "pair_f1": 2 * p * r / (p + r) if p + r else 0.0}


def group_pair_scores(groups: list[list[int]], truth: Truth) -> dict[str, Any]:
    """P/R/F1 of found groups' co-member pairs, natural don't-care pairs left out of precision."""
    found = true = natural = 0
    for m in groups:
        found += _pairs_in([len(m)])
        tg = Counter(int(truth.group_of[i]) for i in m if truth.group_of[i] >= 0)
        ng = Counter(int(truth.natural_of[i]) for i in m if truth.natural_of[i] >= 0)
        both = Counter(
            (int(truth.group_of[i]), int(truth.natural_of[i]))
            for i in m
            if truth.group_of[i] >= 0 and truth.natural_of[i] >= 0
        )
        true += _pairs_in(tg.values())
        natural += _pairs_in(ng.values()) - _pairs_in(both.values())
    total = _pairs_in(Counter(g for g in truth.group_of.tolist() if g >= 0).values())
    truth_groups = found_groups(truth.group_of)
    strict = evaluate_groups(truth_groups, groups)
    return {
        **_prf(true, found - natural, total),
        "pair_precision_strict": strict.precision,
        "found_pairs": found,
        "natural_pairs": natural,
        "truth_pairs": total,
    }


def kind_recall(together: Iterable[tuple[PlantedPair, bool]]) -> dict[str, dict[str, float]]:
    """{kind: {n, recall}} over (planted pair, found together) items, in first-seen kind order."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for pair, hit in together:
        hits[pair.kind][0] += int(hit)
        hits[pair.kind][1] += 1
    return {k: {"n": n, "recall": h / n} for k, (h, n) in hits.items()}


def leak_scores(dec: Decisions, truth: Truth) -> dict[str, Any]:
    """Leak recall (test copy kept) and the precision of the leaks flagged."""
    leaks = [p for p in truth.pairs if p.leak]

    def points_into_group(i: int) -> bool:
        j = int(dec.ref[i])
        return j >= 0 and truth.group_of[i] >= 0 and truth.group_of[j] == truth.group_of[i]

    def sibling(i: int) -> bool:
        j = int(dec.ref[i])
        return j >= 0 and truth.natural_of[i] >= 0 and truth.natural_of[j] == truth.natural_of[i]

    found = sum(
        1
        for p in leaks
        if _is_leak(dec, p.original) and points_into_group(p.original) and dec.kept[p.copy]
    )
    closed = sum(  # the original is out of training all the same, its test copy kept
        1
        for p in leaks
        if _is_leak(dec, p.original)
        and (points_into_group(p.original) or sibling(p.original))
        and dec.kept[p.copy]
    )
    flagged = [i for i in range(len(dec.reason)) if _is_leak(dec, i)]
    right = [i for i in flagged if points_into_group(i)]
    natural = [
        i
        for i in flagged
        if not points_into_group(i)
        and dec.ref[i] >= 0
        and truth.natural_of[i] >= 0
        and truth.natural_of[dec.ref[i]] == truth.natural_of[i]
    ]
    judged = len(flagged) - len(natural)
    return {
        "leak_recall": found / len(leaks) if leaks else 1.0,
        "leak_recall_closed": closed / len(leaks) if leaks else 1.0,
        "leak_precision": len(right) / judged if judged else 1.0,
        "leaks_planted": len(leaks),
        "leaks_flagged": len(flagged),
        "natural_leaks": len(natural),
    }


def _is_leak(dec: Decisions, i: int) -> bool:
    return dec.reason[i] == "test_leak"


def dropped_originals(dec: Decisions, truth: Truth) -> list[dict[str, Any]]:
    """Every innocent train original that was dropped: provenance and what it was matched to."""
    out = []
    for i in np.flatnonzero(~dec.kept & truth.innocent).tolist():
        j = int(dec.ref[i])
        out.append(
            {
                "path": truth.paths[i],
                "key": truth.keys[i],
                "reason": dec.reason[i],
                "similarity": _rounded(float(dec.similarity[i])),
                "matched_path": truth.paths[j] if j >= 0 else None,
                "matched_key": truth.keys[j] if j >= 0 else None,
            }
        )
    return out


def _rounded(x: float) -> float | None:
    return None if np.isnan(x) else round(x, 4)


def label_scores(
    flagged: Iterable[int], truth: Truth, seen: np.ndarray | None = None
) -> dict[str, Any]:
    """Set P/R/F1 of flagged train rows against the label flips (`seen`: rows the method judged)."""
    train = set(np.flatnonzero(truth.is_train).tolist())
    flips = [truth.paths[i] for i in truth.flipped]
    got = evaluate_flags(flips, [truth.paths[i] for i in flagged if i in train])
    out: dict[str, Any] = {
        "precision": got.precision,
        "recall": got.recall,
        "f1": got.f1,
        "flagged": got.flagged,
        "flips": got.truth,
    }
    if seen is not None:
        out["flips_not_judged"] = sum(1 for i in truth.flipped if not seen[i])
    return out


def score_leanset(dec: Decisions, truth: Truth) -> dict[str, Any]:
    """Every number of the benchmark for one leanset version's decisions."""
    dropped, train = ~dec.kept, truth.is_train
    natural_originals = train & truth.is_original & (truth.group_of < 0) & (truth.natural_of >= 0)
    sizes = Counter(g for g in dec.group.tolist() if g >= 0)
    together = [(p, bool(dec.group[p.original] >= 0 and dec.group[p.original] == dec.group[p.copy]))
                for p in truth.pairs]  # fmt: skip
    innocent = dropped_originals(dec, truth)
    out: dict[str, Any] = {
        **group_pair_scores(found_groups(dec.group), truth),
        **leak_scores(dec, truth),
        "by_kind": kind_recall(together),
        "originals_dropped_frac": len(innocent) / max(int(truth.innocent.sum()), 1),
        "originals_dropped": innocent,
        "natural_originals_dropped": int((dropped & natural_originals).sum()),
        "train_dropped_frac": float((dropped & train).sum() / max(int(train.sum()), 1)),
        "eval_dropped": int((dropped & ~train).sum()),
        "largest_group": max(sizes.values()) if sizes else 1,
        "dropped_by_reason": dict(Counter(r for r in dec.reason if r is not None)),
        "evidence": dict(
            Counter(
                e.split(":")[0]  # the routes; a geometry reason's numbers differ per pair
                for e, r in zip(dec.evidence, dec.reason, strict=True)
                if r in DUP_REASONS and e is not None
            )
        ),  # fmt: skip
    }
    if dec.label_issue is not None:
        seen = np.array([r not in DUP_REASONS for r in dec.reason])
        out["labels"] = label_scores(np.flatnonzero(dec.label_issue).tolist(), truth, seen)
    return out


def score_pair_set(found: set[tuple[int, int]], truth: Truth) -> dict[str, Any]:
    """P/R/F1 of unordered row pairs (i < j) against every within-group truth pair, per kind."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(truth.group_of.tolist()):
        if g >= 0:
            members[g].append(i)
    true_pairs = {(a, b) for m in members.values() for a in m for b in m if a < b}
    hits = len(found & true_pairs)
    natural = {
        (a, b)
        for a, b in found - true_pairs
        if truth.natural_of[a] >= 0 and truth.natural_of[a] == truth.natural_of[b]
    }
    flagged_rows = {i for pair in found for i in pair}
    innocent = truth.innocent
    innocent_flagged = sum(1 for i in flagged_rows if innocent[i])
    together = [
        (p, (min(p.original, p.copy), max(p.original, p.copy)) in found) for p in truth.pairs
    ]
    return {
        **_prf(hits, len(found) - len(natural), len(true_pairs)),
        "pair_precision_strict": hits / len(found) if found else 1.0,
        "found_pairs": len(found),
        "natural_pairs": len(natural),
        "truth_pairs": len(true_pairs),
        "by_kind": kind_recall(together),
        "originals_flagged_frac": innocent_flagged / max(int(innocent.sum()), 1),
    }
