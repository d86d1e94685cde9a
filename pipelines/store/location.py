"""Where a store may live: never the source, inside it, above it, or where the source's patterns
would read the store's own files; never `/` or a non-empty folder that is not a store."""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path

from leanset.pipelines.config import SourceSettings
from leanset.pipelines.store.errors import StoreError
from leanset.pipelines.store.layout import StoreLayout
from leanset.pipelines.store.storage import is_url


def check_store_location(store: str | Path, source: SourceSettings) -> None:
    """Refuse a store path that would mix the store with the data it cleans, or with other files;
    the message names both paths and what to do."""
    if is_url(store):
        _check_prefixes(str(store), source)
        return
    path = Path(store).expanduser().resolve()
    if path == Path(path.anchor):
        raise StoreError(f"store {store}: the filesystem root cannot be a store; {_FIX}")
    if source.type in ("imagefolder", "disk") and source.path:
        _check_source_root(path, Path(source.path).expanduser().resolve(), source.type)
    for pattern in source.data_files or []:
        _check_pattern(path, pattern)
    _check_folder(path, store)


def _check_prefixes(url: str, source: SourceSettings) -> None:
    """A bucket store and a bucket source must not hold each other (same rule as folders)."""
    store = url.rstrip("/") + "/"
    for given in [source.path or "", *(source.data_files or [])]:
        if not is_url(given):
            continue
        fixed = re.split(r"[*?\[]", given, maxsplit=1)[0]  # the part before any wildcard
        if fixed.startswith(store) or store.startswith(fixed.rstrip("/") + "/") or fixed == url:
            raise StoreError(f"store {url} and the source {given} overlap; {_FIX}")


def check_writable(store: str | Path, why: str) -> None:
    """Refuse, before any work, a store this process cannot write (read-only disk or mount,
    immutable folder, no permission): a file is created and removed to find out. `why`: what
    would write. An object-storage store is not probed (its bucket refuses at the write)."""
    if is_url(store):
        return
    root = Path(store).expanduser().absolute()
    folder = next((p for p in (root, *root.parents) if p.is_dir()), Path(root.anchor))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".leanset-write-check-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise StoreError(
            f"store {store} cannot be written ({folder}: {exc.strerror or exc}); {why}: make it "
            f"writable (remount read-write, fix its permissions) or copy the store somewhere "
            f"writable"
        ) from exc


_FIX = "give `store:` a new folder (or an existing store) outside the source"


def _check_folder(path: Path, given: str | Path) -> None:
    """An existing folder must be a store (or empty)."""
    if not path.is_dir():
        return
    entries = [p.name for p in path.iterdir() if not p.name.startswith(".")]
    if entries and not set(entries) & set(StoreLayout.of(path).entries()):
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise StoreError(
            f"store {given}: {path} is a folder holding other files ({shown}), not a leanset "
            f"store; {_FIX}"
        )


def _check_source_root(path: Path, root: Path, kind: str) -> None:
    where = f"the {kind} source {root}"
    if path == root:
        raise StoreError(f"store {path} is {where} itself; {_FIX}")
    if path.is_relative_to(root):
        raise StoreError(
            f"store {path} is inside {where}: the next run would read the store's files as "
            f"samples; {_FIX}"
        )
    if root.is_relative_to(path):
        raise StoreError(f"store {path} holds {where}; {_FIX}")


def _check_pattern(path: Path, pattern: str) -> None:
    """No file the source matches lies in the store, and no file the store writes would match."""
    for hit in glob.glob(pattern, recursive=True):
        found = Path(hit).resolve()
        if found == path or found.is_relative_to(path):
            raise StoreError(f"store {path} holds source file {hit}; {_FIX}")
    regex = _glob_regex(str(Path(pattern).expanduser()))
    for written in StoreLayout.of(path).sample_files():
        if regex.fullmatch(str(written)) or regex.fullmatch(str(written.resolve())):
            raise StoreError(
                f"store {path}: source.data_files pattern {pattern} matches files the store "
                f"writes (such as {written}), so the next run would read them as samples; {_FIX}"
            )


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex: `**` spans folders, `*` and `?` do not, `[...]` is a class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", i + 1)) > i:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))
