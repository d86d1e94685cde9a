"""What a version holds: the cleaned dataset table, the decisions table, and the manifest."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import polars as pl

from dedup.stage import PriorIndex
from pipelines.sources import LoadedDataset

# The decisions contract (README documents it); later stages append their own columns.
DECISION_COLUMNS = [
    "sample_id",
    "source",
    "split",
    "label",
    "content_hash",
    "exact_dup_of",
    "near_dup_of",
    "dup_similarity",
    "dup_group",
    "leak_of",
    "label_conflict",
    "kept",
    "drop_reason",
    "error",
    "position",
    "size_bytes",
]
INTERNAL = {"_part", "_row", "dedup_drop", "noise_drop"}  # reasons live on in drop_reason


def input_fingerprint(table: pl.DataFrame) -> str:
    """Hash of what the run saw: ids, content, labels and splits, in order."""
    h = hashlib.blake2b(digest_size=16)
    for col in ("sample_id", "content_hash", "label", "split"):
        h.update(col.encode())
        h.update("\x1f".join("" if v is None else str(v) for v in table[col].to_list()).encode())
    return h.hexdigest()


def decisions_table(table: pl.DataFrame) -> pl.DataFrame:
    """The per-sample decisions: contract columns first, then any stage extras; no internals."""
    first = [c for c in DECISION_COLUMNS if c in table.columns]
    extra = [c for c in table.columns if c not in first and c not in INTERNAL]
    return table.select(first + extra)


def dataset_table(data: LoadedDataset, decisions: pl.DataFrame) -> pl.DataFrame:
    """The cleaned dataset: kept rows with their content reference (path, bytes, text or vector)."""
    kept = decisions.filter(pl.col("kept"))
    rows = data.table.select("sample_id", "position", "_part", "_row").join(
        kept.select("sample_id", "split", "label", "source", "content_hash"),
        on="sample_id",
        how="inner",
        maintain_order="right",
    )
    return rows.with_columns(_content_columns(data, rows)).drop("position", "_part", "_row")


def _content_columns(data: LoadedDataset, rows: pl.DataFrame) -> list[pl.Series]:
    if data.modality == "text":
        values = _cells(data, rows, data.columns.text)
        return [pl.Series("text", values, dtype=pl.Utf8)]
    if data.modality == "embedding":
        vectors = data.vectors(rows["position"].to_list())
        matrix = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
        return [pl.Series("embedding", matrix).cast(pl.List(pl.Float32))]
    cells = _cells(data, rows, data.columns.image)
    paths = [c.get("path") if isinstance(c, dict) else None for c in cells]
    if all(p for p in paths):
        return [pl.Series("image_path", paths, dtype=pl.Utf8)]
    blobs = [c.get("bytes") if isinstance(c, dict) else None for c in cells]
    return [
        pl.Series("image_path", paths, dtype=pl.Utf8),
        pl.Series("image_bytes", blobs, dtype=pl.Binary),
    ]


def _cells(data: LoadedDataset, rows: pl.DataFrame, column: str) -> list[Any]:
    """Values of `column` for the given (part, row) pairs, read split by split."""
    out: list[Any] = [None] * rows.height
    parts = rows["_part"].to_list()
    idx = rows["_row"].to_list()
    for part in set(parts):
        ds = data.splits[part]
        where = [k for k, p in enumerate(parts) if p == part]
        values = ds.select([idx[k] for k in where])[column]
        for k, v in zip(where, values, strict=True):
            out[k] = v
    return out


def base_manifest(flow: dict[str, Any], config_hash: str, fingerprint: str) -> dict[str, Any]:
    """Manifest fields every version carries."""
    from importlib.metadata import version

    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "flow": flow.get("name"),
        "config_hash": config_hash,
        "config": flow,
        "input_fingerprint": fingerprint,
        "leanset": version("leanset"),
        "host": platform.node(),
    }


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

    def prior_index(self, key: str | None) -> PriorIndex | None:
        """The parent's near pairs, when they were made by the same embedder and threshold."""
        if self.manifest is None or key is None or self.manifest.get("index", {}).get("key") != key:
            return None
        pairs = self.store.read_pairs(self.manifest)
        if pairs is None:
            return None
        covered = self.previous.filter(pl.col("error").is_null())["content_hash"]
        return PriorIndex(pairs=pairs, covered=frozenset(covered.to_list()), key=key)

    def new_counts(self, decisions: pl.DataFrame) -> dict[str, int]:
        """How many samples are new since the parent, and how many of those duplicate older ones."""
        if self.previous is None:
            return {"new_samples": decisions.height, "new_duplicates_of_older": 0}
        old_ids = self.previous["sample_id"]
        new = decisions.filter(~pl.col("sample_id").is_in(old_ids.implode()))
        ref = pl.coalesce("exact_dup_of", "near_dup_of")
        dup_of_old = new.filter(~pl.col("kept") & ref.is_in(old_ids.implode()))
        return {"new_samples": new.height, "new_duplicates_of_older": dup_of_old.height}
