"""Load a dataset through Hugging Face `datasets` into leanset's sample table."""

from __future__ import annotations

import glob
import itertools
import logging
import os
import reprlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.fsutil import digest
from leanset.pipelines.sources.dataset import (
    LoadedDataset,
    Modality,
    SourceError,
    image_bytes,
)
from leanset.pipelines.sources.folder import open_folder
from leanset.pipelines.sources.hashes import FileHashCache, Hashed
from leanset.pipelines.sources.remote import localize, remote_folders
from leanset.pipelines.sources.vectors import vector_blocks

log = logging.getLogger("leanset.sources")
PARQUET_BATCH_ROWS = 8192  # rows per batch when `datasets` converts Parquet (bounds its memory)


def load_source(
    source: SourceSettings,
    columns: ColumnSettings,
    file_hashes: FileHashCache | None = None,
    content_optional: bool = False,
) -> LoadedDataset:
    """Load the configured source and build the sample table (ids, splits, labels, hashes).

    `content_optional`: a table with no image, text or vector column is valid (modality `none`:
    ids, labels and given probabilities; each row's content hash is its place in the source).
    A source on object storage is read from its local mirror (`sources/remote.py`)."""
    given, source = source, localize(source, file_hashes)
    opened = _open_splits(source, columns.unlabeled_splits)
    splits = opened.splits
    if source.splits:
        missing = [s for s in source.splits if s not in splits]
        if missing:
            raise SourceError(f"split(s) {missing} not in the dataset; it has {sorted(splits)}")
        splits = {s: splits[s] for s in source.splits}
    columns = _infer_columns(columns, splits, content_optional)
    modality = _modality(columns)
    if modality == "image":
        splits = {name: _undecoded(ds, columns.content()) for name, ds in splits.items()}
    frames = [
        _split_frame(name, ds, columns, modality, source, file_hashes, opened, name)
        for name, ds in splits.items()
    ]
    table = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
    if table.height == 0:
        raise SourceError(f"the dataset is empty: no samples in split(s) {sorted(splits)}")
    if columns.split:
        table = table.with_columns(_split_column(splits, columns.split))
    table = table.with_columns(
        pl.int_range(0, table.height, dtype=pl.Int64).alias("position"),
        pl.when(pl.col("split").is_in(columns.unlabeled_splits))
        .then(None)
        .otherwise(pl.col("label"))
        .alias("label"),  # a pool split: its folder or column labels are placeholders
    )
    table = _assign_ids(table, modality)
    remote = remote_folders(given, source)
    return LoadedDataset(table, modality, splits, columns, remote)


@dataclass
class _Opened:
    """The source's splits as `datasets` opened them, and the file each tabular row came from."""

    splits: dict[str, Any]
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split: (file, rows)
    refused: dict[str, str] = field(default_factory=dict)  # image path -> why it is not read


def _open_splits(source: SourceSettings, pool_splits: Sequence[str] = ()) -> _Opened:
    """Open the source with `datasets`: {split: Dataset}, and where tabular rows came from."""
    try:
        return _open_with_datasets(source, pool_splits)
    except (ValueError, FileNotFoundError, OSError, _generation_error()) as exc:
        if isinstance(exc, SourceError):
            raise
        where = source.path or source.name or ", ".join(source.data_files or [])
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        raise SourceError(f"cannot load the {source.type} source {where}: {exc}{cause}") from exc


def _generation_error() -> type[Exception]:
    """`datasets` wraps a file it cannot parse (e.g. a CSV that is not UTF-8) in this error."""
    from datasets.exceptions import DatasetGenerationError

    error: type[Exception] = DatasetGenerationError
    return error


def _keep_tqdm_lock() -> None:
    """Give `datasets`' tqdm class a lock that stays. Its thread maps create the lock when it is
    missing and delete it when they end, so two loads at once in one process (two flow runs in
    threads) delete it under each other: `AttributeError: type object 'tqdm' has no attribute
    '_lock'`. With a lock in place they only swap it and put it back."""
    from datasets.utils.tqdm import tqdm as datasets_tqdm

    datasets_tqdm.get_lock()


