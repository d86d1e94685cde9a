"""`leanset gc` on a store in a bucket: the same plan as on a folder (`gc.py`), made of object
names and ages from the bucket's listing instead of paths and mtimes.

Removed, as on a folder: the manifests of removed versions (first), Delta data objects no kept
version's Delta version reads (those a removed version read, or, past the grace period, that no
manifest's Delta version reads: a writer died before its manifest), pair-index and vector objects
only removed versions name (or unnamed past the grace period), embedding-cache objects of
fingerprints only removed versions used, and the removed versions' reports. Delta logs, the
labeling queue and promotions are never touched. A bucket has no temporary files (a PUT is whole);
shards that fail their checksum are left to `leanset verify`, which names them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from leanset.pipelines.store.layout import EMBEDDINGS, TABLES, StoreLayout
from leanset.pipelines.store.storage import ObjectStorage
from leanset.pipelines.store.versions import Store

_REL = StoreLayout(Path("."))  # names relative to the store, as the bucket lists them


def remote_plan(
    store: Store, kept: list[dict[str, Any]], removed: list[dict[str, Any]], grace: float
) -> dict[str, list[str]]:
    """{plan field: object names} of what a collection removes from a bucket store."""
    storage = store.storage
    assert isinstance(storage, ObjectStorage)
    ages = _ages(storage)
    out: dict[str, list[str]] = {
        "manifests": [_REL.manifest(int(m["version"])).as_posix() for m in removed]
    }
    out["table_files"] = [
        n for t in TABLES for n in _table_objects(store, t, kept, removed, ages, grace)
    ]
    out["index_files"] = _unnamed(f"{_REL.index.as_posix()}/", kept, removed, ages, grace, _pairs)
    out["vector_files"] = _unnamed(
        f"{_REL.vectors.as_posix()}/", kept, removed, ages, grace, _shards
    )
    keep_fp = {_fingerprint(m) for m in kept}
    gone_fp = {fp for m in removed if (fp := _fingerprint(m))} - keep_fp
    out["cache_dirs"] = sorted(
        n for n in ages if any(n.startswith(f"{EMBEDDINGS}/{fp}/") for fp in gone_fp)
    )
    reports = [_REL.report(int(m["version"])).as_posix() for m in removed]
    out["reports"] = sorted(n for r in reports for n in (r, f"{r}.sum") if n in ages)
    return out


def sizes(storage: ObjectStorage, names: Iterable[str]) -> int:
    """Bytes of the named objects (from one listing)."""
    listed = storage.listing("")
    return sum(listed[n][0] for n in names if n in listed)


def _ages(storage: ObjectStorage) -> dict[str, float]:
    now = time.time()
    return {name: now - when for name, (_, when) in storage.listing("").items()}


def _table_objects(
    store: Store,
    table: str,
    kept: list[dict[str, Any]],
    removed: list[dict[str, Any]],
    ages: dict[str, float],
    grace: float,
) -> list[str]:
    """Data objects of a Delta table that no kept version reads: read by a removed version, or
    read by none and older than the grace period."""
    needed = _files(store, table, {int(m["tables"][table]) for m in kept})
    theirs = _files(store, table, {int(m["tables"][table]) for m in removed})
    out = []
    for name, age in ages.items():
        if not name.startswith(f"{table}/") or "/_delta_log/" in f"/{name}":
            continue
        if name in needed or not name.endswith(".parquet"):
            continue
        if name in theirs or age >= grace:
            out.append(name)
    return sorted(out)


def _files(store: Store, table: str, versions: set[int]) -> set[str]:
    """Object names of the data files the given Delta versions of a table read."""
    from deltalake import DeltaTable

    uri = store.storage.table_uri(table)
    prefix = uri.rstrip("/") + "/"
    out: set[str] = set()
    for v in versions:
        dt = DeltaTable(uri, version=v, storage_options=store.storage.delta_options)
        out |= {f"{table}/{u.removeprefix(prefix)}" for u in dt.file_uris()}
    return out


def _unnamed(
    folder: str,
    kept: list[dict[str, Any]],
    removed: list[dict[str, Any]],
    ages: dict[str, float],
    grace: float,
    names: Any,
) -> list[str]:
    """Objects under `folder` no kept version names: named by a removed one, or by none and
    older than the grace period."""
    keep = {n for m in kept for n in names(m) if n}
    gone = {n for m in removed for n in names(m) if n}
    return sorted(
        n
        for n, age in ages.items()
        if n.startswith(folder) and n not in keep and (n in gone or age >= grace)
    )


def _pairs(manifest: dict[str, Any]) -> list[Any]:
    return [(manifest.get("index") or {}).get("pairs")]


def _shards(manifest: dict[str, Any]) -> list[Any]:
    return list((manifest.get("vectors") or {}).get("shards") or [])


def _fingerprint(manifest: dict[str, Any]) -> str | None:
    embed = manifest.get("embed") or {}
    fp = embed.get("fingerprint") if isinstance(embed, dict) else None
    return fp if isinstance(fp, str) and fp else None
