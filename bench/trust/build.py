"""Build a trust-benchmark set: an imagefolder with planted copies, leaks and flipped labels.

    python -m bench.trust.build --set diverse --seed 0 [--quick] [--out DIR] [--rebuild]

Layout: `DIR/images/{train,test}/<class>/<hex>.jpg` and `DIR/truth.json`. File names are random
hex drawn from the seed, so neither a name nor the position order (what `keep: first` follows)
tells which file is the original. Deterministic: one seed and one set of package versions give
the same bytes.

Planting, as fractions of the train originals: `copy_fraction` get a transformed copy in train
(a third of those two copies, of different kinds), `leak_fraction` get a copy placed in test (a
leak). Kinds are drawn uniformly over `transforms.KINDS`, `exact` at a lower weight. Originals are
saved as JPEG at quality 90-95 (textiles keep their packaged bytes); copies at the same quality
unless their kind re-encodes them. Classes (the photo a tile comes from) with fewer than
`MIN_CLASS_ORIGINALS` originals are pooled into one class `other`, so that every class has
enough samples for a cross-validated probe (leanset's needs `n_folds` per class). Then
`flip_fraction` of the train originals that have no copy
and no natural near copy get a wrong class (recorded in truth.json as `label_flips`); flips are
drawn from their own stream, so they change nothing else about the set.

`--quick` builds a small set of the same kind (`QUICK`: a few classes, a few originals each),
for a check that the whole benchmark runs; its numbers are too few to mean much. The `text` set
is built by bench/trust/text.py with the same planting.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.trust import sources, transforms

SETS = ("diverse", "dense", "text")
BUILDER_VERSION = 4  # bump when a change to the builder changes what a seed builds
QUICK_CLASSES, QUICK_PER_CLASS = 3, 16  # --quick: this many classes, this many originals each
MIN_CLASS_ORIGINALS = 10  # smaller classes are pooled into OTHER_CLASS
OTHER_CLASS = "other"
ORIGINALS_STREAM = 1000  # the originals' draws use seed + this; planting uses the seed itself
FLIP_STREAM = 7  # label flips draw from default_rng([seed, FLIP_STREAM])
DEFAULT_ROOT = Path("bench/results/trust")


@dataclass(frozen=True)
class PlantSettings:
    """How much is planted, and how the originals are split."""

    test_fraction: float = 0.2
    copy_fraction: float = 0.2
    two_copies_fraction: float = 0.33
    leak_fraction: float = 0.08
    flip_fraction: float = 0.04
    exact_weight: float = 0.3  # weight of `exact` among the kinds (each other kind weighs 1)
    kinds: tuple[str, ...] = transforms.KINDS


@dataclass
class Sample:
    """One file of a built set, as truth.json records it."""

    path: str  # relative to DIR/images: "<split>/<class>/<hex>.jpg"
    split: str
    label: str  # the class the file is filed under (wrong for a flipped label)
    role: str  # "original" or "copy"
    key: str  # provenance of the content, e.g. "mvtb/flowers1#r0c2"
    original: str | None = None  # a copy's original (its path)
    kind: str | None = None  # a copy's kind
    params: dict[str, Any] = field(default_factory=dict)
    true_label: str | None = None  # set when the label was flipped


@dataclass
class Planted:
    """The samples of a set with their file bytes, and the planted (original, copy) pairs."""

    samples: list[Sample]
    data: list[bytes]
    pairs: list[dict[str, Any]]


@dataclass(frozen=True)
class Roles:
    """Which originals go to test, get train copies (one or two), or leak a copy into test."""

    is_test: np.ndarray
    copied: frozenset[int]
    two_copies: frozenset[int]
    leaked: frozenset[int]


def file_stem(seed: int, key: str, salt: str) -> str:
    """A random-looking but reproducible file name stem (12 hex digits)."""
    return hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=6).hexdigest()


def draw_kinds(rng: np.random.Generator, n: int, plant: PlantSettings) -> list[str]:
    """`n` copy kinds drawn with `exact` down-weighted."""
    w = np.array([plant.exact_weight if k == "exact" else 1.0 for k in plant.kinds])
    return [str(k) for k in rng.choice(plant.kinds, size=n, p=w / w.sum())]


def choose_roles(n: int, plant: PlantSettings, rng: np.random.Generator) -> Roles:
    """Split `n` originals into train and test and pick the train originals that get copies."""
    is_test = np.zeros(n, bool)
    is_test[rng.choice(n, round(n * plant.test_fraction), replace=False)] = True
    train = np.flatnonzero(~is_test)
    n_copy = round(len(train) * plant.copy_fraction)
    n_leak = round(len(train) * plant.leak_fraction)
    order = rng.permutation(train).tolist()
    copied = order[:n_copy]
    return Roles(
        is_test=is_test,
        copied=frozenset(copied),
        two_copies=frozenset(copied[: round(n_copy * plant.two_copies_fraction)]),
        leaked=frozenset(order[n_copy : n_copy + n_leak]),
    )


def copy_targets(
    i: int, roles: Roles, plant: PlantSettings, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """(split, kind) of each copy planted from original `i`; two train copies differ in kind."""
    n_copies = (2 if i in roles.two_copies else 1) if i in roles.copied else 0
    kinds = draw_kinds(rng, n_copies, plant)
    while n_copies == 2 and kinds[1] == kinds[0]:
        kinds[1] = draw_kinds(rng, 1, plant)[0]
    targets = [("train", k) for k in kinds]
    if i in roles.leaked:
        targets.append(("test", draw_kinds(rng, 1, plant)[0]))
    return targets


def original_bytes(orig: sources.Original, rng: np.random.Generator) -> tuple[bytes, int]:
    """The file bytes of an original, and the JPEG quality its copies inherit."""
    if orig.raw_bytes is not None:
        return orig.raw_bytes, 90
    quality = int(rng.integers(90, 96))
    return transforms.encode_jpeg(orig.image, quality), quality


def copy_bytes(
    orig: sources.Original, data: bytes, quality: int, kind: str, rng: np.random.Generator
) -> tuple[bytes, transforms.Params]:
    """The file bytes of one copy of `orig` and the parameters drawn for it."""
    if kind == "exact":
        return data, {}
    image, params = transforms.apply(kind, orig.image, rng)
    return transforms.encode_jpeg(image, int(params.get("jpeg_quality", quality))), params


def plant_copies(originals: list[sources.Original], seed: int, plant: PlantSettings) -> Planted:
    """Every original with its split, and its planted copies (train copies and test leaks)."""
    rng = np.random.default_rng(seed)
    roles = choose_roles(len(originals), plant, rng)
    out = Planted([], [], [])
    for i, orig in enumerate(originals):
        split = "test" if roles.is_test[i] else "train"
        data, quality = original_bytes(orig, rng)
        stem = file_stem(seed, orig.key, "orig")
        base = Sample(f"{split}/{orig.label}/{stem}.jpg", split, orig.label, "original", orig.key)
        out.samples.append(base)
        out.data.append(data)
        for c, (csplit, kind) in enumerate(copy_targets(i, roles, plant, rng)):
            cdata, params = copy_bytes(orig, data, quality, kind, rng)
            path = f"{csplit}/{orig.label}/{file_stem(seed, orig.key, f'copy{c}')}.jpg"
            copy = Sample(path, csplit, orig.label, "copy", orig.key, base.path, kind, params)
            out.samples.append(copy)
            out.data.append(cdata)
            out.pairs.append({"a": base.path, "b": path, "kind": kind, "leak": csplit == "test"})
    return out


def flip_labels(
    planted: Planted, seed: int, plant: PlantSettings, natural: set[str], folders: bool = True
) -> list[dict[str, str]]:
    """Give `flip_fraction` of the train originals with no copy (planted, or natural: the paths
    in `natural`) a wrong class.

    With `folders`, the flipped samples move to their wrong class's folder (an imagefolder's
    label is its folder); returns what truth.json records."""
    rng = np.random.default_rng([seed, FLIP_STREAM])
    with_copies = {p["a"] for p in planted.pairs}
    train_originals = [s for s in planted.samples if s.role == "original" and s.split == "train"]
    eligible = [s for s in train_originals if s.path not in with_copies | natural]
    n_flip = min(round(len(train_originals) * plant.flip_fraction), len(eligible))
    classes = sorted({s.label for s in planted.samples})
    flips = []
    for k in sorted(rng.choice(len(eligible), n_flip, replace=False).tolist()):
        sample = eligible[k]
        wrong = str(rng.choice([c for c in classes if c != sample.label]))
        stem = Path(sample.path).name
        sample.true_label, sample.label = sample.label, wrong
        if folders:
            sample.path = f"{sample.split}/{wrong}/{stem}"
        flips.append({"path": sample.path, "key": sample.key, "label": wrong,
                      "true_label": sample.true_label})  # fmt: skip
    return flips


def truth_of(
    name: str,
    seed: int,
    plant: PlantSettings,
    planted: Planted,
    flips: list[Any],
    natural: list[list[str]],
) -> dict[str, Any]:
    """truth.json: samples, planted pairs, leaks, groups, natural groups and label flips."""
    samples, pairs = planted.samples, planted.pairs
    groups: dict[str, list[str]] = {}
    for p in pairs:
        groups.setdefault(p["a"], [p["a"]]).append(p["b"])
    originals = [s for s in samples if s.role == "original"]
    counts = {
        "samples": len(samples),
        "originals": len(originals),
        "train_originals": sum(s.split == "train" for s in originals),
        "copies_in_train": sum(not p["leak"] for p in pairs),
        "leaks": sum(bool(p["leak"]) for p in pairs),
        "label_flips": len(flips),
        "classes": len({s.label for s in originals}),
    }
    return {
        "set": name,
        "seed": seed,
        "builder_version": BUILDER_VERSION,
        "plant": asdict(plant),
        "counts": counts,
        "samples": [asdict(s) for s in samples],
        "pairs": pairs,
        "leaks": [{"train": p["a"], "test": p["b"], "kind": p["kind"]} for p in pairs if p["leak"]],
        "groups": list(groups.values()),
        "natural_groups": natural,
        "label_flips": flips,
        "originals": [s.path for s in originals],
    }


def natural_groups(samples: list[Sample]) -> list[list[str]]:
    """Groups of two or more samples that are near copies by nature (`sources.natural_group`)."""
    out: dict[str, list[str]] = {}
    for s in samples:
        g = sources.natural_group(s.key)
        if g is not None:
            out.setdefault(g, []).append(s.path)
    return [m for m in out.values() if len(m) > 1]


@contextlib.contextmanager
def large_images_allowed() -> Iterator[None]:
    """Lift PIL's decompression-bomb limit while packaged photos (some are large) are read."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def make_originals(name: str, seed: int, quick: bool = False) -> list[sources.Original]:
    """The originals of image set `name`, small classes pooled, a few classes only when `quick`
    (ValueError for an unknown set)."""
    rng = np.random.default_rng(seed + ORIGINALS_STREAM)
    with large_images_allowed():
        if name == "diverse":
            found = pool_small_classes(sources.photo_originals(rng))
        elif name == "dense":
            found = pool_small_classes(sources.textile_originals(rng))
        else:
            raise ValueError(f"unknown image set {name!r}: expected diverse or dense")
    return few_per_class(found, rng) if quick else found


