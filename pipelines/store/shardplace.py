"""Where Ray workers write and read one embedder's cache shards: a folder, or a bucket prefix.

A store folder is mounted at the same path on every node, so a worker writes a shard there as a
local run does (a temporary file, then a rename). A bucket store has no folder the nodes share:
each worker PUTs its shard into the bucket under the store's cache prefix
(``cache/embeddings/<fingerprint>/shard-....npz``), and the tasks that align the cache with the
sample table read the shards back from there. A PUT makes the object appear whole or not at all,
so a worker killed mid-write leaves no partial shard, and every shard is checked (checksum, rows,
finite values) when read, as on disk. Shard names are never reused, so the driver's own mirror of
the bucket pulls them on its next run without conflicts.

A `ShardPlace` is a few strings: it travels to the workers inline, and each process opens its own
connection to the bucket the first time it needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from leanset.pipelines.fsutil import atomic_write_bytes, is_disk_full
from leanset.pipelines.store.errors import StoreFull
from leanset.pipelines.store.storage import ObjectStorage

SHARD_GLOB = "shard-*.npz"


@dataclass(frozen=True)
class ShardPlace:
    """One embedder's cache shards: `folder` on a filesystem, or `prefix` in the bucket `url`."""

    folder: str
    url: str | None = None
    prefix: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def bucket(cls, url: str, options: dict[str, str] | None, prefix: str) -> ShardPlace:
        """The cache prefix `prefix` of the bucket store at `url`."""
        opts = tuple(sorted((str(k), str(v)) for k, v in (options or {}).items()))
        return cls(folder="", url=url.rstrip("/"), prefix=prefix.strip("/"), options=opts)

    @property
    def remote(self) -> bool:
        return self.url is not None

    def child(self, name: str) -> ShardPlace:
        """The place one level down (an embedder's fingerprint under the cache)."""
        if self.url is None:
            return ShardPlace(str(Path(self.folder) / name))
        return ShardPlace("", self.url, f"{self.prefix}/{name}".strip("/"), self.options)

    def names(self) -> list[str]:
        """The shard file names here, sorted (the order a local cache reads them in)."""
        if self.url is None:
            return sorted(p.name for p in Path(self.folder).glob(SHARD_GLOB))
        under = f"{self.prefix}/"
        found = _storage(self.url, self.options).list(self.prefix)
        return sorted(
            n.removeprefix(under)
            for n in found
            if "/" not in n.removeprefix(under) and Path(n).match(SHARD_GLOB)
        )

    def read(self, name: str) -> bytes:
        """One shard's bytes."""
        if self.url is None:
            return (Path(self.folder) / name).read_bytes()
        return _storage(self.url, self.options).read(f"{self.prefix}/{name}")

    def write(self, name: str, data: bytes) -> None:
        """One shard, whole: a PUT (a bucket) or a temporary file renamed (a folder)."""
        if self.url is None:
            _write_file(Path(self.folder) / name, data)
            return
        _storage(self.url, self.options).write(f"{self.prefix}/{name}", data)

    def show(self, name: str) -> str:
        """How messages name a shard."""
        if self.url is None:
            return str(Path(self.folder) / name)
        return f"{self.url}/{self.prefix}/{name}"


@cache
def _storage(url: str, options: tuple[tuple[str, str], ...]) -> ObjectStorage:
    """One connection per bucket store and process (a worker reuses it for every shard)."""
    return ObjectStorage(url, dict(options))


def _write_file(path: Path, data: bytes) -> None:
    """A shard on disk; a full disk is the store's `StoreFull` (nothing was committed)."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise StoreFull(
            f"no space left on the store's disk ({path.parent}), nothing was committed; free "
            "some space and rerun (the vectors cached so far are kept)"
        ) from None
