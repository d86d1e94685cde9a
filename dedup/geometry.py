"""Geometric confirmation of image copies: local features that agree under one transform.

A crop, a rotated or flipped scan, a resized or re-encoded photo or one with a caption burned in
keeps most of its local structure where it keeps its pixels. Each image is reduced to ORB
keypoints and binary descriptors (OpenCV) on a grey copy whose longer side is `SIDE` pixels, once
plain and once mirrored (ORB is rotation- but not mirror-invariant, so the mirror covers flips;
rotations by any angle, 90-degree turns included, are covered by ORB itself). A pair is checked
by nearest-neighbour matching with Lowe's ratio test, then a RANSAC fit of a 2-D affine map.

A pair is a copy when the fit has at least `MIN_INLIERS` inliers, they are a large enough share
of the matches, and the smaller image lies within the larger one under the fit (`inside`, the
share of its area that maps into the other image's frame) with its inliers spread over it
(`spread`, the share of its textured grid cells that hold an inlier). Two overlapping tiles or
adjacent video frames match on a shared strip only: the smaller one maps half outside the other,
so they are not confirmed. A crop lies within its original, so no corner of the smaller image
may map further outside the other than the fit's error (`MAX_OVERHANG`): two distinct tiles of
one repeating pattern (roof tiles, rows of windows, a crowd) fit a shift by one period, which
leaves a tenth of the tile outside. A mirrored fit counts only when the plain features do not
fit nearly as well: mirror-symmetric or periodic content (a chessboard) fits both ways. A plain
fit of a copy's shape that falls short only on evidence (inliers, their spread) is given guided
matches (`GUIDED_FROM`): re-encoded or blurred small images lose most ratio-test matches, not
their keypoints; so is a fit that falls short on the inliers' share where the keypoints agree
densely under it (`AGREEMENT`: repetitive content, where the ratio test drops true matches), and a
refused pair is matched the other way too (the ratio test is not symmetric). Flat, dark or
near-uniform images have too few keypoints to confirm anything: a pair with one is never
confirmed here.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

SIDE = 256  # features are computed on a grey copy whose longer side is this many pixels
MAX_FEATURES = 400
MIN_KEYPOINTS = 25  # an image with fewer keypoints is too uniform to confirm anything
MIN_RANGE = 12  # grey levels between the 1st and 99th percentile: less is a flat image
MIN_SIDE = 64  # pixels of the image's shorter side as stored: a smaller image, enlarged to
# SIDE, is blocks whose corners look alike in every image (ORB's patch covers the whole of it)
FAST_THRESHOLDS = (10, 4)  # ORB's corner threshold, lowered once for smooth images
RATIO = 0.8  # Lowe's ratio test on the two nearest descriptors
MIN_INLIERS = 20  # inliers of the RANSAC fit
MIN_INLIER_SHARE = 0.25  # ... as a share of the ratio-test matches
MIN_INSIDE = 0.85  # share of the smaller image that maps inside the larger one
MAX_OVERHANG = 0.05  # ... and no corner of it maps further outside than this share of a side:
# a crop lies within its original up to the fit's error (at most 0.02 on the trust sets), while
# two tiles of one repeating pattern (roof tiles, windows, a crowd) fit a shift by one period
# (0.09-0.13 on them); see `_overhang`
MIRROR_MARGIN = 3.0  # a mirrored fit needs this many times the inliers of the best plain fit
MIN_SPREAD = 0.3  # share of the smaller image's textured grid cells that hold an inlier
MIN_SCALE = 0.2  # the fit scales either side by 0.2-5 (a crop keeps at least a fifth of a side)
MAX_ANISOTROPY = 2.0  # the fit's two scales differ by at most this factor (aspect changes)
RANSAC_PIXELS = 4.0  # reprojection tolerance, at SIDE pixels
RANSAC_ITERS = 500  # enough for 99% confidence at the least inlier share accepted (0.25: 293)
GUIDED_FROM = 12  # a fit of the right shape with this many inliers, short of the evidence asked
# for, is given guided matches: every keypoint whose descriptor is close (GUIDED_BITS) to that of
# a keypoint within RANSAC_PIXELS of where the fit puts it. On re-encoded, blurred or rotated
# small images the ratio test drops most true matches (the second nearest is as close), so a true
# copy's fit holds 12-19 inliers where its keypoints agree at 35-60 places
GUIDED_BITS = 50  # of ORB's 256 bits: true matches differ in 10-45, unrelated keypoints in ~100
AGREEMENT = 0.5  # a fit whose inliers are too small a share of the ratio-test matches is still
# given guided matches where at least this share of the keypoints it maps inside the other image
# land on a keypoint there with a descriptor within AGREEMENT_BITS: repetitive content (a
# chessboard, tiles) leaves few ratio-test matches of a true copy (the second nearest descriptor is
# as close), while its keypoints agree densely (the chessboard copies refused before: 0.63-0.9;
# the 4 false pairs the check confirms on the trust sets: 0.04-0.27); guided matches must then
# still pass every rule of `_judge`
AGREEMENT_BITS = 25
REVERSE_FROM = 100  # a refused pair with this many ratio-test matches is matched the other way
# too (accepted only with AGREEMENT): rich or repetitive content, where the direction matters. The
# copies the reverse confirmed on the trust sets had 107-162 matches; from 40 it ran on ~half of
# a 10k-tile run's pairs (on 4,000 of them matching took 1.46x the CPU of no reverse for 4 more
# copies of 540), from 100 on a third as many (1.13x, 2 more)


@dataclass(frozen=True)
class Features:
    """One image's keypoints (x, y at the working size), descriptors, and working size."""

    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray  # (n, 32) uint8
    width: int
    height: int

    @property
    def usable(self) -> bool:
        """Enough keypoints to confirm a pair."""
        return len(self.points) >= MIN_KEYPOINTS


