"""Images of every mode Pillow opens decode to 8 bits by their real range: a float TIFF of noise
is not black, a 16-bit PNG is not two grey levels, palette/alpha/CMYK images keep their picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from leanset.pipelines.embed import PixelEmbedder
from leanset.pipelines.embed.protocol import open_image
from tests.reliability.conftest import TALLY

G = np.add.outer(np.arange(64), np.arange(64)).astype(np.float64) * (255 / 126)  # 0..255 ramp
G8 = np.rint(G).astype(np.uint8)


def _rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([a] * 3, axis=-1))


def _wide(mode: str, dtype: str) -> Image.Image:
    return Image.frombytes(mode, G8.shape, (G8.astype(np.uint16) * 257).astype(dtype).tobytes())


MAKERS = {
    "1": (lambda: Image.fromarray(G8).point(lambda v: 255 if v > 127 else 0).convert("1"), "PNG"),
    "L": (lambda: Image.fromarray(G8), "PNG"),
    "I;16": (lambda: Image.fromarray(G8.astype(np.uint16) * 257), "PNG"),
    "I": (lambda: Image.fromarray(G8.astype(np.int32) * 1000 + 5000), "TIFF"),
    "F": (lambda: Image.fromarray((G / 255 * 0.5 + 0.1).astype(np.float32)), "TIFF"),
    "P": (lambda: _rgb(G8).convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
    "RGBA": (lambda: _rgb(G8).convert("RGBA"), "PNG"),
    "CMYK": (lambda: _rgb(G8).convert("CMYK"), "TIFF"),
    "LA": (lambda: Image.fromarray(G8).convert("LA"), "PNG"),
    "I;16B": (lambda: _wide("I;16B", ">u2"), "TIFF"),
    "RGB": (lambda: _rgb(G8), "PNG"),
    "YCbCr": (lambda: _rgb(G8).convert("YCbCr"), "TIFF"),
    "LAB": (lambda: _rgb(G8).convert("LAB"), "TIFF"),  # Pillow converted it to no L at all
}


COLOUR = ("P", "RGBA", "CMYK", "RGB", "YCbCr", "LAB")


def _encoded(mode: str) -> bytes:
    make, fmt = MAKERS[mode]
    img = make()
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == mode  # the mode under test
    return buf.getvalue()


@pytest.mark.parametrize("mode", list(MAKERS))
def test_every_mode_decodes_to_its_picture_on_the_full_8_bit_range(mode: str):
    TALLY[f"hostile inputs tried: image of mode {mode}"] += 1
    raw = _encoded(mode)
    grey = np.asarray(open_image(raw, "L"), dtype=np.float64)
    expected = (G > 127) * 255.0 if mode == "1" else G
    assert grey.shape == (64, 64)
    assert grey.max() - grey.min() >= 250, f"{mode}: range {grey.min()}..{grey.max()}"
    assert np.corrcoef(grey.ravel(), expected.ravel())[0, 1] > 0.99
    assert np.abs(grey - expected).mean() < 6  # the real picture, not a shifted one
    if mode in COLOUR:
        assert np.abs(np.asarray(open_image(raw, "RGB"), float).mean(-1) - expected).mean() < 6
    rgb = np.asarray(open_image(raw, "RGB"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8


def test_a_float_tiff_of_noise_is_not_black_nor_a_copy_of_a_black_image():
    """It decoded as black and was judged a duplicate (1.000) of a 1x1 black PNG."""
    TALLY["hostile inputs tried: float TIFF of noise beside a black PNG"] += 1
    noise = Image.fromarray(np.random.default_rng(0).random((48, 48)).astype(np.float32))
    buf = io.BytesIO()
    noise.save(buf, format="TIFF")
    black = io.BytesIO()
    Image.new("L", (1, 1)).save(black, format="PNG")
    grey = np.asarray(open_image(buf.getvalue(), "L"), dtype=np.float64)
    assert grey.std() > 50 and grey.max() >= 250
    vectors = PixelEmbedder(size=16).encode(
        [PixelEmbedder(size=16).prepare(b) for b in (buf.getvalue(), black.getvalue())]
    )
    assert float(vectors[0] @ vectors[1]) < 0.99


def test_a_16_bit_png_keeps_its_grey_levels():
    TALLY["hostile inputs tried: 16-bit PNG ramp"] += 1
    ramp = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
    buf = io.BytesIO()
    ramp.save(buf, format="PNG")
    grey = np.asarray(open_image(buf.getvalue(), "L"))
    assert len(np.unique(grey)) == 256


def test_nan_and_constant_float_images_decode():
    TALLY["hostile inputs tried: float image with NaN / constant value"] += 2
    a = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    a[3, 3] = np.nan
    for arr in (a, np.full((16, 16), 0.0, np.float32), np.full((8, 8), np.nan, np.float32)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="TIFF")
        grey = np.asarray(open_image(buf.getvalue(), "L"))
        assert grey.dtype == np.uint8 and grey.shape == arr.shape
    assert np.asarray(open_image(buf.getvalue(), "L")).max() == 0
