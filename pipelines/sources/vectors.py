"""A vector column read in bounded blocks, never as one matrix built from the whole column.

`datasets` keeps a split as Arrow record batches in cache files that it memory-maps: reading a
column through the map leaves every page of it resident in the process. Blocks are instead read
from those files with plain reads (one record batch at a time), or, for a dataset held in memory,
as slices of its table. A block is a float32 `rows x width` array when its rows are numeric lists
of one width without nulls, else the rows' Python values (each then checked on its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

BLOCK_ROWS = 8192


def vector_blocks(ds: Any, column: str) -> Iterator[tuple[int, np.ndarray | list[Any]]]:
    """(first row, block) over a split's vector column, in row order."""
    streamed = _stream_batches(ds, column)
    arrays = streamed if streamed is not None else _table_chunks(ds, column)
    start = 0
    for array in arrays:
        for lo in range(0, len(array), BLOCK_ROWS):
            piece = array.slice(lo, BLOCK_ROWS)
            yield start + lo, to_block(piece)
        start += len(array)


def _stream_batches(ds: Any, column: str) -> Iterator[Any] | None:
    """The column's record batches read from the split's Arrow cache files, or None when the
    split is not plainly those files in order (held in memory, a selection of rows, or a file
    seen through a lazy transformation such as a cast or a rename)."""
    import pyarrow as pa

    files = _plain_files(ds.data) if ds._indices is None else None
    if not files:
        return None

    def batches() -> Iterator[Any]:
        for name in files:
            with pa.OSFile(name) as fh:
                reader = pa.ipc.open_stream(fh)
                while True:
                    try:
                        yield reader.read_next_batch().column(column)
                    except StopIteration:
                        break

    return batches()


def _plain_files(table: Any) -> list[str] | None:
    """The Arrow files a `datasets` table reads, top to bottom, when it reads them as they are."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    def plain(t: Any) -> bool:  # read as stored (a new schema's metadata changes no value)
        ops = {op for op, _, _ in t.replays or []}
        return isinstance(t, MemoryMappedTable) and ops <= {"replace_schema_metadata"}

    if isinstance(table, MemoryMappedTable):
        return [table.path] if plain(table) else None
    if isinstance(table, ConcatenationTable):
        files: list[str] = []
        for row in table.blocks:
            if len(row) != 1 or not plain(row[0]):
                return None
            files.append(row[0].path)
        return files
    return None


def _table_chunks(ds: Any, column: str) -> Iterator[Any]:
    if ds._indices is not None:  # a selected/filtered view: materialise the row order first
        ds = ds.flatten_indices()
    yield from ds.data.column(column).chunks


def to_block(array: Any) -> np.ndarray | list[Any]:
    """An Arrow list array as a float32 matrix when every row is a numeric list of one width with
    no nulls; otherwise its rows as Python values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = array.type
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    if is_list and array.null_count == 0 and len(array):
        lengths = pc.list_value_length(array).to_numpy()
        value_type = t.value_type
        numeric = pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
        if numeric and (lengths == lengths[0]).all() and lengths[0] > 0:
            values = array.flatten()
            if values.null_count == 0:
                flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                block: np.ndarray = flat.reshape(len(array), int(lengths[0]))
                return block
    return list(array.to_pylist())