@dataclass(frozen=True)
class ImageFeatures:
    """An image's features plain and mirrored left to right."""

    plain: Features
    mirrored: Features

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for a cache file."""
        out: dict[str, np.ndarray] = {}
        for name, f in (("p", self.plain), ("m", self.mirrored)):
            out[f"{name}_points"] = f.points
            out[f"{name}_desc"] = f.descriptors
            out[f"{name}_size"] = np.array([f.width, f.height], dtype=np.int32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ImageFeatures:
        """Back from `to_arrays`."""

        def one(name: str) -> Features:
            w, h = (int(v) for v in arrays[f"{name}_size"])
            return Features(arrays[f"{name}_points"], arrays[f"{name}_desc"], w, h)

        return cls(one("p"), one("m"))


@dataclass(frozen=True)
class Match:
    """The outcome of a pair check, with what a person can check it by."""

    copy: bool
    inliers: int = 0
    matches: int = 0
    inside: float = 0.0
    spread: float = 0.0
    rotation: float = 0.0  # degrees
    scale: float = 1.0  # side of the second image per side of the first (working sizes)
    mirrored: bool = False
    fit: tuple[float, ...] = ()  # the affine map (2 x 3, row-major) from a's to b's working pixels

    def reason(self) -> str:
        """One line: the evidence, for the decisions table."""
        flip = ", mirrored" if self.mirrored else ""
        return (
            f"geometry: {self.inliers} inliers across {self.spread:.0%} of the smaller image, "
            f"{self.inside:.0%} of it inside the other, rotation {self.rotation:.0f}°, "
            f"scale {self.scale:.2f}{flip}"
        )


def working_grey(grey: np.ndarray) -> np.ndarray:
    """A uint8 grey image resized so that its longer side is SIDE pixels."""
    import cv2

    h, w = grey.shape[:2]
    f = SIDE / max(h, w)
    size = (max(8, round(w * f)), max(8, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(
        cv2.resize(np.asarray(grey, dtype=np.uint8), size, interpolation=interp)
    )


def _orb(grey: np.ndarray) -> tuple[Features, Features]:
    """ORB keypoints and descriptors, plain and of the mirrored image; a smooth image (blurred,
    small) is searched again with a lower corner threshold so that it gets enough keypoints to
    be matched. The mirror's keypoints are the plain ones mirrored (detection is mirror-symmetric;
    only the descriptors, which are not, are computed again), half the cost of a second search."""
    import cv2

    for fast in FAST_THRESHOLDS:
        orb = cv2.ORB_create(  # type: ignore[attr-defined]  # cv2's stubs lack it
            nfeatures=MAX_FEATURES, edgeThreshold=15, patchSize=15, fastThreshold=fast
        )
        kps, desc = orb.detectAndCompute(grey, None)
        if kps is not None and len(kps) >= MAX_FEATURES // 2:
            break
    if desc is None or not kps:
        return _features(grey, (), None), _features(grey, (), None)
    plain = _features(grey, kps, desc)
    flipped = np.ascontiguousarray(grey[:, ::-1])
    mkps, mdesc = orb.compute(flipped, _mirror_keypoints(kps, plain.points, grey.shape[1], orb))
    return plain, _features(grey, mkps, mdesc)


def _features(grey: np.ndarray, kps: Any, desc: np.ndarray | None) -> Features:
    import cv2

    h, w = grey.shape
    if desc is None or not kps:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), w, h)
    pts = np.asarray(cv2.KeyPoint_convert(kps), dtype=np.float32)  # type: ignore[attr-defined]
    pts = pts.reshape(-1, 2)
    return Features(pts, np.asarray(desc, dtype=np.uint8), w, h)


def _mirror_keypoints(kps: Any, points: np.ndarray, width: int, orb: Any) -> Any:
    """The keypoints (`points`: their positions) mirrored left to right, in place, as ORB places
    them in the mirrored image: x mirrored within the keypoint's pyramid level (whose width ORB
    rounds), the orientation reflected. In place and with the arithmetic on arrays: a new
    KeyPoint per keypoint was a fifth of the features' CPU."""
    factor = orb.getScaleFactor()
    read = np.array([(k.octave, k.angle) for k in kps], dtype=np.float64).reshape(-1, 2)
    octave = read[:, 0].astype(np.int64)
    levels = np.unique(octave)
    scales = [factor**o for o in levels.tolist()]  # per octave: its scale and rounded width
    at = np.searchsorted(levels, octave)
    scale = np.array(scales, dtype=np.float64)[at]
    last = np.array([round(width / s) - 1 for s in scales], dtype=np.float64)[at]
    x = (last - points[:, 0].astype(np.float64) / scale) * scale
    angle = (180.0 - read[:, 1]) % 360.0
    for k, kx, ky, ka in zip(kps, x.tolist(), points[:, 1].tolist(), angle.tolist(), strict=True):
        k.pt = (kx, ky)
        k.angle = ka
    return kps