def _open_with_datasets(source: SourceSettings, pool_splits: Sequence[str]) -> _Opened:
    import datasets

    # leanset shows its own progress; `datasets`' bars ("Downloading data" for local files) mislead
    datasets.disable_progress_bars()
    _keep_tqdm_lock()
    # Arrow's default allocator keeps what a conversion freed; the system's returns it at once
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())

    path = source.path or ""  # the config loader requires it for the types that read it
    if source.type == "imagefolder":
        if not Path(path).is_dir():
            raise SourceError(f"source.path {path}: not a folder of images")
        splits, found = open_folder(path, pool_splits)
        if not splits:
            raise SourceError(f"source.path {path}: no image files in this folder")
        return _Opened(splits, refused=found.refused)
    elif source.type == "files":
        return _open_files(source)
    elif source.type == "disk":
        if not Path(path).exists():
            raise SourceError(f"source.path {path}: no dataset saved there (save_to_disk)")
        loaded = datasets.load_from_disk(path)
    else:  # hub: the real loader; needs network or a warm Hugging Face cache
        loaded = datasets.load_dataset(source.name, source.config, revision=source.revision)
    if isinstance(loaded, datasets.Dataset):
        return _Opened({"train": loaded})
    return _Opened(dict(loaded.items()))


def _open_files(source: SourceSettings) -> _Opened:
    """Local Parquet/CSV/JSON files, one `datasets` split per file joined into `train`, so each
    row's file is known (its id is derived from the file, not from its position among all rows)."""
    import datasets

    files = _expand(source.data_files or [])
    options = _parquet_options() if source.format == "parquet" else {}
    loaded = datasets.load_dataset(
        source.format, data_files={f"f{i}": [path] for i, (path, _) in enumerate(files)}, **options
    )
    parts = [loaded[f"f{i}"] for i in range(len(files))]
    first = parts[0].features
    for k, ((path, _), part) in enumerate(zip(files, parts, strict=True)):
        if part.features != first:
            try:
                parts[k] = part.cast(first)
            except (ValueError, TypeError) as exc:
                raise SourceError(
                    f"source.data_files: {path} has columns {dict(part.features)}, unlike "
                    f"{files[0][0]} ({dict(first)}); every file needs the same columns"
                ) from exc
    merged = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    origin = [(label, len(part)) for (_, label), part in zip(files, parts, strict=True)]
    return _Opened({"train": merged}, {"train": origin})


def _parquet_options() -> dict[str, Any]:
    """Read Parquet in small batches through a buffered stream (by default `datasets` reads a
    whole row group at once)."""
    import pyarrow.dataset as pds

    scan = pds.ParquetFragmentScanOptions(pre_buffer=False, use_buffered_stream=True)
    return {"batch_size": PARQUET_BATCH_ROWS, "fragment_scan_options": scan}


def _expand(patterns: Sequence[str]) -> list[tuple[str, str]]:
    """(file, its name relative to its pattern's fixed folder) for every file the patterns match,
    each once, in pattern order then name order."""
    out: dict[str, tuple[str, str]] = {}
    for pattern in patterns:
        hits = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not hits:
            raise SourceError(f"source.data_files: {pattern} does not exist")
        base = _fixed_folder(pattern)
        for hit in hits:
            label = os.path.relpath(hit, base) if base else Path(hit).name
            out.setdefault(str(Path(hit).resolve()), (hit, label))
    return list(out.values())


