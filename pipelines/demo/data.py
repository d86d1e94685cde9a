"""The bundled demo data: scikit-learn's digits as an imagefolder with planted duplicates and noise.

`make_demo(root)` writes `root/images/{train,test,unlabeled}/<label>/<name>.(png|jpg)` (with an
`images/README.md` naming the splits), `root/truth.json` (what was planted) and `root/README.txt`.
Everything is drawn from one seed, so the same seed and the same library versions give the same
bytes. truth.json is written last and is the commit point: a folder without it is an unfinished
run and is rebuilt.

Planted on top of the 1,797 natural digits (8x8, upscaled to 32x32):

* exact: train images copied byte for byte under another name (some twice: groups of three);
* near: train images re-saved with a light perturbation (noise, 1-pixel shift, contrast, JPEG);
* leak: test images whose exact or near copy is also placed in train;
* flipped: ~5% of the other train images filed under a wrong digit (for the label-noise stage);
* pool: N_POOL other natural train images (stratified over digits) moved to `images/unlabeled/`,
  an unlabeled pool for the labeling loop. The digit folder is kept only so the imagefolder layout
  stays uniform; a loader must treat the `unlabeled` split as unlabeled. `answer_tasks` plays the
  annotator for Label Studio tasks exported from a run over the demo.

Note that `datasets.load_dataset("imagefolder", data_dir=...)` only finds the split folders whose
names it knows (train, test, validation, ...): pass `data_files=SPLIT_DATA_FILES`, or load the
folder itself (`datasets.load_dataset(str(images_dir))`, which reads `images/README.md`'s
`configs`), to get the `unlabeled` split too.

Near copies are kept findable by the raw-pixel demo embedder (16x16 grayscale, mean-centred,
L2-normalised): each copy's cosine similarity to its original is at least `MIN_COPY_SIMILARITY`.
Natural digits that are that close to each other anyway are kept and listed as `natural` groups.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
from PIL import Image

from leanset.pipelines.fsutil import atomic_write_bytes, atomic_write_json, locked

log = logging.getLogger(__name__)

GENERATOR = "leanset-demo-digits"
GENERATOR_VERSION = 2
IMAGE_SIZE = 32
FEATURE_SIZE = 16
TEST_FRACTION = 0.2

RECOMMENDED_THRESHOLD = 0.99
"""Cosine threshold (>=) on the demo's raw-pixel features at which planted pairs are found."""
MIN_COPY_SIMILARITY = 0.992
"""Every near copy is at least this similar to its original (else it falls back to a lighter one)."""
NATURAL_PAIR_FLOOR = 0.98
"""Natural digit pairs at or above this similarity are recorded; planted originals stay below it."""

N_EXACT_SOURCES = 48
N_EXACT_TWICE = 12
N_NEAR = 80
N_NEAR_SHIFTED = 8
"""How many of the N_NEAR near copies include a 1-pixel shift (few digits tolerate one)."""
N_LEAK_EXACT = 20
N_LEAK_NEAR = 20
FLIP_FRACTION = 0.05
N_POOL = 300
"""Natural train images moved to the unlabeled pool (N_POOL // 10 per digit)."""

SPLITS = ("train", "test", "unlabeled")
UNLABELED_SPLIT = "unlabeled"
SPLIT_DATA_FILES = {split: f"{split}/**" for split in SPLITS}
"""`data_files` for `datasets.load_dataset("imagefolder", data_dir=images_dir, data_files=...)`."""
LABELS = tuple(str(d) for d in range(10))
ANNOTATOR = {"id": 1, "email": "simulated-annotator@leanset.demo"}
"""`completed_by` of the simulated annotator's answers."""

KINDS = ("exact", "near", "leak", "natural")
PLANTED_KINDS = ("exact", "near", "leak")
_LIGHT_OPS = ("noise", "contrast", "jpeg")
_SHIFTS = ((0, 1), (1, 0), (0, -1), (-1, 0))
_README_MARKER = "leanset demo dataset"
_TRUTH_KIND = {
    "exact": "exact",
    "near": "near",
    "near-shift": "near",
    "leak": "leak",
    "leak-near": "leak",
}


@dataclass(frozen=True)
class TruthGroup:
    """One planted (or natural) family: paths under images/ that show the same underlying digit."""

    kind: str
    paths: tuple[str, ...]
    perturbations: tuple[str, ...] = ()
    similarity: float = 1.0


