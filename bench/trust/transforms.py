"""The kinds of planted copy: realistic re-encodings and edits of an original image.

A transform is `(image, rng) -> (image, params)`; `params` holds the values drawn, so truth.json
says exactly what was done to each copy. A combination applies its parts in order. The `exact`
kind is a byte-for-byte copy and is handled by the builder.

| kind | what is done |
| --- | --- |
| `jpeg` | re-encoded at JPEG quality 30-60 |
| `resize` | scaled to 45-80% of each side |
| `crop` | 60-95% of each side kept, at a random offset (not resized back) |
| `color` | brightness and contrast each changed by 10-25%, up or down |
| `rotate` | 1-15 degrees either way, cropped to the largest upright rectangle inside |
| `turn` | a quarter, half or three-quarter turn |
| `overlay` | a caption burned in along one edge and a logo block in a corner |
| `aspect` | one side stretched or squeezed to 70-130% of the other's scale |
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
    """A crop keeping 60-95% of each side (drawn independently) at a random offset."""
    fx, fy = float(rng.uniform(0.60, 0.95)), float(rng.uniform(0.60, 0.95))
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
    """Rotated by 1-15 degrees either way, cropped to the centred rectangle with no blank corner."""
    deg = float(rng.choice([-1, 1]) * rng.uniform(1.0, 15.0))
    out = image.rotate(deg, resample=Image.Resampling.BICUBIC, expand=False)
    w, h = inscribed_size(image.width, image.height, math.radians(abs(deg)))
    x, y = (image.width - w) // 2, (image.height - h) // 2
    return out.crop((x, y, x + w, y + h)), {"degrees": round(deg, 2)}


def turn(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """A quarter, half or three-quarter turn (a scan fed in sideways)."""
    quarters = int(rng.integers(1, 4))
    ops = {
        1: Image.Transpose.ROTATE_90,
        2: Image.Transpose.ROTATE_180,
        3: Image.Transpose.ROTATE_270,
    }
    return image.transpose(ops[quarters]), {"quarters": quarters}


def overlay(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """A caption burned in along the top or bottom edge and a solid logo block in a corner."""
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    band = max(8, h // 10)
    y = 0 if rng.random() < 0.5 else h - band
    shade = int(rng.integers(0, 256))
    draw.rectangle((0, y, w, y + band), fill=(shade, shade, shade))
    draw.text(
        (4, y + 1),
        "(c) leanset sample " + str(int(rng.integers(1000, 9999))),
        fill=(255 - shade,) * 3,
    )
    side = max(8, min(w, h) // 6)
    x0 = w - side - 4 if rng.random() < 0.5 else 4
    draw.rectangle((x0, h // 2 - side // 2, x0 + side, h // 2 + side // 2), fill=(200, 30, 30))
    return out, {"caption_at": "top" if y == 0 else "bottom", "logo_side": side}


def aspect(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Params]:
    """One side rescaled to 70-130% (the other kept): a photo stretched to a new aspect ratio."""
    f = float(rng.uniform(0.7, 1.3))
    size = (
        (max(8, round(image.width * f)), image.height)
        if rng.random() < 0.5
        else (image.width, max(8, round(image.height * f)))
    )
    return image.resize(size, Image.Resampling.BILINEAR), {
        "stretch": round(f, 3),
        "size": list(size),
    }


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
    "turn": turn,
    "overlay": overlay,
    "aspect": aspect,
}

COMBOS: dict[str, tuple[str, ...]] = {
    "crop+jpeg": ("crop", "jpeg"),
    "resize+jpeg": ("resize", "jpeg"),
    "mirror+color": ("mirror", "color"),
    "rotate+noise": ("rotate", "noise"),
    "color+resize+jpeg": ("color", "resize", "jpeg"),  # a photo shared again and again
    "rotate+jpeg": ("rotate", "jpeg"),
    "turn+jpeg": ("turn", "jpeg"),
    "mirror+jpeg": ("mirror", "jpeg"),
    "overlay+jpeg": ("overlay", "jpeg"),
    "aspect+jpeg": ("aspect", "jpeg"),
    "color+jpeg": ("color", "jpeg"),
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