def few_per_class(items: list[Any], rng: np.random.Generator) -> list[Any]:
    """`QUICK_PER_CLASS` items (anything with a `label`) of `QUICK_CLASSES` classes drawn at
    random among those that have that many, in their original order."""
    counts = Counter(str(o.label) for o in items)
    big = sorted(c for c, n in counts.items() if n >= QUICK_PER_CLASS)
    chosen = set(rng.choice(big, min(QUICK_CLASSES, len(big)), replace=False).tolist())
    taken: Counter[str] = Counter()
    out = []
    for o in items:
        if o.label in chosen and taken[o.label] < QUICK_PER_CLASS:
            taken[o.label] += 1
            out.append(o)
    return out


def pool_small_classes(originals: list[sources.Original]) -> list[sources.Original]:
    """Originals of classes with fewer than `MIN_CLASS_ORIGINALS` members relabelled `other`."""
    counts = Counter(o.label for o in originals)
    return [
        o if counts[o.label] >= MIN_CLASS_ORIGINALS else dataclasses.replace(o, label=OTHER_CLASS)
        for o in originals
    ]


def write_set(out: Path, planted: Planted, truth: dict[str, Any]) -> None:
    """Write the images, then truth.json last (a set without truth.json is incomplete)."""
    tmp = out / "images.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for sample, data in zip(planted.samples, planted.data, strict=True):
        path = tmp / sample.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    shutil.rmtree(out / "images", ignore_errors=True)
    tmp.rename(out / "images")
    (out / "truth.json.partial").write_text(json.dumps(truth, indent=1))
    (out / "truth.json.partial").replace(out / "truth.json")


