"""The trust benchmark's text set: documentation passages that ship with Python and its packages.

    python -m bench.trust.build --set text --seed 0 [--quick]

Passages (the label is the area they document):

* `language`: the language reference topics behind `help()` (`pydoc_data.topics`), cut into
  passages at paragraph boundaries;
* standard-library areas (`STDLIB_AREAS`) and library areas (`LIBRARY_AREAS`: numpy, polars,
  torch, scikit-learn): the first passage of each public function's, class's and method's own
  docstring, plus the passages of each module's docstring.

The areas overlap on purpose (files and concurrency around processes, numeric and arrays, neural
and ml), so a probe learns them well but not perfectly. Templated docstrings that are nearly the
same text (a function and its method twin; `os` functions sharing a paragraph) are found by
character 5-gram overlap (`NATURAL_JACCARD`, `NATURAL_CONTAINMENT`) and kept once, so that the
only near copies in the set are the planted ones.

Planting is the image sets' (bench/trust/build.py: the same fractions, roles and label-flip
stream) with edits for kinds (`EDITS`): re-flowed whitespace, other markup, a sentence dropped,
sentences or paragraphs swapped, truncated, typos, a site header or footer, case-folded, and two
edits combined; `exact` copies are byte-identical. Written: `DIR/passages.parquet` (`id`, `text`,
`label`, `split`; rows in id order, ids random hex) and `DIR/truth.json`, where a sample's `path`
is its id.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bench.trust import build

PER_AREA = 90  # originals per area at most (full mode)
MIN_CHARS, MAX_CHARS = 200, 1200
NATURAL_JACCARD, NATURAL_CONTAINMENT = 0.5, 0.8

STDLIB_AREAS: dict[str, tuple[str, ...]] = {
    "text": ("re", "string", "textwrap", "difflib", "unicodedata", "codecs", "html.parser",
             "gettext", "locale", "shlex"),
    "numeric": ("math", "cmath", "decimal", "fractions", "statistics", "random", "numbers",
                "operator", "bisect", "heapq", "itertools"),
    "files": ("os", "os.path", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "stat",
              "filecmp", "io", "fileinput", "mmap"),
    "concurrency": ("threading", "multiprocessing", "multiprocessing.pool", "asyncio.tasks",
                    "asyncio.locks", "asyncio.queues", "asyncio.events", "concurrent.futures",
                    "queue", "subprocess", "sched", "selectors", "signal"),
    "network": ("socket", "ssl", "http.client", "http.server", "http.cookies",
                "http.cookiejar", "urllib.request", "urllib.parse", "smtplib", "ftplib",
                "ipaddress", "xmlrpc.client", "imaplib", "socketserver"),
    "formats": ("json", "csv", "pickle", "shelve", "sqlite3", "xml.etree.ElementTree",
                "configparser", "zipfile", "tarfile", "gzip", "bz2", "lzma", "base64",
                "struct", "plistlib", "zlib", "binascii", "mailbox"),
    "devtools": ("unittest.case", "unittest.mock", "doctest", "pdb", "bdb", "logging",
                 "logging.handlers", "traceback", "inspect", "dis", "timeit", "pstats",
                 "warnings", "trace", "tracemalloc", "ast", "argparse"),
}  # fmt: skip
LIBRARY_AREAS: dict[str, tuple[str, ...]] = {
    "arrays": ("numpy", "numpy.linalg", "numpy.fft", "numpy.ma"),
    "dataframes": ("polars",),
    "neural": ("torch.nn", "torch.nn.functional", "torch.optim", "torch.optim.lr_scheduler",
               "torch.utils.data"),
    "ml": ("sklearn.linear_model", "sklearn.ensemble", "sklearn.svm", "sklearn.cluster",
           "sklearn.decomposition", "sklearn.preprocessing", "sklearn.model_selection",
           "sklearn.metrics", "sklearn.neighbors", "sklearn.tree", "sklearn.manifold",
           "sklearn.impute", "sklearn.mixture"),
}  # fmt: skip
AREAS = ("language", *STDLIB_AREAS, *LIBRARY_AREAS)
QUICK_AREAS = ("language", "numeric", "formats")  # cheap to import, and distinct enough


# -- the passages ------------------------------------------------------------------------------


def chunks(text: str) -> list[str]:
    """Passages of MIN_CHARS..MAX_CHARS characters, cut at paragraph boundaries."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n"))]
    out, current = [], ""
    for para in (p for p in paragraphs if p):
        if current and len(current) + 2 + len(para) > MAX_CHARS:
            out.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        out.append(current)
    return [c[:MAX_CHARS] for c in out if len(c) >= MIN_CHARS]


