"""Checksums of the store's rewritable files (labeling tables, Label Studio sync state, the file-hash
cache, reports, after-commit records): each `X` is sealed by a sidecar `X.sum`.

The sidecar lists the digest of the bytes just written and of the bytes it replaces: it is renamed
into place before the file itself, so a kill between the two renames leaves a file that still
matches. A reader hashes the bytes first and hands them on (to polars, JSON, a browser) only when
they match, so a damaged Parquet file never reaches a parser. A file with no sidecar was written
before files were sealed and is trusted as it is (the next write seals it).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from leanset.pipelines.fsutil import atomic_write_bytes, digest
from leanset.pipelines.store.errors import IntegrityError

SUFFIX = ".sum"


def sum_path(path: Path) -> Path:
    """The sidecar holding a sealed file's digests."""
    return path.with_name(path.name + SUFFIX)


def write_sealed(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically, sealed: sidecar first (new and previous digest)."""
    path = Path(path)
    digests = [digest(data)]
    with contextlib.suppress(OSError):  # nothing there yet
        digests.append(digest(path.read_bytes()))
    record = {"blake2b": digests[:1], "previous": digests[1:], "size": len(data)}
    atomic_write_bytes(sum_path(path), (json.dumps(record, sort_keys=True) + "\n").encode())
    return atomic_write_bytes(path, data)


def problem(path: Path, raw: bytes) -> str | None:
    """Why `raw` (the bytes of `path`) does not match its seal; None when it does or is unsealed."""
    try:
        seal = sum_path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(seal.decode("utf-8"))
        allowed = [*record["blake2b"], *record["previous"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"its checksum file {sum_path(path).name} is damaged"
    if digest(raw) in allowed:
        return None
    return f"its bytes do not match its checksum ({sum_path(path).name})"


def read_sealed(path: str | Path, fix: str) -> bytes | None:
    """The bytes of a sealed file, checked (None when it does not exist); damage is an
    IntegrityError naming the file and `fix` (what to do)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    why = problem(path, raw)
    if why is not None:
        raise IntegrityError(f"{path} is damaged: {why}; {fix}")
    return raw


def check_file(path: Path) -> str | None:
    """`problem` of a file on disk, for `leanset verify` (None when missing or sound)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return problem(path, raw)
