"""What the parent version knew: when each sample was first seen, and its near-pair index."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import polars as pl

from leanset.dedup.stage import PriorIndex

log = logging.getLogger("leanset.store")
MOST = 0.5  # more than this share of ids new and of the parent's gone: "most ids changed"


@dataclass
class History:
    """What the parent version knew: when each sample was first seen, and its near-pair index."""

    store: Any
    manifest: dict[str, Any] | None
    previous: pl.DataFrame | None  # parent decisions: sample_id, content_hash, error, first_seen

    @classmethod
    def of(cls, store: Any, manifest: dict[str, Any] | None) -> History:
        """Read the parent's decisions (the columns history needs) once."""
        if manifest is None:
            return cls(store, None, None)
        prev = store.read("decisions", manifest["version"])
        if "first_seen" not in prev.columns:
            prev = prev.with_columns(
                pl.lit(manifest["version"], dtype=pl.Int64).alias("first_seen")
            )
        return cls(store, manifest, prev.select("sample_id", "content_hash", "error", "first_seen"))

    def mark_first_seen(self, table: pl.DataFrame, version: int) -> pl.DataFrame:
        """Add `first_seen`: the version a sample id first appeared in (this one for new samples)."""
        if self.previous is None:
            return table.with_columns(pl.lit(version, dtype=pl.Int64).alias("first_seen"))
        seen = self.previous.select("sample_id", "first_seen")
        out = table.join(seen, on="sample_id", how="left", maintain_order="left")
        return out.with_columns(pl.col("first_seen").fill_null(version))

    def warn_if_ids_changed(self, table: pl.DataFrame) -> bool:
        """Warn when most sample ids differ from the parent's (a change of id scheme or of the
        source's layout, not new data): `first_seen` restarts and imported labels stop applying."""
        if self.previous is None or self.manifest is None or self.previous.height < 10:
            return False
        old = self.previous["sample_id"]
        new = table.filter(~pl.col("sample_id").is_in(old.implode())).height
        gone = self.previous.filter(~pl.col("sample_id").is_in(table["sample_id"].implode())).height
        if new <= MOST * table.height or gone <= MOST * old.len():
            return False
        log.warning(
            "%d of %d sample ids are new and %d of version %s's %d are gone: most ids changed, "
            "so first_seen restarts and imported labels no longer apply to those samples. If the "
            "data itself did not change, set columns.id to a column of stable unique ids.",
            new,
            table.height,
            gone,
            self.manifest["version"],
            old.len(),
        )
        return True

    def prior_index(self) -> PriorIndex | None:
        """The parent's confirmed pairs, with the key they were found under and its calibration
        (the dedup stage reuses them only when its own key is the same)."""
        key = (self.manifest or {}).get("index", {}).get("key")
        if self.manifest is None or not key:
            return None
        pairs = self.store.read_pairs(self.manifest)
        if pairs is None or self.previous is None:
            return None
        covered = self.previous.filter(pl.col("error").is_null())["content_hash"]
        calibration = self.manifest.get("calibration") or {}
        return PriorIndex(pairs, frozenset(covered.to_list()), key, calibration)

    def new_counts(self, decisions: pl.DataFrame) -> dict[str, int]:
        """How many samples are new since the parent, and how many of those duplicate older ones."""
        if self.previous is None:
            return {"new_samples": decisions.height, "new_duplicates_of_older": 0}
        old_ids = self.previous["sample_id"]
        new = decisions.filter(~pl.col("sample_id").is_in(old_ids.implode()))
        ref = pl.coalesce("exact_dup_of", "near_dup_of")
        dup_of_old = new.filter(~pl.col("kept") & ref.is_in(old_ids.implode()))
        return {"new_samples": new.height, "new_duplicates_of_older": dup_of_old.height}
