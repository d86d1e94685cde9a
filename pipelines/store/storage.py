"""Where a store's bytes live: a local folder or an object-storage URL, behind one small interface.

Every file a store reads or writes by itself (manifests, the near-pair index, queue rows, vector
shards, Delta commit files when checked) goes through a `Storage`; Delta tables are written by
deltalake itself, given `table_uri` and `delta_options`.

* `LocalStorage`: POSIX as before: a whole file appears at once (write to a temporary file,
  then rename), and the commit point is an exclusive create (`O_EXCL`).
* `ObjectStorage` (``s3://``, ``gs://``, ``az://`` and ``abfs://`` through obstore): an object
  appears whole on PUT by the object store's own guarantee, and the commit point is a
  conditional PUT (``If-None-Match: *``): of two runs creating the same manifest, the second
  gets `AlreadyExistsError` and so fails as a conflict. Credentials and endpoints come from the
  usual environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
  ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME`` ...) or `options`
  (flows.yaml's ``storage_options``), which win.

Each storage counts its requests and bytes (`traffic`), so a run can say what it cost.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from leanset.pipelines.fsutil import atomic_write_bytes, create_exclusive
from leanset.pipelines.store.errors import StoreError

OBJECT_SCHEMES = ("s3", "gs", "az", "abfs", "abfss")
_HTTP_KEYS = ("aws_allow_http", "allow_http")  # obstore takes these as a client option
_PAGE = 1000  # keys per listing page (S3's most): one counted "list" per page


def is_url(root: str | Path) -> bool:
    """Whether a store root is an object-storage URL (not a local path)."""
    scheme, sep, _ = str(root).partition("://")
    return bool(sep) and scheme.lower() in OBJECT_SCHEMES


@dataclass
class Traffic:
    """Requests a storage made and the bytes it moved (this process, since it was created)."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    def count(self, kind: str, read: int = 0, written: int = 0) -> None:
        """Record one request (in this storage's counts and in the process's, `PROCESS`)."""
        self.requests[kind] = self.requests.get(kind, 0) + 1
        self.bytes_in += read
        self.bytes_out += written
        if self is not PROCESS:
            PROCESS.count(kind, read, written)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "requests": dict(sorted(self.requests.items())),
            "bytes_read": self.bytes_in,
            "bytes_written": self.bytes_out,
        }


PROCESS = Traffic()  # every storage of this process together (what a whole run moved)


class LocalStorage:
    """A store folder on a local (or mounted) filesystem."""

    remote = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.traffic = Traffic()

    def path(self, rel: str) -> Path:
        """The local path of a store-relative name."""
        return self.root / rel

    def show(self, rel: str) -> str:
        """How messages name a file."""
        return str(self.root / rel)

    def read(self, rel: str) -> bytes:
        """A file's bytes (FileNotFoundError when absent)."""
        data = (self.root / rel).read_bytes()
        self.traffic.count("get", read=len(data))
        return data

    def write(self, rel: str, data: bytes) -> None:
        """Write a whole file: readers see the old one or the new one, never part of it."""
        atomic_write_bytes(self.root / rel, data)
        self.traffic.count("put", written=len(data))

    def create(self, rel: str, data: bytes) -> bool:
        """Create a file only if none exists (the commit point); False when one did."""
        self.traffic.count("put-if-absent", written=len(data))
        return create_exclusive(self.root / rel, data)

    def size(self, rel: str) -> int | None:
        """A file's size, or None when it is absent."""
        self.traffic.count("head")
        path = self.root / rel
        return path.stat().st_size if path.is_file() else None

    def list(self, prefix: str) -> list[str]:
        """Store-relative names of the files under a folder, sorted."""
        self.traffic.count("list")
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in folder.rglob("*") if p.is_file())

    def delete(self, rel: str) -> None:
        """Remove a file (absent is fine)."""
        self.traffic.count("delete")
        (self.root / rel).unlink(missing_ok=True)

    def ensure_root(self) -> None:
        """Create the store folder."""
        self.root.mkdir(parents=True, exist_ok=True)

    def table_uri(self, name: str) -> str:
        """Where deltalake finds a table."""
        return str(self.root / name)

    @property
    def delta_options(self) -> dict[str, str] | None:
        """deltalake's storage_options (none for a local folder)."""
        return None