def _stretch(grey: np.ndarray) -> np.ndarray:
    """Contrast stretched between the 1st and 99th percentile (dim photos get keypoints too; a
    flat one stays flat: its spread is below `MIN_RANGE` grey levels)."""
    lo, hi = _percentiles(grey, (1, 99))
    if hi - lo < MIN_RANGE:
        return grey
    levels = (np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    table = np.clip(levels, 0, 255).astype(np.uint8)  # per grey level: one lookup per pixel
    import cv2

    stretched: np.ndarray = cv2.LUT(grey, table)  # table[grey], a tenth of the CPU
    return stretched


def _percentiles(grey: np.ndarray, qs: tuple[float, ...]) -> list[np.float64]:
    """`np.percentile` (linear) of a uint8 image, read off its histogram instead of a sort: the
    two order statistics either side of each quantile's position, interpolated as numpy does."""
    at = np.cumsum(_histogram(grey)).tolist()
    n = at[-1]
    out = []
    for q in qs:
        pos = (n - 1) * (q / 100)
        below = math.floor(pos)
        a = float(bisect.bisect_right(at, below))  # the grey level of order statistic `below`
        b = float(bisect.bisect_right(at, min(below + 1, n - 1)))
        t = pos - below
        out.append(np.float64(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t))
    return out


def _histogram(grey: np.ndarray) -> np.ndarray:
    """Pixels per grey level of a uint8 image: OpenCV's (float32 counts, exact below 2**24
    pixels; an eighth of `np.bincount`'s CPU), else numpy's."""
    if grey.size >= 2**24:
        return np.bincount(grey.ravel(), minlength=256)
    import cv2

    counts = cv2.calcHist([np.ascontiguousarray(grey)], [0], None, [256], [0, 256])
    return counts.ravel().astype(np.int64)


def image_features(grey: np.ndarray) -> ImageFeatures:
    """ORB features of a grey image (any size, uint8), plain and mirrored; none for an image
    smaller than `MIN_SIDE` (such an image confirms nothing by geometry)."""
    if min(grey.shape[:2]) < MIN_SIDE:
        none = Features(
            np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), *grey.shape[1::-1]
        )
        return ImageFeatures(none, none)
    return ImageFeatures(*_orb(_stretch(working_grey(grey))))


