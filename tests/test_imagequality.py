"""Unusable images: measures taken while embedding (cached with the vectors), calibrated flags."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupError, ImageQualitySettings
from leanset.dedup.imagequality import image_columns, judge_images, measure_grey
from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.embed import PixelEmbedder, embed_dataset
from leanset.pipelines.embed.measures import ImageMeasure
from leanset.pipelines.sources import load_source

PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "grass.png",
    "brick.png",
)


def _photos() -> list[np.ndarray]:
    """Real photos that ship with scikit-image, as RGB arrays, each cut into four crops."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in PHOTOS:
        img = np.asarray(Image.open(folder / name).convert("RGB"))
        h, w = img.shape[:2]
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            top, left = dy * h // 4, dx * w // 4
            out.append(img[top : top + 3 * h // 4, left : left + 3 * w // 4])
    return out


def _save(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _planted(root: Path) -> dict[str, str]:
    """32 fine crops and one planted image per issue; {file: the issue planted}."""
    from PIL import Image, ImageFilter

    photos = _photos()
    for k, rgb in enumerate(photos):
        _save(root / f"train/p/fine{k:02d}.png", rgb)
    img = Image.fromarray(photos[0])
    planted = {
        "dark": (np.asarray(img) * 0.08).astype(np.uint8),
        "overexposed": np.clip(np.asarray(img).astype(int) + 215, 0, 255).astype(np.uint8),
        "blurry": np.asarray(Image.fromarray(photos[5]).filter(ImageFilter.GaussianBlur(6))),
        "low_information": np.full((300, 300, 3), 128, np.uint8),
        "tiny": np.asarray(img.resize((9, 9))),
        "odd_aspect": np.asarray(Image.fromarray(photos[9]).resize((600, 60))),
    }
    for name, rgb in planted.items():
        _save(root / f"train/p/{name}.png", rgb)
    return {f"train/p/{name}.png": name for name in planted}


def test_each_planted_issue_is_found_in_words_and_no_fine_photo_is(tmp_path: Path):
    truth = _planted(tmp_path / "img")
    data = load_source(
        SourceSettings(type="imagefolder", path=str(tmp_path / "img")), ColumnSettings()
    )
    res = embed_dataset(
        data, PixelEmbedder(8), tmp_path / "cache", measure=ImageMeasure(), progress=False
    )
    flags = judge_images(res.measures, ImageQualitySettings())
    found = dict(zip(data.table["source"], flags.issues, strict=True))
    for source, issue in found.items():
        if source in truth:
            expected = {"low_information": "nearly uniform", "odd_aspect": "aspect"}
            assert issue and expected.get(truth[source], truth[source]) in issue, source
        else:
            assert issue is None, (source, issue)
    assert "90% of its pixels at or below" in found["train/p/dark.png"]
    assert "tiny: shorter side 9 px" in found["train/p/tiny.png"]


def test_a_dataset_that_is_all_small_and_dark_is_judged_against_itself():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):  # 8 x 8 dim images, all alike: small and dark is what this data is
        grey = rng.integers(0, 50, (8, 8)).astype(np.uint8)
        rows.append(measure_grey(grey, 8, 8))
    flags = judge_images(np.stack(rows), ImageQualitySettings())
    assert all(m[0] < 0.3 for m in rows)  # the fixed bound alone would call every one dark
    assert flags.found["tiny"] == 0 and flags.found["dark"] <= 2  # only its own darkest tail


def test_measures_are_cached_with_the_vectors_so_a_rerun_reads_no_image(tmp_path: Path):
    truth = _planted(tmp_path / "img")
    src = SourceSettings(type="imagefolder", path=str(tmp_path / "img"))
    data = load_source(src, ColumnSettings())
    first = embed_dataset(
        data, PixelEmbedder(8), tmp_path / "cache", measure=ImageMeasure(), progress=False
    )
    for path in (tmp_path / "img").rglob("*.png"):
        path.unlink()  # a second read of any image would now fail
    again = embed_dataset(
        data, PixelEmbedder(8), tmp_path / "cache", measure=ImageMeasure(), progress=False
    )
    assert again.computed == 0 and not again.errors
    np.testing.assert_array_equal(first.measures, again.measures)
    assert np.isfinite(again.measures).all() and len(truth) == 6


def test_vectors_cached_before_measures_existed_are_measured_once(tmp_path: Path):
    _planted(tmp_path / "img")
    data = load_source(
        SourceSettings(type="imagefolder", path=str(tmp_path / "img")), ColumnSettings()
    )
    embed_dataset(data, PixelEmbedder(8), tmp_path / "cache", progress=False)  # no measures
    res = embed_dataset(
        data, PixelEmbedder(8), tmp_path / "cache", measure=ImageMeasure(), progress=False
    )
    assert res.computed == 0 and np.isfinite(res.measures).all()
    assert len(list((tmp_path / "cache" / ImageMeasure.fingerprint).glob("shard-*.npz"))) == 1


def test_policies_add_words_drop_training_rows_and_never_eval_rows():
    rng = np.random.default_rng(1)
    grey = [rng.integers(0, 256, (64, 64)).astype(np.uint8) for _ in range(30)]
    grey[3] = (grey[3] * 0.05).astype(np.uint8)
    grey[4] = (grey[4] * 0.05).astype(np.uint8)
    measures = np.stack([measure_grey(g, 64, 64) for g in grey])
    measures[5] = np.nan  # unreadable: not measured, not flagged
    split = ["train"] * 30
    split[4] = "test"
    table = pl.DataFrame({"split": split})
    settings = ImageQualitySettings(policy="drop")
    flags = judge_images(measures, settings)
    out = image_columns(table, measures, flags, settings, ["test"])
    assert out.filter(pl.col("image_issue").is_not_null()).height == 2
    assert out["image_drop"].to_list().count("unusable_image") == 1
    assert out["image_drop"][3] == "unusable_image" and out["img_width"][0] == 64
    assert out["img_sharpness"][5] is None


def test_bad_image_quality_settings_name_the_key():
    with pytest.raises(DedupError, match="image_quality.z"):
        ImageQualitySettings(z=0)
    with pytest.raises(DedupError, match="max_aspect"):
        ImageQualitySettings(max_aspect=0.5)