@dataclass(frozen=True)
class NaturalPair:
    """Two distinct natural digits whose raw-pixel similarity is at least the recorded floor."""

    paths: tuple[str, str]
    similarity: float


@dataclass(frozen=True)
class FlippedLabel:
    """A train image filed under a wrong digit: `given_label` is its folder, `true_label` the digit."""

    path: str
    given_label: str
    true_label: str


@dataclass(frozen=True)
class PoolImage:
    """An image of the unlabeled pool (under images/unlabeled/) and the digit it shows."""

    path: str
    true_label: str


@dataclass
class DemoTruth:
    """What `make_demo` planted, as recorded in `root/truth.json` (paths relative to root/images)."""

    root: Path
    seed: int
    generator_version: int
    recommended_threshold: float
    natural_pair_floor: float
    groups: list[TruthGroup]
    natural_pairs: list[NaturalPair]
    flipped: list[FlippedLabel]
    pool: list[PoolImage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    _known: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def images_dir(self) -> Path:
        """The imagefolder root to hand to `datasets.load_dataset("imagefolder", data_dir=...)`."""
        return self.root / "images"

    @classmethod
    def load(cls, root: str | Path) -> DemoTruth:
        """Parse `root/truth.json`; ValueError names the missing or malformed key."""
        path = Path(root) / "truth.json"
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        return _truth_from_json(Path(root), raw, path)

    def to_json(self) -> dict[str, Any]:
        """The truth.json document (no absolute paths, so it is the same wherever it is written)."""
        return {
            "generator": GENERATOR,
            "generator_version": self.generator_version,
            "seed": self.seed,
            "recommended_threshold": self.recommended_threshold,
            "natural_pair_floor": self.natural_pair_floor,
            "groups": [
                {
                    "kind": g.kind,
                    "paths": list(g.paths),
                    "perturbations": list(g.perturbations),
                    "similarity": g.similarity,
                }
                for g in self.groups
            ],
            "natural_pairs": [
                {"paths": list(p.paths), "similarity": p.similarity} for p in self.natural_pairs
            ],
            "flipped": [
                {"path": f.path, "given_label": f.given_label, "true_label": f.true_label}
                for f in self.flipped
            ],
            "pool": [{"path": p.path, "true_label": p.true_label} for p in self.pool],
            "counts": self.counts,
            "stats": self.stats,
        }

    def duplicate_groups(
        self, threshold: float | None = None, kinds: Sequence[str] = KINDS
    ) -> list[list[str]]:
        """Truth groups for `evaluate_groups`: natural ones at `threshold` (default: recommended)."""
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"kinds: unknown {unknown}; expected some of {list(KINDS)}")
        out = [list(g.paths) for g in self.groups if g.kind in kinds and g.kind != "natural"]
        if "natural" not in kinds:
            return out
        if threshold is None:
            return out + [list(g.paths) for g in self.groups if g.kind == "natural"]
        if threshold < self.natural_pair_floor:
            raise ValueError(
                f"threshold {threshold} is below natural_pair_floor {self.natural_pair_floor} "
                "recorded in truth.json: natural pairs under the floor were not recorded"
            )
        pairs = [p.paths for p in self.natural_pairs if p.similarity >= threshold]
        return out + _components(pairs)

    def flipped_paths(self) -> set[str]:
        """Paths of the train images filed under a wrong label."""
        return {f.path for f in self.flipped}

    def pool_paths(self) -> set[str]:
        """Paths of the unlabeled pool's images."""
        return {p.path for p in self.pool}

    def true_label(self, path: str) -> str:
        """The digit a demo image shows: pool → its digit, flipped → true_label, else its folder.

        `path` is relative to images/ (`train/3/train_0012.png`), or anything ending in that: an
        absolute path, a URL, Label Studio's `/data/local-files/?d=...`. ValueError for a path
        that is not laid out like a demo image, or an unlabeled image that is not in the pool.
        """
        rel = image_relpath(path)
        if self._known is None:
            known = {f.path: f.true_label for f in self.flipped}
            known.update((p.path, p.true_label) for p in self.pool)
            self._known = known
        if rel in self._known:
            return self._known[rel]
        split, label, _ = rel.split("/")
        if split == UNLABELED_SPLIT:
            raise ValueError(f"{path!r}: {rel} is not in the demo's unlabeled pool")
        return label


