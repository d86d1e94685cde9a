"""The loaded dataset: the sample table plus a way to read each row's content again."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from leanset.pipelines.config import ColumnSettings
from leanset.pipelines.sources.vectors import vector_blocks

Modality = Literal["image", "text", "embedding", "none"]  # none: ids, labels, probabilities


class SourceError(ValueError):
    """The dataset cannot be loaded as configured; the message names the column or sample."""


@dataclass
class LoadedDataset:
    """The sample table plus a way to read each row's content again."""

    table: pl.DataFrame
    modality: Modality
    splits: dict[str, Any] = field(repr=False)  # split name -> datasets.Dataset
    columns: ColumnSettings = field(default_factory=ColumnSettings)
    # image folders mirrored from a bucket: {local mirror folder: (its URL, storage options)},
    # so a reader on another machine (a Ray worker) fetches a file its disk lacks from the bucket
    remote: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=dict)

    def with_table(self, table: pl.DataFrame) -> LoadedDataset:
        """The same dataset with a table that has more columns (rows unchanged)."""
        return dataclasses.replace(self, table=table)

    def read(self, rows: Sequence[int]) -> list[Any]:
        """Content of table rows `rows`: image bytes, text, or an embedding vector."""
        idx = pl.Series(list(rows), dtype=pl.Int64)  # only these rows: a batch costs O(batch)
        part = self.table["_part"].gather(idx).to_list()
        srow = self.table["_row"].gather(idx).to_list()
        return [self._content(self.splits[p], int(r)) for p, r in zip(part, srow, strict=True)]

    def texts(self, rows: Sequence[int]) -> list[str]:
        """What a person reads for each row: the text column when there is one, else the source."""
        if not self.columns.text:
            return [str(s) for s in self.table["source"].gather(list(rows)).to_list()]
        values = self.column(self.columns.text)
        return [str(values[r]) for r in rows]

    def column(self, name: str) -> list[Any]:
        """Every value of a source column, in table order."""
        for part, ds in self.splits.items():
            if name not in ds.column_names:
                raise SourceError(
                    f"column {name!r} does not exist in split {part!r}; columns: {ds.column_names}"
                )
        return [
            v
            for part in dict.fromkeys(self.table["_part"].to_list())
            for v in self.splits[part][name]
        ]

    def label_names(self) -> list[str] | None:
        """The label column's ClassLabel names, in their order (None: no split has them)."""
        label = self.columns.label
        for ds in self.splits.values():
            names = getattr(ds.features.get(label), "names", None) if label else None
            if names:
                return [str(n) for n in names]
        return None

    def vector_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray | list[Any]]]:
        """(table positions, block) over every precomputed vector, split by split, in bounded
        blocks (see `leanset.pipelines.sources.vectors`): the column is never held whole."""
        part = self.table["_part"].to_numpy()
        srow = self.table["_row"].to_numpy()
        for name, ds in self.splits.items():
            mask = part == name
            if not mask.any():
                continue
            where = np.full(len(ds), -1, dtype=np.int64)
            where[srow[mask]] = np.flatnonzero(mask)
            for start, block in vector_blocks(ds, self.columns.content()):
                yield where[start : start + len(block)], block

    def content_at(self, part: str, row: int) -> Any:
        """Content of row `row` of split `part` (needs the splits only, not the table)."""
        return self._content(self.splits[part], row)

    def reader(self) -> LoadedDataset:
        """What reads contents elsewhere (a worker): the splits, no table. Splits loaded from
        files pickle as references to their Arrow files, not as the data."""
        empty = pl.DataFrame(schema={"_part": pl.Utf8, "_row": pl.Int64})
        return dataclasses.replace(self, table=empty)

    def _content(self, ds: Any, row: int) -> Any:
        if self.modality == "none":
            return None
        if self.modality == "embedding":
            return ds[row][self.columns.embedding]
        if self.modality == "text":
            return ds[row][self.columns.text]
        value = ds[row][self.columns.image]
        try:
            return image_bytes(value)
        except FileNotFoundError:
            fetched = self._from_bucket(value)
            if fetched is None:
                raise
            return fetched

    def _from_bucket(self, value: Any) -> bytes | None:
        """A mirrored image file this machine lacks, read from its bucket (None: not mirrored)."""
        given = value.get("path") if isinstance(value, dict) else None
        if not given:
            return None
        path = Path(given)
        for folder, (url, options) in self.remote.items():
            if path.is_relative_to(folder):
                return bytes(_bucket(url, options).read(path.relative_to(folder).as_posix()))
        return None


@functools.cache
def _bucket(url: str, options: tuple[tuple[str, str], ...]) -> Any:
    """One connection per source prefix and process (a worker reuses it for every file)."""
    from leanset.pipelines.store.storage import ObjectStorage

    return ObjectStorage(url, dict(options))


def image_bytes(value: Any) -> bytes:
    """Raw encoded bytes of an image cell ({'bytes', 'path'} or a PIL image)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        return Path(value["path"]).read_bytes()
    if hasattr(value, "save"):  # a decoded PIL image: re-encode losslessly
        import io

        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise OSError(f"expected an image (path or bytes), got {type(value).__name__}")