def verify(a: ImageFeatures, b: ImageFeatures) -> Match:
    """Whether b is a geometric copy of a (a crop, turn, flip, resize ... of it or the reverse)."""
    plain = match(a.plain, b.plain)
    if not plain.copy and plain.matches >= REVERSE_FROM:
        back = _reverse(a.plain, b.plain)
        if back.copy:
            return back
    if plain.copy or not a.plain.usable or not b.plain.usable:
        return plain
    flipped = match(  # symmetric content fits mirrored; fewer mirrored matches than the plain
        # ones, or than MIRROR_MARGIN times its inliers, cannot make a mirrored copy: no fit
        a.plain,
        b.mirrored,
        guided=False,
        at_least=max(plain.matches, math.ceil(MIRROR_MARGIN * plain.inliers)),
    )
    if flipped.copy and flipped.inliers < MIRROR_MARGIN * plain.inliers:
        # the plain features fit too: mirror-symmetric or periodic content (a chessboard), where
        # a mirrored fit is not evidence of a mirrored copy
        return Match(**{**flipped.__dict__, "copy": False})
    if flipped.copy:
        f = np.array(flipped.fit).reshape(2, 3)
        f[0] = np.array([0.0, 0.0, b.mirrored.width]) - f[0]  # onto b's unmirrored pixels
        return Match(**{**flipped.__dict__, "mirrored": True, "fit": tuple(f.ravel().tolist())})
    return plain if plain.inliers >= flipped.inliers else flipped


def match(a: Features, b: Features, guided: bool = True, at_least: int = 0) -> Match:
    """Ratio-test matches of a's descriptors in b's, an affine RANSAC fit, and its judgement
    (with guided matches, where the fit has the shape of a copy but too few inliers); no fit is
    tried with fewer than `at_least` matches (nor fewer than `MIN_INLIERS`)."""
    import cv2

    if not (a.usable and b.usable):
        return Match(False)
    dist, nearest = hamming_knn(a.descriptors, b.descriptors, 2)
    good = np.flatnonzero(dist[:, 0] < RATIO * dist[:, 1])
    if len(good) < max(MIN_INLIERS, at_least):
        return Match(False, matches=len(good))
    src, dst = a.points[good], b.points[nearest[good, 0]]
    fit, mask = cv2.estimateAffine2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS, maxIters=RANSAC_ITERS
    )
    if fit is None:
        return Match(False, matches=len(good))
    fit, keep = _refine(src, dst, mask.ravel().astype(bool))
    judged = _judge(a, b, fit, src[keep], dst[keep], len(good))
    if judged.copy or not guided or not _guidable(judged, a, b, fit):
        return judged
    return _guided(a, b, fit, judged)