def image_relpath(ref: str) -> str:
    """`<split>/<digit>/<name>`: the path relative to images/ that `ref` ends in, else ValueError.

    `ref` may be that path itself, an absolute path, a URL (percent-encoding undone) or Label
    Studio's `/data/local-files/?d=<path>`; the last three path segments are taken.
    """
    if not isinstance(ref, str):
        raise ValueError(f"expected a demo image path, got {type(ref).__name__} {ref!r}")
    parts = [p for p in unquote(ref).replace("\\", "/").split("/") if p]
    tail = parts[-3:]
    if len(tail) != 3 or tail[0].rpartition("=")[2] not in SPLITS or tail[1] not in LABELS:
        raise ValueError(
            f"{ref!r} does not end in a demo image path <split>/<digit>/<name> "
            f"(split one of {list(SPLITS)}, digit 0-9)"
        )
    tail[0] = tail[0].rpartition("=")[2]  # `?d=train/...`: the image root was the bare prefix
    return "/".join(tail)


def make_demo(root: str | Path, seed: int = 0) -> DemoTruth:
    """Write the demo imagefolder and truth under `root` (no-op when already there for this seed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    current = _load_if_current(root, seed)
    if current is not None:
        return current
    with locked(root / ".make_demo.lock"):
        current = _load_if_current(root, seed)  # another process may have just written it
        if current is not None:
            return current
        _check_replaceable(root)
        truth, files = _generate(root, seed)
        _write_tree(root, files, seed)
        atomic_write_json(root / "truth.json", truth.to_json()).chmod(0o644)
    log.info("demo data written to %s (%s)", root, truth.counts)
    return truth


# --- the simulated annotator ------------------------------------------------------------------


# --- generation ------------------------------------------------------------------------------


@dataclass
class _File:
    """One image file to write: where it goes and its encoded bytes."""

    split: str
    label: int
    data: bytes
    ext: str
    path: str = ""


def _generate(root: Path, seed: int) -> tuple[DemoTruth, list[_File]]:
    """Build every file and the truth in memory."""
    rng = np.random.default_rng(seed)
    pixels, labels = _digit_images()
    is_test = _stratified_test_mask(labels, rng)
    originals = [
        _File("test" if t else "train", int(y), _encode_png(a), ".png")
        for a, y, t in zip(pixels, labels, is_test, strict=True)
    ]
    feats = np.stack([_features(f.data) for f in originals])
    sims = feats @ feats.T
    np.fill_diagonal(sims, -1.0)
    isolated = sims.max(axis=1) < NATURAL_PAIR_FLOOR
    shifts = _tolerated_shifts(pixels, feats, np.flatnonzero(~is_test & isolated))
    plan = _choose_plants(rng, is_test, isolated, sorted(shifts))
    files = list(originals)
    file_feats = list(feats)
    groups: list[tuple[str, list[int], tuple[str, ...], float]] = []
    for kind, src, n_copies in plan:
        members, lowest = [src], 1.0
        shift = shifts[src] if kind == "near-shift" else None
        for _ in range(n_copies):
            copy, feat, recipe = _planted_copy(
                kind, originals[src], feats[src], pixels[src], shift, rng
            )
            files.append(copy)
            file_feats.append(feat)
            members.append(len(files) - 1)
            lowest = min(lowest, float(feats[src] @ feat))
        groups.append((kind, members, recipe, lowest))
    planted = {i for _, members, _, _ in groups for i in members}
    nat_pairs = _natural_pairs(sims)
    in_natural = {i for pair in nat_pairs for i in pair[:2]}
    flips = _choose_flips(rng, labels, is_test, planted, in_natural)
    for idx, wrong in flips.items():
        files[idx].label = wrong
    pool = _choose_pool(rng, labels, is_test, planted | set(flips) | in_natural)
    for idx in pool:
        files[idx].split = UNLABELED_SPLIT
    _assign_names(files, rng)
    truth = _assemble_truth(root, seed, files, labels, groups, nat_pairs, flips, pool)
    truth.stats = _similarity_stats(truth, np.stack(file_feats), files, sims)
    return truth, files


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 32x32 images (bicubic upscale, 0..255) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scaled = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    size = (IMAGE_SIZE, IMAGE_SIZE)
    big = [np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BICUBIC)) for a in scaled]
    return np.stack(big), digits.target.astype(np.int64)


def _stratified_test_mask(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """True for the ~TEST_FRACTION of each class that goes to the test split."""
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        n_test = int(round(len(idx) * TEST_FRACTION))
        mask[rng.permutation(idx)[:n_test]] = True
    return mask


def _tolerated_shifts(
    pixels: np.ndarray, feats: np.ndarray, candidates: np.ndarray
) -> dict[int, tuple[int, int]]:
    """{index: best 1-pixel shift} for candidates whose shifted copy stays >= MIN_COPY_SIMILARITY."""
    out = {}
    for i in candidates.tolist():
        scored = [(float(feats[i] @ _pixel_features(_shift(pixels[i], *s))), s) for s in _SHIFTS]
        sim, shift = max(scored)
        if sim >= MIN_COPY_SIMILARITY:
            out[i] = shift
    return out


def _choose_plants(
    rng: np.random.Generator, is_test: np.ndarray, isolated: np.ndarray, tolerant: list[int]
) -> list[tuple[str, int, int]]:
    """(kind, source index, number of copies) for every planted family."""
    shifted = rng.permutation(tolerant)[:N_NEAR_SHIFTED].astype(int).tolist()
    if len(shifted) < N_NEAR_SHIFTED:
        log.warning("only %d digits tolerate a 1-pixel shift", len(shifted))
    taken = set(shifted)
    train = rng.permutation([i for i in np.flatnonzero(~is_test & isolated) if i not in taken])
    test = rng.permutation(np.flatnonzero(is_test & isolated))
    n_near = N_NEAR - len(shifted)
    if len(train) < N_EXACT_SOURCES + n_near or len(test) < N_LEAK_EXACT + N_LEAK_NEAR:
        raise RuntimeError("too few isolated digits to plant duplicates; lower the plant counts")
    exact_src = train[:N_EXACT_SOURCES]
    twice = set(rng.choice(exact_src, size=N_EXACT_TWICE, replace=False).tolist())
    plan = [("exact", int(i), 2 if int(i) in twice else 1) for i in exact_src]
    plan += [("near-shift", i, 1) for i in shifted]
    plan += [("near", int(i), 1) for i in train[N_EXACT_SOURCES : N_EXACT_SOURCES + n_near]]
    plan += [("leak", int(i), 1) for i in test[:N_LEAK_EXACT]]
    plan += [("leak-near", int(i), 1) for i in test[N_LEAK_EXACT : N_LEAK_EXACT + N_LEAK_NEAR]]
    return plan


def _planted_copy(
    kind: str,
    src: _File,
    src_feat: np.ndarray,
    pixels: np.ndarray,
    shift: tuple[int, int] | None,
    rng: np.random.Generator,
) -> tuple[_File, np.ndarray, tuple[str, ...]]:
    """A copy of `src` in train under the same label: byte-identical, or perturbed."""
    if kind in ("exact", "leak"):
        return _File("train", src.label, src.data, src.ext), src_feat, ()
    data, ext, recipe = _near_copy(pixels, src_feat, shift, rng)
    return _File("train", src.label, data, ext), _features(data), recipe


def _near_copy(
    pixels: np.ndarray,
    src_feat: np.ndarray,
    shift: tuple[int, int] | None,
    rng: np.random.Generator,
) -> tuple[bytes, str, tuple[str, ...]]:
    """Perturb and re-encode: `shift` (if given) plus light ops, kept >= MIN_COPY_SIMILARITY."""
    params = _draw_params(rng)
    n_light = int(rng.integers(0, 2)) if shift else int(rng.integers(1, 3))
    picked = sorted(rng.choice(len(_LIGHT_OPS), size=n_light, replace=False).tolist())
    ops = (["shift"] if shift else []) + [_LIGHT_OPS[i] for i in picked]
    params["shift"] = shift
    data, ext, recipe = _apply(pixels, ops, params)
    if float(src_feat @ _features(data)) >= MIN_COPY_SIMILARITY:
        return data, ext, recipe
    # the shift alone is known to pass; otherwise fall back to very light noise
    fallback = ["shift"] if shift else ["noise"]
    return _apply(pixels, fallback, {**params, "noise": (1.0, params["noise"][1])})


def _draw_params(rng: np.random.Generator) -> dict[str, Any]:
    """Strengths for the light operations."""
    gain = float(rng.uniform(0.75, 0.95))
    return {
        "noise": (round(float(rng.uniform(2.0, 6.0)), 2), int(rng.integers(2**31))),
        "contrast": (round(gain, 3), round(float(rng.uniform(0.0, 255.0 * (1.0 - gain))), 1)),
        "jpeg": int(rng.integers(60, 91)),
    }


def _apply(
    pixels: np.ndarray, ops: list[str], params: dict[str, Any]
) -> tuple[bytes, str, tuple[str, ...]]:
    """Apply `ops` in a fixed order (shift, contrast, noise, then encode) and describe them."""
    out = pixels.astype(np.float64)
    recipe: list[str] = []
    if "shift" in ops:
        dy, dx = params["shift"]
        out = _shift(out, dy, dx)
        recipe.append(f"shift(dy={dy},dx={dx})")
    if "contrast" in ops:
        gain, offset = params["contrast"]
        out = out * gain + offset  # no clipping: a pure brightness/contrast change
        recipe.append(f"contrast(gain={gain},offset={offset})")
    if "noise" in ops:
        sigma, noise_seed = params["noise"]
        out = out + np.random.default_rng(noise_seed).normal(0.0, sigma, out.shape)
        recipe.append(f"noise(sigma={sigma})")
    img = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if "jpeg" in ops:
        recipe.append(f"jpeg(quality={params['jpeg']})")
        return _encode_jpeg(img, params["jpeg"]), ".jpg", tuple(recipe)
    return _encode_png(img), ".png", tuple(recipe)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) pixels, filling the uncovered edge with black."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _natural_pairs(sims: np.ndarray) -> list[tuple[int, int, float]]:
    """(i, j, similarity) for natural digits i < j at or above NATURAL_PAIR_FLOOR."""
    ii, jj = np.nonzero(np.triu(sims, k=1) >= NATURAL_PAIR_FLOOR)
    return [(int(i), int(j), float(sims[i, j])) for i, j in zip(ii, jj, strict=True)]


def _choose_flips(
    rng: np.random.Generator,
    labels: np.ndarray,
    is_test: np.ndarray,
    planted: set[int],
    in_natural: set[int],
) -> dict[int, int]:
    """{index: wrong label} for FLIP_FRACTION of the unplanted train digits (none in a natural pair)."""
    unplanted = [int(i) for i in np.flatnonzero(~is_test) if int(i) not in planted]
    eligible = [i for i in unplanted if i not in in_natural]
    n_flip = min(int(round(FLIP_FRACTION * len(unplanted))), len(eligible))
    chosen = sorted(rng.choice(eligible, size=n_flip, replace=False).tolist())
    return {i: int((labels[i] + rng.integers(1, 10)) % 10) for i in chosen}


def _choose_pool(
    rng: np.random.Generator, labels: np.ndarray, is_test: np.ndarray, excluded: set[int]
) -> list[int]:
    """N_POOL // 10 train digits per class, none planted, flipped or in a natural pair."""
    per_class = N_POOL // 10
    chosen: list[int] = []
    for label in range(10):
        eligible = [
            int(i) for i in np.flatnonzero(~is_test & (labels == label)) if int(i) not in excluded
        ]
        if len(eligible) < per_class:
            raise RuntimeError(f"only {len(eligible)} digits {label} left for the unlabeled pool")
        chosen += rng.permutation(eligible)[:per_class].astype(int).tolist()
    return sorted(chosen)


