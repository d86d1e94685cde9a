"""Content hashes of image files by (path, size, mtime): reruns skip reading unchanged files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import polars as pl

log = logging.getLogger("leanset.sources")


class Hashed(NamedTuple):
    """A content hash known without reading the content (from the file hash cache)."""

    hash: str
    size: int


class FileHashCache:
    """Content hashes of image files keyed by (path, size, mtime): reruns skip reading them. A
    file mirrored from a bucket is keyed by (its object's URL and ETag, size) instead, the same
    on every machine, so a new machine's fresh mirror is not hashed again."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._known: dict[tuple[str, int, int], str] = _load(self.path)
        self._added = 0
        self._aliases: dict[str, str] = {}

    def alias(self, names: dict[str, str]) -> None:
        """Key these local files (path: name) by a name that holds on every machine: a mirrored
        object's ``URL#ETag``, its size still checked, its local modification time not."""
        self._aliases.update(names)

    def get(self, path: str, st: os.stat_result) -> Hashed | None:
        """The cached hash when the file's size and modification time (or ETag) are unchanged."""
        h = self._known.get(self._key(path, st))
        return Hashed(h, st.st_size) if h else None

    def put(self, path: str, st: os.stat_result, content_hash: str) -> None:
        self._known[self._key(path, st)] = content_hash
        self._added += 1

    def _key(self, path: str, st: os.stat_result) -> tuple[str, int, int]:
        name = self._aliases.get(path)
        return (name, st.st_size, 0) if name else (path, st.st_size, st.st_mtime_ns)

    def save(self) -> None:
        """Write the cache (atomically) when this load hashed new files. Another process may
        have saved since this one loaded (two runs over one store): under the cache's lock its
        entries are read again and kept beside this one's, so neither run's hashing is lost."""
        if not self._added:
            return
        from leanset.pipelines.fsutil import is_disk_full, locked

        try:
            with locked(self.path.with_name(f".{self.path.name}.lock")):
                self._known = {**_load(self.path), **self._known}
                _write(self.path, self._known)
        except OSError as exc:  # a cache: a full or read-only disk only costs hashing again
            why = "no space left on the store's disk" if is_disk_full(exc) else str(exc)
            log.warning("%s (%s): file hashes not cached", why, self.path)
        self._added = 0


def _load(path: Path) -> dict[tuple[str, int, int], str]:
    """The cached hashes at `path` by (path, size, mtime); none when absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        t = _read_checked(path)
        keys = zip(t["path"].to_list(), t["size"].to_list(), t["mtime_ns"].to_list(), strict=True)
        return dict(zip(keys, t["hash"].to_list(), strict=True))
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as exc:
        log.warning("file hash cache %s is unreadable (%s); files are hashed again", path, exc)
        return {}


def _write(path: Path, known: dict[tuple[str, int, int], str]) -> None:
    """Write the hashes as a sealed Parquet table."""
    import io

    from leanset.pipelines.store.sealed import write_sealed

    keys = list(known)
    frame = pl.DataFrame(
        {
            "path": [k[0] for k in keys],
            "size": [k[1] for k in keys],
            "mtime_ns": [k[2] for k in keys],
            "hash": list(known.values()),
        },
        schema={"path": pl.Utf8, "size": pl.Int64, "mtime_ns": pl.Int64, "hash": pl.Utf8},
    )
    buf = io.BytesIO()
    frame.write_parquet(buf)
    write_sealed(path, buf.getvalue())


def _read_checked(path: Path) -> pl.DataFrame:
    """The cache's table, its bytes checked against their seal before polars parses them."""
    import io

    from leanset.pipelines.store.sealed import read_sealed

    raw = read_sealed(path, "it is rebuilt (files are hashed again)")
    return pl.read_parquet(io.BytesIO(raw or b""))
