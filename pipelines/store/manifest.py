"""What a version's manifest records, typed: the flow builds one `Manifest` per commit, once.

The store writes it as JSON (`Manifest.to_dict()`) and adds what only the commit knows: `version`,
`parent`, `tables` (the Delta versions), `commit` (the token shared with the Delta commits) and the
near-pair index file. Readers get plain JSON mappings back; `Counts.from_dict` types the counts.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import polars as pl

from leanset.pipelines.decide import counts_by_reason

JSON = dict[str, Any]  # a JSON object as the manifest stores it


@dataclass(frozen=True)
class Counts:
    """Samples in and out of a version, by reason and split."""

    input: int
    kept: int
    dropped: int
    by_reason: dict[str, int]
    by_split: dict[str, dict[str, int]]
    dup_groups: int
    leaking_eval_samples: int
    label_conflicts: int
    new_samples: int = 0
    new_duplicates_of_older: int = 0
    by_split_reason: dict[str, dict[str, int]] = field(default_factory=dict)
    # eval sample id -> train rows dropped as its leak, for the eval samples with more than one
    leak_fanout: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, decisions: pl.DataFrame, eval_splits: list[str], new: dict[str, int]) -> Counts:
        """The counts of a decisions table (`new`: new_samples, new_duplicates_of_older)."""
        kept = int(decisions["kept"].sum())
        leaking = pl.col("leak_of").is_not_null() & pl.col("split").is_in(eval_splits)
        return cls(
            input=decisions.height,
            kept=kept,
            dropped=decisions.height - kept,
            by_reason=counts_by_reason(decisions),
            by_split=_by_split(decisions),
            dup_groups=int(decisions["dup_group"].drop_nulls().n_unique()),
            leaking_eval_samples=decisions.filter(leaking).height,
            label_conflicts=int(decisions["label_conflict"].sum()),
            by_split_reason=_by_split_reason(decisions),
            leak_fanout=leak_fanout(decisions),
            **new,
        )

    def reasons(self) -> list[tuple[str, int]]:
        """(drop reason, count), most frequent first (a stored manifest sorts its keys)."""
        return sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))

    def rows(self) -> list[tuple[str, int]]:
        """The counts a person reads, in order (console, markdown and HTML show these rows)."""
        rows = [("input", self.input), ("kept", self.kept)]
        rows += [(f"dropped: {reason}", n) for reason, n in self.reasons()]
        return rows + [
            ("duplicate groups", self.dup_groups),
            ("eval samples leaking from train", self.leaking_eval_samples),
            ("samples in label-conflict groups", self.label_conflicts),
        ]

    @classmethod
    def from_dict(cls, data: JSON) -> Counts:
        """Counts as a manifest stored them (keys a version did not record count as zero)."""
        defaults: JSON = {"by_reason": {}, "by_split": {}, "by_split_reason": {}, "leak_fanout": {}}
        values: JSON = {n: data.get(n, defaults.get(n, 0)) for n in cls.__dataclass_fields__}
        return cls(**values)


def leak_fanout(decisions: pl.DataFrame, top: int = 20) -> dict[str, int]:
    """The eval samples that more than one train row was dropped for as a leak: {id: rows},
    most first (at most `top`). One test row removing many train rows is a judgement call."""
    leaks = decisions.filter(pl.col("drop_reason") == "test_leak")
    per = leaks.group_by("leak_of").len().filter(pl.col("len") > 1)
    per = per.sort(["len", "leak_of"], descending=[True, False]).head(top)
    return dict(zip(per["leak_of"].to_list(), [int(n) for n in per["len"]], strict=True))


def _by_split(decisions: pl.DataFrame) -> dict[str, dict[str, int]]:
    rows = decisions.group_by("split").agg(
        pl.len().alias("input"), pl.col("kept").sum().alias("kept")
    )
    return {
        r["split"]: {"input": r["input"], "kept": int(r["kept"])}
        for r in rows.sort("split").iter_rows(named=True)
    }


def _by_split_reason(decisions: pl.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {drop_reason: count}} over dropped rows (a split that dropped none is absent)."""
    rows = decisions.filter(~pl.col("kept")).group_by("split", "drop_reason").len()
    out: dict[str, dict[str, int]] = {}
    for r in rows.sort("split", "drop_reason").iter_rows(named=True):
        out.setdefault(r["split"], {})[r["drop_reason"]] = int(r["len"])
    return out


@dataclass(frozen=True)
class Manifest:
    """Everything a run records about the version it commits (the store adds the commit's part)."""

    flow: str
    config_hash: str
    config: JSON
    input_fingerprint: str
    counts: Counts
    timings: dict[str, float]
    cost: JSON
    statement: str
    embed: JSON = field(default_factory=dict)
    search: JSON = field(default_factory=dict)
    index: JSON = field(default_factory=dict)
    labeling: JSON = field(default_factory=dict)
    classes: JSON = field(default_factory=dict)
    guard: JSON = field(default_factory=dict)
    calibration: JSON = field(default_factory=dict)
    post_commit: JSON = field(default_factory=dict)  # {"steps": [...]}: what follows the commit
    engine: JSON = field(default_factory=lambda: {"type": "local"})
    created_at: str = field(default_factory=lambda: _now())
    leanset: str = field(default_factory=lambda: _leanset_version())
    host: str = field(default_factory=platform.node)

    def to_dict(self) -> JSON:
        """The JSON object the store writes."""
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _leanset_version() -> str:
    from importlib.metadata import version

    return version("leanset")