def _fixed_folder(pattern: str) -> str:
    """The folder part of a pattern before its first wildcard (a plain file: its folder)."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda p: not glob.has_magic(p), parts))
    if len(fixed) == len(parts):
        fixed = fixed[:-1]
    return str(Path(*fixed)) if fixed else ""


def _infer_columns(
    columns: ColumnSettings, splits: dict[str, Any], content_optional: bool = False
) -> ColumnSettings:
    """Fill in the content column when unset, and check that every named column exists."""
    first = next(iter(splits.values()))
    names = list(first.column_names)
    if not (columns.image or columns.text or columns.embedding):
        guess = next((c for c in ("image", "img", "text", "sentence") if c in names), None)
        if guess is None and content_optional:
            return _checked_columns(columns, names)
        if guess is None:
            raise SourceError(
                f"no content column configured and none found; set columns.image or columns.text "
                f"(columns here: {names})"
            )
        kind = "image" if guess in ("image", "img") else "text"
        columns = ColumnSettings(**{**columns.__dict__, kind: guess})
    return _checked_columns(columns, names)


def _checked_columns(columns: ColumnSettings, names: list[str]) -> ColumnSettings:
    """Every named column exists (the default label column may be absent: unlabeled data)."""
    for key in ("id", "image", "text", "label", "split", "embedding"):
        name = getattr(columns, key)
        if name and name not in names:
            if key == "label" and name == "label":
                columns = ColumnSettings(**{**columns.__dict__, "label": None})
                continue  # the default label column is optional: no labels = unlabeled data
            raise SourceError(
                f"columns.{key}: column {name!r} does not exist; columns here: {names}"
            )
    return columns


def _undecoded(ds: Any, column: str) -> Any:
    """The split with its image column left as raw bytes/paths (leanset decodes itself)."""
    import datasets

    if isinstance(ds.features[column], datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _modality(columns: ColumnSettings) -> Modality:
    if not (columns.embedding or columns.image or columns.text):
        return "none"
    if columns.embedding:
        return "embedding"
    return "image" if columns.image else "text"


def _split_frame(
    name: str,
    ds: Any,
    columns: ColumnSettings,
    modality: Modality,
    source: SourceSettings,
    file_hashes: FileHashCache | None,
    opened: _Opened,
    part: str,
) -> pl.DataFrame:
    """One split's rows: source, label, content hash, size and read errors (`opened` says which
    file each tabular row came from, and which image files are refused)."""
    n = len(ds)
    labels = _labels(ds, columns.label, name)
    origin = opened.files.get(part)
    where = _row_places(origin, source, name, n)
    hashes, sizes, errors, sources = [], [], [], []
    rows = _iter_content(ds, columns, modality, source, name, file_hashes, where, opened.refused)
    for row, content, src in rows:
        if isinstance(content, Hashed):
            err = None
            hashes.append(content.hash)
            sizes.append(content.size)
        else:
            data, err = content
            hashes.append(digest(data) if err is None else digest(f"unreadable:{src}".encode()))
            sizes.append(len(data) if err is None else 0)
        errors.append(err)
        sources.append(src)
        if err:
            log.warning("sample %s (%s row %d): %s", src, name, row, err)
    ids = _ids(ds, columns.id, name) if columns.id else [None] * n
    return pl.DataFrame(
        {
            "_given_id": ids,
            "source": sources,
            "split": [name] * n,
            "_part": [name] * n,
            "label": labels,
            "content_hash": hashes,
            "size_bytes": np.asarray(sizes, dtype=np.int64),
            "error": errors,
            "_row": np.arange(n, dtype=np.int64),
            "_loc": _row_files(origin) if origin else [name] * n,
        },
        schema_overrides={"_given_id": pl.Utf8, "label": pl.Utf8, "error": pl.Utf8},
    )


def _row_places(
    origin: list[tuple[str, int]] | None, source: SourceSettings, split: str, n: int
) -> list[str]:
    """Each row's `source`: `file:row` (row within its file) when files are known."""
    if origin:
        return [f"{label}:{r}" for label, rows in origin for r in range(rows)]
    return [_row_source(source, split, r) for r in range(n)]


def _row_files(origin: list[tuple[str, int]]) -> list[str]:
    return [label for label, rows in origin for _ in range(rows)]


def _labels(ds: Any, column: str | None, split: str = "train") -> list[str | None]:
    """Labels as text (class names for ClassLabel features); None where missing.

    A label must be one value, and one column holds one type of value: as text, 1 and "1" would
    be one class and 1 and 1.0 two, so a column that mixes types is refused, naming two rows."""
    if not column:
        return [None] * len(ds)
    feature = ds.features[column]
    values = _python_column(ds, column, "label", split)
    names = getattr(feature, "names", None)
    out: list[str | None] = []
    first_of_kind: dict[str, int] = {}
    for row, v in enumerate(values):
        if v is None or v == -1 and names:
            out.append(None)
        elif names is not None:
            out.append(names[int(v)])
        elif isinstance(v, float) and np.isnan(v):
            out.append(None)
        else:
            first_of_kind.setdefault(_label_kind(v, column, split, row), row)
            out.append(str(v))
    if len(first_of_kind) > 1:
        (k1, r1), (k2, r2) = sorted(first_of_kind.items(), key=lambda kv: kv[1])[:2]
        raise SourceError(
            f"columns.label: column {column!r} mixes label types: split {split!r} row {r1} is "
            f"{k1} {_short(values[r1])}, row {r2} is {k2} {_short(values[r2])}; give every "
            f"label the same type"
        )
    return out


