"""The geometric check on real photo tiles: copies under crops, turns, flips and overlays are
confirmed; distinct tiles, overlapping tiles and flat images are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from leanset.dedup.geometry import ImageFeatures, image_features, verify
from tests.helpers import photo_tiles


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a)


def _copies(photo: np.ndarray) -> dict[str, np.ndarray]:
    """Edited copies of a 256 px grey photo."""
    img = _pil(photo)
    over = img.copy()
    draw = ImageDraw.Draw(over)
    draw.rectangle((170, 10, 246, 50), fill=255)
    draw.text((10, 230), "(c) SAMPLE CAPTION", fill=0)
    return {
        "crop 65%": photo[40:206, 60:226],
        "rotate 10": np.asarray(img.rotate(10, resample=Image.Resampling.BICUBIC))[30:226, 30:226],
        "turn 90": np.rot90(photo).copy(),
        "mirror": photo[:, ::-1].copy(),
        "overlay": np.asarray(over),
        "aspect": np.asarray(img.resize((320, 200))),
        "darker": (photo * 0.6).astype(np.uint8),
    }


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return photo_tiles(1, side=256)[0]  # the camera man


@pytest.mark.parametrize(
    "kind", ["crop 65%", "rotate 10", "turn 90", "mirror", "overlay", "aspect", "darker"]
)
def test_an_edited_copy_is_confirmed_with_its_reason(photo: np.ndarray, kind: str) -> None:
    m = verify(image_features(photo), image_features(_copies(photo)[kind]))
    assert m.copy, m
    assert m.reason().startswith(f"geometry: {m.inliers} inliers")
    assert m.mirrored == (kind == "mirror")
    if kind == "turn 90":
        assert abs(abs(m.rotation) - 90) < 3


def test_distinct_tiles_of_the_same_photos_are_not_copies() -> None:
    feats = [image_features(t) for t in photo_tiles(24)]
    wrong = [
        (i, j)
        for i in range(len(feats))
        for j in range(i + 1, len(feats))
        if verify(feats[i], feats[j]).copy
    ]
    assert wrong == []


def _mvtb_tiles(photo: str) -> dict[str, np.ndarray]:
    """Grey 160 px tiles of a packaged mvtb-data photo, cut as the trust benchmark cuts them
    (shrunk to 1,280 px, a centred grid, JPEG at quality 92), by grid position `rXcY`."""
    import io

    from bench.trust import sources

    folder = sources.package_dir("mvtbdata") / "images"
    path = folder / photo if (folder / photo).exists() else folder / "calibration" / photo
    out = {}
    for pos, tile in sources.grid_tiles(sources.shrink(sources.load_rgb(path))):
        buf = io.BytesIO()
        tile.save(buf, format="JPEG", quality=92)
        out[pos] = np.asarray(Image.open(buf).convert("L"))
    return out


# Distinct tiles of photos with repeating patterns that the check confirmed as copies before
# the overhang and mirror-margin tests (the trust benchmark's diverse set, seed 0): roof tiles,
# church windows and shingles, penguins, a butterfly's wing mirrored, chessboard squares.
REPEATING = [
    ("roof.png", "r2c6", "r2c7"),
    ("church.png", "r3c3", "r2c3"),
    ("church.png", "r4c2", "r4c3"),
    ("penguins.png", "r2c3", "r2c4"),
    ("butterfly.jpg", "r1c2", "r1c0"),
    ("left12.jpg", "r2c2", "r2c1"),
]


@pytest.mark.parametrize(("photo", "a", "b"), REPEATING)
def test_distinct_tiles_of_a_repeating_pattern_are_not_copies(photo: str, a: str, b: str) -> None:
    """A shift by one period fits many keypoints, but the tile maps a tenth of its side outside
    the other (a crop lies within its original); a chessboard square fits its neighbour mirrored,
    but its plain features fit a shift too, so the mirror is not evidence."""
    tiles = _mvtb_tiles(photo)
    fa, fb = image_features(tiles[a]), image_features(tiles[b])
    assert not verify(fa, fb).copy, verify(fa, fb)
    assert not verify(fb, fa).copy, verify(fb, fa)


@pytest.mark.parametrize(("photo", "a", "b"), REPEATING)
def test_copies_of_repeating_pattern_tiles_are_still_confirmed(photo: str, a: str, b: str) -> None:
    """The same tiles' crops, rotations, overlays and mirrors are confirmed all the same."""
    tile = image_features(_mvtb_tiles(photo)[a])
    whole = _mvtb_tiles(photo)[a]
    img = _pil(whole)
    over = img.copy()
    draw = ImageDraw.Draw(over)
    draw.rectangle((0, 140, 159, 159), fill=255)  # a caption band
    draw.text((4, 144), "(c) SAMPLE CAPTION", fill=0)
    copies = {
        "crop 75%": whole[20:140, 10:130],
        "rotate 8": np.asarray(img.rotate(8, resample=Image.Resampling.BICUBIC))[14:146, 14:146],
        "overlay": np.asarray(over),
        "mirror": whole[:, ::-1].copy(),
        "turn 180": np.rot90(whole, 2).copy(),
    }
    missed = [k for k, c in copies.items() if not verify(tile, image_features(c)).copy]
    assert missed == []


