"""Local image features for the geometric check, by content hash, cached next to the embeddings.

Every image's features are read when the geometric check runs (the visual-word candidates of
`dedup.words` compare all images); each is computed once and kept in checksummed shards under
`<embeddings>/<fingerprint>/`, so a rerun or a later version reads them instead.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from leanset.dedup import geometry
from leanset.dedup.geometry import Features, ImageFeatures
from leanset.pipelines.embed.cache import shard_name
from leanset.pipelines.embed.protocol import SampleError, open_image
from leanset.pipelines.fsutil import atomic_write_bytes
from leanset.pipelines.sources.dataset import LoadedDataset

log = logging.getLogger("leanset.embed")

FINGERPRINT = (
    "orb-"
    + hashlib.blake2b(
        repr(
            (
                geometry.SIDE,
                geometry.MAX_FEATURES,
                geometry.MIN_RANGE,
                geometry.FAST_THRESHOLDS,
                geometry.MIN_SIDE,
                4,  # 4: the mirror's keypoints are the plain ones mirrored
            )
        ).encode(),
        digest_size=8,
    ).hexdigest()
)
_PARTS = ("p", "m")
CHUNK = 1024  # images decoded and computed at a time


class FeatureStore:
    """Features of table rows: from the cache, else decoded and computed (and cached)."""

    def __init__(
        self,
        data: LoadedDataset,
        root: str | Path,
        read_only: bool = False,
        threads: int | None = None,
    ):
        self.data, self.read_only = data, read_only
        self.threads = geometry.workers(threads)  # images decoded and computed side by side
        self.dir = Path(root) / FINGERPRINT
        self.hashes = data.table["content_hash"].to_list()
        self._known: dict[str, ImageFeatures | None] | None = None  # read on first need
        self.computed = 0

    def _cached(self) -> dict[str, ImageFeatures | None]:
        if self._known is None:
            self._known = {}
            for path in sorted(self.dir.glob("shard-*.npz")) if self.dir.is_dir() else []:
                self._known.update(read_features(path))
        return self._known

    def __call__(self, rows: np.ndarray) -> list[ImageFeatures | None]:
        """Features of each row (None: the image cannot be decoded)."""
        known = self._cached()
        wanted = [int(r) for r in rows]
        todo = sorted({r for r in wanted if self.hashes[r] not in known})
        bar = tqdm(total=len(todo), desc="local features", unit="image", leave=False, disable=None)
        with bar:  # a chunk at a time: bounded memory, and a shard per chunk survives a kill
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                feats = geometry.parallel_map(_compute, self.data.read(chunk), self.threads)
                new = dict(zip((self.hashes[r] for r in chunk), feats, strict=True))
                known.update(new)
                self.computed += len(new)
                if not self.read_only:
                    write_features(self.dir, new)
                bar.update(len(chunk))
        return [known[self.hashes[r]] for r in wanted]


def _compute(content: bytes) -> ImageFeatures | None:
    """Features of encoded image bytes; None when they cannot be decoded."""
    try:
        grey = open_image(content, "L")
    except SampleError:
        return None
    return geometry.image_features(np.asarray(grey, dtype=np.uint8))


def write_features(folder: Path, found: dict[str, ImageFeatures | None]) -> Path:
    """One shard of features (concatenated, with per-image counts), written atomically."""
    hashes = [h for h, f in found.items() if f is not None]
    arrays: dict[str, np.ndarray] = {"hashes": np.asarray(hashes, dtype="U32")}
    for part in _PARTS:
        feats = [getattr(found[h], "plain" if part == "p" else "mirrored") for h in hashes]
        arrays[f"{part}_count"] = np.array([len(f.points) for f in feats], np.int32)
        arrays[f"{part}_size"] = np.array([[f.width, f.height] for f in feats], np.int32)
        arrays[f"{part}_points"] = _stack([f.points for f in feats], (0, 2), np.float32)
        arrays[f"{part}_desc"] = _stack([f.descriptors for f in feats], (0, 32), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **(arrays | {"checksum": np.asarray(_checksum(arrays))}))  # type: ignore[arg-type]
    return atomic_write_bytes(folder / shard_name(hashes), buf.getvalue())


def _stack(parts: list[np.ndarray], empty: tuple[int, int], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype)


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def read_features(path: Path) -> dict[str, ImageFeatures | None]:
    """A shard's features by content hash; empty (with a warning) when it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if _checksum({k: v for k, v in arrays.items() if k != "checksum"}) != str(
            arrays["checksum"]
        ):
            raise ValueError("checksum does not match")
        return dict(zip(arrays["hashes"].tolist(), _unpack(arrays), strict=True))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("feature cache shard %s is corrupt (%s); it is recomputed", path, exc)
        return {}


def _unpack(arrays: dict[str, np.ndarray]) -> list[ImageFeatures | None]:
    """Per image of a shard, its features."""
    per: dict[str, list[Features]] = {}
    for part in _PARTS:
        ends = np.cumsum(arrays[f"{part}_count"])
        starts = ends - arrays[f"{part}_count"]
        per[part] = [
            Features(arrays[f"{part}_points"][s:e], arrays[f"{part}_desc"][s:e], int(w), int(h))
            for s, e, (w, h) in zip(starts, ends, arrays[f"{part}_size"], strict=True)
        ]
    return [ImageFeatures(p, m) for p, m in zip(per["p"], per["m"], strict=True)]
