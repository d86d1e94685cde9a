"""The packaged images the trust benchmark is made of, and how they become original samples.

Nothing is committed: every image comes from a package the `bench` extra installs.

* scikit-image's sample photos (CC0 / public domain, see each loader's docstring),
* scikit-learn's two sample photos `china` and `flower` (CC BY 2.0),
* `mvtb-data` (MIT): the Machine Vision Toolbox's example photos and its calibration frames,
* `conformal-clip-data` (MIT): 2,000 simulated textile images (nominal, local and global defects).

The `diverse` set cuts the photos into non-overlapping square tiles, one original sample per tile
(photos too small to tile are used whole). Second views of one scene (stereo pairs, a PNG and a
JPEG of one photo, video frames) are left out, so as far as is known the only near copies are the
planted ones and the calibration frames' shared background (see `natural_group`). The `dense` set
uses textile images as packaged: distinct samples that all look alike.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TILE = 160  # tile side in pixels
MAX_SIDE = 1280  # photos are shrunk (never enlarged) so that the longer side is at most this
MIN_TILE_STD = 14.0  # tiles flatter than this (grey standard deviation) are left out: sky, black
MAX_TILES_PER_PHOTO = 40
TEXTILE_ORIGINALS = 1600  # of the 2,000 packaged textiles
TEXTILE_CLASSES = ("nominal", "local", "global")

SKIMAGE_PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "rocket.jpg",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "cell.png", "moon.png", "brick.png",
    "grass.png", "gravel.png", "motorcycle_left.png", "page.png",
)  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MVTB_PHOTOS = (
    "58060.png", "butterfly.jpg", "castle.png", "church.png", "building2-1.png", "eiffel-1.png",
    "flowers1.png", "flowers2.png", "flowers3.png", "flowers4.png", "flowers5.png",
    "flowers6.png", "flowers7.png", "flowers8.png", "flowers9.png", "greenscreen.png",
    "image3.jpg", "lab-scene.png", "monalisa.png", "notre-dame.png", "parks.png",
    "penguins.png", "road.png", "rocks2-l.png", "roof.png", "street.png", "tomato_124.png",
    "tomato_14.png", "tomato_35.png", "tomato_54.png", "walls-l.png", "wheres-wally.png",
    "Image18.png", "arucoboard.png", "tags.png", "fisheye_target.png",
)  # fmt: skip
# Left out on purpose: church.jpg (the same photo as church.png), castle2 (castle in grey),
# building2-2/-3, eiffel-2, rocks2-r, walls-r (second views of a scene), the campus/, seq/ and
# mosaic/ sequences (overlapping frames), lena.png, and the synthetic drawings.
MVTB_CALIBRATION = "calibration"  # 14 chessboard frames from one fixed camera, tiled


@dataclass(frozen=True)
class SourceImage:
    """One packaged image file, the name the benchmark gives it, and its class."""

    name: str  # e.g. "skimage/astronaut"
    path: Path
    label: str


@dataclass(frozen=True)
class Original:
    """An original sample before planting: pixels, class and where it comes from."""

    key: str  # provenance, e.g. "skimage/astronaut#r1c2"
    label: str
    image: Image.Image
    source_path: Path  # the packaged file it was cut from
    raw_bytes: bytes | None = None  # the packaged file itself, when it is used unchanged


def natural_group(key: str) -> str | None:
    """The natural near-copy group of a sample's provenance key, or None.

    The calibration frames come from one fixed camera while a chessboard moves, so a tile at one
    grid position shows the same background in every frame where the board is elsewhere. Those
    tiles are near copies by nature, not planted ones; scoring counts them neither way.
    """
    prefix = f"mvtb/{MVTB_CALIBRATION}/"
    if key.startswith(prefix) and "#" in key:
        return f"{MVTB_CALIBRATION}#{key.split('#', 1)[1]}"
    return None


def package_dir(module: str) -> Path:
    """The folder of an installed package; ImportError naming the benchmark's extra if missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"package {module!r} is not installed: pip install -c constraints.txt -e '.[bench]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def photo_sources() -> list[SourceImage]:
    """The photos of the diverse set, in a fixed order (FileNotFoundError naming any missing)."""
    skimage = package_dir("skimage") / "data"
    sklearn = package_dir("sklearn") / "datasets" / "images"
    mvtb = package_dir("mvtbdata") / "images"
    out = [
        SourceImage(f"skimage/{Path(f).stem}", skimage / f, Path(f).stem) for f in SKIMAGE_PHOTOS
    ]
    out += [
        SourceImage(f"sklearn/{Path(f).stem}", sklearn / f, Path(f).stem) for f in SKLEARN_PHOTOS
    ]
    out += [SourceImage(f"mvtb/{Path(f).stem}", mvtb / f, Path(f).stem) for f in MVTB_PHOTOS]
    out += [
        SourceImage(f"mvtb/{MVTB_CALIBRATION}/{f.stem}", f, "chessboard")
        for f in sorted((mvtb / MVTB_CALIBRATION).glob("*.jpg"))
    ]
    missing = [str(s.path) for s in out if not s.path.is_file()]
    if missing:
        raise FileNotFoundError(f"packaged images missing ({len(missing)}): {missing[:3]}")
    return out


