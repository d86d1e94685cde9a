"""The second signals and the routes that confirm near duplicates, on tiny known answers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from leanset.dedup import calibrate
from leanset.dedup.config import DedupSettings
from leanset.dedup.geometry import ImageFeatures, image_features
from leanset.dedup.imagesig import SIDE, ImageSignal, pair_evidence
from leanset.dedup.lexical import pair_overlap, shingle_matrix
from leanset.dedup.near import sample_neighbours
from leanset.dedup.stage import Signals, find_duplicates
from tests.helpers import photo_tiles


def unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def thumbs(n: int, seed: int = 0) -> np.ndarray:
    """Random images with some structure (8 x 8 blocks), flattened SIDE x SIDE thumbnails."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, 8, 8))
    big = np.kron(low, np.ones((SIDE // 8, SIDE // 8)))
    return unit(big.reshape(n, -1) + 0.05 * rng.normal(size=(n, SIDE * SIDE)))


def test_a_mirrored_and_a_noisy_copy_match_a_distinct_image_does_not():
    t = thumbs(3)
    mirrored = t[0].reshape(SIDE, SIDE)[:, ::-1].ravel()
    noisy = t[0] + 0.004 * np.random.default_rng(1).normal(size=t.shape[1])
    sig = ImageSignal.of(unit(np.stack([t[0], mirrored, noisy, t[1]])))
    ev = pair_evidence(sig, np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert ev.ncc[0] == pytest.approx(1.0, abs=1e-5) and ev.phash[0] == 0 and ev.dhash[0] == 0
    assert ev.ncc[1] > 0.95 and max(ev.phash[1], ev.dhash[1]) <= 10
    assert ev.ncc[2] < 0.8 and ev.phash[2] > 10


def test_flat_images_are_not_compared():
    flat = np.full((2, SIDE * SIDE), 1 / SIDE, dtype=np.float32)
    sig = ImageSignal.of(flat)
    assert not sig.valid.any()
    assert not pair_evidence(sig, np.array([0]), np.array([1])).comparable[0]


def test_pair_evidence_is_the_same_taken_a_block_of_pairs_at_a_time(monkeypatch):
    from leanset.dedup import imagesig

    sig = ImageSignal.of(thumbs(40, seed=3))
    rng = np.random.default_rng(4)
    i, j = rng.integers(0, 40, 101), rng.integers(0, 40, 101)
    whole = pair_evidence(sig, i, j)
    monkeypatch.setattr(imagesig, "PAIR_BLOCK", 7)  # 15 blocks, the last one short
    blocked = pair_evidence(sig, i, j)
    for name in ("ncc", "phash", "dhash", "comparable", "block_ncc"):
        np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name))
    assert len(pair_evidence(sig, i[:0], j[:0]).ncc) == 0


def test_shingle_overlap_sees_truncations_and_headers():
    base = "The quick brown fox jumps over the lazy dog near the river bank every morning."
    texts = [
        base,
        base[:60],
        "Page contents | Next topic\n" + base,
        "A completely different sentence about databases.",
    ]
    x = shingle_matrix(texts)
    jac, con = pair_overlap(x, np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert con[0] > 0.95 and con[1] > 0.95 and jac[1] > 0.5
    assert con[2] < 0.3 and jac[2] < 0.1


def test_null_quantile_threshold_sits_between_the_null_and_copies():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(400, 16)))
    nb = sample_neighbours(x, calibrate.K, calibrate.SAMPLE)
    cal = calibrate.null_quantile(nb, 400, 0.5, "embedding")
    null_top = cal.evidence["null_quantile"]
    assert null_top < cal.threshold < 1.0
    assert cal.threshold == pytest.approx(null_top + 0.5 * (1 - null_top), abs=1e-6)
    hist = cal.evidence["nn_histogram"]
    assert len(hist["edges"]) == len(hist["counts"]) + 1 == calibrate.HIST_BINS + 1
    assert sum(hist["counts"]) == 400 and "drops_by_threshold" in cal.evidence


def _table(n: int, splits: list[str] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "position": np.arange(n),
            "source": [f"{i}.png" for i in range(n)],
            "split": splits or ["train"] * n,
            "label": ["a"] * n,
            "content_hash": [f"{i:032x}" for i in range(n)],
            "size_bytes": np.zeros(n, dtype=np.int64),
            "error": [None] * n,
        },
        schema_overrides={"error": pl.Utf8},
    )


