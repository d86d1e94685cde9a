"""Removing old versions from a store: an explicit command, with a dry run, that keeps what kept
versions need.

A plan names the versions to keep (the newest N, or the ones given; always the newest version,
so version numbers are never reused, and the promoted one, which `leanset export` reads) and lists
what only removed versions used:

* their manifests (deleted first: a version disappears at once, as it appeared);
* Delta data files that Delta has already tombstoned and that no kept version's Delta version reads
  (Delta's own vacuum listing, in a dry run, cross-checked against the files of every kept version);
* near-pair index files that only removed versions name (and, past the grace period, ones no
  version names: a run died before its manifest);
* vector shards (precomputed embeddings) that only removed versions list, likewise;
* embedding cache folders of embedder fingerprints that only removed versions used;
* shards that fail their checksum (they are never read) and temporary files that interrupted writes
  left behind, once they are older than a grace period (a running writer may still own them);
* the HTML reports of removed versions.

Nothing outside the store's `manifests/`, `dataset/`, `decisions/`, `index/`, `vectors/`,
`reports/` and `cache/embeddings/` folders is touched: source data, files Delta never wrote, the Delta logs and
`labeling/` are never removed. An interrupted collection leaves a valid store; rerunning it
finishes the job.
"""

from __future__ import annotations

import logging
import re
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leanset.pipelines.store.layout import TABLES
from leanset.pipelines.store.promotions import promoted_version
from leanset.pipelines.store.versions import Store, StoreError

log = logging.getLogger("leanset.gc")

DEFAULT_GRACE_SECONDS = 3600.0
_DELTA_PART = re.compile(r"part-\d{5}-[0-9a-f-]{36}-c\d{3}(\.[A-Za-z0-9]+)*\.parquet")
_TEMP = re.compile(r"\..+\.tmp")
_PAIR_INDEX = re.compile(r"pairs-v\d{6,}-[0-9a-f]+\.parquet")
_VECTOR_SHARD = re.compile(r"v\d{6,}-[0-9a-f]+-\d{3,}\.npz")


class GcError(StoreError):
    """Old versions cannot be removed as asked; the message names the store or version."""


@dataclass
class GcPlan:
    """What a collection keeps and removes (paths are absolute)."""

    store: str
    keep: list[int]
    remove: list[int]
    manifests: list[str] = field(default_factory=list)
    table_files: list[str] = field(default_factory=list)
    index_files: list[str] = field(default_factory=list)
    vector_files: list[str] = field(default_factory=list)
    cache_dirs: list[str] = field(default_factory=list)
    corrupt_shards: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    bytes: int = 0
    applied: bool = False
    bucket: Any = field(default=None, repr=False)  # a store in a bucket: its ObjectStorage

    def paths(self) -> list[str]:
        """Everything the plan removes, in the order it is removed (manifests first)."""
        return (
            self.manifests
            + self.table_files
            + self.index_files
            + self.vector_files
            + self.cache_dirs
            + self.corrupt_shards
            + self.temp_files
            + self.reports
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "keep": self.keep,
            "remove": self.remove,
            "manifests": self.manifests,
            "table_files": self.table_files,
            "index_files": self.index_files,
            "vector_files": self.vector_files,
            "cache_dirs": self.cache_dirs,
            "corrupt_shards": self.corrupt_shards,
            "temp_files": self.temp_files,
            "reports": self.reports,
            "bytes": self.bytes,
            "applied": self.applied,
        }


