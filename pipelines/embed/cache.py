"""The content-addressed embedding cache: checksummed float16 shards keyed by content hash."""

from __future__ import annotations

import hashlib
import io
import logging
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leanset.pipelines.embed.protocol import l2_normalise
from leanset.pipelines.fsutil import atomic_write_bytes, is_disk_full
from leanset.pipelines.store.errors import StoreFull

log = logging.getLogger("leanset.embed")


SHARD_DTYPE = np.float16  # on disk; compute and search use float32


class EmbeddingCache:
    """Embeddings keyed by content hash, in shards under `root/<fingerprint>/`."""

    def __init__(self, root: str | Path, fingerprint: str, read_only: bool = False):
        self.dir = Path(root) / fingerprint
        self.read_only = read_only  # `put` keeps vectors in memory only (a dry run)
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self.corrupt: list[Path] = []
        self._load()

    def __len__(self) -> int:
        return len(self._index)

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("shard-*.npz")):
            shard = read_shard(path)
            if shard is None:
                self.corrupt.append(path)
                continue
            hashes, vectors = shard
            k = len(self._shards)
            self._shards.append(vectors)
            self._index.update((h, (k, i)) for i, h in enumerate(hashes))

    def get(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, float32 vectors of the found hashes in order)."""
        found = np.array([h in self._index for h in hashes], dtype=bool)
        if not found.any():
            return found, None
        locs = [self._index[h] for h, f in zip(hashes, found, strict=True) if f]
        vecs = np.stack([self._shards[k][i] for k, i in locs]).astype(np.float32)
        return found, l2_normalise(vecs)

    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Write one shard (atomically) and index it (read only: index it, write nothing)."""
        path = None if self.read_only else write_shard(self.dir, hashes, vectors)
        stored = vectors.astype(SHARD_DTYPE)
        k = len(self._shards)
        self._shards.append(stored)
        self._index.update((h, (k, i)) for i, h in enumerate(hashes))
        return path


def shard_name(hashes: Sequence[str]) -> str:
    """A new shard's file name: write time, then a digest of its hashes (any shard-*.npz is read)."""
    digest = hashlib.blake2b(np.asarray(list(hashes), dtype="U32").tobytes(), digest_size=4)
    return f"shard-{time.time_ns():020d}-{digest.hexdigest()}.npz"


def write_shard(
    folder: Path,
    hashes: Sequence[str],
    vectors: np.ndarray,
    name: str | None = None,
    dtype: type[np.floating] = SHARD_DTYPE,
) -> Path:
    """One checksummed float16 shard written atomically under `folder` (without reading the
    cache). A fixed `name` makes a rewrite replace the shard instead of adding one; `dtype`:
    float32 for values that are not unit vectors (image measures)."""
    try:
        data = shard_bytes(hashes, vectors, dtype)
        return atomic_write_bytes(Path(folder) / (name or shard_name(hashes)), data)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise StoreFull(
            f"no space left on the store's disk ({folder}), nothing was committed; free some "
            "space and rerun (the vectors cached so far are kept)"
        ) from None


def shard_bytes(
    hashes: Sequence[str], vectors: np.ndarray, dtype: type[np.floating] = SHARD_DTYPE
) -> bytes:
    """A shard's file bytes: hashes, vectors stored as `dtype`, and their checksum."""
    stored = vectors.astype(dtype)
    hash_arr = np.asarray(list(hashes), dtype="U32")
    buf = io.BytesIO()
    np.savez(
        buf, hashes=hash_arr, vectors=stored, checksum=np.asarray(shard_checksum(hash_arr, stored))
    )
    return buf.getvalue()


def shard_checksum(hashes: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.blake2b(hashes.tobytes(), digest_size=16)
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()


def read_shard(path: Path | str, data: bytes | None = None) -> tuple[list[str], np.ndarray] | None:
    """A shard's (hashes, vectors), or None (with a warning) when it is corrupt or truncated.
    `data`: its bytes, already read (from a bucket); `path` then only names it."""
    try:
        with np.load(io.BytesIO(data) if data is not None else path, allow_pickle=False) as z:
            hashes, vectors, checksum = z["hashes"], z["vectors"], str(z["checksum"])
        if len(hashes) != len(vectors) or shard_checksum(hashes, vectors) != checksum:
            raise ValueError("checksum or row count does not match")
        if hashes.ndim != 1 or vectors.ndim != 2 or not np.isfinite(vectors).all():
            raise ValueError("not one hash per row of finite vector values")
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning(
            "embedding cache shard %s is corrupt (%s); its samples will be re-embedded", path, exc
        )
        return None
    return hashes.tolist(), vectors
