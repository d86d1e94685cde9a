"""The versioned store: Delta tables for the cleaned dataset and decisions, manifests as commits."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import polars as pl

from leanset.pipelines.fsutil import digest, is_disk_full
from leanset.pipelines.store.errors import IntegrityError, StoreConflict, StoreError, StoreFull
from leanset.pipelines.store.integrity import (
    check_version_table,
    parse_manifest,
    serialise,
    table_files,
)
from leanset.pipelines.store.layout import LABELING_LEASE, TABLES, StoreLayout
from leanset.pipelines.store.storage import Storage, storage_for
from leanset.pipelines.store.vectors import KeptVectors, read_vectors, write_vectors
from leanset.pipelines.store.workdir import SideFolder

if TYPE_CHECKING:
    import pyarrow as pa
    from polars._typing import PolarsDataType

log = logging.getLogger("leanset.store")
__all__ = ["Diff", "IntegrityError", "Store", "StoreConflict", "StoreError", "StoreFull"]


@dataclass(frozen=True)
class Diff:
    """Samples that entered or left the cleaned dataset between two versions."""

    a: int
    b: int
    entered: pl.DataFrame
    left: pl.DataFrame
    corrected: pl.DataFrame  # a label that was given in version a changed
    labeled: pl.DataFrame  # a sample unlabeled in version a (a pool sample) got its first label

    @property
    def relabeled(self) -> pl.DataFrame:
        """Every sample whose label changed: corrections and first labels."""
        return pl.concat([self.corrected, self.labeled], how="diagonal_relaxed")


class Store:
    """A folder (or an object-storage prefix) holding every version of one cleaned dataset.

    `root`: a local path or an ``s3://``, ``gs://``, ``az://`` URL; `storage_options`: credentials
    and endpoint for a URL (else the usual environment variables; see `store.storage`)."""

    def __init__(self, root: str | Path, storage_options: dict[str, str] | None = None):
        self.storage: Storage = storage_for(root, storage_options)
        self.where = str(root).rstrip("/") if self.storage.remote else str(Path(root))
        # a URL has no local path: its layout names objects relative to the prefix
        self._root = Path(".") if self.storage.remote else Path(root)
        self._layout = StoreLayout(self._root)
        if not self.storage.remote and self._root.exists() and not self._root.is_dir():
            raise StoreError(
                f"store path {self._root} is a file; expected a folder (or a new path)"
            )
        self._side: SideFolder | None = None
        self.cache = SideFolder.shared(self.storage)  # the content-addressed caches

    @property
    def side(self) -> SideFolder:
        """Where this process reads and writes the store's rewritable side files (the store
        folder itself, or for a bucket a local folder of its own, pulled and pushed)."""
        if self._side is None:
            self._side = SideFolder.private(self.storage)
        return self._side

    @property
    def side_layout(self) -> StoreLayout:
        """The layout of `side`: the store's own layout for a local store."""
        return self._layout if not self.storage.remote else StoreLayout(self.side.root)

    @property
    def cache_layout(self) -> StoreLayout:
        """The layout of `cache`: the store's own layout for a local store."""
        return self._layout if not self.storage.remote else StoreLayout(self.cache.root)

    def side_rel(self, path: Path) -> str:
        """A path under `side` (or `cache`) as a name relative to the store."""
        base = self.cache.root if path.is_relative_to(self.cache.root) else self.side.root
        if not self.storage.remote:
            base = self._root
        return path.relative_to(base).as_posix()

    def shown(self, path: Path) -> str:
        """How a side file is named to a user: its path, or for a bucket its URL."""
        return str(path) if not self.storage.remote else self.storage.show(self.side_rel(path))

    def report_of(self, version: int) -> str | None:
        """Where a version's HTML report is (its path, or its URL), None when none was written."""
        path = self.side_layout.report(version)
        if not self.storage.remote:
            return str(path) if path.is_file() else None
        return self.shown(path) if self.storage.size(self.side_rel(path)) is not None else None

    @contextlib.contextmanager
    def labeling(self, write: bool = False) -> Iterator[Path]:
        """The store folder whose labeling files `queue.py` reads (and, with `write`, rewrites);
        for a bucket: pulled into `side` (under the bucket's labeling lease when writing) and
        pushed back after."""
        held = self.side.leased(LABELING_LEASE, "the labeling queue") if write else None
        with held or contextlib.nullcontext():
            self.side.pull("labeling")
            yield self.side.root
            if write:
                self.side.push("labeling")

    @property
    def root(self) -> Path:
        """The store folder (a store on object storage has none: see `_local_only`)."""
        return self._local_only()._root

    @property
    def layout(self) -> StoreLayout:
        """The paths of the store folder."""
        return self._local_only()._layout

    def _local_only(self) -> Store:
        """Steps that still read and write files by path refuse an object-storage store."""
        if self.storage.remote:
            raise StoreError(
                f"store {self.where}: this step needs a store folder (a local or mounted path); "
                f"on object storage leanset commits, reads, diffs and verifies versions so far"
            )
        return self

    def _rel(self, path: Path) -> str:
        """A layout path as a name relative to the store root."""
        return path.relative_to(self._root).as_posix()

    # ------------------------------------------------------------ reading

    def manifests(self) -> list[dict[str, Any]]:
        """Every committed version's manifest, oldest first."""
        folder = self._rel(self._layout.manifests)
        names = [
            n
            for n in self.storage.list(folder)
            if n.count("/") == folder.count("/") + 1
            and fnmatch.fnmatch(n.rsplit("/", 1)[1], "v*.json")
        ]
        return [_read_json(self.storage, n) for n in names]

    def latest(self) -> dict[str, Any] | None:
        """The newest manifest, or None for an empty store."""
        found = self.manifests()
        return found[-1] if found else None

    def manifest(self, version: int | None = None) -> dict[str, Any]:
        """One version's manifest (the latest when `version` is None)."""
        if version is None:
            latest = self.latest()
            if latest is None:
                raise StoreError(f"store {self.where} has no versions yet")
            return latest
        rel = self._rel(self._layout.manifest(version))
        if self.storage.size(rel) is None:
            have = [m["version"] for m in self.manifests()]
            raise StoreError(
                f"store {self.where} has no version {version}; versions: {have or 'none'}"
            )
        return _read_json(self.storage, rel)

    def read(self, table: str, version: int | None = None) -> pl.DataFrame:
        """A table ('dataset' or 'decisions') as of a leanset version."""
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}; expected one of {TABLES}")
        m = self.manifest(version)
        files = check_table_files(self.storage, table, m["tables"][table], m["version"])
        check_version_table(self.storage, table, m, files)
        df = pl.read_delta(
            self.storage.table_uri(table),
            version=m["tables"][table],
            storage_options=self.storage.delta_options,
        )
        if table == "dataset" and m.get("vectors"):  # the vectors live in shared shards
            matrix = read_vectors(self.storage, self._layout, m, df["content_hash"].to_list())
            df = df.with_columns(pl.Series("embedding", matrix).cast(pl.List(pl.Float32)))
        return df

    def diff(self, a: int, b: int) -> Diff:
        """Which samples entered or left the cleaned dataset from version a to version b."""
        da, db = self.read("decisions", a), self.read("decisions", b)
        kept_a = da.filter(pl.col("kept")).select("sample_id")
        kept_b = db.filter(pl.col("kept")).select("sample_id")
        cols = [
            c for c in ("sample_id", "source", "split", "label", "drop_reason") if c in db.columns
        ]
        entered = db.join(kept_b.join(kept_a, on="sample_id", how="anti"), on="sample_id").select(
            cols
        )
        gone = kept_a.join(kept_b, on="sample_id", how="anti")
        left = gone.join(db.select(cols), on="sample_id", how="left")
        if "label" not in da.columns or "label" not in db.columns:
            none = pl.DataFrame()
            return Diff(a=a, b=b, entered=entered, left=left, corrected=none, labeled=none)
        wanted = ("sample_id", "source", "split", "label", "relabel_source")
        both = da.select("sample_id", pl.col("label").alias("label_before")).join(
            db.select([c for c in wanted if c in db.columns]), on="sample_id"
        )
        changed = both.filter(pl.col("label_before").ne_missing(pl.col("label")))
        first = pl.col("label_before").is_null()
        return Diff(
            a=a,
            b=b,
            entered=entered,
            left=left,
            corrected=changed.filter(~first),
            labeled=changed.filter(first).drop("label_before"),
        )

    # ------------------------------------------------------------ writing

    def commit(
        self,
        dataset: pl.DataFrame,
        decisions: pl.DataFrame,
        manifest: dict[str, Any],
        parent: int | None,
        pairs: pl.DataFrame | None = None,
        queue_rows: pl.DataFrame | None = None,
        vectors: KeptVectors | None = None,
    ) -> dict[str, Any]:
        """Write both tables (and the near-pair index and the rows the queue fill will add), then
        the manifest that makes them a version.

        A full disk stops the commit at once (no retry): nothing was committed."""
        extras = {"pairs": pairs, "queue_rows": queue_rows}
        if not self.storage.remote:
            self._check_free_space(
                [dataset, decisions] + [f for f in extras.values() if f is not None]
            )
        try:
            return self._commit(dataset, decisions, manifest, parent, extras, vectors)
        except StoreError:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise StoreFull(self._full_message()) from None
            raise

    def _full_message(self, detail: str = "") -> str:
        return (
            f"no space left on the store's disk ({self.where}), nothing was committed{detail}; "
            f"free some space and rerun"
        )

    def _check_free_space(self, frames: list[pl.DataFrame]) -> None:
        """Refuse before writing when the disk clearly cannot hold the version (a write that fails
        half-way leaves Delta's writer threads complaining on stderr)."""
        import shutil

        folder = next(p for p in (self._root, *self._root.parents) if p.exists())
        free = shutil.disk_usage(folder).free
        need = sum(f.estimated_size() for f in frames) // 8  # Parquet compresses; be lenient
        if free < need:
            mib = 2**20
            raise StoreFull(
                self._full_message(f" (about {need // mib:,} MiB needed, {free // mib:,} MiB free)")
            )

    def _commit(
        self,
        dataset: pl.DataFrame,
        decisions: pl.DataFrame,
        manifest: dict[str, Any],
        parent: int | None,
        extras: dict[str, pl.DataFrame | None],
        vectors: KeptVectors | None = None,
    ) -> dict[str, Any]:
        self.storage.ensure_root()
        latest = self.latest()
        current = latest["version"] if latest else None
        if current != parent:
            raise StoreConflict(self._conflict_message(parent, current))
        version = (parent or 0) + 1
        token = uuid.uuid4().hex
        tables, files = {}, {}
        for name, df in (("dataset", dataset), ("decisions", decisions)):
            tables[name], added = self._write_table(name, df, version, token)
            files[name] = table_files(self.storage, name, tables[name], added)
        full = {
            **manifest,
            "version": version,
            "parent": parent,
            "tables": tables,
            "commit": token,
            "files": files,
        }
        if (pairs := extras.get("pairs")) is not None:
            rel = self._layout.pairs_file(version, token)
            written = {"pairs": rel, "pairs_digest": self._write_parquet(pairs, rel)}
            full["index"] = {**full.get("index", {}), **written}
        if vectors is not None:
            prior = latest if latest and latest["version"] == parent else None
            full["vectors"], full["files"]["vectors"] = write_vectors(
                self.storage, self._layout, version, token, vectors, prior
            )
        if (rows := extras.get("queue_rows")) is not None:
            rel = self._layout.queue_rows_file(version, token)
            written = {"queue_rows": rel, "queue_rows_digest": self._write_parquet(rows, rel)}
            full["post_commit"] = {**full.get("post_commit", {}), **written}
        if not self.storage.create(self._rel(self._layout.manifest(version)), serialise(full)):
            winner = self.latest()
            raise StoreConflict(
                self._conflict_message(parent, winner["version"] if winner else None)
            )
        return self.manifest(version)

    def _write_parquet(self, frame: pl.DataFrame, rel: str) -> str:
        """Write a frame as Parquet at `rel` under the store; return the file's digest."""
        buf = io.BytesIO()
        as_stored(frame).write_parquet(buf)
        self.storage.write(rel, buf.getvalue())
        return digest(buf.getvalue())

    def read_pairs(self, manifest: dict[str, Any]) -> pl.DataFrame | None:
        """The near pairs a version found (None when it recorded none or the file is unreadable)."""
        rel = manifest.get("index", {}).get("pairs")
        if not rel:
            return None
        try:
            data = self.storage.read(rel)
            expected = manifest["index"].get("pairs_digest")
            if expected and digest(data) != expected:  # Parquet itself misses flipped bits
                raise OSError("its checksum does not match the manifest")
            return pl.read_parquet(io.BytesIO(data))
        except (OSError, pl.exceptions.PolarsError) as exc:
            log.warning(
                "near-pair index %s is unreadable (%s); searching everything again", rel, exc
            )
            return None

    def _write_table(
        self, name: str, df: pl.DataFrame, version: int, token: str
    ) -> tuple[int, set[str]]:
        """Overwrite a Delta table; return the Delta version this write created and its files."""
        from deltalake import CommitProperties, DeltaTable, write_deltalake
        from deltalake.exceptions import CommitFailedError

        path, options = self.storage.table_uri(name), self.storage.delta_options
        meta = {"leanset_version": str(version), "leanset_commit": token}
        try:
            write_deltalake(
                path,
                stored_stream(df),
                mode="overwrite",
                schema_mode="overwrite",
                storage_options=options,
                commit_properties=CommitProperties(custom_metadata=meta),
            )
        except CommitFailedError as exc:  # another run's write to this table committed first
            raise StoreConflict(
                f"store {self.where}: another run wrote the {name!r} table at the same time as "
                f"this one, which was to become version {version}; nothing was written as a "
                f"version. Rerun to build on the version that run commits. (Delta: {exc})"
            ) from exc
        latest = DeltaTable(path, storage_options=options).version()
        found = _find_commit(self.storage, name, latest, token)
        if found is None:
            raise StoreError(f"{path}: the write for version {version} is not in the Delta log")
        delta_version, added = found
        table = DeltaTable(path, version=delta_version, storage_options=options)
        files = table.get_add_actions().column("path")
        if set(files.to_pylist()) != added:  # a concurrent write made ours an append
            raise StoreConflict(
                f"store {self.where}: another run wrote the {name!r} table at the same time as "
                f"this one, which was to become version {version}; nothing was written as a "
                f"version. Rerun to build on the version that run commits."
            )
        return delta_version, added

    def _conflict_message(self, parent: int | None, current: int | None) -> str:
        return (
            f"store {self.where}: this run started from version {parent or 'none (empty store)'}, "
            f"but version {current} was committed by another run meanwhile; nothing was written "
            f"as a version. Rerun to build on version {current}."
        )


