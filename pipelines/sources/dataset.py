"""The loaded dataset: the sample table plus a way to read each row's content again."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from pipelines.config import ColumnSettings

Modality = Literal["image", "text", "embedding"]


class SourceError(ValueError):
    """The dataset cannot be loaded as configured; the message names the column or sample."""


@dataclass
class LoadedDataset:
    """The sample table plus a way to read each row's content again."""

    table: pl.DataFrame
    modality: Modality
    splits: dict[str, Any] = field(repr=False)  # split name -> datasets.Dataset
    columns: ColumnSettings = field(default_factory=ColumnSettings)

    def with_table(self, table: pl.DataFrame) -> LoadedDataset:
        """The same dataset with a table that has more columns (rows unchanged)."""
        return dataclasses.replace(self, table=table)

    def read(self, rows: Sequence[int]) -> list[Any]:
        """Content of table rows `rows`: image bytes, text, or an embedding vector."""
        part = self.table["_part"].to_numpy()
        srow = self.table["_row"].to_numpy()
        return [self._content(self.splits[part[r]], int(srow[r])) for r in rows]

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

    def vectors(self, rows: Sequence[int]) -> list[np.ndarray]:
        """Precomputed vectors of table rows `rows`, read in bulk per split."""
        part = self.table["_part"].to_numpy()[list(rows)]
        srow = self.table["_row"].to_numpy()[list(rows)]
        out: list[np.ndarray] = [None] * len(part)  # type: ignore[list-item]
        for name in set(part.tolist()):
            col = numpy_column(self.splits[name], self.columns.content())
            where = np.flatnonzero(part == name)
            if isinstance(col, np.ndarray):
                block = col[srow[where]]
                for k, row in zip(where, block, strict=True):
                    out[k] = row
            else:
                for k in where:
                    out[k] = np.asarray(col[srow[k]], dtype=np.float32)
        return out

    def content_at(self, part: str, row: int) -> Any:
        """Content of row `row` of split `part` (needs the splits only, not the table)."""
        return self._content(self.splits[part], row)

    def reader(self) -> LoadedDataset:
        """What reads contents elsewhere (a worker): the splits, no table. Splits loaded from
        files pickle as references to their Arrow files, not as the data."""
        empty = pl.DataFrame(schema={"_part": pl.Utf8, "_row": pl.Int64})
        return dataclasses.replace(self, table=empty)

    def _content(self, ds: Any, row: int) -> Any:
        if self.modality == "embedding":
            return ds[row][self.columns.embedding]
        if self.modality == "text":
            return ds[row][self.columns.text]
        return image_bytes(ds[row][self.columns.image])


def numpy_column(ds: Any, column: str) -> Any:
    """A vector column as a 2-D float32 array when every row has one width, else a list of rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if ds._indices is not None:  # a selected/filtered view: materialise the row order first
        ds = ds.flatten_indices()
    arr = ds.data.column(column).combine_chunks()
    if _is_list(arr.type, pa) and arr.null_count == 0 and len(arr):
        lengths = pc.list_value_length(arr).to_numpy()
        if (lengths == lengths[0]).all() and lengths[0] > 0:
            try:
                values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
                return values.reshape(len(arr), int(lengths[0]))
            except (TypeError, ValueError, pa.ArrowInvalid):
                pass  # not numeric: every row is reported on its own below
    return [None if v is None else v for v in arr.to_pylist()]


def _is_list(t: Any, pa: Any) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


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