def test_two_overlapping_tiles_sharing_a_strip_are_not_copies(photo: np.ndarray) -> None:
    """Tiles that share two thirds of their width (adjacent frames) match on that part only."""
    left, right = photo[:, :190], photo[:, 60:250]
    m = verify(image_features(left), image_features(right))
    assert not m.copy and m.inliers >= 20  # the strip itself matches well; it is not enough
    assert m.inside < 0.85


def test_flat_and_dark_images_confirm_nothing(photo: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    dark = (rng.random((128, 128)) * 6).astype(np.uint8)  # a dark rim: sensor noise only
    flat = np.full((128, 128), 200, np.uint8)
    for f in (image_features(dark), image_features(flat)):
        assert not f.plain.usable
        assert not verify(f, f).copy
    assert not verify(image_features(dark), image_features(dark.copy())).copy


def test_small_images_are_never_confirmed_by_geometry() -> None:
    """Distinct scanned digits stored at 32 px (the demo's): enlarged, their blocks' corners match
    between any two digits, so a small image confirms nothing by geometry."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:40]
    small = [
        np.asarray(_pil((d * 255 / 16).astype(np.uint8)).resize((32, 32), Image.Resampling.NEAREST))
        for d in digits
    ]
    feats = [image_features(s) for s in small]
    assert not any(f.plain.usable or f.mirrored.usable for f in feats)
    wrong = [(i, j) for i in range(40) for j in range(i + 1, 40) if verify(feats[i], feats[j]).copy]
    assert wrong == []


def test_features_round_trip_through_arrays(photo: np.ndarray) -> None:
    f = image_features(photo)
    back = ImageFeatures.from_arrays(f.to_arrays())
    assert verify(f, back).copy and len(back.plain.points) == len(f.plain.points)


def test_a_run_confirms_a_crop_and_a_turn_by_geometry_and_reuses_the_features(tmp_path):
    """Through the run core (pixel embedder; the embedding accepts only identical vectors, so
    only geometry can confirm): a 70% crop and a quarter-turned copy of real tiles are dropped
    with a geometry reason, distinct tiles are kept, the verified pairs are in the summary, and
    a rerun reads the cached features instead of computing them."""
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.core import run_core
    from leanset.pipelines.embed.features import FINGERPRINT
    from tests.helpers import pixel_flow, write_png

    tiles = photo_tiles(40, min_std=30)  # no flat sky tiles: those are near copies of each other
    for i, t in enumerate(tiles):
        write_png(tmp_path / f"images/train/{'ab'[i % 2]}/t{i:02d}.png", t)
    write_png(tmp_path / "images/train/a/zcrop.png", tiles[0][20:110, 10:100])
    write_png(tmp_path / "images/train/b/zturn.png", np.rot90(tiles[5]).copy())
    dedup = {"threshold": 0.9999, "confirm": ["embedding", "geometry"], "guard_min_rows": 1000}
    config = pixel_flow(tmp_path, "geo", dedup=dedup)
    result = run_core(load_flow(config, "geo"))
    assert result.decisions is not None
    dropped = result.decisions.filter(~result.decisions["kept"])
    assert sorted(dropped["source"].to_list()) == ["train/a/zcrop.png", "train/b/zturn.png"]
    assert all("geometry: " in e for e in dropped["dup_evidence"].to_list())
    verified = result.summary.search["verified"]
    assert verified["confirmed"] >= 2 and verified["pairs"] >= verified["confirmed"]
    from leanset.pipelines.cli.console import detail_lines

    line = next(x for x in detail_lines(result.summary) if x.startswith("geometric check:"))
    assert f"{verified['confirmed']} confirmed as copies" in line and "of the run" in line
    page = Path(str(result.summary.report)).read_text()  # both pairs side by side, outlined
    section = page.split("Copies confirmed by geometry (2)")[1]
    assert (
        section.count("<div class='group geometry'><div class='card kept'><img alt='' src='data:")
        == 2
    )
    assert "train/a/zcrop.png</span><br><span class=reason>geometry: " in section
    from leanset.pipelines.embed.features import FeatureStore

    assert result.data is not None
    cached = FeatureStore(result.data, next((tmp_path / "store").rglob(FINGERPRINT)).parent)
    cached(np.arange(result.data.table.height))
    assert cached.computed == 0  # every image's features were cached (the words read them all)


def _orb_of(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A full ORB search (detect and compute) of an image at the check's settings."""
    import cv2

    from leanset.dedup import geometry

    orb = cv2.ORB_create(  # type: ignore[attr-defined]
        nfeatures=geometry.MAX_FEATURES, edgeThreshold=15, patchSize=15, fastThreshold=10
    )
    kps, desc = orb.detectAndCompute(grey, None)
    return np.array([k.pt for k in kps], np.float32), desc


def test_the_mirrored_features_are_those_a_search_of_the_mirrored_image_finds() -> None:
    """The mirror's keypoints are the plain ones mirrored, only their descriptors computed again:
    nearly all of them are a keypoint with the very descriptor that a full search of the mirrored
    image finds at that spot (the rest are ties in which corners ORB keeps)."""
    from leanset.dedup.geometry import _stretch, working_grey

    found = same = 0
    for tile in photo_tiles(6, side=256):
        grey = _stretch(working_grey(tile))
        mirrored = image_features(tile).mirrored
        points, desc = _orb_of(np.ascontiguousarray(grey[:, ::-1]))
        for p, d in zip(mirrored.points, mirrored.descriptors, strict=True):
            at = np.argmin(((points - p) ** 2).sum(axis=1))
            found += 1
            same += bool(((points[at] - p) ** 2).sum() < 0.25 and np.array_equal(desc[at], d))
    assert found > 1000
    assert same >= 0.95 * found


@pytest.mark.parametrize("edit", ["mirror", "mirror+turn", "mirror+crop"])
def test_mirrored_copies_are_confirmed_as_mirrored_either_way(photo: np.ndarray, edit: str) -> None:
    """A flipped copy is confirmed as mirrored whichever image is the pair's first."""
    copy = {
        "mirror": photo[:, ::-1],
        "mirror+turn": np.rot90(photo[:, ::-1]),
        "mirror+crop": photo[30:220, 20:230][:, ::-1],
    }[edit]
    a, b = image_features(photo), image_features(np.ascontiguousarray(copy))
    for m in (verify(a, b), verify(b, a)):
        assert m.copy and m.mirrored, m


def test_the_stretch_percentiles_are_numpys() -> None:
    """The contrast stretch reads its percentiles off a histogram; they equal np.percentile's."""
    from leanset.dedup.geometry import _percentiles

    rng = np.random.default_rng(0)
    for n in range(200):
        grey = rng.integers(0, 256, size=(1 + n % 37, 1 + n * 7 % 301), dtype=np.uint8)
        grey //= np.uint8(1 + n % 50)
        assert _percentiles(grey, (1, 99)) == list(np.percentile(grey, [1, 99]))


def test_hamming_knn_finds_the_nearest_descriptors() -> None:
    """The matcher's nearest neighbours are the brute-force Hamming nearest, ties to the lower."""
    from leanset.dedup.geometry import hamming_knn

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(300, 32), dtype=np.uint8)
    query = np.concatenate([base[:50], rng.integers(0, 256, size=(150, 32), dtype=np.uint8)])
    dist, idx = hamming_knn(query, base, 2)
    full = np.unpackbits(query[:, None, :] ^ base[None, :, :], axis=2).sum(axis=2)
    order = np.argsort(full, axis=1, kind="stable")[:, :2]
    assert np.array_equal(dist, np.take_along_axis(full, order, axis=1))
    assert np.array_equal(idx[:, 0], order[:, 0])
    assert np.array_equal(idx[:50, 0], np.arange(50))


