"""Sources on object storage (``s3://``, ``gs://``, ``az://``): their objects fetched through the
storage layer into a local mirror, then read exactly as local files are.

`localize` turns a source whose `path` or `data_files` are URLs into the same source over the
mirror folder ``$LEANSET_CACHE_DIR/sources/<digest of the prefix URL>/``, keeping each file's path
below the prefix. An image's `source` and id, and a row's file label, are relative to that prefix,
so a run over the bucket gives the same sample ids, content hashes and decisions as a run over a
local copy. A mirror downloads only objects it lacks or whose ETag changed, and drops the files the
bucket no longer holds.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from leanset.pipelines.config import SourceSettings
from leanset.pipelines.fsutil import atomic_write_bytes
from leanset.pipelines.sources.dataset import SourceError
from leanset.pipelines.sources.hashes import FileHashCache
from leanset.pipelines.store.errors import StoreError
from leanset.pipelines.store.storage import ObjectStorage, is_url
from leanset.pipelines.store.workdir import cache_home

ETAGS = ".leanset-etags.json"  # in a mirror folder: the ETag of each file it fetched


def remote_folders(
    source: SourceSettings, local: SourceSettings
) -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """{mirror folder: (URL, options)} of an image folder in a bucket (`local`: its localized
    form), so a reader elsewhere can fetch a file from the bucket (empty otherwise)."""
    if source.type != "imagefolder" or not is_url(source.path or "") or not local.path:
        return {}
    opts = tuple(sorted((source.storage_options or {}).items()))
    return {local.path: (str(source.path).rstrip("/"), opts)}


def localize(source: SourceSettings, hashes: FileHashCache | None = None) -> SourceSettings:
    """The source with every object-storage URL replaced by its fetched local mirror; `hashes`
    learns each mirrored file's object (URL and ETag), so a new machine does not hash it again."""
    opts = source.storage_options
    if source.path and is_url(source.path) and source.type in ("imagefolder", "disk"):
        path = fetch_prefix(source.path, opts)
        if hashes is not None:
            url = source.path.rstrip("/")
            tags = _etags(path)
            hashes.alias({str(path / rel): f"{url}/{rel}#{tag}" for rel, tag in tags.items()})
        return dataclasses.replace(source, path=str(path))
    if any(is_url(f) for f in source.data_files or []):
        files = [str(fetch_pattern(f, opts)) if is_url(f) else f for f in source.data_files or []]
        return dataclasses.replace(source, data_files=files)
    return source


def fetch_pattern(pattern: str, options: dict[str, str] | None) -> Path:
    """The local form of a URL pattern (``s3://b/data/*.parquet``): the objects under its fixed
    folder that it may match are fetched; the returned pattern matches exactly what it did."""
    folder = _pattern_folder(pattern)
    rest = pattern[len(folder) + 1 :]
    local = fetch_prefix(folder, options, lambda rel: fnmatch.fnmatch(rel, rest))
    return local / rest


def _pattern_folder(pattern: str) -> str:
    """The folder above a file URL or a pattern's first wildcard."""
    fixed = glob.escape(pattern) == pattern
    head = pattern if fixed else pattern[: min(pattern.index(c) for c in "*?[" if c in pattern)]
    return head.rsplit("/", 1)[0]


def mirror_of(url: str) -> Path:
    """The local mirror folder of a source prefix URL."""
    digest = hashlib.blake2b(url.rstrip("/").encode(), digest_size=8).hexdigest()
    return cache_home() / "sources" / digest


def source_mirrors(source: SourceSettings) -> dict[str, Path]:
    """The mirror folder of each object-storage part of a source, by the key that names it."""
    found = {}
    if source.path and is_url(source.path) and source.type in ("imagefolder", "disk"):
        found["source.path"] = mirror_of(source.path)
    for n, f in enumerate(source.data_files or []):
        if is_url(f):
            found[f"source.data_files[{n}]"] = mirror_of(_pattern_folder(f))
    return found


def remote_state(source: SourceSettings) -> str:
    """What a source on object storage holds, from its listing alone (each object's URL and
    ETag): the same on every machine, and nothing is downloaded."""
    opts, lines = source.storage_options, []
    parts = [source.path] if source.path and source.type in ("imagefolder", "disk") else []
    for given in [*parts, *(source.data_files or [])]:
        if not is_url(given):
            continue
        folder = given.rstrip("/") if given in parts else _pattern_folder(given)
        rest = given[len(folder) + 1 :]
        try:
            listed = ObjectStorage(folder, opts).entries("")
        except (StoreError, OSError) as exc:
            raise SourceError(f"source {folder}: cannot list it ({exc})") from exc
        lines += [
            f"{folder}/{rel}={tag}"
            for rel, tag in sorted(listed.items())
            if given in parts or fnmatch.fnmatch(rel, rest)
        ]
    return hashlib.blake2b("\n".join(lines).encode(), digest_size=16).hexdigest()


def fetch_prefix(
    url: str,
    options: dict[str, str] | None,
    wanted: Callable[[str], bool] | None = None,
) -> Path:
    """Fetch the objects under `url` (those `wanted(rel)` accepts) into its mirror folder."""
    url = url.rstrip("/")
    try:
        storage = ObjectStorage(url, options)
        listed = storage.entries("")
    except (StoreError, OSError) as exc:
        raise SourceError(f"source {url}: cannot list it ({exc})") from exc
    keep = {rel: tag for rel, tag in listed.items() if wanted is None or wanted(rel)}
    if not keep:
        raise SourceError(f"source {url}: no object there")
    folder = mirror_of(url)
    known = _etags(folder)
    for rel, tag in sorted(keep.items()):
        if known.get(rel) != tag or not (folder / rel).is_file():
            atomic_write_bytes(folder / rel, storage.read(rel))
            known[rel] = tag
    for path in folder.rglob("*") if folder.is_dir() else []:  # gone from the bucket: gone here
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != ETAGS and rel not in listed:
            path.unlink()
            known.pop(rel, None)
    atomic_write_bytes(folder / ETAGS, json.dumps(known, sort_keys=True).encode())
    return folder


def _etags(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / ETAGS).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
