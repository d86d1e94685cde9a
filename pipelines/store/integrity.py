"""Checksums of what a version reads, and their checks: the manifest's own, its Delta commits'
tokens, and every data file's bytes.

A manifest records (`files`) the blake2b digest of each Delta data file and of the Delta commit
file its version reads, and (`checksum`) the digest of its own content. Readers check a version the
first time they read it in a process (`check_version_table`); a data file is hashed once per
process for as long as its size and modification time stay the same. `leanset verify STORE`
(`leanset.pipelines.store.verify`) checks everything at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from leanset.pipelines.fsutil import digest, digest_file
from leanset.pipelines.store.errors import IntegrityError
from leanset.pipelines.store.storage import LocalStorage, Storage

MANIFEST_FIELDS_WITH_CHECKSUM = ("files",)  # a manifest holding these must carry a checksum
_HASHED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest, this process
_CHECKED: set[tuple[str, str, int, str]] = set()  # (store, table, delta version, commit) done
VERIFY_HINT = "`leanset verify STORE` lists every damaged file"


def serialise(manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest is written as (its checksum last, over everything else)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    plain = json.loads(json.dumps(body, default=str))  # what a reader will parse back
    full = {**plain, "checksum": manifest_checksum(plain)}
    return (json.dumps(full, indent=2, sort_keys=True) + "\n").encode()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """Digest of a parsed manifest's content without its `checksum` field."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return digest(json.dumps(body, indent=2, sort_keys=True).encode())


def parse_manifest(path: str | Path, raw: bytes) -> dict[str, Any]:
    """A manifest's JSON, checked against its own checksum; damage is an IntegrityError."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IntegrityError(
            f"manifest {path} is unreadable (not UTF-8 text: byte 0x{raw[exc.start]:02x} at "
            f"offset {exc.start}); {_restore(path)}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"manifest {path} is unreadable ({exc}); {_restore(path)}") from exc
    if not isinstance(data, dict):
        raise IntegrityError(f"manifest {path} is unreadable (not a JSON object); {_restore(path)}")
    recorded = data.get("checksum")
    if recorded is None:
        if any(k in data for k in MANIFEST_FIELDS_WITH_CHECKSUM):
            raise IntegrityError(f"manifest {path} lost its checksum field; {_restore(path)}")
        return data  # written before manifests carried checksums
    if recorded != manifest_checksum(data):
        raise IntegrityError(
            f"manifest {path} is damaged: its content does not match its checksum; {_restore(path)}"
        )
    return data


def _restore(path: str | Path) -> str:
    return (
        f"restore {str(path).rsplit('/', 1)[-1]} from a backup of the store's manifests/ folder (the version cannot "
        f"be skipped: its number would be reused); {VERIFY_HINT}"
    )


# ---------------------------------------------------------------- recording


def table_files(
    storage: Storage, table: str, delta_version: int, added: set[str]
) -> dict[str, Any]:
    """What a manifest records of one table: the digest of its Delta commit file and of each data
    file the version reads."""
    return {
        "delta_log": digest(storage.read(_log_file(table, delta_version))),
        "data": {rel: _digest(storage, f"{table}/{rel}") for rel in sorted(added)},
    }


def _digest(storage: Storage, rel: str) -> str:
    """A file's digest: streamed from disk, or one GET of the object."""
    if isinstance(storage, LocalStorage):
        return digest_file(storage.path(rel))
    return digest(storage.read(rel))


def _log_file(table: str, delta_version: int) -> str:
    return f"{table}/_delta_log/{delta_version:020d}.json"


# ---------------------------------------------------------------- checking


def check_version_table(
    storage: Storage, table: str, manifest: dict[str, Any], files: list[tuple[str, int]]
) -> None:
    """The version's Delta commit is the one its manifest made, and its data files are the ones
    it recorded, byte for byte (`files`: (relative path, size) from the Delta log).

    Done once per (table, Delta version, commit) in a process."""
    delta_version = int(manifest["tables"][table])
    key = (storage.show(""), table, delta_version, str(manifest.get("commit")))
    if key in _CHECKED:
        return
    version = manifest["version"]
    _check_commit_token(storage, table, delta_version, manifest)
    recorded = (manifest.get("files") or {}).get(table)
    if recorded is not None:
        _check_data_files(storage, table, version, files, recorded)
    _CHECKED.add(key)


def _check_commit_token(
    storage: Storage, table: str, delta_version: int, m: dict[str, Any]
) -> None:
    """The Delta commit a manifest names carries the manifest's commit token (and digest)."""
    path, log = storage.show(table), storage.show(_log_file(table, delta_version))
    version, token = m["version"], m.get("commit")
    try:
        raw = storage.read(_log_file(table, delta_version))
    except FileNotFoundError:
        return  # folded into a Delta checkpoint: the data files' checksums still decide
    found = _token_of(raw)
    if token is not None and found != token:
        raise IntegrityError(
            f"version {version}: its manifest names Delta version {delta_version} of {path}, but "
            f"that Delta commit was written by another leanset commit ({found or 'none'}, not "
            f"{token}); the manifest's tables.{table} was edited or damaged: restore "
            f"{Path('manifests') / f'v{version:06d}.json'} from a backup; {VERIFY_HINT}"
        )
    recorded = ((m.get("files") or {}).get(table) or {}).get("delta_log")
    if recorded is not None and digest(raw) != recorded:
        raise IntegrityError(
            f"version {version}: Delta commit file {log} does not match the checksum its "
            f"manifest recorded (damaged on disk); restore it from a backup of {path}; "
            f"{VERIFY_HINT}"
        )


def _token_of(raw: bytes) -> str | None:
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            action = json.loads(line)
        except json.JSONDecodeError:
            continue
        info = action.get("commitInfo") if isinstance(action, dict) else None
        if isinstance(info, dict):
            token = info.get("leanset_commit")
            return token if isinstance(token, str) else None
    return None


def _check_data_files(
    storage: Storage,
    table: str,
    version: int,
    files: list[tuple[str, int]],
    recorded: dict[str, Any],
) -> None:
    """Every data file matches the digest the manifest recorded; the list is the recorded one."""
    data = recorded.get("data") or {}
    path = storage.show(table)
    names = {unquote(rel) for rel, _ in files}
    if names != set(data):
        extra = sorted(names - set(data)) or sorted(set(data) - names)
        raise IntegrityError(
            f"version {version}: the Delta log of {path} lists other data files than its "
            f"manifest recorded (e.g. {extra[0]}); the Delta log or the manifest was changed: "
            f"restore both from a backup; {VERIFY_HINT}"
        )
    for rel in sorted(names):
        file = storage.show(f"{table}/{rel}")
        if stored_digest(storage, f"{table}/{rel}") != data[rel]:
            raise IntegrityError(
                f"version {version}: data file {file} does not match the checksum its manifest "
                f"recorded (damaged on disk); restore it from a backup of {path} (versions that "
                f"do not read it are unaffected); {VERIFY_HINT}"
            )


def stored_digest(storage: Storage, rel: str) -> str:
    """A stored file's digest: a local file's once per process (see `hashed`), an object's read."""
    if isinstance(storage, LocalStorage):
        return hashed(storage.path(rel))
    return digest(storage.read(rel))


def hashed(file: Path) -> str:
    """A file's digest, computed once per process while its size and mtime stay the same."""
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = digest_file(file)
    return _HASHED[key]


def forget() -> None:
    """Drop this process's memory of checked versions and hashed files (tests, `verify`)."""
    _HASHED.clear()
    _CHECKED.clear()