def test_pixels_confirm_a_copy_the_embedding_misses_and_evidence_says_so():
    """The copy's embedding says nothing (as a pooled feature can for a blurred texture); its
    thumbnail matches: the pixels route finds it, and nothing else."""
    n = 120
    t = thumbs(n)
    t[1] = unit((t[0] + 0.004 * np.random.default_rng(2).normal(size=t.shape[1]))[None])[0]
    emb = unit(np.random.default_rng(3).normal(size=(n, 64)))
    out = find_duplicates(_table(n), emb, DedupSettings(), signals=Signals(image=ImageSignal.of(t)))
    dropped = out.table.filter(pl.col("dedup_drop").is_not_null())
    assert dropped["sample_id"].to_list() == ["s001"]
    assert dropped["near_dup_of"].to_list() == ["s000"]
    assert "pixels" in dropped["dup_evidence"][0]
    assert out.calibration["pixels"]["threshold"] < dropped["dup_similarity"][0]
    assert out.calibration["threshold"] < 0.95  # random vectors: a low embedding null


def test_confirm_embedding_ignores_the_second_signal():
    n = 120
    t = thumbs(n)
    t[1] = t[0]
    emb = unit(np.random.default_rng(4).normal(size=(n, 64)))
    s = DedupSettings(confirm="embedding")
    out = find_duplicates(_table(n), emb, s, signals=Signals(image=ImageSignal.of(t)))
    assert out.table["dedup_drop"].null_count() == n


def test_text_copies_are_confirmed_by_shingles_paraphrase_like_neighbours_are_not():
    base = [
        f"Function number {i} computes the {w} of an array along an axis and returns it."
        for i, w in enumerate(["sum", "mean", "median", "variance", "maximum", "minimum"] * 5)
    ]
    texts = base + ["Page contents | Next topic\n" + base[0]]
    n = len(texts)
    emb = unit(np.random.default_rng(5).normal(size=(n, 64)))
    # the header moves its embedding away, towards s001 but not into an embedding match with it
    emb[-1] = unit((emb[0] + 0.5 * emb[1])[None])[0]
    out = find_duplicates(
        _table(n), emb, DedupSettings(), signals=Signals(text=shingle_matrix(texts))
    )
    d = out.table
    assert d.filter(pl.col("dedup_drop").is_not_null())["sample_id"].to_list() == [f"s{n - 1:03d}"]
    assert "shingles" in d["dup_evidence"][n - 1]


def test_neighbours_of_no_rows_are_none() -> None:
    # a dataset whose every sample is unreadable reaches calibration with no rows
    nb = sample_neighbours(np.zeros((0, 8), dtype=np.float32), 5, 100)
    assert nb.rows.size == 0 and nb.idx.shape == (0, 5) and nb.sim.shape == (0, 5)


def _alike_with_equal_hashes(n: int = 60) -> ImageSignal:
    """Look-alike thumbnails (one shared pattern, small differences) whose pHash and dHash are
    random except that images 0 and 1 hash the same: two distinct images that hashes join."""
    rng = np.random.default_rng(0)
    base = np.kron(rng.normal(size=(8, 8)), np.ones((4, 4)))
    own = np.kron(rng.normal(size=(n, 4, 4)), np.ones((8, 8)))
    own[1] = own[0]
    t = unit((base + 0.5 * own + 0.3 * rng.normal(size=(n, SIDE, SIDE))).reshape(n, -1))
    sig = ImageSignal.of(t)
    hashes = rng.integers(0, 2**63, size=(n, 2, 2), dtype=np.int64).astype(np.uint64)
    hashes[1] = hashes[0]
    return ImageSignal(sig.thumbs, sig.mirrored, hashes[:, 0], hashes[:, 1], sig.valid)


