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
        return to_8bit(img).convert(mode)
    except UnidentifiedImageError as exc:  # its message holds a memory address: not reproducible
        raise SampleError("unreadable: cannot decode image (not a known image format)") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, SampleError):
            raise
        raise SampleError(f"unreadable: cannot decode image ({exc})") from exc


WIDE_MODES = ("I", "F")  # and every "I;16..." variant: more than 8 bits a pixel
FULL_SCALE = {"F": 1.0}  # a constant image's value at white (16-bit otherwise)


def to_8bit(img: Any) -> Any:
    """An 8-bit image of a 16-bit, 32-bit integer or float one, its real range (min..max of the
    finite pixels) scaled to 0..255; other modes are returned as they are (Pillow converts them
    faithfully, but clips wider ones: a float image in 0..1 would decode black)."""
    from PIL import Image

    if img.mode == "LAB":  # Pillow converts LAB to neither L nor (faithfully) RGB by itself
        return _lab_to_rgb(img)
    if img.mode not in WIDE_MODES and not img.mode.startswith("I;16"):
        return img
    a = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return Image.fromarray(np.zeros(a.shape, dtype=np.uint8), mode="L")
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))
    else:  # one value: placed on the type's own scale (0..1 for float, 0..65535 otherwise)
        scaled = np.full(a.shape, np.clip(lo / FULL_SCALE.get(img.mode, 65535.0), 0, 1) * 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _lab_to_rgb(img: Any) -> Any:
    """An sRGB image of a CIE L*a*b* one (through Pillow's colour management)."""
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.applyTransform(img, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))


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
