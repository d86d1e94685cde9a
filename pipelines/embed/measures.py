"""Image measures taken while the embed stage decodes an image (from the bytes it already read),
cached beside the embeddings so a rerun neither reads nor decodes the image again."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from leanset.dedup.imagequality import MEASURE_SIDE, MEASURES, measure_grey
from leanset.pipelines.embed.cache import read_shard, write_shard
from leanset.pipelines.sources import LoadedDataset

log = logging.getLogger("leanset.embed")
READ_ROWS = 256  # contents read at once when measures are missing (bounds memory)


class Measure(Protocol):
    """Turns one sample's raw content into a fixed-length float vector (NaN when it cannot)."""

    fingerprint: str
    width: int

    def __call__(self, content: bytes) -> np.ndarray: ...


class ImageMeasure:
    """`dedup.imagequality`'s measures of one image: its size as stored, and grey levels decoded
    at most MEASURE_SIDE a side (JPEG decodes at that scale directly, by PIL's draft mode)."""

    fingerprint = f"imgq-v2-{MEASURE_SIDE}"
    width = len(MEASURES)

    def __call__(self, content: bytes) -> np.ndarray:
        from PIL import Image

        try:
            img = Image.open(io.BytesIO(content))
            width, height = img.size
            img.draft("L", (MEASURE_SIDE, MEASURE_SIDE))
            grey = img.convert("L")
            grey.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
            return measure_grey(np.asarray(grey), width, height)
        except (OSError, ValueError) as exc:  # the embedder decoded it; a measure is extra
            log.debug("no image measures: %s", exc)
            return np.full(self.width, np.nan, dtype=np.float32)


class MeasureCache:
    """Measures keyed by content hash, in checksummed shards under `root/<fingerprint>/`."""

    def __init__(self, root: str | Path, measure: Measure, read_only: bool = False):
        self.dir = Path(root) / measure.fingerprint
        self.read_only = read_only
        self.values: dict[str, np.ndarray] = {}
        for path in sorted(self.dir.glob("shard-*.npz")) if self.dir.is_dir() else []:
            shard = read_shard(path)
            if shard is not None:
                self.values.update(zip(shard[0], shard[1].astype(np.float32), strict=True))

    def put(self, values: dict[str, np.ndarray]) -> None:
        """Add measures (one shard; a read-only cache keeps them in memory). A content that
        could not be measured (NaN) is not cached."""
        values = {h: v for h, v in values.items() if np.isfinite(v).all()}
        if not values:
            return
        if not self.read_only:
            write_shard(self.dir, list(values), np.stack(list(values.values())), dtype=np.float32)
        self.values.update(values)


def measure_rows(
    data: LoadedDataset,
    measure: Measure,
    cache_root: str | Path,
    fresh: dict[str, np.ndarray],
    skip: Sequence[str] = (),
    write_cache: bool = True,
) -> np.ndarray:
    """The measures of every table row (NaN: unreadable): cached, taken during this embedding
    (`fresh`), or, for contents whose vectors came from the cache before their measures did,
    read and measured here once."""
    cache = MeasureCache(cache_root, measure, read_only=not write_cache)
    cache.put(fresh)
    table = data.table.filter(pl.col("error").is_null())
    known = [*cache.values, *skip]
    missing = table.filter(~pl.col("content_hash").is_in(known))
    missing = missing.unique("content_hash", keep="first", maintain_order=True)
    if missing.height:
        log.info("Measuring %d images whose embeddings were cached before", missing.height)
    for start in range(0, missing.height, READ_ROWS):
        part = missing.slice(start, READ_ROWS)
        contents = data.read(part["position"].to_list())
        cache.put(dict(zip(part["content_hash"], map(measure, contents), strict=True)))
    return _align(data.table["content_hash"].to_list(), cache.values, measure.width)


def _align(hashes: Sequence[str], values: dict[str, np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(hashes), width), np.nan, dtype=np.float32)
    for i, h in enumerate(hashes):
        v = values.get(h)
        if v is not None:
            out[i] = v
    return out
