"""What `leanset.clean` accepts: a table or dataset in memory (written once as Parquet for the
loader) or a path, and how its kept rows are given back in the caller's own type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from leanset.pipelines.config import ConfigError

InputKind = Literal["pandas", "polars", "arrow", "dataset", "datasetdict", "path"]
DATA_FILE = "data.parquet"  # one stable name: row ids derive from the file's name, not its folder
SPLIT_COLUMN = "leanset_split"  # a DatasetDict's split names, as a column
EMBEDDING_COLUMN = "leanset_embedding"  # `embeddings=` given as an array
PRED_PROBS_COLUMN = "leanset_pred_probs"  # `pred_probs=` given as an array


@dataclass
class Prepared:
    """The input as the loader reads it: a path, and what `clean` added or found there."""

    kind: InputKind
    path: Path
    columns: dict[str, str] = field(default_factory=dict)  # role -> column the API set
    split_sizes: list[tuple[str, int]] = field(default_factory=list)  # a DatasetDict's splits
    class_names: list[str] | None = (
        None  # classes of the pred_probs columns: `classes=`, or a ClassLabel's
    )


def kind_of(data: Any) -> InputKind:
    """Which kind of input `data` is (by its type's module: pandas is never imported here)."""
    if isinstance(data, (str, Path)):
        return "path"
    module = type(data).__module__.split(".")[0]
    name = type(data).__name__
    if module == "pandas" and name == "DataFrame":
        return "pandas"
    if module == "polars" and name == "DataFrame":
        return "polars"
    if isinstance(data, pa.Table):
        return "arrow"
    if module == "datasets" and name in ("Dataset", "DatasetDict"):
        return "dataset" if name == "Dataset" else "datasetdict"
    raise ConfigError(
        f"data: expected a pandas or polars DataFrame, a pyarrow Table, a Hugging Face Dataset or "
        f"DatasetDict, or a path; got {type(data).__module__}.{name}"
    )


def prepare(
    data: Any,
    folder: Path,
    embeddings: str | np.ndarray | None,
    pred_probs: str | np.ndarray | None,
    columns: dict[str, str],
    classes: Sequence[str] | None = None,
) -> Prepared:
    """The input where the loader can read it: a path as given, anything else one Parquet file in
    `folder` (arrays given for `embeddings` or `pred_probs` become columns of it; probabilities
    stay in their own order: that of `classes`, else of a ClassLabel, recorded in `class_names`
    for `label_noise.classes`)."""
    kind = kind_of(data)
    if kind == "path":
        if classes is not None:
            raise ConfigError("classes: with a path, set the order in the data's own columns")
        for role, given in (("embeddings", embeddings), ("pred_probs", pred_probs)):
            if given is not None and not isinstance(given, str):
                raise ConfigError(
                    f"{role}: with a path, name a column of it (an array needs a table)"
                )
        return Prepared(kind, Path(data).expanduser().resolve())
    table, sizes, names = _arrow(data, kind, columns.get("label"))
    added: dict[str, str] = {}
    if kind == "datasetdict" and "split" not in columns:
        added["split"] = SPLIT_COLUMN
    for role, given, name in (
        ("embedding", embeddings, EMBEDDING_COLUMN),
        ("pred_probs", pred_probs, PRED_PROBS_COLUMN),
    ):
        if given is not None and not isinstance(given, str):
            arg = "embeddings" if role == "embedding" else role
            table = table.append_column(name, _vectors(arg, given, table.num_rows))
            added[role] = name
    order = [str(c) for c in classes] if classes is not None else names
    probs = added.get("pred_probs") or (pred_probs if isinstance(pred_probs, str) else None)
    if order is not None and probs is not None:
        _check_classes(table, probs, order)
    if columns.get("image"):
        table = _image_cells(table, columns["image"])
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(None), folder / DATA_FILE)
    return Prepared(kind, folder / DATA_FILE, added, sizes, order)


def _arrow(
    data: Any, kind: InputKind, label: str | None
) -> tuple[pa.Table, list[tuple[str, int]], list[str] | None]:
    """One Arrow table of the input (a DatasetDict's splits stacked, their names a column), its
    splits' sizes, and a ClassLabel's names (its integer labels become those names)."""
    if kind == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False), [], None
    if kind == "polars":
        return data.to_arrow(), [], None
    if kind == "arrow":
        return data, [], None
    parts = [("train", data)] if kind == "dataset" else list(data.items())
    tables, names = [], None
    for split, ds in parts:
        t, names = _hf_table(ds, label)
        if kind == "datasetdict":
            t = t.append_column(SPLIT_COLUMN, pa.array([split] * t.num_rows, pa.string()))
        tables.append(t)
    sizes = [(split, len(ds)) for split, ds in parts] if kind == "datasetdict" else []
    return pa.concat_tables(tables), sizes, names


def _hf_table(ds: Any, label: str | None) -> tuple[pa.Table, list[str] | None]:
    """A Dataset's rows as Arrow (its own row order), a ClassLabel column as its names."""
    import datasets

    table = ds.flatten_indices().data.table if ds._indices is not None else ds.data.table
    feature = ds.features.get(label or "label")
    if not isinstance(feature, datasets.ClassLabel):
        return table, None
    column = label or "label"
    ints = table.column(column).to_pylist()
    names = [None if i is None or i < 0 else feature.int2str(int(i)) for i in ints]
    at = table.schema.get_field_index(column)
    return table.set_column(at, column, pa.array(names, pa.string())), list(feature.names)


def _vectors(role: str, values: np.ndarray, rows: int) -> pa.Array:
    """An N x D array as a column of float32 lists, checked against the table's rows."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise ConfigError(
            f"{role}: expected an array of {rows:,} rows (one per row of data) x D columns, got "
            f"shape {arr.shape}"
        )
    flat = pa.array(arr.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1]).cast(pa.list_(pa.float32()))


def _check_classes(table: pa.Table, column: str, classes: list[str]) -> None:
    """One distinct class name per column of the probabilities."""
    if column not in table.column_names:
        return  # the loader names the missing column
    probs = np.asarray(table.column(column).to_pylist(), dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(set(classes)) != len(classes):
        raise ConfigError(
            f"classes: {len(classes)} names (distinct: {len(set(classes))}) for pred_probs with "
            f"{probs.shape[1] if probs.ndim == 2 else '?'} columns; give one distinct name per column"
        )


def _image_cells(table: pa.Table, column: str) -> pa.Table:
    """Image cells as `{bytes, path}` (what the loader reads): raw bytes and paths are wrapped."""
    if column not in table.column_names:
        return table  # the loader names the missing column
    col = table.column(column)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        cells = [{"bytes": v, "path": None} for v in col.to_pylist()]
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        cells = [{"bytes": None, "path": v} for v in col.to_pylist()]
    else:
        return table
    at = table.schema.get_field_index(column)
    return table.set_column(at, column, pa.array(cells, struct))


def take_rows(data: Any, kind: InputKind, positions: Sequence[int], sizes: Any) -> Any:
    """The rows at `positions` (of the loaded order) in the input's own type."""
    rows = list(positions)
    if kind == "pandas":
        return data.iloc[rows]
    if kind == "polars":
        return data[rows]
    if kind == "arrow":
        return data.take(pa.array(rows, pa.int64()))
    if kind == "dataset":
        return data.select(rows)
    if kind == "datasetdict":
        import datasets

        out, start = {}, 0
        for split, n in sizes:
            out[split] = data[split].select([p - start for p in rows if start <= p < start + n])
            start += n
        return datasets.DatasetDict(out)
    raise ConfigError(f"kept(): rows of a {kind} input are given as the cleaned dataset table")