def own_doc(obj: object) -> str | None:
    """An object's own docstring (never an inherited one), dedented, or None."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _documented(module: Any) -> Iterator[tuple[str, object]]:
    """(qualified name, object) of the public classes, routines and methods a module defines."""
    names = sorted(getattr(module, "__all__", None) or vars(module))
    home = module.__name__.split(".")[0]
    for name in (n for n in names if not n.startswith("_")):
        try:
            obj = getattr(module, name, None)
        except ImportError:
            continue
        owner = str(getattr(obj, "__module__", "") or "").split(".")[0]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or owner not in (home, f"_{home}"):
            continue
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for member, value in sorted(vars(obj).items()):
                if not member.startswith("_") and inspect.isroutine(value):
                    yield f"{module.__name__}.{name}.{member}", value


def module_passages(module_name: str) -> Iterator[tuple[str, str]]:
    """(origin, passage): the module docstring's passages, then one per documented object."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
    for k, text in enumerate(chunks(own_doc(module) or "")):
        yield f"module:{module_name}#{k}", text
    for qualname, obj in _documented(module):
        doc = own_doc(obj)
        parts = chunks(doc) if doc else []
        if parts:
            yield f"doc:{qualname}", parts[0]


def area_passages(area: str) -> Iterator[tuple[str, str]]:
    """(origin, passage) of one area, in a fixed order."""
    if area == "language":
        from pydoc_data.topics import topics

        for name in sorted(topics):
            for k, text in enumerate(chunks(topics[name])):
                yield f"topic:{name}#{k}", text
        return
    for module_name in {**STDLIB_AREAS, **LIBRARY_AREAS}[area]:
        yield from module_passages(module_name)


def one_per_natural_group(items: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(origin, area, text) items with all but the first of each group of near-identical texts
    (5-gram Jaccard or containment at the NATURAL_* levels, transitively) left out."""
    from scipy.sparse.csgraph import connected_components

    from leanset.dedup.lexical import shingle_matrix

    x = shingle_matrix([t for _, _, t in items]).astype(np.float32)
    inter = (x @ x.T).tocoo()
    size = np.asarray(x.sum(axis=1)).ravel()
    a, b, both = inter.row, inter.col, inter.data
    union = size[a] + size[b] - both
    close = (both / np.maximum(union, 1) >= NATURAL_JACCARD) | (
        both / np.maximum(np.minimum(size[a], size[b]), 1) >= NATURAL_CONTAINMENT
    )
    from scipy import sparse

    graph = sparse.coo_matrix((np.ones(int(close.sum())), (a[close], b[close])), inter.shape)
    _, comp = connected_components(graph, directed=False)
    first = {int(c): i for i, c in reversed(list(enumerate(comp.tolist())))}
    return [items[i] for i in sorted(first.values())]


def text_originals(rng: np.random.Generator, quick: bool) -> list[tuple[str, str, str]]:
    """(origin, area, text) of the originals: up to PER_AREA per area (`quick`: a few areas,
    `build.QUICK_PER_CLASS` each), exact and natural near repeats kept once."""
    areas = QUICK_AREAS if quick else AREAS
    per_area = build.QUICK_PER_CLASS if quick else PER_AREA
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    for area in areas:
        found = []
        for origin, text in area_passages(area):
            norm = " ".join(text.split())
            if norm not in seen:
                seen.add(norm)
                found.append((origin, area, text))
        found = one_per_natural_group(found)
        if len(found) > per_area:
            found = [found[i] for i in np.sort(rng.choice(len(found), per_area, replace=False))]
        out += found
    return one_per_natural_group(out)


# -- the edits ---------------------------------------------------------------------------------

Edit = Callable[[str, random.Random], str]
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")


def reflow(text: str, rng: random.Random) -> str:
    """Paragraphs re-wrapped at another width, or the passage on one line."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    if rng.random() < 0.35:
        return " ".join(paragraphs)
    return "\n\n".join(textwrap.fill(p, rng.randint(48, 110)) for p in paragraphs)


def markup(text: str, rng: random.Random) -> str:
    """Rendered with other markup: reST literals as Markdown code, a heading or bold first line."""
    out = re.sub(r"``([^`]+)``", r"`\1`", text)
    out = re.sub(r":(?:func|class|meth|attr|mod|data|exc|ref):`([^`]+)`", r"`\1`", out)
    first, _, rest = out.partition("\n")
    head = f"## {first.rstrip('.')}" if rng.random() < 0.5 else f"**{first.rstrip('.')}.**"
    return f"{head}\n{rest}" if rest else head


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text) if s]


def drop_sentence(text: str, rng: random.Random) -> str:
    """One sentence other than the first, of at most a third of the passage, left out."""
    parts = _sentences(text)
    small = [k for k in range(1, len(parts)) if len(parts[k]) <= len(text) / 3]
    if not small:
        return truncate(text, rng)
    k = rng.choice(small)
    return " ".join(parts[:k] + parts[k + 1 :])


def reorder(text: str, rng: random.Random) -> str:
    """Two neighbouring paragraphs (or sentences, in a one-paragraph passage) swapped."""
    sep = "\n\n" if "\n\n" in text else " "
    parts = text.split("\n\n") if sep == "\n\n" else _sentences(text)
    if len(parts) < 2:
        return truncate(text, rng)
    i = rng.randrange(len(parts) - 1)
    parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return sep.join(parts)


