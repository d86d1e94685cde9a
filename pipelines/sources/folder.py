"""An image folder read by leanset's own layout rule: `split/class/file` (or `class/file`).

`datasets`' imagefolder infers labels for the whole dataset at once: one file one level deeper, a
stray `train/x.png`, a flat `unlabeled/*.png` pool or a `\\` in a name makes it drop every label.
Here each file's place decides only its own label:

* the top folders are splits when one of them is a split name (`train`, `test`, `validation` and
  their synonyms, or a pool split such as `unlabeled`); otherwise the top folders are classes of
  one `train` split;
* the class is the folder right below the split (`split/class/...`); a file deeper down keeps that
  class, and a file directly in a split folder (or at the top) has no label;
* a split with no class folders is a pool: its samples are unlabeled, and the other splits keep
  their labels; a pool split's class folders are placeholders (never labels);
* files that do not fit (a file outside any class folder next to class folders, or deeper than
  `split/class/file`) are reported in a warning, by name, and keep their own label or none;
* a link whose target lies outside the dataset folder is never read: its sample is unreadable
  with the reason; a linked folder is not entered.

Each split becomes a `datasets.Dataset` with an undecoded `Image` column and, when any class
folder exists, a `ClassLabel` label column (class names sorted, from the labeled splits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("leanset.sources")

SPLIT_SYNONYMS = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
    "val": "validation",
    "test": "test",
    "testing": "test",
    "eval": "test",
    "evaluation": "test",
}


@dataclass
class FolderFiles:
    """Every image file of a folder, placed: split, class (or None), and what did not fit."""

    root: Path
    rows: dict[str, list[tuple[str, str | None]]] = field(
        default_factory=dict
    )  # split: (path, class)
    refused: dict[str, str] = field(default_factory=dict)  # path -> why it is not read
    misfits: list[str] = field(default_factory=list)  # "relative path (why)"
    skipped_links: list[str] = field(default_factory=list)


def open_folder(path: str, pool_splits: Sequence[str]) -> tuple[dict[str, Any], FolderFiles]:
    """{split: Dataset} of an image folder, and what its layout said about each file."""
    import datasets

    found = place_files(Path(path), pool_splits)
    classes = sorted(
        {
            c
            for split, rows in found.rows.items()
            if split not in pool_splits
            for _, c in rows
            if c is not None
        }
    )
    features: dict[str, Any] = {"image": datasets.Image(decode=False)}
    if classes:
        features["label"] = datasets.ClassLabel(names=classes)
    splits = {}
    for split in _split_order(list(found.rows), pool_splits):
        rows = found.rows[split]
        columns: dict[str, list[Any]] = {"image": [{"path": p, "bytes": None} for p, _ in rows]}
        if classes:
            columns["label"] = [None if split in pool_splits else c for _, c in rows]
        splits[split] = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    _report(found)
    return splits, found


def place_files(root: Path, pool_splits: Sequence[str]) -> FolderFiles:
    """Walk the folder (links to folders are not followed) and place each image file."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    real_root = root.resolve()
    found = FolderFiles(root)
    files: list[tuple[str, ...]] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in [d for d in dirs if (here / d).is_symlink()]:
            found.skipped_links.append(str((here / d).relative_to(root)))
            dirs.remove(d)
        for name in names:
            if name.startswith(".") or Path(name).suffix.lower() not in ImageFolder.EXTENSIONS:
                continue
            file = here / name
            files.append(file.relative_to(root).parts)
            problem = _link_problem(file, real_root) if file.is_symlink() else None
            if problem:
                found.refused[str(file)] = problem
    _place(found, sorted(files), pool_splits)
    return found


def _link_problem(file: Path, real_root: Path) -> str | None:
    """Why a linked image file is not read: a link loop, or a target outside the folder."""
    import errno

    try:
        os.stat(file)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"unreadable: a symbolic link loop ({file.name} leads back to itself)"
    target = Path(os.path.realpath(file))
    if not target.is_relative_to(real_root):
        return f"unreadable: a link to {target}, outside the dataset folder {real_root}"
    return None


def _place(found: FolderFiles, files: list[tuple[str, ...]], pool_splits: Sequence[str]) -> None:
    """Each file's split and class by the layout rule (see the module docstring)."""
    tops = {parts[0] for parts in files if len(parts) > 1}
    by_split = any(t in SPLIT_SYNONYMS or t in pool_splits for t in tops)
    depth = 1 if by_split else 0  # where the class folder is
    has_classes: dict[str, bool] = {}
    placed = []
    for parts in files:
        split = _split_of(parts, by_split)
        cls = parts[depth] if len(parts) > depth + 1 else None
        has_classes[split] = has_classes.get(split, False) or cls is not None
        placed.append((parts, split, cls))
    for parts, split, cls in placed:
        rel = "/".join(parts)
        if cls is None and has_classes[split]:
            found.misfits.append(f"{rel} (not in a class folder: no label)")
        elif len(parts) > depth + 2:
            found.misfits.append(f"{rel} (deeper than split/class/file: labelled {cls!r})")
        found.rows.setdefault(split, []).append((str(found.root.joinpath(*parts)), cls))


def _split_of(parts: tuple[str, ...], by_split: bool) -> str:
    if not by_split or len(parts) == 1:
        return "train"
    return SPLIT_SYNONYMS.get(parts[0], parts[0])


def _split_order(names: list[str], pool_splits: Sequence[str]) -> list[str]:
    """Splits in the order `datasets` gave them (train, validation, test first; every split by
    name when a pool split is present), so rows keep their positions."""
    if set(names) & set(pool_splits):
        return sorted(names)
    known = [s for s in ("train", "validation", "test") if s in names]
    return known + sorted(set(names) - set(known))


def _report(found: FolderFiles) -> None:
    if found.misfits:
        shown = "; ".join(found.misfits[:5]) + ("; ..." if len(found.misfits) > 5 else "")
        log.warning(
            "imagefolder %s: %d file(s) do not fit its layout (split/class/file), the other "
            "files keep their labels: %s",
            found.root,
            len(found.misfits),
            shown,
        )
    if found.skipped_links:
        log.warning(
            "imagefolder %s: linked folder(s) not read (a link may lead outside the dataset "
            "folder, or to files read twice): %s",
            found.root,
            ", ".join(found.skipped_links[:5]),
        )
    for path, why in list(found.refused.items())[:5]:
        log.warning("imagefolder %s: %s is %s", found.root, path, why)