class ObjectStorage:
    """A store under an object-storage URL (``s3://bucket/prefix`` ...), through obstore."""

    remote = True

    def __init__(self, url: str, options: dict[str, str] | None = None, quick: bool = False):
        """`quick`: a check before work, answered within seconds (one retry, short timeouts)
        rather than after obstore's minutes of retries."""
        try:
            from obstore.store import from_url
        except ImportError as exc:
            raise StoreError(
                f"store {url}: object storage needs obstore: pip install 'leanset[cloud]'"
            ) from exc
        self.url = url.rstrip("/")
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.traffic = Traffic()
        config = {k.lower(): v for k, v in self.options.items() if k.lower() not in _HTTP_KEYS}
        allow_http = _allow_http(self.options)
        client: dict[str, Any] = {"allow_http": True} if allow_http else {}
        retry: dict[str, Any] | None = None
        if quick:
            client |= {"connect_timeout": "5s", "timeout": "10s"}
            retry = {"max_retries": 1, "retry_timeout": timedelta(seconds=10)}
        try:
            self._store = from_url(
                self.url,
                config=config or None,  # type: ignore[arg-type]
                client_options=client or None,  # type: ignore[arg-type]
                retry_config=retry,  # type: ignore[arg-type]
            )
        except Exception as exc:  # obstore raises its own config errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"store {url}: cannot open it ({first}); {credentials_hint(url)}"
            ) from exc

    def show(self, rel: str) -> str:
        """How messages name an object."""
        return f"{self.url}/{rel}"

    def read(self, rel: str) -> bytes:
        """An object's bytes (FileNotFoundError when absent)."""
        import obstore

        with self._answer(rel):
            data = bytes(obstore.get(self._store, rel).bytes())
        self.traffic.count("get", read=len(data))
        return data

    def write(self, rel: str, data: bytes) -> None:
        """One PUT: the object appears whole or not at all."""
        import obstore

        with self._answer(rel):
            obstore.put(self._store, rel, data)
        self.traffic.count("put", written=len(data))

    def create(self, rel: str, data: bytes) -> bool:
        """A conditional PUT (If-None-Match: *); False when the object already existed."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        self.traffic.count("put-if-absent", written=len(data))
        try:
            with self._answer(rel):
                obstore.put(self._store, rel, data, mode="create")
        except AlreadyExistsError:
            return False
        return True

    def size(self, rel: str) -> int | None:
        """An object's size, or None when it is absent."""
        import obstore

        self.traffic.count("head")
        try:
            with self._answer(rel):
                return int(obstore.head(self._store, rel)["size"])
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        """Names of the objects under a prefix, sorted."""
        return sorted(str(o["path"]) for o in self._objects(prefix))

    def listing(self, prefix: str) -> dict[str, tuple[int, float]]:
        """{name: (size, last modified as a POSIX time)} of the objects under a prefix."""
        return {
            str(o["path"]): (int(o["size"]), o["last_modified"].timestamp())
            for o in self._objects(prefix)
        }

    def entries(self, prefix: str) -> dict[str, str]:
        """{name: ETag (or size and time when the store gives none)} of the objects under a
        prefix: what a mirror compares to know which objects changed."""
        return {
            str(o["path"]): str(o.get("e_tag") or f"{o['size']}@{o['last_modified']}")
            for o in self._objects(prefix)
        }

    def _objects(self, prefix: str) -> Iterator[Any]:
        """The object metadata under a prefix, one list request counted per page."""
        import obstore

        under = prefix.strip("/")
        self.traffic.count("list")
        pages = obstore.list(self._store, f"{under}/" if under else None, chunk_size=_PAGE)
        with self._answer(under):  # a page's request fails while the loop asks for it
            for k, page in enumerate(pages):
                if k:  # the first page was counted above (an empty listing is a request too)
                    self.traffic.count("list")
                yield from page

    @contextlib.contextmanager
    def _answer(self, rel: str) -> Iterator[None]:
        """The object store's own errors (no credentials, refused, unreachable) as one
        `StoreError` naming the object and where credentials come from; an absent object and a
        lost conditional PUT pass as they are (callers expect them)."""
        from obstore.exceptions import AlreadyExistsError, BaseError

        try:
            yield
        except (FileNotFoundError, AlreadyExistsError):
            raise
        except BaseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"{self.show(rel)}: the object store did not answer ({first[:300]}); "
                f"{credentials_hint(self.url)}"
            ) from None

    def check_access(self, write: bool) -> None:
        """One LIST request (and with `write` a PUT and a DELETE of an empty probe object under
        locks/): a `StoreError` naming the store and what failed when this machine cannot use it."""
        import obstore

        self.traffic.count("list")
        with self._answer(""):
            next(iter(obstore.list(self._store, None, chunk_size=1)), None)
        if write:
            probe = f"locks/.access-check-{uuid.uuid4().hex}"
            self.write(probe, b"")
            self.delete(probe)

    def signed_url(self, rel: str, seconds: float) -> str:
        """A presigned HTTPS GET URL of an object, valid `seconds` (signed here: no request)."""
        import obstore

        try:
            signer: Any = self._store  # S3, GCS or Azure (the schemes a store may have)
            return str(obstore.sign(signer, "GET", rel, timedelta(seconds=seconds)))
        except Exception as exc:  # obstore's own errors: no signing credentials, unsupported
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"{self.show(rel)}: cannot presign it ({first}); presigning needs the store's "
                "own signing credentials (an access key, a service account key, an account key)"
            ) from exc

    def delete(self, rel: str) -> None:
        """Remove an object (absent is fine)."""
        import obstore

        self.traffic.count("delete")
        with contextlib.suppress(FileNotFoundError), self._answer(rel):
            obstore.delete(self._store, rel)

    def ensure_root(self) -> None:
        """Nothing to create: a prefix exists once an object is under it."""

    def table_uri(self, name: str) -> str:
        """Where deltalake finds a table."""
        return f"{self.url}/{name}"

    @property
    def delta_options(self) -> dict[str, str]:
        """deltalake's storage_options: the given ones, plus conditional PUTs for its commits on
        S3 (two writers of one Delta version: one wins, the other gets a conflict)."""
        opts = dict(self.options)
        if self.url.startswith("s3://") and not any(k.lower() == "conditional_put" for k in opts):
            opts["conditional_put"] = "etag"
        if _allow_http(opts) and not any(k.lower() == "aws_allow_http" for k in opts):
            opts["AWS_ALLOW_HTTP"] = "true"
        return opts


