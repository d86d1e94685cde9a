"""The local side of a store on object storage: the folder where a run reads and writes the
store's side files (caches, labeling queue, reports, post-commit records), pulled from and pushed
to the bucket through its `Storage`.

A local store needs none of this: its side folder is the store folder itself, and `pull`/`push`
do nothing, so local runs read and write exactly the files they always did.

For a bucket (``s3://...``) the side folder is a local mirror per store URL under
``$LEANSET_CACHE_DIR/stores/<digest of the URL>`` (default ``~/.cache/leanset``):

* the embedding cache (``cache/embeddings``) holds content-addressed shards whose names are never
  reused, so a pull downloads only the names the mirror lacks and a push uploads only the shards
  written since (an incremental run on another machine downloads the cache once, then nothing);
* every other side file is rewritable: it is read and written in a folder of the process's own
  (a temporary one), a pull downloads it whole again, and a push uploads the
  files written since the pull, each checksum sidecar (``X.sum``) before its file, so a reader of
  the bucket sees the old bytes or the new bytes, each matching their seal (every PUT is whole).

Rewrites that must not interleave (the labeling queue) hold a lease in the bucket: an object
created with a conditional PUT, removed when done, taken over when older than `LEASE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from leanset.pipelines.fsutil import atomic_write_bytes
from leanset.pipelines.store.errors import StoreError
from leanset.pipelines.store.storage import Storage

CACHE_ENV = "LEANSET_CACHE_DIR"
LEASE_SECONDS = 600.0  # a lease older than this was left by a killed process
SEALS = ".sum"


def cache_home() -> Path:
    """Where leanset keeps local mirrors of bucket stores."""
    given = os.environ.get(CACHE_ENV)
    return Path(given).expanduser() if given else Path.home() / ".cache" / "leanset"


def mirror_folder(url: str) -> Path:
    """The local mirror of the bucket store at `url` (one per URL, shared by the runs here)."""
    key = hashlib.blake2b(url.rstrip("/").encode(), digest_size=8).hexdigest()
    return cache_home() / "stores" / key


class SideFolder:
    """The folder a store's side files are read and written in, and how it meets the bucket."""

    def __init__(self, storage: Storage, root: Path) -> None:
        self.storage = storage
        self.root = root
        self._stamps: dict[str, tuple[int, int]] = {}

    @classmethod
    def private(cls, storage: Storage) -> SideFolder:
        """For rewritable files: the store folder, or for a bucket a folder of this process's own
        (a pull here never overwrites what another process wrote and has not pushed yet)."""
        if not storage.remote:
            return cls(storage, Path(getattr(storage, "root", ".")))
        folder = Path(tempfile.mkdtemp(prefix="leanset-store-"))
        side = cls(storage, folder)
        weakref.finalize(side, shutil.rmtree, folder, True)
        return side

    @classmethod
    def shared(cls, storage: Storage) -> SideFolder:
        """For content-addressed caches: the store folder, or the mirror of the bucket store."""
        if not storage.remote:
            return cls(storage, Path(getattr(storage, "root", ".")))
        return cls(storage, mirror_folder(storage.show("").rstrip("/")))

    def pull(self, prefix: str, *, new_names_only: bool = False) -> None:
        """Bring the bucket's files under `prefix` here (a bucket store; else nothing).
        `new_names_only`: files whose names are never reused (content-addressed shards)."""
        if not self.storage.remote:
            return
        names = self.storage.list(prefix)
        for rel in sorted(names, key=_data_first):
            local = self.root / rel
            if new_names_only and local.is_file():
                self._stamps[rel] = _stamp(local)
                continue
            self._fetch(rel)
        if not new_names_only:
            self._drop_gone(prefix, set(names))
        self._stamp_all(prefix)

    def pull_file(self, rel: str) -> None:
        """Bring one file and its seal here (absent in the bucket: removed here too)."""
        if not self.storage.remote:
            return
        for name in (rel, rel + SEALS):
            try:
                self._fetch(name)
            except FileNotFoundError:
                (self.root / name).unlink(missing_ok=True)
                self._stamps.pop(name, None)

    def push(self, prefix: str) -> list[str]:
        """Upload the files under `prefix` (a folder, or one file and its seal) written here since
        the last pull or push, seals before their files; the names uploaded."""
        if not self.storage.remote:
            return []
        folder = self.root / prefix
        if folder.is_file():  # one file, and its seal when it has one
            seal = folder.with_name(folder.name + SEALS)
            found = [folder, seal] if seal.is_file() else [folder]
        else:
            found = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        changed = []
        for path in found:
            rel = path.relative_to(self.root).as_posix()
            if self._stamps.get(rel) != _stamp(path) and not path.name.startswith("."):
                changed.append(rel)
        for rel in sorted(changed, key=_seals_first):
            self.storage.write(rel, (self.root / rel).read_bytes())
            self._stamps[rel] = _stamp(self.root / rel)
        return changed

    @contextlib.contextmanager
    def leased(self, rel: str, what: str, wait_s: float = 120.0) -> Iterator[None]:
        """Hold the bucket lease `rel` (a bucket store; else nothing) for `what`."""
        if not self.storage.remote:
            yield
            return
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})
        deadline, delay = time.monotonic() + wait_s, 0.05
        while not self.storage.create(rel, body.encode()):
            if _stale(self.storage, rel):
                self.storage.delete(rel)
                continue
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{self.storage.show(rel)}: another process holds the lease for {what} "
                    f"(for over {wait_s:.0f} s); retry when it is done, or remove the object if "
                    f"that process is gone"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        try:
            yield
        finally:
            self.storage.delete(rel)

    def _fetch(self, rel: str) -> None:
        atomic_write_bytes(self.root / rel, self.storage.read(rel))
        self._stamps[rel] = _stamp(self.root / rel)

    def _drop_gone(self, prefix: str, names: set[str]) -> None:
        """Files under `prefix` the bucket no longer holds are removed here too."""
        folder = self.root / prefix
        for path in folder.rglob("*") if folder.is_dir() else []:
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and rel not in names and not path.name.startswith("."):
                path.unlink()
                self._stamps.pop(rel, None)

    def _stamp_all(self, prefix: str) -> None:
        folder = self.root / prefix
        for path in folder.rglob("*") if folder.is_dir() else []:
            if path.is_file():
                self._stamps[path.relative_to(self.root).as_posix()] = _stamp(path)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _seals_first(rel: str) -> tuple[str, int]:
    """Upload order: a file's seal before the file (the seal lists the old and the new digest)."""
    base = rel[: -len(SEALS)] if rel.endswith(SEALS) else rel
    return base, 0 if rel.endswith(SEALS) else 1


def _data_first(rel: str) -> tuple[str, int]:
    """Download order: a file before its seal (a seal read later is as new or newer)."""
    base = rel[: -len(SEALS)] if rel.endswith(SEALS) else rel
    return base, 1 if rel.endswith(SEALS) else 0


def _stale(storage: Storage, rel: str) -> bool:
    """A lease older than `LEASE_SECONDS` (its holder was killed)."""
    try:
        held = json.loads(storage.read(rel))
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(held, dict) and time.time() - float(held.get("at", 0)) > LEASE_SECONDS
