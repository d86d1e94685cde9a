"""`leanset verify STORE`: every stored file checked against what its manifest recorded.

Manifests against their own checksums; each version's Delta commits against the manifest's commit
token and digest; each data file, near-pair index and vector shard against its recorded digest.
Caches (embedding shards, file hashes) are checked too, but a damaged cache is only a note: it is
recomputed on the next run. Every finding names the file and what to do.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from leanset.pipelines.store import integrity
from leanset.pipelines.store.errors import StoreError
from leanset.pipelines.store.layout import EMBEDDINGS, FILE_HASHES
from leanset.pipelines.store.versions import Store, check_table_files

Severity = Literal["damaged", "note"]


@dataclass(frozen=True)
class Finding:
    """One problem: the file, what is wrong, and what to do."""

    severity: Severity
    path: str
    problem: str


@dataclass
class Verification:
    """What `verify_store` checked and found."""

    store: str
    versions: list[int] = field(default_factory=list)
    files_checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No damaged file (notes about caches do not count)."""
        return not any(f.severity == "damaged" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def verify_store(root: str | Path, storage_options: dict[str, str] | None = None) -> Verification:
    """Check every manifest, table file, index and cache of the store at `root` (a folder or an
    object-storage URL)."""
    store = Store(root, storage_options)
    names = [
        n for n in store.storage.list("manifests") if re.fullmatch(r"manifests/v[^/]*\.json", n)
    ]
    if not names and (store.storage.remote or not store.layout.manifests.is_dir()):
        raise StoreError(f"{root}: no store here (no manifests/ folder written by `leanset run`)")
    integrity.forget()  # hash everything again, whatever this process read before
    out = Verification(store=store.where)
    for name in names:
        manifest = _manifest(store, name, out)
        if manifest is not None:
            out.versions.append(int(manifest["version"]))
            _version(store, manifest, out)
    _caches(store, out)
    _sealed_files(store, out)
    return out


def _manifest(store: Store, name: str, out: Verification) -> dict[str, Any] | None:
    out.files_checked += 1
    shown = store.storage.show(name)
    try:
        return integrity.parse_manifest(shown, store.storage.read(name))
    except (StoreError, OSError) as exc:
        out.findings.append(Finding("damaged", shown, str(exc)))
        return None


def _version(store: Store, m: dict[str, Any], out: Verification) -> None:
    """One version's tables, pair index and vector shards."""
    for table in m.get("tables", {}):
        path = store.storage.show(table)
        try:
            files = check_table_files(store.storage, table, m["tables"][table], m["version"])
            out.files_checked += len(files) + 1
            integrity.check_version_table(store.storage, table, m, files)
        except StoreError as exc:
            out.findings.append(Finding("damaged", path, str(exc)))
    rel, want = (m.get("index") or {}).get("pairs"), (m.get("index") or {}).get("pairs_digest")
    if rel and want:
        _recorded_file(store, rel, want, out, _index_fix(m["version"]))
    for rel, want in ((m.get("files") or {}).get("vectors") or {}).items():
        fix = (
            f"version {m['version']} cannot be read without it: restore it from a backup of the "
            f"store's vectors/ folder"
        )
        _recorded_file(store, rel, want, out, fix)


def _index_fix(version: int) -> str:
    return (
        f"version {version}'s near pairs are recomputed by the next run (safe to delete; "
        f"nothing else reads it)"
    )


def _recorded_file(store: Store, rel: str, want: str, out: Verification, fix: str) -> None:
    out.files_checked += 1
    path = store.storage.show(rel)
    try:
        ok = integrity.stored_digest(store.storage, rel) == want
        why = "does not match the checksum its manifest recorded"
    except OSError as exc:
        ok, why = False, f"cannot be read ({exc.strerror or exc})"
    if not ok:
        severity: Severity = "note" if "recomputed" in fix else "damaged"
        out.findings.append(Finding(severity, str(path), f"{path} {why}; {fix}"))


def _caches(store: Store, out: Verification) -> None:
    """Corrupt embedding shards: a note (they are re-embedded and `leanset gc` removes them)."""
    from leanset.pipelines.store.gc import shard_readable

    store.cache.pull(EMBEDDINGS, new_names_only=True)  # a bucket store: into its local mirror
    root = store.cache_layout.embeddings
    for path in sorted(root.glob("*/shard-*.npz")) if root.is_dir() else []:
        out.files_checked += 1
        if not shard_readable(path):
            shown = store.storage.show(store.side_rel(path)) if store.storage.remote else path
            out.findings.append(
                Finding(
                    "note",
                    str(shown),
                    f"embedding cache shard {shown} is corrupt; its samples are re-embedded by "
                    f"the next run, and `leanset gc` removes it",
                )
            )


def _sealed_files(store: Store, out: Verification) -> None:
    """Labeling files, the Label Studio sync state, reports, after-commit records, the file-hash
    cache: each against its seal (`pipelines/store/sealed.py`; a bucket's are pulled first)."""
    for prefix in ("labeling", "reports", "after-commit"):
        store.side.pull(prefix)
    store.side.pull_file(FILE_HASHES)
    lay = store.side_layout
    labeling = [lay.queue, lay.answers, lay.label_studio_sync]
    fix = "restore it and its .sum file from a backup of the store's labeling/ folder"
    for path in labeling:
        _sealed(store, path, "damaged", fix, out)
    reports = sorted(lay.reports.glob("v*.html")) if lay.reports.is_dir() else []
    for path in reports:
        _sealed(
            store, path, "note", "the next `leanset run` (or `leanset show`) writes it again", out
        )
    done = sorted(lay.after_commit.glob("v*.done.json")) if lay.after_commit.is_dir() else []
    for path in done:
        _sealed(store, path, "note", "the next `leanset run` redoes its post-commit steps", out)
    _sealed(store, lay.file_hashes, "note", "the cache is rebuilt by the next run", out)


def _sealed(store: Store, path: Path, severity: Severity, fix: str, out: Verification) -> None:
    from leanset.pipelines.store.sealed import check_file

    if not path.is_file():
        return
    out.files_checked += 1
    why = check_file(path)
    shown = store.shown(path)
    if why is not None:
        out.findings.append(Finding(severity, shown, f"{shown} is damaged: {why}; {fix}"))