_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_REGION, and "
    "AWS_ENDPOINT_URL for an S3-compatible store",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT)",
    "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or another AZURE_* "
    "credential; the account may also be in the URL: abfss://CONTAINER@ACCOUNT.dfs.core."
    "windows.net/...)",
}


def credentials_hint(url: str) -> str:
    """Where credentials for `url`'s object store come from (each scheme alike)."""
    scheme = url.partition("://")[0].lower()
    given = _CREDENTIALS["az" if scheme in ("az", "abfs", "abfss") else scheme]
    return f"credentials and endpoint come from {given}, or from storage_options"


def _allow_http(options: dict[str, str]) -> bool:
    """Plain HTTP endpoints (a test server, MinIO on a LAN): options or AWS_ALLOW_HTTP."""
    given = [v for k, v in options.items() if k.lower() in _HTTP_KEYS]
    value = given[0] if given else os.environ.get("AWS_ALLOW_HTTP", "")
    return value.strip().lower() in ("1", "true", "yes")


Storage = LocalStorage | ObjectStorage


def storage_problem(url: str, options: dict[str, str]) -> str | None:
    """Why obstore refuses these options for `url` (an unknown key, a bad value), else None."""
    try:
        ObjectStorage(url, options)
    except StoreError as exc:
        return str(exc).removeprefix(f"store {url}: ")
    return None


def storage_for(root: str | Path, options: dict[str, str] | None = None) -> Storage:
    """The storage of a store root: an object-storage URL or a local folder."""
    if is_url(root):
        return ObjectStorage(str(root), options)
    if options:
        raise StoreError(f"store {root}: storage_options apply to object-storage URLs only")
    return LocalStorage(root)
