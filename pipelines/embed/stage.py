"""The embed stage: every distinct readable content embedded once (cache first), aligned to the table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from leanset.dedup.matrix import Rows
from leanset.pipelines.embed.adapters import PrecomputedEmbedder
from leanset.pipelines.embed.cache import SHARD_DTYPE, EmbeddingCache
from leanset.pipelines.embed.measures import Measure, measure_rows
from leanset.pipelines.embed.protocol import Embedder, EmbedError, SampleError, l2_normalise
from leanset.pipelines.sources import LoadedDataset


@dataclass
class EmbedResult:
    """The embedding matrix aligned with the sample table (`engine: ray`: kept on the cluster),
    and what it took."""

    matrix: Rows
    computed: int
    cached: int
    seconds: float
    device: str
    fingerprint: str
    errors: dict[str, str] = field(default_factory=dict)  # content_hash -> why it failed
    measures: np.ndarray | None = None  # per row, the `measure`'s values (NaN: unreadable)
    engine: dict[str, Any] = field(default_factory=dict)  # how a cluster ran it (engine: ray)


def embed_dataset(
    data: LoadedDataset,
    embedder: Embedder,
    cache_root: str | Path,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    shard_rows: int = 4096,
    progress: bool = True,
    write_cache: bool = True,
    measure: Measure | None = None,
) -> EmbedResult:
    """Embed every readable, distinct content once (cache first), then align rows to the table.

    `write_cache=False` (a dry run) reads the cache and writes no shard. `measure` (images):
    taken from the same bytes while a sample is prepared, cached beside the vectors."""
    t0 = time.perf_counter()
    table = data.table
    if isinstance(embedder, PrecomputedEmbedder):
        return _precomputed(data, embedder, t0)
    readable = table.filter(pl.col("error").is_null()).unique(
        "content_hash", keep="first", maintain_order=True
    )
    hashes = readable["content_hash"].to_list()
    rows = readable["position"].to_numpy()
    cache = EmbeddingCache(cache_root, embedder.fingerprint, read_only=not write_cache)
    found, cached_vecs = cache.get(hashes)
    todo = np.flatnonzero(~found)
    vectors: dict[str, np.ndarray] = {}
    if cached_vecs is not None:
        vectors.update(
            zip([h for h, f in zip(hashes, found, strict=True) if f], cached_vecs, strict=True)
        )
    fresh: dict[str, np.ndarray] = {}
    errors = _compute(
        data,
        _Measuring(embedder, measure, fresh),
        cache,
        [hashes[i] for i in todo],
        rows[todo],
        vectors,
        batch_size,
        num_workers,
        shard_rows,
        progress,
    )
    matrix = _align(table["content_hash"].to_list(), vectors)
    args = (cache_root, fresh, list(errors), write_cache)
    measured = None if measure is None else measure_rows(data, measure, *args)
    return EmbedResult(
        matrix=matrix,
        computed=len(todo) - len(errors),
        cached=int(found.sum()),
        seconds=time.perf_counter() - t0,
        device=getattr(embedder, "device", "cpu"),
        fingerprint=embedder.fingerprint,
        errors=errors,
        measures=measured,
    )


def _precomputed(data: LoadedDataset, embedder: PrecomputedEmbedder, t0: float) -> EmbedResult:
    """Vectors from the dataset's own column: checked, normalised, nothing computed or cached.

    The matrix is filled block by block from the source (rows that could not be read stay zero),
    so the vectors are held once, as the normalised matrix."""
    table = data.table
    ok = table["error"].is_null().to_numpy()
    widths = table["size_bytes"].to_numpy() // np.dtype(np.float32).itemsize
    width = check_vector_widths(table.filter(pl.col("error").is_null()), widths[ok])
    matrix = np.zeros((table.height, width), dtype=np.float32)
    for positions, block in data.vector_blocks():
        keep = ok[positions]
        if not keep.any():
            continue
        if isinstance(block, np.ndarray):
            rows = block[keep]
        else:
            rows = np.stack(
                [np.asarray(v, np.float32) for v, k in zip(block, keep, strict=True) if k]
            )
        matrix[positions[keep]] = l2_normalise(rows)  # row by row: as if normalised all at once
    return EmbedResult(
        matrix=matrix,
        computed=0,
        cached=0,
        seconds=time.perf_counter() - t0,
        device="cpu",
        fingerprint=embedder.fingerprint,
    )


def check_vector_widths(ok: pl.DataFrame, widths: np.ndarray) -> int:
    """All precomputed vectors must have one width; the first that differs is named (`ok`: the
    readable rows, `widths`: their vectors' widths)."""
    widths = np.asarray(widths, dtype=np.int64)
    if widths.size == 0:
        return 0
    expected = int(np.bincount(widths).argmax())
    bad = np.flatnonzero(widths != expected)
    if bad.size:
        row = ok.row(int(bad[0]), named=True)
        raise EmbedError(
            f"sample {row['sample_id']} ({row['source']}): embedding has {widths[bad[0]]} values, "
            f"expected {expected} like the rest ({bad.size} sample(s) differ)"
        )
    return expected


def _align(hashes: list[str], vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Row i of the result is the vector of table row i (zeros for unreadable rows)."""
    if not vectors:
        return np.zeros((len(hashes), 0), dtype=np.float32)
    dim = len(next(iter(vectors.values())))
    out = np.zeros((len(hashes), dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        v = vectors.get(h)
        if v is not None:
            out[i] = v
    return out


def _compute(
    data: LoadedDataset,
    embedder: Embedder,
    cache: EmbeddingCache,
    hashes: list[str],
    rows: np.ndarray,
    vectors: dict[str, np.ndarray],
    batch_size: int,
    num_workers: int,
    shard_rows: int,
    progress: bool,
) -> dict[str, str]:
    """Embed the uncached samples in streamed batches, flushing a cache shard every `shard_rows`."""
    if not hashes:
        return {}
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    dataset: Any = _Prepared(data, embedder, hashes, rows)  # map-style, as DataLoader reads it
    loader: DataLoader[tuple[str, Any, str | None]] = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
        pin_memory=False,
    )
    errors: dict[str, str] = {}
    pending_h: list[str] = []
    pending_v: list[np.ndarray] = []
    dims: set[int] = set()
    bar = tqdm(
        total=len(hashes), desc="embed", unit="sample", leave=False, disable=not progress or None
    )
    for batch in loader:
        batch = measured_batch(embedder, batch)
        good = [(h, item) for h, item, err in batch if err is None]
        errors.update((h, err) for h, _, err in batch if err is not None)
        if good:
            out = _roundtrip(embedder.encode([item for _, item in good]))
            _check_dims(dims, out, len(good))
            finite = np.isfinite(out).all(axis=1)  # a NaN vector is an error, never cached
            errors.update((h, NONFINITE) for (h, _), ok in zip(good, finite, strict=True) if not ok)
            pending_h += [h for (h, _), ok in zip(good, finite, strict=True) if ok]
            pending_v.append(out[finite])
        if len(pending_h) >= shard_rows:
            _flush(cache, vectors, pending_h, pending_v)
            pending_h, pending_v = [], []
        bar.update(len(batch))
    bar.close()
    _flush(cache, vectors, pending_h, pending_v)
    return errors


NONFINITE = "unreadable: the embedder returned NaN or inf values for this sample"


def _roundtrip(out: np.ndarray) -> np.ndarray:
    """Vectors as they come back from the cache, so cached and fresh runs decide alike."""
    return l2_normalise(np.asarray(out, dtype=np.float32).astype(SHARD_DTYPE).astype(np.float32))


def _check_dims(dims: set[int], out: np.ndarray, n: int) -> None:
    if out.ndim != 2 or out.shape[0] != n:
        raise EmbedError(f"embedder returned shape {out.shape} for a batch of {n} samples")
    dims.add(out.shape[1])
    if len(dims) > 1:
        raise EmbedError(f"embeddings of different widths {sorted(dims)} in one run")


def _flush(cache: EmbeddingCache, vectors: dict, hs: list[str], vs: list[np.ndarray]) -> None:
    if not hs:
        return
    mat = np.concatenate(vs)
    cache.put(hs, mat)
    vectors.update(zip(hs, mat, strict=True))


class _Prepared:
    """Map-style dataset for the DataLoader: reads and prepares one sample in a worker."""

    def __init__(
        self, data: LoadedDataset, embedder: Embedder, hashes: list[str], rows: np.ndarray
    ):
        self.data, self.embedder, self.hashes, self.rows = data, embedder, hashes, rows

    def __len__(self) -> int:
        return len(self.hashes)

    def __getitem__(self, i: int) -> tuple[str, Any, str | None]:
        try:
            content = self.data.read([int(self.rows[i])])[0]
            return self.hashes[i], self.embedder.prepare(content), None
        except SampleError as exc:
            return self.hashes[i], None, str(exc)
        except OSError as exc:
            return self.hashes[i], None, f"unreadable: {exc}"


class _Measuring:
    """An embedder whose `prepare` also takes the measures of the same bytes (in the loader's
    worker, so they travel with the item) and whose batches hand them to `fresh`."""

    def __init__(self, inner: Embedder, measure: Measure | None, fresh: dict[str, np.ndarray]):
        self.inner, self.measure, self.fresh = inner, measure, fresh
        self.fingerprint = inner.fingerprint

    def prepare(self, content: Any) -> Any:
        item = self.inner.prepare(content)
        return item if self.measure is None else (item, self.measure(content))

    def encode(self, items: list[Any]) -> np.ndarray:
        return self.inner.encode(items)


def measured_batch(
    embedder: Embedder, batch: list[tuple[str, Any, str | None]]
) -> list[tuple[str, Any, str | None]]:
    """A loader batch with the measures taken off its items (kept in the embedder's `fresh`)."""
    if not isinstance(embedder, _Measuring) or embedder.measure is None:
        return batch
    out = []
    for h, item, err in batch:
        if err is None:
            item, values = item
            embedder.fresh[h] = values
        out.append((h, item, err))
    return out