def test_agreeing_hashes_alone_never_drop_a_sample():
    """Two distinct look-alikes: correlated thumbnails below the pixel threshold, equal hashes,
    unrelated embeddings. The hashes alone once dropped one of them; now nothing is dropped."""
    n = 60
    sig = _alike_with_equal_hashes(n)
    ev = pair_evidence(sig, np.array([0]), np.array([1]))
    emb = unit(np.random.default_rng(1).normal(size=(n, 32)))
    out = find_duplicates(_table(n), emb, DedupSettings(), signals=Signals(image=sig))
    assert ev.phash[0] == ev.dhash[0] == 0 and ev.ncc[0] > 0.8
    assert out.calibration["hashes"]["threshold"] >= 2  # the hashes would have accepted it
    assert ev.ncc[0] < out.calibration["pixels"]["threshold"]
    assert out.table["dedup_drop"].null_count() == n


def test_agreeing_hashes_send_a_pair_to_the_geometric_check_which_decides():
    """The same pair with local features: the check is run on it, finds no common geometry
    between two distinct photos, and drops nothing; a crop's features would confirm it."""
    n = 60
    sig = _alike_with_equal_hashes(n)
    emb = unit(np.random.default_rng(1).normal(size=(n, 32)))
    photos = photo_tiles(n)
    seen: list[int] = []

    def source(rows: np.ndarray) -> list[ImageFeatures | None]:
        seen.extend(rows.tolist())
        return [image_features(photos[r]) for r in rows]

    out = find_duplicates(
        _table(n), emb, DedupSettings(), signals=Signals(image=sig, features=source)
    )
    assert {0, 1} <= set(seen)
    assert out.table["dedup_drop"].null_count() == n
    assert out.search["verified"]["pairs"] >= 1 and out.search["verified"]["confirmed"] == 0
    photos[1] = photos[0][10:100, 20:120]  # now image 1 is a crop of image 0
    out = find_duplicates(
        _table(n), emb, DedupSettings(), signals=Signals(image=sig, features=source)
    )
    dropped = out.table.filter(pl.col("dedup_drop").is_not_null())
    assert dropped["sample_id"].to_list() == ["s001"]
    assert dropped["dup_evidence"][0].startswith("hashes+geometry: ")


def test_distinct_textiles_sharing_a_burned_in_caption_are_not_pixel_copies():
    """Real look-alike textiles (conformal-clip-data): two distinct ones that carry the same
    caption band and logo correlate as wholes above the calibrated pixel threshold, through those
    blocks only, so the pixels route refuses them; a blurred copy and a copy with a caption still
    agree block by block and are found."""
    import io

    from PIL import Image, ImageFilter

    from bench.trust import sources, transforms
    from leanset.pipelines.embed.adapters import ThumbnailEmbedder

    embedder = ThumbnailEmbedder()

    def prepared(im: Image.Image) -> np.ndarray:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return embedder.prepare(buf.getvalue())

    images = [Image.open(s.path).convert("RGB") for s in sources.textile_sources()[::16][:120]]
    plain = embedder.encode([prepared(im) for im in images])
    close = plain @ plain.T - 2 * np.eye(len(plain))
    a, b = (int(v) for v in np.unravel_index(np.argmax(close), close.shape))  # most alike pair
    c, d = [k for k in range(len(images)) if k not in (a, b)][:2]
    images[a] = transforms.overlay(images[a], np.random.default_rng(7))[0]
    images[b] = transforms.overlay(images[b], np.random.default_rng(7))[0]  # the same caption
    images.append(images[c].filter(ImageFilter.GaussianBlur(1.5)))  # row 120: a blurred copy
    images.append(transforms.overlay(images[d], np.random.default_rng(8))[0])  # 121: captioned
    sig = ImageSignal.of(embedder.encode([prepared(im) for im in images]))
    n = len(images)
    emb = unit(np.random.default_rng(3).normal(size=(n, 64)))  # only the pixels can decide
    settings = DedupSettings(confirm=("embedding", "pixels"))
    out = find_duplicates(_table(n), emb, settings, signals=Signals(image=sig))
    shared = pair_evidence(sig, np.array([a]), np.array([b]))
    assert shared.ncc[0] >= out.calibration["pixels"]["threshold"]  # the whole agrees ...
    assert shared.block_ncc[0] < 0.5  # ... its textured blocks do not
    dropped = out.table.filter(pl.col("dedup_drop").is_not_null())
    assert sorted(dropped["sample_id"].to_list()) == ["s120", "s121"]
    assert sorted(dropped["near_dup_of"].to_list()) == [f"s{c:03d}", f"s{d:03d}"]
