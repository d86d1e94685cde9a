"""Export a version as Parquet or as a Hugging Face `datasets` folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    import datasets

from pipelines.store import Store, StoreError


def export_version(
    store: Store, version: int | None, fmt: str, out: str | Path, decisions: bool = False
) -> Path:
    """Write the cleaned dataset (or the decisions) of a version to `out`."""
    out = Path(out)
    df = store.read("decisions" if decisions else "dataset", version)
    if fmt == "parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(out)
        return out
    if fmt == "hf":
        to_hf(df).save_to_disk(str(out))
        return out
    raise StoreError(f"unknown export format {fmt!r}; expected 'parquet' or 'hf'")


def to_hf(df: pl.DataFrame) -> datasets.Dataset:
    """A `datasets.Dataset` from a version table; image paths/bytes become an Image feature."""
    import datasets

    if "image_path" in df.columns:
        blobs = df["image_bytes"] if "image_bytes" in df.columns else pl.Series([None] * df.height)
        images = [{"path": p, "bytes": b} for p, b in zip(df["image_path"], blobs, strict=True)]
        rest = df.drop([c for c in ("image_path", "image_bytes") if c in df.columns])
        ds = datasets.Dataset.from_polars(rest).add_column("image", images)
        return ds.cast_column("image", datasets.Image())
    return datasets.Dataset.from_polars(df)