def truncate(text: str, rng: random.Random) -> str:
    """Cut to 55-85% of its length at a word boundary, sometimes with an ellipsis."""
    cut = int(len(text) * rng.uniform(0.55, 0.85))
    space = text.rfind(" ", 0, cut)
    return text[: space if space > 0 else cut].rstrip() + rng.choice(["", "...", " [...]"])


def typos(text: str, rng: random.Random) -> str:
    """About one typo per 120 characters: two letters swapped, one dropped or one doubled."""
    chars = list(text)
    words = [m.span() for m in re.finditer(r"[A-Za-z]{4,}", text)]
    for start, end in rng.sample(words, min(max(2, len(text) // 120), len(words))):
        i = rng.randrange(start, end - 1)
        op = rng.randrange(3)
        if op == 0:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            chars[i] = "" if op == 1 else chars[i] * 2
    return "".join(chars)


_HEADERS = ("Documentation | version {v} | Search | Index", "Skip to main content\nHome > {v}",
            "Previous topic | Next topic | This page")  # fmt: skip
_FOOTERS = ("Copyright {y}, the contributors. Last updated on {y}-{m:02d}-11.",
            "Was this page helpful? Yes / No", "Show source | Report a bug | Built {y}")  # fmt: skip


def boilerplate(text: str, rng: random.Random) -> str:
    """A site's header, footer or both around the passage."""
    fill = {"v": f"{rng.randint(1, 9)}.{rng.randint(0, 20)}", "y": rng.randint(2001, 2025),
            "m": rng.randint(1, 12)}  # fmt: skip
    where = rng.randrange(3)
    head = rng.choice(_HEADERS).format(**fill) + "\n\n" if where != 1 else ""
    foot = "\n\n" + rng.choice(_FOOTERS).format(**fill) if where != 0 else ""
    return head + text + foot


def case(text: str, rng: random.Random) -> str:
    """All lower case (or, now and then, all upper case)."""
    return text.lower() if rng.random() < 0.8 else text.upper()


def combo(text: str, rng: random.Random) -> str:
    """Two different edits, one after the other."""
    first, second = rng.sample(["reflow", "markup", "drop_sentence", "typos", "boilerplate"], 2)
    return EDITS[second](EDITS[first](text, rng), rng)


EDITS: dict[str, Edit] = {
    "reflow": reflow,
    "markup": markup,
    "drop_sentence": drop_sentence,
    "reorder": reorder,
    "truncate": truncate,
    "typos": typos,
    "boilerplate": boilerplate,
    "case": case,
    "combo": combo,
}
KINDS: tuple[str, ...] = ("exact", *EDITS)


def edited(kind: str, text: str, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """A copy of `text` of `kind` (never byte-identical unless `exact`) and the edit's seed."""
    if kind == "exact":
        return text, {}
    seed = int(rng.integers(2**31))
    out = EDITS[kind](text, random.Random(seed))
    return (out if out != text else out + "\n"), {"edit_seed": seed}


# -- the set -----------------------------------------------------------------------------------


def plant_texts(
    originals: list[tuple[str, str, str]], seed: int, plant: build.PlantSettings
) -> build.Planted:
    """Every original with its split, and its planted copies (as build.plant_copies does)."""
    rng = np.random.default_rng(seed)
    roles = build.choose_roles(len(originals), plant, rng)
    out = build.Planted([], [], [])
    for i, (origin, area, text) in enumerate(originals):
        split = "test" if roles.is_test[i] else "train"
        base = build.Sample(
            f"t{build.file_stem(seed, origin, 'orig')}", split, area, "original", origin
        )
        out.samples.append(base)
        out.data.append(text.encode())
        for c, (csplit, kind) in enumerate(build.copy_targets(i, roles, plant, rng)):
            copy_text, params = edited(kind, text, rng)
            cid = f"t{build.file_stem(seed, origin, f'copy{c}')}"
            out.samples.append(
                build.Sample(cid, csplit, area, "copy", origin, base.path, kind, params)
            )
            out.data.append(copy_text.encode())
            out.pairs.append({"a": base.path, "b": cid, "kind": kind, "leak": csplit == "test"})
    return out


def build_text(
    seed: int, out: Path, quick: bool = False, plant: build.PlantSettings | None = None
) -> dict[str, Any]:
    """Build the text set at `seed` into `out` (replacing what is there); returns its truth."""
    plant = plant or build.PlantSettings(kinds=KINDS)
    originals = text_originals(np.random.default_rng(seed + build.ORIGINALS_STREAM), quick)
    planted = plant_texts(originals, seed, plant)
    flips = build.flip_labels(planted, seed, plant, set(), folders=False)
    truth = build.truth_of("text", seed, plant, planted, flips, []) | {
        "quick": quick,
        "match_on": "sample_id",
    }
    rows = sorted(zip(planted.samples, planted.data, strict=True), key=lambda sd: sd[0].path)
    table = pl.DataFrame(
        {
            "id": [s.path for s, _ in rows],
            "text": [d.decode() for _, d in rows],
            "label": [s.label for s, _ in rows],
            "split": [s.split for s, _ in rows],
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "truth.json").unlink(missing_ok=True)
    table.write_parquet(out / "passages.parquet")
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth
