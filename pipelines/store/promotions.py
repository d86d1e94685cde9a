"""Promotion: marking one version as the one to train on, behind a quality gate.

A version's manifest is its immutable commit point, so promotions live in their own records:
`promotions/p000001.json`, `p000002.json`, ... each created exclusively (two promoters cannot both
write record n) and never rewritten; the newest record names the promoted version. Each says who
promoted which version, when, why, and what the gate measured.

The gate compares the candidate's probe accuracy on the eval split (recorded in its manifest by the
run: the probe trained on its cleaned train split) with a baseline: the promoted version's, paired
sample by sample, when both were scored on the same eval samples; otherwise the candidate's own raw
train split (what training on the uncleaned data gives). It passes when the accuracy dropped by at
most the bound. Eval rows that a removed train row leaked into are left out of the comparison (the
raw probe had memorised them), and the gate says how many.
"""

from __future__ import annotations

import fnmatch
import getpass
import json
import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from leanset.labeling.quality import PairedDifference, paired_difference, unpack_bits
from leanset.pipelines.store.layout import PROMOTIONS, StoreLayout
from leanset.pipelines.store.versions import Store, StoreConflict, StoreError

JSON = dict[str, Any]


class PromotionRefused(StoreError):
    """The quality gate refused the version; the message is the gate's statement."""


@dataclass(frozen=True)
class Gate:
    """What the gate compared and its verdict."""

    version: int
    baseline: str
    accuracy: float
    baseline_accuracy: float
    drop: float
    bound: float
    paired: JSON
    note: str

    @property
    def passed(self) -> bool:
        return self.drop <= self.bound + 1e-12

    def statement(self) -> str:
        p = self.paired
        verdict = (
            "within the bound: promoted" if self.passed else "more than the bound: not promoted"
        )
        return (
            f"Version {self.version}: probe accuracy {self.accuracy:.4f} against "
            f"{self.baseline_accuracy:.4f} for {self.baseline} (n = {p['n']:,}; difference "
            f"{-self.drop:+.4f}, 95% CI {p['ci_low']:+.4f} to {p['ci_high']:+.4f}, McNemar "
            f"p = {p['p_value']:.3g}); allowed drop {self.bound:.4f}: {verdict}."
            + (f" {self.note}" if self.note else "")
        )

    def to_dict(self) -> JSON:
        return asdict(self) | {"passed": self.passed}


def promotions(store: Store) -> list[JSON]:
    """Every promotion record, oldest first."""
    names = store.storage.list(PROMOTIONS)
    out = []
    for rel in sorted(n for n in names if fnmatch.fnmatch(n, f"{PROMOTIONS}/p*.json")):
        try:
            out.append(json.loads(store.storage.read(rel).decode("utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            shown = store.storage.show(rel)
            raise StoreError(f"promotion record {shown} is unreadable ({exc})") from exc
    return out


def promoted_version(store: Store) -> int | None:
    """The version the newest promotion names (None when nothing was promoted)."""
    records = promotions(store)
    return int(records[-1]["version"]) if records else None


def check_gate(store: Store, version: int, max_drop: float) -> Gate:
    """Compare `version`'s quality with the promoted version's (or its own raw train split's)."""
    quality = _quality(store, version)
    current = promoted_version(store)
    base = _recorded_quality(store, current) if current not in (None, version) else None
    if base is not None and base.get("eval_fingerprint") == quality["eval_fingerprint"]:
        free = _leak_free(base) & _leak_free(quality)
        free = free if free.any() else np.ones_like(free)
        pair = paired_difference(_clean_correct(base)[free], _clean_correct(quality)[free])
        left_out = int((~free).sum())
        note = (
            f"Left out: {left_out:,} eval rows a removed train row of either version leaked into."
            if left_out
            else ""
        )
        return _gate(version, f"version {current} (promoted)", pair, max_drop, note)
    if current is None or current == version:
        note = "No version was promoted before: checked against this version's raw train split."
    else:
        note = (
            f"Version {current} (promoted) was scored on other eval samples, so this is checked "
            f"against this version's raw train split instead."
        )
    excluded = quality.get("excluded") or {}
    if excluded.get("rows"):
        note += (
            f" Left out: {excluded['rows']:,} eval rows ({excluded['why']}); on all rows the "
            f"drop is {-quality['all_rows']['paired']['difference']:+.4f}, inflated by leaks."
        )
    p = quality["paired"]
    pair = PairedDifference(
        **{k: p[k] for k in PairedDifference.__dataclass_fields__}  # raw (a) vs cleaned (b)
    )
    return _gate(version, f"version {version}'s raw train split", pair, max_drop, note)


def _n_scored(quality: JSON) -> int:
    """How many eval rows the recorded outcomes cover (older records: the paired n)."""
    return int(quality.get("n_scored", quality["paired"]["n"]))


def _leak_free(quality: JSON) -> np.ndarray:
    """Per scored eval row: no removed train row leaked into it (older records: all rows)."""
    n = _n_scored(quality)
    bits = quality.get("leak_free")
    return unpack_bits(bits, n) if bits else np.ones(n, dtype=bool)


def _clean_correct(quality: JSON) -> np.ndarray:
    """Per scored eval row: did the probe trained on the cleaned train split get it right."""
    return unpack_bits(quality["correct"]["clean"], _n_scored(quality))


def _gate(version: int, baseline: str, pair: PairedDifference, bound: float, note: str) -> Gate:
    return Gate(
        version=version,
        baseline=baseline,
        accuracy=pair.accuracy_b,
        baseline_accuracy=pair.accuracy_a,
        drop=pair.accuracy_a - pair.accuracy_b,
        bound=bound,
        paired=pair.to_dict(),
        note=note,
    )


def _recorded_quality(store: Store, version: int | None) -> JSON | None:
    """A version's recorded quality delta, or None when its run measured none."""
    q = (store.manifest(version).get("cost") or {}).get("quality") or {}
    return dict(q) if "paired" in q and "correct" in q else None


def _quality(store: Store, version: int) -> JSON:
    """A version's recorded quality delta; a version without one is refused."""
    q = _recorded_quality(store, version)
    if q is not None:
        return q
    m = store.manifest(version)
    why = ((m.get("cost") or {}).get("quality") or {}).get("skipped", "the run recorded none")
    raise PromotionRefused(
        f"version {m['version']} has no quality delta to check ({why}); the gate needs labels, "
        "an embedder and a labeled eval split"
    )


def promote(
    store: Store, version: int, max_drop: float, *, by: str | None = None, reason: str = ""
) -> tuple[JSON | None, Gate]:
    """Record `version` as promoted when the gate passes (None: it already is); else refuse."""
    if not 0.0 <= max_drop <= 1.0:
        raise StoreError(f"max accuracy drop must be in [0, 1], got {max_drop}")
    records = promotions(store)
    previous = int(records[-1]["version"]) if records else None
    gate = check_gate(store, version, max_drop)
    if previous == version:
        return None, gate
    if not gate.passed:
        raise PromotionRefused(gate.statement())
    number = len(records) + 1
    record: JSON = {
        "number": number,
        "version": version,
        "previous": previous,
        "by": by or f"{getpass.getuser()}@{platform.node()}",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reason": reason or gate.statement(),
        "max_accuracy_drop": max_drop,
        "gate": gate.to_dict(),
    }
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    if not store.storage.create(StoreLayout(Path(".")).promotion(number).as_posix(), data):
        raise StoreConflict(
            f"store {store.where}: another promotion was recorded at the same time; nothing was "
            f"recorded for version {version}. Run `leanset promote` again."
        )
    return record, gate