def test_a_reencoded_copy_short_of_ratio_test_inliers_is_confirmed_by_guided_matches() -> None:
    """A chessboard tile squeezed to 90% of its width and saved at JPEG quality 39 (a copy the
    trust benchmark plants): the ratio test keeps 18 inliers (the second nearest descriptor of a
    square's corner is as close as the nearest), short of MIN_INLIERS; the keypoints that agree
    where the fit puts them are 40 and more."""
    import io

    from bench.trust.transforms import encode_jpeg

    tile = _mvtb_tiles("left11.jpg")["r0c3"]
    squeezed = Image.fromarray(tile).resize((144, 160), Image.Resampling.BICUBIC)
    copy = np.asarray(Image.open(io.BytesIO(encode_jpeg(squeezed, 39))).convert("L"))
    m = verify(image_features(tile), image_features(copy))
    assert m.copy, m
    assert m.inliers >= 40 and 0.85 < m.scale < 1.0


# Crops of chessboard calibration tiles (the trust benchmark's `diverse` set cuts them the same
# way) that the check missed in one direction or both: the ratio test drops most true matches of
# a repetitive pattern (a square's corner has a twin one square away), so the fit fell short of
# the inlier share, or was found only when the crop's keypoints were the ones searched for.
CHESSBOARD_CROPS = [
    ("left11.jpg", "r1c2", (24, 14, 100, 142)),
    ("left11.jpg", "r1c2", (4, 0, 109, 145)),
    ("left12.jpg", "r1c2", (8, 0, 148, 141)),
    ("left13.jpg", "r1c2", (6, 9, 142, 122)),
]