def textile_sources() -> list[SourceImage]:
    """The packaged simulated textile images, labelled by their folder (nominal, local, global)."""
    root = package_dir("conformal_clip_data") / "data" / "textile_images" / "simulated"
    out = [
        SourceImage(f"textile/{label}/{f.stem}", f, label)
        for label in TEXTILE_CLASSES
        for f in sorted((root / label).glob("*.jpg"))
    ]
    if len(out) < TEXTILE_ORIGINALS:
        raise FileNotFoundError(
            f"expected at least {TEXTILE_ORIGINALS} textile images under {root}, found {len(out)}"
        )
    return out


def load_rgb(path: Path) -> Image.Image:
    """A packaged image as 8-bit RGB: alpha composited on white, 16-bit and float stretched."""
    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA", "P"):
            back = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(back, im.convert("RGBA")).convert("RGB")
        if im.mode in ("I;16", "I;16B", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            lo, hi = np.percentile(arr, [0.5, 99.5])
            arr = np.clip((arr - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
            return Image.fromarray(arr).convert("RGB")
        return im.convert("RGB")


def shrink(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """`image` scaled down so its longer side is at most `max_side` (never enlarged)."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def grid_tiles(image: Image.Image, tile: int = TILE) -> Iterator[tuple[str, Image.Image]]:
    """Non-overlapping tiles of a centred grid, each named by its grid position `rXcY`."""
    cols, rows = image.width // tile, image.height // tile
    x0, y0 = (image.width - cols * tile) // 2, (image.height - rows * tile) // 2
    for r in range(rows):
        for c in range(cols):
            left, top = x0 + c * tile, y0 + r * tile
            yield f"r{r}c{c}", image.crop((left, top, left + tile, top + tile))


def grey_std(image: Image.Image) -> float:
    """Standard deviation of an image's grey levels (0-255)."""
    return float(np.asarray(image.convert("L"), dtype=np.float32).std())


def photo_originals(rng: np.random.Generator) -> list[Original]:
    """The diverse set's originals: textured tiles of each photo, or the photo when it is small."""
    out: list[Original] = []
    for src in photo_sources():
        image = shrink(load_rgb(src.path))
        if min(image.size) < 2 * TILE:
            out.append(Original(src.name, src.label, image, src.path))
            continue
        tiles = [(pos, t) for pos, t in grid_tiles(image) if grey_std(t) >= MIN_TILE_STD]
        if len(tiles) > MAX_TILES_PER_PHOTO:
            chosen = np.sort(rng.choice(len(tiles), MAX_TILES_PER_PHOTO, replace=False))
            tiles = [tiles[i] for i in chosen]
        out += [Original(f"{src.name}#{pos}", src.label, t, src.path) for pos, t in tiles]
    return out


def textile_originals(rng: np.random.Generator, limit: int = TEXTILE_ORIGINALS) -> list[Original]:
    """The dense set's originals: `limit` textile images drawn at random, bytes as packaged."""
    sources = textile_sources()
    if limit < len(sources):
        chosen = np.sort(rng.choice(len(sources), limit, replace=False))
        sources = [sources[i] for i in chosen]
    return [
        Original(s.name, s.label, load_rgb(s.path), s.path, raw_bytes=s.path.read_bytes())
        for s in sources
    ]
