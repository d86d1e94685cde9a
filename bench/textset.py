"""A text classification set built offline: API documentation paragraphs of installed libraries.

Each row is the first paragraph of a public function's or class's docstring, labeled with the
library it comes from (numpy, scipy, sklearn, polars, torch, PIL, pyarrow). Libraries repeat some
paragraphs themselves (aliases, shared templates): those are natural exact duplicates. On top,
`plant` re-adds a share of train paragraphs as near copies (whitespace and punctuation edits, a
different hash, the same meaning), drawing long paragraphs more often than short ones, as
boilerplate in scraped text tends to be: a cut in samples then understates the cut in tokens.

    python -m bench.textset out.csv [--per-library 450] [--plant 0.15]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

LIBRARIES = ("numpy", "scipy", "sklearn", "polars", "torch", "PIL", "pyarrow")


def paragraphs(library: str, limit: int, max_modules: int = 40) -> list[str]:
    """First docstring paragraphs (>= 40 characters) of public callables, in a stable order."""
    top = importlib.import_module(library)
    modules = [top]
    for info in pkgutil.walk_packages(getattr(top, "__path__", []), library + "."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") or p in ("tests", "testing", "conftest") for p in parts):
            continue
        if len(modules) >= max_modules:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                modules.append(importlib.import_module(info.name))
        except Exception:  # noqa: BLE001 - optional submodules that need missing extras
            continue
    out: list[str] = []
    seen: set[int] = set()
    for mod in modules:
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            text = _first_paragraph(obj)
            if text:
                out.append(text)
    return out[:limit]


def _first_paragraph(obj: Any) -> str | None:
    try:
        doc = inspect.getdoc(obj)
    except Exception:  # noqa: BLE001 - objects whose __doc__ raises
        return None
    if not doc:
        return None
    text = " ".join(doc.strip().split("\n\n")[0].split())
    return text if len(text) >= 40 else None


def near_copy(text: str, rng: np.random.Generator) -> str:
    """The same paragraph with a light edit: doubled spaces, a trailing period, a changed case."""
    edits = [
        lambda t: t.replace(" ", "  ", 1),
        lambda t: t.rstrip(".") + " .",
        lambda t: t[:1].lower() + t[1:] if t[:1].isupper() else t[:1].upper() + t[1:],
    ]
    return str(edits[int(rng.integers(len(edits)))](text))


def build(per_library: int, plant: float, seed: int = 0) -> list[tuple[str, str, str]]:
    """(text, library, split) rows: 80/20 train/test by content hash, planted near copies in train."""
    rows = []
    for lib in LIBRARIES:
        for text in paragraphs(lib, per_library):
            h = int(hashlib.blake2b(text.encode(), digest_size=4).hexdigest(), 16)
            rows.append((text, lib, "test" if h % 5 == 0 else "train"))
    rng = np.random.default_rng(seed)
    train = [r for r in rows if r[2] == "train"]
    lengths = np.array([len(r[0]) for r in train], dtype=np.float64)
    n = int(plant * len(train))
    picks = rng.choice(len(train), size=n, replace=False, p=lengths / lengths.sum())
    rows += [(near_copy(train[i][0], rng), train[i][1], "train") for i in picks]
    return rows


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "split"])
        w.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--per-library", type=int, default=450)
    p.add_argument("--plant", type=float, default=0.15)
    args = p.parse_args(argv)
    rows = build(args.per_library, args.plant)
    write_csv(Path(args.out), rows)
    print(f"wrote {len(rows):,} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