def _label_kind(value: Any, column: str, split: str, row: int) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, (int, np.integer)):
        return "an integer"
    if isinstance(value, (float, np.floating)):
        return "a float"
    if isinstance(value, str):
        return "text"
    raise SourceError(
        f"columns.label: column {column!r}, split {split!r} row {row}: label {_short(value)} is "
        f"a {type(value).__name__}; a label must be one value (text, an integer or a boolean)"
    )


def _ids(ds: Any, column: str, split: str) -> list[str]:
    """The configured id column as text; every sample must have one."""
    values = _python_column(ds, column, "id", split)
    missing = next((row for row, v in enumerate(values) if v is None or str(v) == ""), None)
    if missing is not None:
        raise SourceError(
            f"columns.id: split {split!r} row {missing} has no id in column {column!r}; "
            f"every sample needs one"
        )
    return [str(v) for v in values]


def _python_column(ds: Any, column: str, key: str, split: str) -> list[Any]:
    """A column's values; text that is not UTF-8 is refused, naming the column and row."""
    try:
        return list(ds[column])
    except UnicodeDecodeError as exc:
        raw = _raw_text(ds, column)
        row = next((i for i, v in enumerate(raw) if isinstance(v, bytes) and _bad_utf8(v)), "?")
        raise SourceError(
            f"columns.{key}: column {column!r}, split {split!r} row {row}: text is not valid "
            f"UTF-8 ({exc.reason})"
        ) from exc


def _raw_text(ds: Any, column: str) -> list[Any]:
    """A column's values, as raw bytes where Arrow holds strings (they are decoded one by one, so
    one value that is not UTF-8 names its sample instead of stopping the whole load)."""
    import pyarrow as pa

    col = ds.with_format("arrow")[column]
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return list(col.cast(pa.large_binary()).to_pylist())
    return list(ds[column])


def _bad_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _short(value: Any) -> str:
    return reprlib.repr(value)[:60]


def _iter_content(
    ds: Any,
    columns: ColumnSettings,
    modality: Modality,
    source: SourceSettings,
    split: str,
    file_hashes: FileHashCache | None,
    where: list[str],
    refused: dict[str, str],
) -> Iterator[tuple[int, tuple[bytes, str | None] | Hashed, str]]:
    """Yield (row, (bytes to hash, error) or a known hash, source) for every row of one split
    (`where`: each row's source, for rows that are not files themselves; `refused`: image files
    never read, with the reason)."""
    if modality == "image":
        for row, value in enumerate(ds[columns.content()]):
            path = value.get("path") if isinstance(value, dict) else None
            item = (b"", refused[path]) if path in refused else _cached_image(value, file_hashes)
            yield row, item, _image_source(value, source, split, row)
    elif modality == "text":
        for row, value in enumerate(_raw_text(ds, columns.content())):
            yield row, _text_bytes(value), where[row]
    elif modality == "none":  # no content: a row is known by its place
        for row in range(len(ds)):
            yield row, (f"row:{where[row]}".encode(), None), where[row]
    else:
        for start, block in vector_blocks(ds, columns.content()):
            for k, value in enumerate(block):
                yield start + k, _vector_bytes(value), where[start + k]


def _cached_image(value: Any, cache: FileHashCache | None) -> tuple[bytes, str | None] | Hashed:
    """A file's hash from the cache when it is unchanged, else its bytes (remembering the hash)."""
    path = value.get("path") if isinstance(value, dict) and not value.get("bytes") else None
    if cache is None or not path:
        return _safe_image_bytes(value)
    try:
        st = os.stat(path)
    except OSError:
        return _safe_image_bytes(value)  # reports the error
    hit = cache.get(path, st)
    if hit is not None:
        return hit
    data, err = _safe_image_bytes(value)
    if err is not None:
        return data, err
    h = digest(data)
    cache.put(path, st, h)
    return Hashed(h, len(data))


