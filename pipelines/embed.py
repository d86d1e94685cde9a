"""Embedders behind one small protocol, and the content-addressed embedding cache."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from pipelines.config import EmbedderSettings
from pipelines.fsutil import atomic_write_bytes
from pipelines.sources import LoadedDataset

log = logging.getLogger("leanset.embed")


class EmbedError(ValueError):
    """Embedding cannot proceed; the message names the sample or setting."""


class SampleError(ValueError):
    """One sample cannot be embedded (corrupt image, wrong vector); it is reported, not fatal."""


class Embedder(Protocol):
    """Turns samples into L2-normalised vectors. `prepare` runs in loader workers."""

    fingerprint: str

    def prepare(self, content: Any) -> Any:
        """Decode and preprocess one sample's raw content (raise SampleError when bad)."""
        ...

    def encode(self, items: list[Any]) -> np.ndarray:
        """Embed a batch of prepared items into a (B, D) float32 array."""
        ...


def resolve_device(device: str) -> str:
    """`auto` picks CUDA when a GPU is present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row becomes the uniform unit vector."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    over = np.isinf(norms[:, 0])
    if over.any():  # finite rows whose squares overflow float32: scale them down first
        over &= np.isfinite(x).all(axis=1)
        x = x.copy()
        x[over] /= np.abs(x[over]).max(axis=1, keepdims=True)
        norms[over] = np.linalg.norm(x[over], axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        x = x.copy()
        x[zero] = 1.0
        norms[zero] = np.sqrt(x.shape[1])
    return x / norms


def _fingerprint(*parts: Any) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _open_image(content: bytes, mode: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # leanset refuses those images itself, just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(content))
        _check_pixels(img.size)
        img.load()
        return img.convert(mode)
    except UnidentifiedImageError as exc:  # its message holds a memory address: not reproducible
        raise SampleError("unreadable: cannot decode image (not a known image format)") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, SampleError):
            raise
        raise SampleError(f"unreadable: cannot decode image ({exc})") from exc


def _check_pixels(size: tuple[int, int]) -> None:
    """Refuse, before decoding, images larger than PIL's bomb limit (PIL itself only warns up to
    twice that size, after allocating it)."""
    from PIL import Image

    w, h = size
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > limit:
        raise SampleError(
            f"unreadable: image is {w} x {h} = {w * h:,} pixels, more than the {limit:,} "
            f"leanset decodes (PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb?)"
        )


class PixelEmbedder:
    """Raw-pixel features for small images: grayscale, resized, mean-centred, L2-normalised."""

    def __init__(self, size: int = 16):
        self.size = size
        self.fingerprint = f"pixels-{size}-" + _fingerprint("pixels", size, 1)

    def prepare(self, content: bytes) -> np.ndarray:
        return self.from_image(_open_image(content, "L"))

    def from_image(self, img: Any) -> np.ndarray:
        """Features of a decoded PIL image (before normalisation, which `encode` does)."""
        from PIL import Image

        small = img.convert("L").resize((self.size, self.size), Image.BILINEAR)
        x = np.asarray(small, dtype=np.float32).ravel()
        return x - x.mean()

    def encode(self, items: list[np.ndarray]) -> np.ndarray:
        return l2_normalise(np.stack(items))


class _TorchModel:
    """Device, precision and batching shared by the torch-based embedders."""

    def __init__(self, device: str, precision: str):
        import torch

        self.device = resolve_device(device)
        self.dtype = {
            "auto": torch.bfloat16 if self.device.startswith("cuda") else None,
            "fp32": None,
            "fp16": torch.float16,
            "bf16": torch.bfloat16,
        }[precision]

    def _run(self, fn: Callable[[Any], Any], batch: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.dtype is not None:
                with torch.autocast(self.device.split(":")[0], dtype=self.dtype):
                    out = fn(batch)
            else:
                out = fn(batch)
        out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy()


def _arch_name(model: str) -> str:
    """A model given as an architecture JSON file is registered with open_clip under its stem."""
    import open_clip

    if model.endswith(".json"):
        if not Path(model).is_file():
            raise EmbedError(f"embedder.model: architecture file {model} does not exist")
        open_clip.add_model_config(model)
        return Path(model).stem
    return model


def _load_open_clip(model: str, pretrained: str | None, device: str) -> tuple[Any, Any]:
    """open_clip model (eval mode) and its eval transform; weights from a tag or local file."""
    import open_clip
    from safetensors import SafetensorError

    model = _arch_name(model)
    suffixes = (".pt", ".bin", ".safetensors", ".pth")
    if pretrained and Path(pretrained).suffix in suffixes and not Path(pretrained).is_file():
        raise EmbedError(f"embedder.pretrained: checkpoint {pretrained} does not exist")
    try:
        model_obj, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, device=device
        )
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused an object
        raise EmbedError(
            f"embedder.pretrained: checkpoint {pretrained} holds pickled Python objects, not only "
            f"weights; leanset loads weights only and does not run what a pickle carries (save "
            f"the weights with torch.save(model.state_dict(), path) or as .safetensors)"
        ) from exc
    except (RuntimeError, ValueError, OSError, SafetensorError) as exc:
        raise EmbedError(
            f"embedder: cannot load open_clip {model!r} / {pretrained!r}: {exc}"
        ) from exc
    model_obj.eval()
    return model_obj, preprocess


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model).stem)


def _weights_id(pretrained: str | None) -> str:
    """A checkpoint file is identified by its content, a tag by its name."""
    if pretrained and Path(pretrained).is_file():
        h = hashlib.blake2b(digest_size=8)
        with open(pretrained, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    return str(pretrained)


class OpenClipImageEmbedder(_TorchModel):
    """open_clip image tower (ViT-B-32 etc.), batched, mixed precision on GPU."""

    def __init__(
        self, model: str, pretrained: str | None, device: str = "auto", precision: str = "auto"
    ):
        super().__init__(device, precision)
        self.model, self.preprocess = _load_open_clip(model, pretrained, self.device)
        self.fingerprint = f"openclip-img-{_slug(model)}-" + _fingerprint(
            _weights_id(model), _weights_id(pretrained)
        )

    def prepare(self, content: bytes) -> Any:
        return self.preprocess(_open_image(content, "RGB"))

    def encode(self, items: list[Any]) -> np.ndarray:
        import torch

        batch = torch.stack(items)
        if self.device.startswith("cuda"):
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return self._run(self.model.encode_image, batch)


class OpenClipTextEmbedder(_TorchModel):
    """open_clip text tower."""

    def __init__(
        self, model: str, pretrained: str | None, device: str = "auto", precision: str = "auto"
    ):
        import open_clip

        super().__init__(device, precision)
        self.model, _ = _load_open_clip(model, pretrained, self.device)
        self.tokenizer = open_clip.get_tokenizer(_arch_name(model))
        self.fingerprint = f"openclip-txt-{_slug(model)}-" + _fingerprint(
            _weights_id(model), _weights_id(pretrained)
        )

    def prepare(self, content: str) -> str:
        return content

    def encode(self, items: list[str]) -> np.ndarray:
        tokens = self.tokenizer(items).to(self.device)
        return self._run(self.model.encode_text, tokens)


class SentenceTransformerEmbedder:
    """A sentence-transformers text model (a local folder or a model name)."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 64):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedError(
                "embedder type 'sentence_transformers' needs: pip install 'leanset[text]'"
            ) from exc
        self.device = resolve_device(device)
        try:
            self.model = SentenceTransformer(model, device=self.device)
        except pickle.UnpicklingError as exc:  # a weights-only load refused a pickled object
            raise EmbedError(
                f"embedder.model: the weights in {model} hold pickled Python objects, not only "
                f"weights; leanset loads weights only and does not run what a pickle carries"
            ) from exc
        self.batch_size = batch_size
        self.fingerprint = "st-" + _fingerprint(Path(model).name, _weights_id(_st_weights(model)))

    def prepare(self, content: str) -> str:
        return content

    def encode(self, items: list[str]) -> np.ndarray:
        out = self.model.encode(items, batch_size=self.batch_size, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)


