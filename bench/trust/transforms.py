"""The kinds of planted copy: realistic re-encodings and edits of an original image.

A transform is `(image, rng) -> (image, params)`; `params` holds the values drawn, so truth.json
says exactly what was done to each copy. A combination applies its parts in order. The `exact`
kind is a byte-for-byte copy and is handled by the builder.

| kind | what is done |
| --- | --- |
| `jpeg` | re-encoded at JPEG quality 30-60 |
| `resize` | scaled to 45-80% of each side |
| `crop` | 85-95% of each side kept, at a random offset (not resized back) |
| `color` | brightness and contrast each changed by 10-25%, up or down |
| `rotate` | 1-4 degrees either way, cropped to the largest upright rectangle inside |
| `noise` | Gaussian noise, standard deviation 4-12 grey levels |
| `mirror` | flipped left to right |
| `blur` | Gaussian blur, radius 1-2.5 pixels |
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

Params = dict[str, Any]
Transform = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, Params]]


def jpeg(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Re-encoded as JPEG at quality 30-60 (the builder saves the copy at that quality)."""
    return image, {"jpeg_quality": int(rng.integers(30, 61))}


def resize(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Scaled to 45-80% of its side lengths."""
    f = float(rng.uniform(0.45, 0.80))
    size = (max(8, round(image.width * f)), max(8, round(image.height * f)))
    return image.resize(size, Image.Resampling.BILINEAR), {"scale": round(f, 3)}


def crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """A crop keeping 85-95% of each side (drawn independently) at a random offset."""
    fx, fy = float(rng.uniform(0.85, 0.95)), float(rng.uniform(0.85, 0.95))
    w, h = round(image.width * fx), round(image.height * fy)
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    params = {"keep_w": round(fx, 3), "keep_h": round(fy, 3), "x": x, "y": y}
    return image.crop((x, y, x + w, y + h)), params


def color(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Brightness, then contrast, each multiplied by 1 +/- 0.10-0.25."""
    b = float(1 + rng.choice([-1, 1]) * rng.uniform(0.10, 0.25))
    c = float(1 + rng.choice([-1, 1]) * rng.uniform(0.10, 0.25))
    out = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(b)).enhance(c)
    return out, {"brightness": round(b, 3), "contrast": round(c, 3)}


def rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Rotated by 1-4 degrees either way, cropped to the centred rectangle with no blank corner."""
    deg = float(rng.choice([-1, 1]) * rng.uniform(1.0, 4.0))
    out = image.rotate(deg, resample=Image.Resampling.BICUBIC, expand=False)
    w, h = inscribed_size(image.width, image.height, math.radians(abs(deg)))
    x, y = (image.width - w) // 2, (image.height - h) // 2
    return out.crop((x, y, x + w, y + h)), {"degrees": round(deg, 2)}


def inscribed_size(w: int, h: int, angle: float) -> tuple[int, int]:
    """The largest centred rectangle of a w x h image's aspect ratio inside it rotated by `angle`."""
    cos, sin = math.cos(angle), math.sin(angle)
    s = min(w / (w * cos + h * sin), h / (w * sin + h * cos))
    return max(8, int(w * s)), max(8, int(h * s))


def noise(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Gaussian noise with a standard deviation of 4-12 grey levels, per channel."""
    sigma = float(rng.uniform(4, 12))
    arr = np.asarray(image, dtype=np.float32)
    arr = arr + rng.normal(0, sigma, arr.shape).astype(np.float32)
    out = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    return out, {"sigma": round(sigma, 2)}


def mirror(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Flipped left to right (nothing is drawn)."""
    return ImageOps.mirror(image), {}


def blur(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Gaussian blur with a radius of 1-2.5 pixels."""
    r = float(rng.uniform(1.0, 2.5))
    return image.filter(ImageFilter.GaussianBlur(r)), {"radius": round(r, 2)}


SINGLE: dict[str, Transform] = {
    "jpeg": jpeg,
    "resize": resize,
    "crop": crop,
    "color": color,
    "rotate": rotate,
    "noise": noise,
    "mirror": mirror,
    "blur": blur,
}

COMBOS: dict[str, tuple[str, ...]] = {
    "crop+jpeg": ("crop", "jpeg"),
    "resize+jpeg": ("resize", "jpeg"),
    "mirror+color": ("mirror", "color"),
    "rotate+noise": ("rotate", "noise"),
    "color+resize+jpeg": ("color", "resize", "jpeg"),  # a photo shared again and again
}

KINDS: tuple[str, ...] = ("exact", *SINGLE, *COMBOS)
"""Every kind of planted copy, in the order reports list them."""


def apply(kind: str, image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """Apply a single or combined kind (not `exact`); the parts' parameters are merged."""
    if kind not in SINGLE and kind not in COMBOS:
        raise ValueError(f"unknown copy kind {kind!r}; expected one of {', '.join(KINDS[1:])}")
    params: Params = {}
    for part in COMBOS.get(kind, (kind,)):
        image, drawn = SINGLE[part](image, rng)
        params.update(drawn)
    return image, params


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """The image as JPEG bytes (4:2:0 chroma below quality 80, full chroma above)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=2 if quality < 80 else 0)
    return buf.getvalue()