def collect_garbage(
    store: Store | str | Path,
    *,
    keep_last: int | None = None,
    keep: Sequence[int] | None = None,
    dry_run: bool = False,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> GcPlan:
    """Plan a collection and, unless `dry_run`, carry it out; returns the plan."""
    store = store if isinstance(store, Store) else Store(store)
    plan = plan_gc(store, keep_last=keep_last, keep=keep, grace_seconds=grace_seconds)
    if not dry_run:
        apply_gc(plan)
    return plan


def plan_gc(
    store: Store,
    *,
    keep_last: int | None = None,
    keep: Sequence[int] | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> GcPlan:
    """Decide what to remove without removing anything."""
    manifests = store.manifests()
    if not manifests:
        raise GcError(f"store {store.where} has no versions; there is nothing to collect")
    by_version = {int(m["version"]): m for m in manifests}
    kept = _kept_versions(store, sorted(by_version), keep_last, keep)
    kept |= {v for v in [promoted_version(store)] if v in by_version}  # what exports read
    removed = [v for v in sorted(by_version) if v not in kept]
    if store.storage.remote:
        return _bucket_plan(store, by_version, sorted(kept), removed, grace_seconds)
    plan = GcPlan(store=str(store.root), keep=sorted(kept), remove=removed)
    plan.manifests = [str(store.layout.manifest(v).resolve()) for v in removed]
    kept_manifests = [by_version[v] for v in plan.keep]
    for table in TABLES:
        plan.table_files += _table_garbage(store, table, kept_manifests, grace_seconds)
    plan.index_files = _index_garbage(
        store, kept_manifests, [by_version[v] for v in removed], grace_seconds
    )
    plan.vector_files = _vector_garbage(
        store, kept_manifests, [by_version[v] for v in removed], grace_seconds
    )
    plan.cache_dirs = _cache_garbage(store, kept_manifests, [by_version[v] for v in removed])
    plan.corrupt_shards = _corrupt_shards(store, plan.cache_dirs)
    plan.temp_files = _stale_temp_files(store, grace_seconds)
    plan.reports = [str(p.resolve()) for v in removed if (p := store.layout.report(v)).is_file()]
    plan.bytes = sum(_size(Path(p)) for p in plan.paths())
    return plan


def _bucket_plan(
    store: Store, by_version: dict[int, Any], keep: list[int], removed: list[int], grace: float
) -> GcPlan:
    """The plan for a store in a bucket (`gc_bucket.py`): object URLs instead of paths."""
    from leanset.pipelines.store.gc_bucket import remote_plan, sizes

    kept_m, removed_m = [by_version[v] for v in keep], [by_version[v] for v in removed]
    names = remote_plan(store, kept_m, removed_m, grace)
    plan = GcPlan(store=store.where, keep=keep, remove=removed, bucket=store.storage)
    for key, found in names.items():
        setattr(plan, key, [store.storage.show(n) for n in found])
    plan.bytes = sizes(store.storage, [n for found in names.values() for n in found])  # type: ignore[arg-type]
    return plan


def apply_gc(plan: GcPlan) -> GcPlan:
    """Remove what the plan lists: manifests first, so a crash never leaves a broken version."""
    if plan.bucket is not None:
        return _apply_bucket(plan)
    _remove_paths(plan.manifests)
    _remove_paths(plan.table_files + plan.index_files + plan.vector_files)
    _remove_paths(plan.cache_dirs)
    _remove_paths(plan.corrupt_shards + plan.temp_files + plan.reports)
    plan.applied = True
    log.info(
        "store %s: removed versions %s (%d files, %d bytes); kept %s",
        plan.store,
        plan.remove,
        len(plan.paths()),
        plan.bytes,
        plan.keep,
    )
    return plan


def _apply_bucket(plan: GcPlan) -> GcPlan:
    """Delete a bucket plan's objects, manifests first."""
    storage = plan.bucket
    prefix = storage.show("")
    for url in plan.paths():
        storage.delete(url.removeprefix(prefix))
    plan.applied = True
    log.info(
        "store %s: removed versions %s (%d objects)", plan.store, plan.remove, len(plan.paths())
    )
    return plan


# ---------------------------------------------------------------- what to keep


def _kept_versions(
    store: Store, versions: list[int], keep_last: int | None, keep: Sequence[int] | None
) -> set[int]:
    """The versions to keep: the newest `keep_last`, or the named ones; always the newest."""
    if (keep_last is None) == (keep is None):
        raise GcError(f"store {store.where}: give either keep_last or keep (the versions to keep)")
    if keep_last is not None:
        if keep_last < 1:
            raise GcError(f"store {store.where}: keep_last must be at least 1, got {keep_last}")
        return set(versions[-keep_last:])
    missing = sorted(set(keep or []) - set(versions))
    if missing:
        raise GcError(
            f"store {store.where} has no version(s) {missing} to keep; versions: {versions}"
        )
    if not keep:
        raise GcError(f"store {store.where}: name at least one version to keep")
    return set(keep) | {versions[-1]}


# ---------------------------------------------------------------- Delta tables


def _table_garbage(
    store: Store, table: str, kept: list[dict[str, Any]], grace_seconds: float
) -> list[str]:
    """Data files of `table` that no kept version reads and that Delta itself would vacuum."""
    from deltalake import DeltaTable

    root = store.layout.table(table)
    if not (root / "_delta_log").is_dir():
        return []
    delta_versions = sorted({int(m["tables"][table]) for m in kept})
    needed = _files_of_versions(root, delta_versions)
    try:
        current = DeltaTable(str(root))
        tombstoned = current.vacuum(
            retention_hours=0,
            dry_run=True,
            enforce_retention_duration=False,
            keep_versions=delta_versions,
        )
        orphans = _orphan_parts(root, current, grace_seconds)
    except Exception as exc:  # noqa: BLE001 - whatever Delta cannot list, we do not remove
        raise GcError(
            f"table {root}: Delta cannot list its unreferenced files ({exc}); nothing was removed"
        ) from exc
    candidates = {_inside(root, p) for p in tombstoned} | orphans
    return sorted(str(p) for p in candidates if p is not None and p not in needed and p.exists())


def _files_of_versions(root: Path, versions: Iterable[int]) -> set[Path]:
    """Every data file that the given Delta versions of the table read."""
    from deltalake import DeltaTable

    needed: set[Path] = set()
    for v in versions:
        try:
            dt = DeltaTable(str(root), version=v)
        except Exception as exc:  # noqa: BLE001 - any failure to load means we cannot be sure
            raise GcError(
                f"table {root}: Delta version {v}, used by a kept version, cannot be loaded "
                f"({exc}); nothing was removed"
            ) from exc
        needed.update(Path(uri).resolve() for uri in dt.file_uris())
    return needed


def _orphan_parts(root: Path, current: Any, grace_seconds: float) -> set[Path]:
    """Delta-named data files that no log entry mentions (a writer died before its commit)."""
    listed = current.vacuum(
        retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True
    )
    out: set[Path] = set()
    for rel in listed:
        path = _inside(root, rel)
        if path is None or path.parent != root.resolve() or not _DELTA_PART.fullmatch(path.name):
            continue  # only files Delta itself names, directly in the table folder
        if _age(path) >= grace_seconds:
            out.add(path)
    return out


def _inside(root: Path, rel: str) -> Path | None:
    """`rel` resolved under `root`, or None when it points anywhere else (never removed)."""
    path = (root / rel).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        log.warning("table %s lists %s, outside the table; it is left alone", root, rel)
        return None
    if "_delta_log" in path.relative_to(root.resolve()).parts:
        return None
    return path


# ---------------------------------------------------------------- the near-pair index


def _index_garbage(
    store: Store, kept: list[dict[str, Any]], removed: list[dict[str, Any]], grace_seconds: float
) -> list[str]:
    """Pair-index files of removed versions, and unnamed ones older than the grace period."""

    def named(m: dict[str, Any]) -> list[str]:
        rel = (m.get("index") or {}).get("pairs")
        return [rel] if isinstance(rel, str) and rel else []

    lists = ([r for m in kept for r in named(m)], [r for m in removed for r in named(m)])
    return _unnamed_files(store, store.layout.index, _PAIR_INDEX, lists, grace_seconds)


def _vector_garbage(
    store: Store, kept: list[dict[str, Any]], removed: list[dict[str, Any]], grace_seconds: float
) -> list[str]:
    """Vector shards that only removed versions read (versions share shards, so a shard stays
    while any kept version lists it), and unlisted ones older than the grace period."""

    def named(m: dict[str, Any]) -> list[str]:
        shards = (m.get("vectors") or {}).get("shards") or []
        return [r for r in shards if isinstance(r, str) and r]

    lists = ([r for m in kept for r in named(m)], [r for m in removed for r in named(m)])
    return _unnamed_files(store, store.layout.vectors, _VECTOR_SHARD, lists, grace_seconds)


def _unnamed_files(
    store: Store,
    folder: Path,
    pattern: re.Pattern[str],
    named: tuple[list[str], list[str]],
    grace_seconds: float,
) -> list[str]:
    """Files in `folder` matching `pattern` that no kept version names (`named[0]`) and that a
    removed version names (`named[1]`) or that are older than the grace period."""
    if not folder.is_dir():
        return []
    keep, gone = ({(store.root / r).resolve() for r in rels} for rels in named)
    out = []
    for path in sorted(p.resolve() for p in folder.iterdir()):
        if path in keep or not path.is_file() or not pattern.fullmatch(path.name):
            continue
        if path in gone or _age(path) >= grace_seconds:
            out.append(str(path))
    return out


# ---------------------------------------------------------------- the embedding cache


def _fingerprint(manifest: dict[str, Any]) -> str | None:
    embed = manifest.get("embed") or {}
    fp = embed.get("fingerprint") if isinstance(embed, dict) else None
    return fp if isinstance(fp, str) and fp else None


def _cache_garbage(
    store: Store, kept: list[dict[str, Any]], removed: list[dict[str, Any]]
) -> list[str]:
    """Cache folders of fingerprints that removed versions used and no kept version uses.

    Folders no manifest names (a run in progress, or one that never committed) are kept."""
    root = store.layout.embeddings.resolve()
    keep = {_fingerprint(m) for m in kept}
    gone = {fp for m in removed if (fp := _fingerprint(m))} - keep
    out = []
    for fp in sorted(gone):
        path = (root / fp).resolve()
        if path.parent == root and path.is_dir():
            out.append(str(path))
    return out


def _corrupt_shards(store: Store, removed_dirs: list[str]) -> list[str]:
    """Shards that fail their checksum in the folders that stay (they are never read)."""
    root = store.layout.embeddings
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if str(folder.resolve()) in removed_dirs:
            continue
        out += [str(p.resolve()) for p in sorted(folder.glob("shard-*.npz")) if not _valid(p)]
    return out


def _valid(path: Path) -> bool:
    return shard_readable(path)


FEATURES_PREFIX = "orb-"  # the geometric check's local features (`embed/features.py`)


def shard_readable(path: Path) -> bool:
    """Whether a cache shard reads back whole, each kind by its own reader: local features have
    their own format (an embedding reader would call every one of them corrupt)."""
    from leanset.pipelines.embed.cache import read_shard

    if not path.parent.name.startswith(FEATURES_PREFIX):
        return read_shard(path) is not None
    from leanset.pipelines.embed.features import read_features

    if read_features(path):
        return True
    try:  # a shard of images none of which had features reads as empty too
        with np.load(path, allow_pickle=False) as z:
            return len(z["hashes"]) == 0
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def _stale_temp_files(store: Store, grace_seconds: float) -> list[str]:
    """Temporary files of interrupted atomic writes, older than the grace period."""
    folders = [store.layout.manifests, store.layout.embeddings]
    out = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob(".*.tmp")):
            if path.is_file() and _TEMP.fullmatch(path.name) and _age(path) >= grace_seconds:
                out.append(str(path.resolve()))
    return out


# ---------------------------------------------------------------- removing


def _remove_paths(paths: Iterable[str]) -> None:
    import shutil

    for p in paths:
        path = Path(p)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