def _assign_names(files: list[_File], rng: np.random.Generator) -> None:
    """Give every file a shuffled `<split>_NNNN` name, so names do not reveal what was planted."""
    for split in SPLITS:
        idx = [i for i, f in enumerate(files) if f.split == split]
        for number, i in enumerate(rng.permutation(idx).tolist()):
            f = files[i]
            f.path = f"{split}/{f.label}/{split}_{number:04d}{f.ext}"


def _assemble_truth(
    root: Path,
    seed: int,
    files: list[_File],
    labels: np.ndarray,
    groups: list[tuple[str, list[int], tuple[str, ...], float]],
    nat_pairs: list[tuple[int, int, float]],
    flips: dict[int, int],
    pool: list[int],
) -> DemoTruth:
    """The DemoTruth for the generated files."""
    truth_groups = [
        TruthGroup(
            _TRUTH_KIND[kind],
            tuple(files[i].path for i in members),
            recipe,
            round(sim, 6),
        )
        for kind, members, recipe, sim in groups
    ]
    pairs = [NaturalPair((files[i].path, files[j].path), round(s, 6)) for i, j, s in nat_pairs]
    at_threshold = [
        (files[i].path, files[j].path) for i, j, s in nat_pairs if s >= RECOMMENDED_THRESHOLD
    ]
    natural = [TruthGroup("natural", tuple(c), (), 0.0) for c in _components(at_threshold)]
    natural = [_with_min_similarity(g, pairs) for g in natural]
    flipped = [
        FlippedLabel(files[i].path, str(wrong), str(int(labels[i]))) for i, wrong in flips.items()
    ]
    pool_images = sorted(
        (PoolImage(files[i].path, str(int(labels[i]))) for i in pool), key=lambda p: p.path
    )
    counts = _counts(files, truth_groups + natural, flipped)
    return DemoTruth(
        root=root,
        seed=seed,
        generator_version=GENERATOR_VERSION,
        recommended_threshold=RECOMMENDED_THRESHOLD,
        natural_pair_floor=NATURAL_PAIR_FLOOR,
        groups=truth_groups + natural,
        natural_pairs=pairs,
        flipped=sorted(flipped, key=lambda f: f.path),
        pool=pool_images,
        counts=counts,
    )


