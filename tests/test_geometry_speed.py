"""The geometric check's cost: the same decisions on both cores, fewer matches, a faster search."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from leanset.dedup import geometry
from leanset.dedup.geometry import image_features, verify, verify_pairs
from tests.helpers import photo_tiles


def _pairs_with_copies() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Real tiles, an edited copy of some of them, and every pair among the first few."""
    tiles = photo_tiles(16, min_std=30)
    copies = [
        tiles[0][10:110, 5:115],
        np.rot90(tiles[3]).copy(),
        tiles[6][:, ::-1].copy(),
        np.ascontiguousarray(tiles[9][::-1, :]),
    ]
    images = tiles + copies
    pairs = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images)) if i < 10]
    a, b = (np.array(x, np.int64) for x in zip(*pairs, strict=True))
    return images, a, b


def test_the_pool_runs_its_work_side_by_side_and_keeps_the_order() -> None:
    """Two tasks that each wait for the other can only finish on two threads at once."""
    meet = threading.Barrier(2, timeout=20)

    def task(x: int) -> tuple[int, str]:
        if x < 2:
            meet.wait()
        return x * x, threading.current_thread().name

    out = geometry.parallel_map(task, list(range(7)), 2)
    assert [v for v, _ in out] == [x * x for x in range(7)]
    assert all(name.startswith("leanset-geometry") for _, name in out)
    assert geometry.parallel_map(lambda x: x + 1, [1, 2], 1) == [2, 3]


def test_pairs_checked_on_threads_get_the_verdicts_and_reasons_of_one_by_one() -> None:
    images, a, b = _pairs_with_copies()
    feats = [image_features(t) for t in images]
    source = lambda rows: [feats[r] for r in rows]  # noqa: E731
    one = verify_pairs(a, b, source, threads=1)
    many = verify_pairs(a, b, source, threads=3)
    direct = [verify(feats[i], feats[j]) for i, j in zip(a, b, strict=True)]
    assert one.copy.tolist() == many.copy.tolist() == [m.copy for m in direct]
    assert one.reasons == many.reasons
    assert one.copy.sum() >= 3  # the crop, the turn and the mirror at least


def test_the_feature_store_computes_on_threads_what_it_computes_on_one(tmp_path: Path) -> None:
    from leanset.pipelines import steps
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.embed.features import FeatureStore
    from tests.helpers import pixel_flow, write_png

    for i, t in enumerate(photo_tiles(12, min_std=30)):
        write_png(tmp_path / f"images/train/t{i:02d}.png", t)
    data = steps.load_dataset(load_flow(pixel_flow(tmp_path, "f"), "f"))
    rows = np.arange(data.table.height)
    one = FeatureStore(data, tmp_path / "one", threads=1)(rows)
    many_store = FeatureStore(data, tmp_path / "many", threads=4)
    many = many_store(rows)
    assert many_store.threads == 4 and many_store.computed == len(rows)
    for x, y in zip(one, many, strict=True):
        assert x is not None and y is not None
        for part in ("plain", "mirrored"):
            assert np.array_equal(getattr(x, part).points, getattr(y, part).points)
            assert np.array_equal(getattr(x, part).descriptors, getattr(y, part).descriptors)


def test_a_mirrored_fit_is_tried_only_where_it_could_make_a_mirrored_copy(monkeypatch) -> None:
    """Distinct tiles whose mirrored descriptors match no better than their plain ones get no
    mirrored RANSAC fit (about half the fits of the check); a mirrored copy still gets one."""
    import cv2

    fits: list[int] = []
    real = cv2.estimateAffine2D

    def counted(*args, **kwargs):  # the real fit, counted
        fits.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(cv2, "estimateAffine2D", counted)
    monkeypatch.setattr(geometry, "REVERSE_FROM", 10**9)  # only the plain and mirrored fits
    tiles = photo_tiles(14, min_std=30)
    feats = [image_features(t) for t in tiles]
    pairs = [(i, j) for i in range(len(feats)) for j in range(i + 1, len(feats))]
    tried = 0
    for i, j in pairs:
        plain = geometry.match(feats[i].plain, feats[j].plain)
        tried += int(plain.matches >= geometry.MIN_INLIERS)  # fitted plain
        tried += int(
            geometry.match(feats[i].plain, feats[j].mirrored, guided=False).matches
            >= geometry.MIN_INLIERS
        )
    fits.clear()
    assert not any(verify(feats[i], feats[j]).copy for i, j in pairs)
    assert len(fits) < 0.8 * tried  # the old check fitted every pair with 20 matches both ways
    fits.clear()
    m = verify(feats[0], image_features(tiles[0][:, ::-1].copy()))
    assert m.copy and m.mirrored and len(fits) == 2


def test_the_word_search_on_threads_finds_the_pairs_it_finds_on_one(monkeypatch) -> None:
    from leanset.dedup import words

    images, _, _ = _pairs_with_copies()
    feats = [image_features(t) for t in images]
    monkeypatch.setattr(words, "BLOCK", 4)  # several blocks, scored side by side
    one = words.word_pairs(feats, 3, threads=1)
    many = words.word_pairs(feats, 3, threads=3)
    assert len(one.i) > 0
    for part in ("i", "j", "score"):
        assert np.array_equal(getattr(one, part), getattr(many, part))