def hamming_knn(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each binary descriptor's k Hamming-nearest in `base` (distances, indices), on one thread:
    it is called per pair or per chunk, where FAISS's threads cost more than they share (and
    spin on a loaded machine); calls run side by side in `workers` threads instead."""
    # FAISS is imported where it runs, not with this module: `leanset verify` reads feature
    # shards through it under a memory limit, where loading FAISS fails
    import faiss

    from leanset.dedup.near import faiss_threads

    with faiss_threads(1):
        return faiss.knn_hamming(
            np.ascontiguousarray(query, np.uint8), np.ascontiguousarray(base, np.uint8), k
        )


def workers(asked: int | None = None) -> int:
    """Threads for the check's per-image and per-pair work: `asked`, else this process's cores
    (OpenCV and FAISS release the GIL, so the threads run on separate cores)."""
    if asked is not None:
        return max(1, asked)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], n: int) -> list[Any]:
    """`[fn(x) for x in items]`, in input order, on `n` threads (inline for one)."""
    if n <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    from leanset.dedup.near import faiss_threads

    with faiss_threads(1), ThreadPoolExecutor(n, thread_name_prefix="leanset-geometry") as pool:
        return list(pool.map(fn, items, chunksize=1))


def _refine(src: np.ndarray, dst: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares refits on the inliers, taking back matches the RANSAC fit left just outside
    (keypoints of coarse pyramid levels are placed to a few pixels)."""
    x = np.empty((len(src), 3), np.float64)
    x[:, :2] = src
    x[:, 2] = 1.0
    fit = np.zeros((2, 3))
    for _ in range(3):
        if keep.sum() < 3:
            break
        fit = _least_squares(x[keep], dst[keep].astype(np.float64)).T
        off = x @ fit.T - dst
        again = np.sqrt((off * off).sum(axis=1)) <= 1.5 * RANSAC_PIXELS  # np.linalg.norm's sum
        if np.array_equal(again, keep):  # a fixed point: a further refit would give the same
            break
        keep = again
    return fit, keep