def _with_min_similarity(group: TruthGroup, pairs: list[NaturalPair]) -> TruthGroup:
    """A natural group carrying the lowest recorded similarity among its own pairs."""
    members = set(group.paths)
    sims = [p.similarity for p in pairs if set(p.paths) <= members]
    return TruthGroup(group.kind, group.paths, (), min(sims))


def _counts(files: list[_File], groups: list[TruthGroup], flipped: list[FlippedLabel]) -> dict:
    """File and plant counts for truth.json and the README."""
    counts = {f"{split}_files": sum(f.split == split for f in files) for split in SPLITS}
    counts["pool"] = counts["unlabeled_files"]
    counts["flipped"] = len(flipped)
    for kind in KINDS:
        kind_groups = [g for g in groups if g.kind == kind]
        counts[f"{kind}_groups"] = len(kind_groups)
        counts[f"{kind}_pairs"] = sum(len(g.paths) * (len(g.paths) - 1) // 2 for g in kind_groups)
    counts["copies"] = sum(len(g.paths) - 1 for g in groups if g.kind in PLANTED_KINDS)
    return counts


def _similarity_stats(
    truth: DemoTruth, feats: np.ndarray, files: list[_File], natural_sims: np.ndarray
) -> dict[str, float]:
    """How separable the plants are: copy similarities, natural maxima, stray pairs."""
    index = {f.path: i for i, f in enumerate(files)}
    group_of = np.full(len(files), -1)
    for g_id, members in enumerate(truth.duplicate_groups()):
        group_of[[index[p] for p in members]] = g_id
    sims = feats @ feats.T
    ii, jj = np.triu_indices(len(files), k=1)
    same = (group_of[ii] == group_of[jj]) & (group_of[ii] >= 0)
    stray = sims[ii, jj][~same]
    near = [g.similarity for g in truth.groups if g.kind in ("near", "leak") and g.perturbations]
    planted = {index[p] for g in truth.groups if g.kind in PLANTED_KINDS for p in g.paths}
    outside = (group_of[ii] != group_of[jj]) & (
        np.isin(ii, list(planted)) | np.isin(jj, list(planted))
    )
    return {
        "near_copy_similarity_min": round(float(min(near)), 6),
        "near_copy_similarity_median": round(float(np.median(near)), 6),
        "natural_max_similarity": round(float(natural_sims.max()), 6),
        "natural_pairs_at_threshold": sum(
            p.similarity >= RECOMMENDED_THRESHOLD for p in truth.natural_pairs
        ),
        "planted_to_other_max_similarity": round(float(sims[ii, jj][outside].max()), 6),
        "ungrouped_pairs_at_threshold": int((stray >= RECOMMENDED_THRESHOLD).sum()),
    }


def _components(pairs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Connected components (size >= 2) of the graph given by `pairs`, sorted for stable output."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    comps: dict[str, list[str]] = {}
    for x in parent:
        comps.setdefault(find(x), []).append(x)
    return sorted(sorted(c) for c in comps.values() if len(c) > 1)


# --- encoding and features ---------------------------------------------------------------------


def _encode_png(pixels: np.ndarray) -> bytes:
    """Grayscale PNG bytes (no metadata, so deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Grayscale JPEG bytes at `quality`."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _features(data: bytes) -> np.ndarray:
    """The demo embedder's raw-pixel features of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return _image_features(img)


def _pixel_features(pixels: np.ndarray) -> np.ndarray:
    """The demo embedder's raw-pixel features of a uint8 grayscale array."""
    return _image_features(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)))