def build_set(
    name: str, seed: int, out: Path, plant: PlantSettings | None = None, quick: bool = False
) -> dict[str, Any]:
    """Build set `name` at `seed` into `out` (replacing what is there); returns its truth."""
    if name == "text":
        from bench.trust import text

        return text.build_text(seed, out, quick, plant)
    plant = plant or PlantSettings()
    planted = plant_copies(make_originals(name, seed, quick), seed, plant)
    natural = natural_groups(planted.samples)
    flips = flip_labels(planted, seed, plant, {p for g in natural for p in g})
    truth = truth_of(name, seed, plant, planted, flips, natural) | {"quick": quick}
    out.mkdir(parents=True, exist_ok=True)
    (out / "truth.json").unlink(missing_ok=True)
    write_set(out, planted, truth)
    return truth


def set_dir(root: Path, name: str, seed: int, quick: bool = False) -> Path:
    """Where set `name` at `seed` lives under the benchmark's results folder."""
    return root / f"{name}{'-quick' if quick else ''}-s{seed}"


def data_path(name: str, out: Path) -> Path:
    """What the flow reads in a built set: the imagefolder, or the text set's parquet file."""
    return out / ("passages.parquet" if name == "text" else "images")


def ensure_set(
    name: str, seed: int, out: Path, rebuild: bool = False, quick: bool = False
) -> dict[str, Any]:
    """The truth of the set in `out`, built first when missing, incomplete, stale or `rebuild`."""
    path = out / "truth.json"
    if path.is_file() and not rebuild:
        truth: dict[str, Any] = json.loads(path.read_text())
        same = (
            truth.get("set"),
            truth.get("seed"),
            truth.get("builder_version"),
            truth.get("quick"),
        )
        if same == (name, seed, BUILDER_VERSION, quick) and data_path(name, out).exists():
            return truth
    return build_set(name, seed, out, quick=quick)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.trust.build`: build one set and print its counts."""
    ap = argparse.ArgumentParser(prog="python -m bench.trust.build", description=__doc__)
    ap.add_argument("--set", required=True, choices=SETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a small set (a check that it runs)")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/trust/SET-sSEED")
    ap.add_argument("--rebuild", action="store_true", help="build again even when it exists")
    a = ap.parse_args(argv)
    out = a.out or set_dir(DEFAULT_ROOT, a.set, a.seed, a.quick)
    truth = ensure_set(a.set, a.seed, out, a.rebuild, a.quick)
    print(json.dumps({"set": a.set, "seed": a.seed, "dir": str(out), **truth["counts"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