@pytest.mark.parametrize(("photo", "pos", "box"), CHESSBOARD_CROPS)
def test_crops_of_a_repeating_pattern_are_confirmed_whichever_image_comes_first(
    photo: str, pos: str, box: tuple[int, int, int, int]
) -> None:
    tile = _mvtb_tiles(photo)[pos]
    x, y, w, h = box
    ft, fc = image_features(tile), image_features(tile[y : y + h, x : x + w])
    forward, back = verify(ft, fc), verify(fc, ft)
    assert forward.copy, forward
    assert back.copy, back
    assert abs(forward.scale * back.scale - 1) < 0.05  # the same map, read both ways
    assert abs(forward.rotation + back.rotation) < 2


def test_a_stretched_reencoded_chessboard_tile_is_confirmed_both_ways() -> None:
    """The trust benchmark's `aspect+jpeg` copy of calibration frame left12's tile r1c2 (height
    squeezed to 94%, JPEG quality 37): 19-32 ratio-test inliers of 131-137 matches (a share of
    0.15-0.23), while 0.9 of the keypoints agree where the fit puts them."""
    import io

    from bench.trust.transforms import encode_jpeg

    tile = _mvtb_tiles("left12.jpg")["r1c2"]
    squeezed = Image.fromarray(tile).resize((160, 151), Image.Resampling.BICUBIC)
    copy = image_features(
        np.asarray(Image.open(io.BytesIO(encode_jpeg(squeezed, 37))).convert("L"))
    )
    for m in (verify(image_features(tile), copy), verify(copy, image_features(tile))):
        assert m.copy, m
        assert m.inliers >= 100


def test_distinct_tiles_of_one_chessboard_frame_are_never_copies() -> None:
    """Every pair of a calibration frame's tiles: the same squares at another place of the board
    agree only in part where a fit puts them (the share asked for by `AGREEMENT`)."""
    feats = {pos: image_features(t) for pos, t in _mvtb_tiles("left12.jpg").items()}
    names = sorted(feats)
    wrong = [
        (p, q)
        for k, p in enumerate(names)
        for q in names[k + 1 :]
        if verify(feats[p], feats[q]).copy or verify(feats[q], feats[p]).copy
    ]
    assert wrong == []