def _image_features(img: Image.Image) -> np.ndarray:
    """Exactly what the demo flow's embedder (PixelEmbedder(FEATURE_SIZE)) computes."""
    from leanset.pipelines.embed import PixelEmbedder

    embedder = PixelEmbedder(FEATURE_SIZE)
    features: np.ndarray = embedder.encode([embedder.from_image(img)])[0]
    return features


# --- writing -----------------------------------------------------------------------------------


def _load_if_current(root: Path, seed: int) -> DemoTruth | None:
    """The existing truth when it was written by this generator version for `seed`."""
    path = root / "truth.json"
    if not path.is_file() or not (root / "images").is_dir():
        return None
    try:
        truth = DemoTruth.load(root)
    except (ValueError, TypeError, OSError) as exc:
        log.warning("rebuilding demo data: %s", exc)
        return None
    if truth.seed == seed and truth.generator_version == GENERATOR_VERSION:
        return truth
    return None


def _check_replaceable(root: Path) -> None:
    """Refuse to replace an images/ folder that make_demo did not write."""
    images = root / "images"
    ours = (root / "truth.json").exists() or _readme_is_ours(root)
    if images.exists() and not ours:
        raise FileExistsError(
            f"{images} exists but has no truth.json or demo README.txt beside it; "
            "make_demo only replaces a folder it wrote: pass an empty or new root"
        )