def _least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares solution of x @ w = y by its normal equations (three unknowns per
    column: a fraction of `lstsq`'s cost); `lstsq` where they are singular (collinear points)."""
    gram = x.T @ x
    try:
        return np.linalg.solve(gram, x.T @ y)
    except np.linalg.LinAlgError:
        fallback: np.ndarray = np.linalg.lstsq(x, y, rcond=None)[0]
        return fallback


def _guidable(judged: Match, a: Features, b: Features, fit: np.ndarray) -> bool:
    """A refused fit worth guided matches: enough inliers, of a copy's shape (`_judge`'s rules on
    the map itself: scale, anisotropy, no flip, the smaller image inside the other)."""
    return (
        judged.inliers >= GUIDED_FROM
        and (
            judged.inliers >= MIN_INLIER_SHARE * judged.matches
            or _agreement(a, b, fit) >= AGREEMENT  # repetitive content: see AGREEMENT
        )
        and judged.inside >= MIN_INSIDE
        and _shaped(fit)
        and _overhang(*_small_first(fit, a, b)) <= MAX_OVERHANG
    )


def _agreement(a: Features, b: Features, fit: np.ndarray) -> float:
    """Of a's keypoints that `fit` maps inside b's frame, the share that land within
    RANSAC_PIXELS of a keypoint of b whose descriptor differs in at most AGREEMENT_BITS bits."""
    where = a.points @ fit[:, :2].T + fit[:, 2]
    rows = np.flatnonzero(
        (where[:, 0] >= 0) & (where[:, 0] < b.width) & (where[:, 1] >= 0) & (where[:, 1] < b.height)
    )
    if len(rows) < MIN_INLIERS:
        return 0.0
    i, j = _within(where[rows], b.points, RANSAC_PIXELS)  # few per keypoint: only those are
    # compared
    bits = np.unpackbits(a.descriptors[rows[i]] ^ b.descriptors[j], axis=1).sum(1)
    close = np.zeros(len(rows), dtype=bool)
    close[i[bits <= AGREEMENT_BITS]] = True
    return float(close.mean())


def _within(p: np.ndarray, q: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j) with `((p[i] - q[j]) ** 2).sum() <= radius**2`, in no set order: the
    same test on the pairs whose x differ by at most a hair over `radius` (q sorted by x), not
    on every pair (a third of the check's CPU went to the full distance matrix)."""
    order = np.argsort(q[:, 0], kind="stable")
    qx = q[order, 0].astype(np.float64)
    reach = radius * (1 + 1e-6)  # a superset of the pairs whose x differ by the radius
    lo = np.searchsorted(qx, p[:, 0] - reach, side="left")
    count = np.searchsorted(qx, p[:, 0] + reach, side="right") - lo
    i = np.repeat(np.arange(len(p)), count)
    step = np.arange(len(i)) - np.repeat(np.cumsum(count) - count, count)
    j = order[np.repeat(lo, count) + step]
    gap = ((p[i] - q[j]) ** 2).sum(-1)
    near = gap <= radius**2
    return i[near], j[near]


def _reverse(a: Features, b: Features) -> Match:
    """b's features matched into a's (the ratio test is not symmetric: a crop's keypoints meet
    the distractors of the whole original, the original's few in the crop), as a match of a to
    b; a copy only where the keypoints agree densely under the fit (`AGREEMENT`)."""
    back = match(b, a)
    if not back.copy:
        return back
    fit = np.array(back.fit).reshape(2, 3)
    if _agreement(b, a, fit) < AGREEMENT:
        return Match(**{**back.__dict__, "copy": False})
    forward = _inverse(fit)
    return Match(
        **{
            **back.__dict__,
            "rotation": -back.rotation,
            "scale": 1.0 / back.scale,
            "fit": tuple(forward.ravel().tolist()),
        }
    )


def _guided(a: Features, b: Features, fit: np.ndarray, judged: Match) -> Match:
    """The fit refined on guided matches (one per keypoint of b) and judged again; the ratio-test
    judgement where that does not make a copy."""
    import cv2

    where = a.points @ fit[:, :2].T + fit[:, 2]
    near = ((where[:, None, :] - b.points[None, :, :]) ** 2).sum(-1) <= RANSAC_PIXELS**2
    found = cv2.BFMatcher(cv2.NORM_HAMMING).match(
        a.descriptors, b.descriptors, near.astype(np.uint8)
    )
    found = sorted((m for m in found if m.distance <= GUIDED_BITS), key=lambda m: m.distance)
    first = np.unique([m.trainIdx for m in found], return_index=True)[1]
    chosen = [found[i] for i in first]
    if len(chosen) < MIN_INLIERS:
        return judged
    src = a.points[[m.queryIdx for m in chosen]]
    dst = b.points[[m.trainIdx for m in chosen]]
    refit, keep = _refine(src, dst, np.ones(len(chosen), dtype=bool))
    again = _judge(a, b, refit, src[keep], dst[keep], max(judged.matches, int(keep.sum())))
    return again if again.copy else judged


def _shaped(fit: np.ndarray) -> bool:
    """The map scales, stretches and turns as a copy may (no flip: mirrors have own features)."""
    linear = fit[:, :2]
    sx, sy = np.linalg.svd(linear, compute_uv=False)
    return bool(
        MIN_SCALE <= sy <= sx <= 1 / MIN_SCALE
        and sx / sy <= MAX_ANISOTROPY
        and np.linalg.det(linear) > 0
    )


def _inverse(fit: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine map."""
    import cv2

    return np.asarray(cv2.invertAffineTransform(fit))


def _small_first(
    fit: np.ndarray, a: Features, b: Features
) -> tuple[np.ndarray, Features, Features]:
    """The map from the smaller image (by mapped area) into the larger one, and the two images."""
    scale2 = abs(np.linalg.det(fit[:, :2]))
    if a.width * a.height * scale2 <= b.width * b.height:
        return fit, a, b
    return _inverse(fit), b, a


def _judge(
    a: Features, b: Features, fit: np.ndarray, src: np.ndarray, dst: np.ndarray, matches: int
) -> Match:
    """Accept a fit whose inliers are many and spread, with the smaller image inside the other."""
    linear = fit[:, :2]
    scale = float(math.sqrt(abs(np.linalg.det(linear))))
    rotation = math.degrees(math.atan2(linear[1, 0] - linear[0, 1], linear[0, 0] + linear[1, 1]))
    a_small = a.width * a.height * scale**2 <= b.width * b.height
    if a_small:
        inside, overhang = _share_inside(fit, a, b), _overhang(fit, a, b)
        spread = _spread(src, a)
    else:
        inverse = _inverse(fit)
        inside, overhang = _share_inside(inverse, b, a), _overhang(inverse, b, a)
        spread = _spread(dst, b)
    n = len(src)
    ok = (
        n >= MIN_INLIERS
        and n >= MIN_INLIER_SHARE * matches
        and inside >= MIN_INSIDE
        and overhang <= MAX_OVERHANG
        and spread >= MIN_SPREAD
        and _shaped(fit)
    )
    fitted = tuple(float(v) for v in fit.ravel())
    return Match(bool(ok), n, matches, inside, spread, rotation, scale, False, fitted)


_GRID = (np.arange(24) + 0.5) / 24  # `_share_inside`'s sample positions, as shares of a side


@functools.lru_cache(maxsize=256)
def _grid_points(width: int, height: int) -> np.ndarray:
    """`_share_inside`'s sample points on a `width` x `height` image (x, y, 1), once per size."""
    pts = np.empty((_GRID.size**2, 3))
    pts[:, 0] = np.tile(_GRID * width, _GRID.size)
    pts[:, 1] = np.repeat(_GRID * height, _GRID.size)
    pts[:, 2] = 1.0
    pts.flags.writeable = False
    return pts


def _share_inside(fit: np.ndarray, small: Features, big: Features) -> float:
    """The share of `small`'s area that `fit` maps inside `big`'s frame (sampled on a grid)."""
    pts = _grid_points(int(small.width), int(small.height)) @ fit.T
    inside = (
        (pts[:, 0] >= 0) & (pts[:, 0] <= big.width) & (pts[:, 1] >= 0) & (pts[:, 1] <= big.height)
    )
    return float(inside.mean())


def _overhang(fit: np.ndarray, small: Features, big: Features) -> float:
    """How far the furthest corner of `small` maps outside `big`'s frame, as a share of big's
    longer side (0 when the whole of it lies inside)."""
    w, h = small.width, small.height
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ fit.T
    out = np.maximum(-corners, corners - np.array([big.width, big.height])).max()
    return float(max(out, 0.0) / max(big.width, big.height))


def _spread(points: np.ndarray, f: Features, cells: int = 4) -> float:
    """Of the cells (a `cells` x `cells` grid) holding any of the image's keypoints, the share that
    hold an inlier: the match spans the image's textured part, not one corner of it."""

    def occupied(p: np.ndarray) -> np.ndarray:
        cx = np.minimum(np.maximum((p[:, 0] / f.width * cells).astype(int), 0), cells - 1)
        cy = np.minimum(np.maximum((p[:, 1] / f.height * cells).astype(int), 0), cells - 1)
        grid = np.zeros((cells, cells), dtype=bool)
        grid[cy, cx] = True
        return grid

    textured = occupied(f.points)
    return float((occupied(points) & textured).sum() / max(1, textured.sum()))


FeatureSource = Callable[[np.ndarray], list[ImageFeatures | None]]
"""Features of table rows (None where an image cannot be read), computed once and cached."""


@dataclass(frozen=True)
class Verified:
    """The outcome of checking candidate pairs: which are copies, why, and what it cost."""

    copy: np.ndarray  # (n,) bool
    reasons: list[str]
    info: dict[str, Any]


PAIR_BLOCK = 64  # pairs per task of the thread pool (fewer hand-offs than one pair per task)


def verify_pairs(
    a: np.ndarray, b: np.ndarray, source: FeatureSource, threads: int | None = None
) -> Verified:
    """Check pairs of table rows (a[k], b[k]) geometrically, on `threads` threads (default: the
    cores); features are read once per image. The result is that of checking them in order."""
    start = time.perf_counter()
    rows = np.unique(np.concatenate([a, b])) if len(a) else np.zeros(0, np.int64)
    feats = dict(zip(rows.tolist(), source(rows), strict=True))
    read = time.perf_counter()
    pairs = [(feats[i], feats[j]) for i, j in zip(a.tolist(), b.tolist(), strict=True)]
    blocks = [pairs[s : s + PAIR_BLOCK] for s in range(0, len(pairs), PAIR_BLOCK)]
    found = [m for block in parallel_map(_verify_block, blocks, workers(threads)) for m in block]
    done = time.perf_counter()
    copy = np.array([m.copy for m in found], dtype=bool)
    info = {
        "pairs": len(a),
        "confirmed": int(copy.sum()),
        "images": len(rows),
        "feature_seconds": round(read - start, 3),
        "match_seconds": round(done - read, 3),
        "seconds": round(done - start, 3),
    }
    return Verified(copy, [m.reason() if m.copy else "" for m in found], info)


def _verify_block(pairs: list[tuple[ImageFeatures | None, ImageFeatures | None]]) -> list[Match]:
    """`verify` of each pair; no copy where an image has no features."""
    return [verify(x, y) if x is not None and y is not None else Match(False) for x, y in pairs]
