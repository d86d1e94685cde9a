"""What a version holds: the cleaned dataset table, the decisions table, and the manifest."""

from __future__ import annotations

import hashlib
import platform
from datetime import datetime, timezone
from typing import Any

import polars as pl

from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.sources.dataset import image_bytes

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
FINGERPRINT_ROWS = 1 << 16  # rows of a column hashed at a time


def input_fingerprint(table: pl.DataFrame) -> str:
    """Hash of what the run saw: ids, content, labels and splits, in order."""
    h = hashlib.blake2b(digest_size=16)
    for col in ("sample_id", "content_hash", "label", "split"):
        h.update(col.encode())
        for s in range(0, table.height, FINGERPRINT_ROWS):  # the same bytes as one join
            part = table[col].slice(s, FINGERPRINT_ROWS).to_list()  # no N Python strings
            h.update((("\x1f" if s else "") + "\x1f".join(_cell(v) for v in part)).encode())
    return h.hexdigest()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


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
    if data.modality in ("embedding", "none"):
        return []  # the vectors go to the store's shared vector shards, named by content_hash
    return _image_columns(_cells(data, rows, data.columns.content()), rows["source"].to_list())


def _image_columns(cells: list[Any], sources: list[str]) -> list[pl.Series]:
    """`image_path` (relative to the dataset root for files under it) and `image_bytes` (kept
    whenever the source held the bytes: a `save_to_disk` or Parquet image has no file to read)."""
    blobs = [_cell_bytes(c) for c in cells]
    paths = [
        src if isinstance(c, dict) and c.get("path") else None
        for c, src in zip(cells, sources, strict=True)
    ]
    return [
        pl.Series("image_path", paths, dtype=pl.Utf8),
        pl.Series("image_bytes", blobs, dtype=pl.Binary),
    ]


def _cell_bytes(cell: Any) -> bytes | None:
    """The encoded bytes an image cell holds itself (None when it points at a file)."""
    if isinstance(cell, dict):
        data = cell.get("bytes")
        return bytes(data) if data else None
    if hasattr(cell, "save"):  # a decoded PIL image
        return image_bytes(cell)
    return None


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


def class_names(data: LoadedDataset, decisions: pl.DataFrame) -> dict[str, Any]:
    """The version's classes: the source's ClassLabel order when it had one, then other labels."""
    named: list[str] = []
    label = data.columns.label
    for ds in data.splits.values():
        feature = ds.features.get(label) if label else None
        for name in getattr(feature, "names", None) or []:
            if name not in named:
                named.append(str(name))
    seen = decisions["label"].drop_nulls().unique().sort().to_list()
    return {"names": named + [c for c in seen if c not in named], "from_source": bool(named)}


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
