"""The `Embedder` protocol, its errors, and what every adapter shares (device, normalising, decoding)."""

from __future__ import annotations

import io
import warnings
from typing import Any, Protocol

import numpy as np


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
    out: np.ndarray = x / norms
    return out


def open_image(content: bytes, mode: str) -> Any:
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