def _st_weights(model: str) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (Path(model) / name).is_file():
            return str(Path(model) / name)
    return model


class PrecomputedEmbedder:
    """Vectors already in a column of the dataset: validated and normalised, nothing computed."""

    def __init__(self, column: str):
        self.column = column
        self.dim: int | None = None
        self.fingerprint = "precomputed-" + _fingerprint("precomputed", column)

    def prepare(self, content: Any) -> np.ndarray:
        return np.asarray(content, dtype=np.float32)

    def encode(self, items: list[np.ndarray]) -> np.ndarray:
        return l2_normalise(np.stack(items))


def make_embedder(settings: EmbedderSettings, embedding_column: str | None = None) -> Embedder:
    """Build the configured embedder."""
    factories: dict[str, Callable[[], Embedder]] = {
        "pixels": lambda: PixelEmbedder(settings.size),
        "open_clip": lambda: OpenClipImageEmbedder(
            settings.model or "ViT-B-32", settings.pretrained, settings.device, settings.precision
        ),
        "open_clip_text": lambda: OpenClipTextEmbedder(
            settings.model or "ViT-B-32", settings.pretrained, settings.device, settings.precision
        ),
        "sentence_transformers": lambda: SentenceTransformerEmbedder(
            settings.model or "all-MiniLM-L6-v2", settings.device, settings.batch_size
        ),
        "precomputed": lambda: PrecomputedEmbedder(embedding_column or "embedding"),
    }
    return factories[settings.type]()


# ---------------------------------------------------------------- cache

_SHARD_DTYPE = np.float16  # on disk; compute and search use float32