def as_stored(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with its enum columns as strings: what a version stores (stages keep some
    string columns as enums in memory, 1-4 bytes a row instead of 16)."""
    enums = [c for c, t in frame.schema.items() if isinstance(t, pl.Enum | pl.Categorical)]
    return frame.with_columns(pl.col(enums).cast(pl.Utf8)) if enums else frame


def stored_stream(frame: pl.DataFrame) -> pa.RecordBatchReader:
    """The frame as the Arrow stream the Delta writer stores: enum columns stay dictionaries (of
    plain strings: Delta's Parquet writer takes no string views there) and Delta stores them as
    strings, so no column is turned into a whole-table string column on the way."""
    import pyarrow as pa

    _refuse_unstorable(frame)
    # polars hands the frame over as one batch: Delta's writer keeps row order only for one
    reader = pa.RecordBatchReader.from_stream(frame)
    fields = [
        pa.field(f.name, pa.dictionary(f.type.index_type, pa.string()), f.nullable)
        if pa.types.is_dictionary(f.type)
        else f
        for f in reader.schema
    ]
    return reader.cast(pa.schema(fields))


def _refuse_unstorable(frame: pl.DataFrame) -> None:
    """Delta has no type for an all-null column without a dtype or for a time of day."""
    bad = [
        c
        for c, t in frame.schema.items()
        if any(isinstance(u, pl.Null | pl.Time) for u in _types(t))
    ]
    if bad:
        raise TypeError(f"columns {bad} have a type Delta cannot store (Null or Time)")


def _types(dtype: PolarsDataType) -> Iterator[PolarsDataType]:
    """A type and every type nested in it."""
    yield dtype
    if isinstance(dtype, pl.List | pl.Array):
        yield from _types(dtype.inner)
    elif isinstance(dtype, pl.Struct):
        for field in dtype.fields:
            yield from _types(field.dtype)


def check_table_files(
    storage: Storage, table: str, delta_version: int, version: int
) -> list[tuple[str, int]]:
    """Every data file a version reads exists with the size its Delta log recorded (a truncated or
    missing file is named here, instead of failing deep inside the Parquet reader); returns the
    (path, size) of each."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    path = storage.table_uri(table)
    try:
        opts = storage.delta_options
        files = DeltaTable(path, version=delta_version, storage_options=opts).get_add_actions()
    except (DeltaError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(
            f"version {version}: the Delta log of {path} cannot be read at Delta version "
            f"{delta_version} ({first})"
        ) from exc
    paths = files.column("path").to_pylist()
    sizes = files.column("size_bytes").to_pylist()
    for rel, size in zip(paths, sizes, strict=True):
        file = storage.show(f"{table}/{unquote(rel)}")
        actual = storage.size(f"{table}/{unquote(rel)}")
        if actual != size:
            found = "missing" if actual is None else f"{actual} bytes, its Delta log says {size}"
            raise StoreError(
                f"version {version}: data file {file} is {found}; the version cannot be read: "
                f"restore the file from a backup of {path} (a new run writes a new version)"
            )
    return list(zip(paths, sizes, strict=True))


def _find_commit(
    storage: Storage, table: str, latest: int, token: str, depth: int = 200
) -> tuple[int, set[str]] | None:
    """(Delta version, files it added) of the commit carrying `token`, read from the commit files.

    (`DeltaTable.history` numbers its entries down from the snapshot's version, and a concurrent
    writer's newer commit can shift that numbering: a version number taken from it can be wrong.)
    """
    for v in range(latest, max(latest - depth, -1), -1):
        try:
            raw = storage.read(f"{table}/_delta_log/{v:020d}.json")
        except FileNotFoundError:
            continue
        lines = raw.decode("utf-8").splitlines()
        actions = [json.loads(line) for line in lines if line.strip()]
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), None)
        if isinstance(info, dict) and info.get("leanset_commit") == token:
            return v, {unquote(a["add"]["path"]) for a in actions if "add" in a}
    return None


def _read_json(storage: Storage, rel: str) -> dict[str, Any]:
    """A manifest, checked against its own checksum (damage names the file and what to do)."""
    shown = storage.show(rel)
    try:
        raw = storage.read(rel)
    except OSError as exc:
        raise StoreError(f"manifest {shown} is unreadable ({exc})") from exc
    return parse_manifest(shown, raw)