def _safe_image_bytes(value: Any) -> tuple[bytes, str | None]:
    try:
        data = image_bytes(value)
    except OSError as exc:
        return b"", f"unreadable: {exc.strerror or exc}"
    if not data:
        return b"", "unreadable: empty file (0 bytes)"
    return data, None


def _text_bytes(value: Any) -> tuple[bytes, str | None]:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return b"", f"unreadable: text is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if not isinstance(value, str):
        return b"", f"unreadable: expected text, got {type(value).__name__}"
    return value.encode("utf-8"), None


def _vector_bytes(value: Any) -> tuple[bytes, str | None]:
    try:
        vec = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return b"", f"unreadable: expected a numeric vector, got {type(value).__name__}"
    if vec.ndim != 1 or vec.size == 0:
        return b"", f"unreadable: expected a 1-d vector, got shape {vec.shape}"
    if not np.isfinite(vec).all():
        return b"", "unreadable: embedding has NaN or inf values"
    return vec.tobytes(), None


def _image_source(value: Any, source: SourceSettings, split: str, row: int) -> str:
    path = value.get("path") if isinstance(value, dict) else None
    if path and source.path:
        real = Path(os.path.realpath(path))  # never raises, even on a link loop
        for inner, outer in ((Path(path), Path(source.path)), (real, None)):
            try:  # the path as listed (a link keeps its own name), else as resolved
                return str(inner.relative_to(outer or Path(source.path).resolve()))
            except ValueError:
                continue
        return str(path)
    return path or _row_source(source, split, row)


def _row_source(source: SourceSettings, split: str, row: int) -> str:
    where = source.name or source.path or ",".join(source.data_files or [])
    return f"{where}:{split}:{row}"


def _row_ids(table: pl.DataFrame) -> pl.Series:
    """Ids of rows: content hash, file (or split), and the occurrence of that content there."""
    nth = pl.int_range(pl.len()).over(["content_hash", "_loc"]).cast(pl.Utf8)
    keys = table.select(pl.concat_str(["content_hash", "_loc", nth], separator="\x1f"))
    return pl.Series([digest(k.encode())[:16] for k in keys.to_series().to_list()], dtype=pl.Utf8)


def _split_column(splits: dict[str, Any], column: str) -> pl.Series:
    """The configured split column's values, as text, in table order."""
    values = [v for ds in splits.values() for v in ds[column]]
    bad = next((i for i, v in enumerate(values) if v is None or str(v) == ""), None)
    if bad is not None:
        raise SourceError(f"columns.split: row {bad} has no split value in column {column!r}")
    return pl.Series("split", [str(v) for v in values], dtype=pl.Utf8)


def _assign_ids(table: pl.DataFrame, modality: Modality) -> pl.DataFrame:
    """Configured ids (checked unique), else derived from the content and where it lives.

    An image file's id hashes its content and path. A row's id hashes its content, the file
    (or split) it came from, and how many rows with the same content came before it there: ids
    stay the same when rows are reordered or files and rows are appended, and identical rows are
    still told apart."""
    if table["_given_id"].null_count() == 0:
        dup = table.filter(pl.col("_given_id").is_duplicated())["_given_id"]
        if dup.len():
            raise SourceError(
                f"columns.id: id {dup[0]!r} appears {int((table['_given_id'] == dup[0]).sum())} "
                f"times; ids must be unique ({dup.n_unique()} duplicated ids in all)"
            )
        ids = table["_given_id"]
    elif modality == "image":
        pairs = zip(table["content_hash"].to_list(), table["source"].to_list(), strict=True)
        ids = pl.Series([digest(f"{h}\x1f{src}".encode())[:16] for h, src in pairs], dtype=pl.Utf8)
    else:
        ids = _row_ids(table)
    return (
        table.with_columns(ids.alias("sample_id"))
        .drop("_given_id")
        .select(
            "sample_id",
            "position",
            "source",
            "split",
            "label",
            "content_hash",
            "size_bytes",
            "error",
            "_part",
            "_row",
        )
    )