def test_the_refits_stop_at_a_fixed_point_with_the_fit_three_refits_give(monkeypatch) -> None:
    """Once a refit keeps the matches it was fitted on, another would repeat it: it is skipped,
    and the fit and inliers are those of the three refits the check always ran."""
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 256, (150, 2)).astype(np.float32)
    true = np.array([[0.9, -0.12, 12.0], [0.12, 0.9, -7.0]])
    dst = np.hstack([src, np.ones((150, 1), np.float32)]) @ true.T
    dst[:100] += rng.normal(0, 1.0, (100, 2))  # RANSAC's inliers
    dst[100:120] += rng.choice([-1, 1], (20, 2)) * 3.5  # just outside its 4 px, within 6
    dst[120:] += rng.uniform(30, 60, (30, 2))  # wrong matches
    dst = dst.astype(np.float32)
    ransac = np.arange(150) < 100

    x = np.hstack([src.astype(np.float64), np.ones((150, 1))])
    ref_keep = ransac.copy()
    for _ in range(3):  # what the check computed before: three refits, always
        ref_fit = geometry._least_squares(x[ref_keep], dst[ref_keep].astype(np.float64)).T
        ref_keep = np.linalg.norm(x @ ref_fit.T - dst, axis=1) <= 1.5 * geometry.RANSAC_PIXELS

    solves: list[int] = []
    real = geometry._least_squares

    def counted(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # the real solve, counted
        solves.append(len(x))
        return real(x, y)

    monkeypatch.setattr(geometry, "_least_squares", counted)
    fit, keep = geometry._refine(src, dst, ransac)
    assert np.array_equal(fit, ref_fit) and np.array_equal(keep, ref_keep)
    assert keep[:120].all() and not keep[120:].any()
    assert solves == [100, 120]  # the second refit keeps its own 120 matches: no third


def test_small_split_words_compared_at_once_get_the_words_one_search_each_gives(
    monkeypatch,
) -> None:
    """Descending a level by one FAISS search per split word, or comparing the small words'
    centroids all at once, gives every descriptor the same word, ties to the lower centroid."""
    from leanset.dedup import words

    rng = np.random.default_rng(5)
    patterns = rng.integers(0, 256, (300, 32), dtype=np.uint8)  # repeats: many exact ties
    desc = patterns[rng.integers(0, 300, 20_000)]
    flip = rng.random(desc.shape) < 0.02
    desc = np.where(flip, desc ^ np.uint8(1), desc)
    monkeypatch.setattr(words, "TRAIN_DESCRIPTORS", 5_000)
    vocab, word = words.vocabulary(desc)
    start = vocab.cells(desc)
    assert len(vocab.split) > 20 and len({len(c) for c, _ in vocab.split.values()}) > 2
    monkeypatch.setattr(words, "SEARCH_WORK", 0)  # every split word: one search
    searched = vocab.descend(desc, start)
    monkeypatch.setattr(words, "SEARCH_WORK", 10**12)  # every split word: all at once
    monkeypatch.setattr(words, "EACH_CHUNK", 3_000)  # in several chunks
    together = vocab.descend(desc, start)
    assert np.array_equal(searched, together) and not np.array_equal(searched, start)
    x = desc[:500].view(np.uint64)
    bits = np.unpackbits(desc[:500], axis=1).sum(1)
    assert np.array_equal(words._popcount(x), bits)
    assert np.array_equal(words._popcount_table(x), bits)


def test_keypoints_within_the_radius_are_the_full_distance_matrix_s() -> None:
    """`_within` finds the pairs the full distance matrix finds, on and off the radius."""
    rng = np.random.default_rng(2)
    q = rng.uniform(0, 60, (400, 2)).astype(np.float32)
    p = rng.uniform(0, 60, (300, 2))
    p[:50] = q[:50] + np.array([geometry.RANSAC_PIXELS, 0.0])  # exactly on the radius
    p[50:60] = q[50:60]  # on a keypoint
    gap = ((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)
    want = set(zip(*np.nonzero(gap <= geometry.RANSAC_PIXELS**2), strict=True))
    i, j = geometry._within(p, q, geometry.RANSAC_PIXELS)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(int(a), int(b)) for a, b in want}
    assert len(i) == len(want) > 60


def test_the_mirror_s_keypoints_moved_in_place_give_the_descriptors_of_new_ones() -> None:
    """The mirrored features are those of new KeyPoints placed as ORB places them (as before)."""
    import cv2

    for tile in photo_tiles(6, min_std=30):
        grey = geometry._stretch(geometry.working_grey(tile))
        orb = cv2.ORB_create(nfeatures=400, edgeThreshold=15, patchSize=15, fastThreshold=10)  # type: ignore[attr-defined]
        kps, _ = orb.detectAndCompute(grey, None)
        assert len(kps) >= geometry.MAX_FEATURES // 2  # no second search at a lower threshold
        factor, width = orb.getScaleFactor(), grey.shape[1]
        moved = []
        for k in kps:
            scale = factor**k.octave
            x = (round(width / scale) - 1 - k.pt[0] / scale) * scale
            angle = (180.0 - k.angle) % 360.0
            moved.append(cv2.KeyPoint(x, k.pt[1], k.size, angle, k.response, k.octave, k.class_id))
        flipped = np.ascontiguousarray(grey[:, ::-1])
        _, want = orb.compute(flipped, moved)
        got = geometry.image_features(tile).mirrored
        assert np.array_equal(got.descriptors, want)
