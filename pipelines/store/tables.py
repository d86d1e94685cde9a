"""What a version holds: the cleaned dataset table, the decisions table, and the manifest."""

from __future__ import annotations

import hashlib
import platform
from datetime import datetime, timezone
from typing import Any

import polars as pl

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
        values = _cells(data, rows, data.columns.content())
        return [pl.Series("text", values, dtype=pl.Utf8)]
    if data.modality == "embedding":
        return []  # the vectors go to the store's shared vector shards, named by content_hash
    cells = _cells(data, rows, data.columns.content())
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