class EmbeddingCache:
    """Embeddings keyed by content hash, in shards under `root/<fingerprint>/`."""

    def __init__(self, root: str | Path, fingerprint: str):
        self.dir = Path(root) / fingerprint
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
            shard = _read_shard(path)
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

    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> Path:
        """Write one shard (atomically) and index it."""
        stored = vectors.astype(_SHARD_DTYPE)
        hash_arr = np.asarray(list(hashes), dtype="U32")
        buf = io.BytesIO()
        np.savez(
            buf, hashes=hash_arr, vectors=stored, checksum=np.asarray(_checksum(hash_arr, stored))
        )
        name = f"shard-{time.time_ns():020d}-{hashlib.blake2b(hash_arr.tobytes(), digest_size=4).hexdigest()}.npz"
        path = atomic_write_bytes(self.dir / name, buf.getvalue())
        k = len(self._shards)
        self._shards.append(stored)
        self._index.update((h, (k, i)) for i, h in enumerate(hash_arr.tolist()))
        return path


def _checksum(hashes: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.blake2b(hashes.tobytes(), digest_size=16)
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()


def _read_shard(path: Path) -> tuple[list[str], np.ndarray] | None:
    """A shard's (hashes, vectors), or None (with a warning) when it is corrupt or truncated."""
    try:
        with np.load(path, allow_pickle=False) as z:
            hashes, vectors, checksum = z["hashes"], z["vectors"], str(z["checksum"])
        if len(hashes) != len(vectors) or _checksum(hashes, vectors) != checksum:
            raise ValueError("checksum or row count does not match")
        if hashes.ndim != 1 or vectors.ndim != 2 or not np.isfinite(vectors).all():
            raise ValueError("not one hash per row of finite vector values")
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning(
            "embedding cache shard %s is corrupt (%s); its samples will be re-embedded", path, exc
        )
        return None
    return hashes.tolist(), vectors


# ---------------------------------------------------------------- the stage


@dataclass
class EmbedResult:
    """The embedding matrix aligned with the sample table, and what it took."""

    matrix: np.ndarray
    computed: int
    cached: int
    seconds: float
    device: str
    fingerprint: str
    errors: dict[str, str] = field(default_factory=dict)  # content_hash -> why it failed


def embed_dataset(
    data: LoadedDataset,
    embedder: Embedder,
    cache_root: str | Path,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    shard_rows: int = 4096,
    progress: bool = True,
) -> EmbedResult:
    """Embed every readable, distinct content once (cache first), then align rows to the table."""
    t0 = time.perf_counter()
    table = data.table
    if isinstance(embedder, PrecomputedEmbedder):
        return _precomputed(data, embedder, t0)
    readable = table.filter(pl.col("error").is_null()).unique(
        "content_hash", keep="first", maintain_order=True
    )
    hashes = readable["content_hash"].to_list()
    rows = readable["position"].to_numpy()
    cache = EmbeddingCache(cache_root, embedder.fingerprint)
    found, cached_vecs = cache.get(hashes)
    todo = np.flatnonzero(~found)
    vectors: dict[str, np.ndarray] = {}
    if cached_vecs is not None:
        vectors.update(
            zip([h for h, f in zip(hashes, found, strict=True) if f], cached_vecs, strict=True)
        )
    errors = _compute(
        data,
        embedder,
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
    return EmbedResult(
        matrix=matrix,
        computed=len(todo) - len(errors),
        cached=int(found.sum()),
        seconds=time.perf_counter() - t0,
        device=getattr(embedder, "device", "cpu"),
        fingerprint=embedder.fingerprint,
        errors=errors,
    )


def _precomputed(data: LoadedDataset, embedder: PrecomputedEmbedder, t0: float) -> EmbedResult:
    """Vectors from the dataset's own column: checked, normalised, nothing computed or cached."""
    ok = data.table.filter(pl.col("error").is_null())
    vectors = data.vectors(ok["position"].to_list())
    width = check_vector_widths(ok, vectors)
    matrix = np.zeros((data.table.height, width), dtype=np.float32)
    if vectors:
        matrix[ok["position"].to_numpy()] = l2_normalise(np.stack(vectors))  # one pass, no cache
    return EmbedResult(
        matrix=matrix,
        computed=0,
        cached=0,
        seconds=time.perf_counter() - t0,
        device="cpu",
        fingerprint=embedder.fingerprint,
    )


def check_vector_widths(ok: pl.DataFrame, vectors: list[np.ndarray]) -> int:
    """All precomputed vectors must have one width; the first that differs is named."""
    widths = np.array([len(v) for v in vectors], dtype=np.int64)
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

    loader = DataLoader(
        _Prepared(data, embedder, hashes, rows),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
        pin_memory=False,
    )
    errors: dict[str, str] = {}
    pending_h: list[str] = []
    pending_v: list[np.ndarray] = []
    dims: set[int] = set()
    bar = tqdm(total=len(hashes), desc="embed", unit="sample", disable=not progress or None)
    for batch in loader:
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
    return l2_normalise(np.asarray(out, dtype=np.float32).astype(_SHARD_DTYPE).astype(np.float32))


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