def _readme_is_ours(root: Path) -> bool:
    """True when root/README.txt was written by make_demo."""
    readme = root / "README.txt"
    return readme.is_file() and _README_MARKER in readme.read_text(errors="replace")


def _write_tree(root: Path, files: list[_File], seed: int) -> None:
    """Write all images into a build folder, then swap it in for root/images."""
    build = Path(tempfile.mkdtemp(prefix=".images-build-", dir=root))
    try:
        for f in files:
            target = build / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.data)
        (build / "README.md").write_text(_images_readme())
        build.chmod(0o755)  # mkdtemp makes it private; the data is meant to be shared
        (root / "truth.json").unlink(missing_ok=True)  # the commit point goes first
        atomic_write_bytes(root / "README.txt", _readme(seed).encode()).chmod(0o644)
        _swap_in(build, root / "images")
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _swap_in(build: Path, target: Path) -> None:
    """Replace `target` with `build`'s contents by renames (the old tree is removed after)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".images-old-", dir=target.parent))
        os.replace(target, old / "images")
    os.replace(build, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _readme(seed: int) -> str:
    """The README.txt text."""
    return f"""{_README_MARKER} (generator {GENERATOR} v{GENERATOR_VERSION}, seed {seed})

images/{{train,test,unlabeled}}/<label>/<name>.png|jpg
    scikit-learn's 1,797 handwritten digits (8x8, bundled with scikit-learn), upscaled to 32x32
    grayscale (bicubic, 0..255), split about 80/20 per class. The folder name is the label.
    unlabeled/ is a pool of {N_POOL} train digits ({N_POOL // 10} per digit) to be used without
    labels (the labeling loop's pool): its digit folders only keep the layout uniform.
    Load all three splits with datasets.load_dataset("images") (images/README.md names them), or
    datasets.load_dataset("imagefolder", data_dir="images", data_files={{"train": "train/**",
    "test": "test/**", "unlabeled": "unlabeled/**"}}); with data_dir alone, datasets only finds
    the train and test folders.

truth.json  what was planted, with paths relative to images/:
    groups          kind exact: a train image and its byte-for-byte copies (some twice);
                    kind near: a train image and a perturbed copy (noise, 1-pixel shift,
                    contrast, JPEG; see "perturbations"; .jpg files are JPEG re-encodes);
                    kind leak: a test image and its exact or near copy placed in train;
                    kind natural: natural digits that are this close anyway (not planted).
                    "similarity" is the cosine similarity of copy and original on 16x16
                    mean-centred, L2-normalised grayscale pixels (the demo embedder).
    natural_pairs   every natural pair at or above natural_pair_floor, to rebuild the natural
                    groups at another threshold.
    flipped         train images filed under a wrong label: given_label (the folder) and
                    true_label.
    pool            the unlabeled pool: path and true_label of each image.
    recommended_threshold  the similarity at which the planted pairs are found.

Rebuild with: python data/make_demo.py --out <this folder> --seed {seed}
Answer Label Studio tasks exported from a run over it (a simulated annotator):
    python data/answer_queue.py TASKS.json ANSWERS.json --demo <this folder>
"""


def _images_readme() -> str:
    """images/README.md: dataset card metadata naming the three splits for `datasets`."""
    configs = "\n".join(
        f'  - split: {split}\n    path: "{pattern}"' for split, pattern in SPLIT_DATA_FILES.items()
    )
    return f"""---
configs:
- config_name: default
  data_files:
{configs}
---
# {_README_MARKER}

Handwritten digits as an imagefolder with three splits: train, test and unlabeled (a pool whose
digit folders are not labels to train on). See ../README.txt and ../truth.json.
"""


# --- parsing -----------------------------------------------------------------------------------


def _truth_from_json(root: Path, raw: Any, path: Path) -> DemoTruth:
    """Validate and convert a parsed truth.json."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: expected a JSON object at the top level, got {type(raw).__name__}"
        )
    for key in ("seed", "generator_version", "groups", "natural_pairs", "flipped"):
        if key not in raw:
            raise ValueError(f"{path}: missing key '{key}'")
    for key in ("seed", "generator_version"):
        if not isinstance(raw[key], int):
            raise ValueError(f"{path}: '{key}' must be an integer, got {raw[key]!r}")
    for key in ("groups", "natural_pairs", "flipped"):
        if not isinstance(raw[key], list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(raw[key]).__name__}")
    groups = [_group_from_json(g, f"{path}: groups[{i}]") for i, g in enumerate(raw["groups"])]
    pairs = [
        _pair_from_json(p, f"{path}: natural_pairs[{i}]")
        for i, p in enumerate(raw["natural_pairs"])
    ]
    flipped = [_flip_from_json(f, f"{path}: flipped[{i}]") for i, f in enumerate(raw["flipped"])]
    if "pool" not in raw and raw["generator_version"] >= 2:
        raise ValueError(f"{path}: missing key 'pool'")
    pool_raw = raw.get("pool", [])
    if not isinstance(pool_raw, list):
        raise ValueError(f"{path}: 'pool' must be a list, got {type(pool_raw).__name__}")
    pool = [_pool_from_json(p, f"{path}: pool[{i}]") for i, p in enumerate(pool_raw)]
    return DemoTruth(
        root=root,
        seed=raw["seed"],
        generator_version=raw["generator_version"],
        recommended_threshold=float(raw.get("recommended_threshold", RECOMMENDED_THRESHOLD)),
        natural_pair_floor=float(raw.get("natural_pair_floor", NATURAL_PAIR_FLOOR)),
        groups=groups,
        natural_pairs=pairs,
        flipped=flipped,
        pool=pool,
        counts=dict(raw.get("counts", {})),
        stats=dict(raw.get("stats", {})),
    )


def _group_from_json(raw: Any, where: str) -> TruthGroup:
    """One groups[] entry."""
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        raise ValueError(f"{where}: expected an object with 'kind' one of {list(KINDS)}")
    return TruthGroup(
        kind=raw["kind"],
        paths=tuple(_str_list(raw, "paths", where)),
        perturbations=tuple(_str_list(raw, "perturbations", where, min_len=0)),
        similarity=float(raw.get("similarity", 1.0)),
    )


def _pair_from_json(raw: Any, where: str) -> NaturalPair:
    """One natural_pairs[] entry."""
    paths = _str_list(raw, "paths", where)
    if len(paths) != 2 or not isinstance(raw.get("similarity"), (int, float)):
        raise ValueError(f"{where}: expected 'paths' with 2 paths and a number 'similarity'")
    return NaturalPair((paths[0], paths[1]), float(raw["similarity"]))


def _flip_from_json(raw: Any, where: str) -> FlippedLabel:
    """One flipped[] entry."""
    keys = ("path", "given_label", "true_label")
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), str) for k in keys):
        raise ValueError(f"{where}: expected an object with string keys {list(keys)}")
    return FlippedLabel(raw["path"], raw["given_label"], raw["true_label"])


def _pool_from_json(raw: Any, where: str) -> PoolImage:
    """One pool[] entry."""
    keys = ("path", "true_label")
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), str) for k in keys):
        raise ValueError(f"{where}: expected an object with string keys {list(keys)}")
    if not raw["path"].startswith(f"{UNLABELED_SPLIT}/") or raw["true_label"] not in LABELS:
        raise ValueError(
            f"{where}: expected a path under {UNLABELED_SPLIT}/ and a true_label 0-9, got {raw}"
        )
    return PoolImage(raw["path"], raw["true_label"])


def _str_list(raw: Any, key: str, where: str, min_len: int = 2) -> list[str]:
    """raw[key] as a list of strings with at least `min_len` items."""
    value = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}.{key}: expected a list of strings")
    if len(value) < min_len:
        raise ValueError(f"{where}.{key}: expected at least {min_len} paths, got {len(value)}")
    return value
