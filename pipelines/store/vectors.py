"""The raw vectors of a cleaned dataset of precomputed embeddings: content-addressed shards shared
between versions, instead of a full copy of the vectors in every version's dataset table.

Each shard (`vectors/vN-<token>-K.npz`) holds `hashes` (content hashes) and `vectors` (float32,
the source's bytes: a row's content hash is the digest of its row). A version's manifest lists the
shards its kept rows' vectors are in (`vectors.shards`) with their digests (`files.vectors`): the
shards of the parent that still hold a kept vector, plus new shards for vectors no parent shard
holds. A version that changes nothing in the vectors writes no vector file at all.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from leanset.pipelines.fsutil import atomic_write_with, digest, digest_file
from leanset.pipelines.store.errors import IntegrityError
from leanset.pipelines.store.integrity import VERIFY_HINT, hashed
from leanset.pipelines.store.layout import StoreLayout
from leanset.pipelines.store.storage import LocalStorage, Storage

SHARD_BYTES = 32 * 2**20  # vectors per shard file, and per buffered write


class VectorSource(Protocol):
    """What holds the raw vectors: a loaded dataset (its table and its blocks of vectors)."""

    table: pl.DataFrame

    def vector_blocks(self) -> Iterator[tuple[np.ndarray, Any]]: ...


@dataclass(frozen=True)
class KeptVectors:
    """The vectors a version's cleaned dataset needs: one table position per distinct content."""

    source: VectorSource
    rows: pl.DataFrame  # content_hash, position


def write_vectors(
    storage: Storage,
    layout: StoreLayout,
    version: int,
    token: str,
    kept: KeptVectors,
    parent: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Write the vectors no parent shard holds; return the manifest's `vectors` entry and the
    digests of every shard the version reads."""
    need = set(kept.rows["content_hash"].to_list())
    used, known, digests = [], set(), {}
    old = (parent or {}).get("vectors") or {}
    old_digests = ((parent or {}).get("files") or {}).get("vectors") or {}
    for rel in old.get("shards", []):
        hashes = set(_shard_hashes(storage, rel).tolist())
        if hashes & need:
            used.append(rel)
            known |= hashes
            digests[rel] = old_digests[rel]
    todo = kept.rows.filter(~pl.col("content_hash").is_in(list(known)))
    written, dim = _write_new(storage, layout, version, token, kept.source, todo)
    digests |= written
    return {"dim": dim or old.get("dim", 0), "shards": used + list(written)}, digests


def _write_new(
    storage: Storage,
    layout: StoreLayout,
    version: int,
    token: str,
    source: VectorSource,
    todo: pl.DataFrame,
) -> tuple[dict[str, str], int]:
    """New shards for the rows in `todo`, streamed from the source block by block."""
    if todo.height == 0:
        return {}, 0
    n = source.table.height
    want = np.zeros(n, dtype=bool)
    want[todo["position"].to_numpy()] = True
    hash_at = source.table["content_hash"].to_numpy()
    written: dict[str, str] = {}
    buf_h: list[np.ndarray] = []
    buf_v: list[np.ndarray] = []
    dim, rows = 0, 0
    for positions, block in source.vector_blocks():
        sel = want[positions]
        if not sel.any():
            continue
        vecs = _rows(block, sel)
        dim = vecs.shape[1]
        buf_h.append(hash_at[positions[sel]])
        buf_v.append(vecs)
        rows += len(vecs)
        if rows * dim * 4 >= SHARD_BYTES:
            written |= _flush(storage, layout, version, token, len(written), buf_h, buf_v)
            buf_h, buf_v, rows = [], [], 0
    if rows:
        written |= _flush(storage, layout, version, token, len(written), buf_h, buf_v)
    return written, dim


def _rows(block: Any, sel: np.ndarray) -> np.ndarray:
    if isinstance(block, np.ndarray):
        return np.ascontiguousarray(block[sel], dtype=np.float32)
    return np.stack([np.asarray(v, np.float32) for v, s in zip(block, sel, strict=True) if s])


def _flush(
    storage: Storage,
    layout: StoreLayout,
    version: int,
    token: str,
    k: int,
    hashes: list[np.ndarray],
    vectors: list[np.ndarray],
) -> dict[str, str]:
    rel = layout.vector_shard(version, token, k)
    h, v = np.concatenate(hashes).astype("U32"), np.concatenate(vectors)
    if isinstance(storage, LocalStorage):
        path = atomic_write_with(storage.path(rel), lambda fh: np.savez(fh, hashes=h, vectors=v))
        return {rel: digest_file(path)}
    buf = io.BytesIO()
    np.savez(buf, hashes=h, vectors=v)
    storage.write(rel, buf.getvalue())
    return {rel: digest(buf.getvalue())}


def _shard_hashes(storage: Storage, rel: str) -> np.ndarray:
    """The content hashes a stored shard holds."""
    if isinstance(storage, LocalStorage):
        return shard_hashes(storage.path(rel))
    return shard_hashes(io.BytesIO(storage.read(rel)))


def shard_hashes(path: Path | io.BytesIO) -> np.ndarray:
    """The content hashes a shard holds (its vectors are not read)."""
    with np.load(path, allow_pickle=False) as z:
        hashes: np.ndarray = z["hashes"]
    return hashes


def read_vectors(
    storage: Storage, layout: StoreLayout, manifest: dict[str, Any], hashes: list[str]
) -> np.ndarray:
    """The raw vectors of the given content hashes (in that order), from the version's shards,
    each checked against the digest its manifest recorded."""
    entry = manifest.get("vectors") or {}
    recorded = (manifest.get("files") or {}).get("vectors") or {}
    out = np.zeros((len(hashes), int(entry.get("dim", 0))), dtype=np.float32)
    where: dict[str, list[int]] = {}
    for k, h in enumerate(hashes):
        where.setdefault(h, []).append(k)
    for rel in entry.get("shards", []):
        path, data = _checked_shard(storage, rel, recorded.get(rel))
        if data is None:
            raise IntegrityError(
                f"version {manifest['version']}: vector shard {path} is missing or does not match "
                f"the checksum its manifest recorded; restore it from a backup of "
                f"{storage.show(layout.vectors.name)}; {VERIFY_HINT}"
            )
        with np.load(data, allow_pickle=False) as z:
            shard_h, shard_v = z["hashes"].tolist(), z["vectors"]
        for i, h in enumerate(shard_h):
            for k in where.pop(h, []):
                out[k] = shard_v[i]
    if where:
        raise IntegrityError(
            f"version {manifest['version']}: {len(where)} vector(s) are in none of its shards "
            f"(e.g. content {next(iter(where))}); {VERIFY_HINT}"
        )
    return out


def _checked_shard(storage: Storage, rel: str, want: str | None) -> tuple[str, Any]:
    """(how to name it, what np.load reads) of a shard matching its digest; None when it does not."""
    if isinstance(storage, LocalStorage):
        path = storage.path(rel)
        ok = path.is_file() and hashed(path) == want
        return str(path), (path if ok else None)
    try:
        raw = storage.read(rel)
    except FileNotFoundError:
        return storage.show(rel), None
    return storage.show(rel), (io.BytesIO(raw) if digest(raw) == want else None)
