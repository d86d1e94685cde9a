"""`leaks.against`: the outside sets whose near copies leave this dataset's training splits.

A store reference costs no embedding: its latest version's samples are looked up in its own
embedding cache under this flow's embedder fingerprint (so both must use the same embedder). A
source reference (files, a folder, a `save_to_disk` folder, a hub dataset) is embedded into this
store's cache, content-addressed, so a scheduled run embeds only what is new in it."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import numpy as np
import polars as pl

from leanset.dedup.contamination import (
    Prior,
    Reference,
    contamination_columns,
    find_contamination,
)
from leanset.dedup.contamination import info as contamination_info
from leanset.dedup.matrix import Rows, check_matrix
from leanset.pipelines.config import FlowSettings, LeakReference, SourceSettings
from leanset.pipelines.embed import EmbeddingCache, embed_dataset, make_embedder
from leanset.pipelines.fsutil import digest, digest_file
from leanset.pipelines.sources import FileHashCache, load_source
from leanset.pipelines.sources.remote import remote_state
from leanset.pipelines.store import Store
from leanset.pipelines.store.errors import StoreError
from leanset.pipelines.store.layout import EMBEDDINGS
from leanset.pipelines.store.manifest import JSON
from leanset.pipelines.store.storage import is_url

log = logging.getLogger("leanset.flow")


def reference_store(ref: LeakReference, settings: FlowSettings) -> Store:
    """A reference store, opened with its storage options: its own, else the flow's when both
    stores are URLs of one scheme (one bucket's endpoint and credentials), else the environment."""
    path = str(ref.store)
    opts = ref.storage_options
    if opts is None and is_url(path) and is_url(settings.store):
        same = path.split("://")[0] == settings.store.split("://")[0]
        opts = settings.storage_options if same else None
    return Store(path, opts)


def store_reference(ref: LeakReference, fingerprint: str, store: Store) -> Reference:
    """A store's latest samples with the vectors its cache holds for this embedder (a bucket
    store's shards of this embedder are pulled into its local mirror first, only those it
    lacks)."""
    path = str(ref.store)
    if store.latest() is None:
        raise StoreError(f"leaks.against: {path} holds no leanset version (expected a store)")
    rows = _rows(store.read("decisions"), ref)
    store.cache.pull(f"{EMBEDDINGS}/{fingerprint}", new_names_only=True)
    cache = EmbeddingCache(store.cache_layout.embeddings, fingerprint, read_only=True)
    found, vectors = cache.get(rows["content_hash"].to_list())
    if not found.all():
        raise StoreError(
            f"leaks.against: store {path} has no embeddings by this flow's embedder "
            f"({fingerprint}) for {int((~found).sum()):,} of its {len(found):,} samples; run its "
            "flow with the same embedder settings first"
        )
    return _reference(ref, rows, vectors if vectors is not None else np.zeros((0, 1), np.float32))


def source_reference(ref: LeakReference, settings: FlowSettings, dry_run: bool) -> Reference:
    """A source's samples, embedded into this store's cache (only contents not cached yet)."""
    assert ref.source is not None and settings.embedder is not None  # checked by the loader
    data = load_source(ref.source, ref.columns)
    embedder = make_embedder(settings.embedder, ref.columns.embedding)
    cache = _own_store(settings).cache_layout.embeddings  # a bucket: pushed with the run's
    res = embed_dataset(data, embedder, cache, progress=False)  # a dry run's vectors serve too
    table = data.table.with_columns(pl.Series("_row", np.arange(data.table.height)))
    table = table.filter(~pl.col("content_hash").is_in(list(res.errors)))
    rows = _rows(table, ref)
    assert isinstance(res.matrix, np.ndarray)  # embedded here, not on a cluster
    return _reference(ref, rows, res.matrix[rows["_row"].to_numpy()])


def _own_store(settings: FlowSettings) -> Store:
    return Store(settings.store, settings.storage_options)


def _rows(table: pl.DataFrame, ref: LeakReference) -> pl.DataFrame:
    """The reference's readable rows in its chosen splits, one per content."""
    rows = table.filter(pl.col("error").is_null())
    if ref.splits is not None:
        rows = rows.filter(pl.col("split").is_in(ref.splits))
    return rows.unique("content_hash", keep="first", maintain_order=True)


def _reference(ref: LeakReference, rows: pl.DataFrame, vectors: np.ndarray) -> Reference:
    name = ref.name or str(ref.store)
    x = check_matrix(vectors, name=f"embeddings of reference {name}") if len(rows) else vectors
    return Reference(name, rows["sample_id"].to_list(), rows["content_hash"].to_list(), x)


def check_contamination(
    table: pl.DataFrame,
    matrix: Rows,
    settings: FlowSettings,
    fingerprint: str,
    threshold: float,
    dry_run: bool = False,
) -> tuple[pl.DataFrame, JSON]:
    """The table with the contamination columns, and what the manifest records. When the parent
    version searched the same references (same contents, embedder and eval splits), only the
    contents it did not search are searched now."""
    leaks = settings.leaks
    refs = [
        source_reference(r, settings, dry_run)
        if r.source
        else store_reference(r, fingerprint, reference_store(r, settings))
        for r in leaks.against
    ]
    t = leaks.threshold if leaks.threshold is not None else threshold
    basis = search_basis(settings, fingerprint)
    prior = prior_findings(settings, basis)
    evals = settings.dedup.eval_splits
    if isinstance(matrix, np.ndarray):
        found = find_contamination(table, matrix, refs, t, evals, prior=prior)
    else:  # kept on a Ray cluster: searched by the engine's tasks
        from leanset.pipelines.engine.checks import between

        search = between(settings.engine)
        found = find_contamination(table, matrix, refs, t, evals, prior=prior, between=search)
    for name, n in found.found.items():
        log.info("Contamination: %d training samples are near copies of %s", n, Path(name).name)
    log.info(
        "Contamination: searched %d training contents, %d carried from the parent version",
        found.searched,
        found.carried,
    )
    info = contamination_info(found, t, leaks.policy)
    info["references"] = {r.name: len(r.hashes) for r in refs}
    info["basis"] = basis
    return contamination_columns(table, found, leaks.policy), info


def search_basis(settings: FlowSettings, fingerprint: str) -> str:
    """What a search's findings depend on besides the threshold: the references' contents, the
    embedder and the eval splits (a digest the manifest records)."""
    splits = ",".join(sorted(settings.dedup.eval_splits))
    return digest(f"{reference_state(settings)}|{fingerprint}|{splits}".encode())


def prior_findings(settings: FlowSettings, basis: str) -> Prior | None:
    """The parent version's findings per training content, when it searched on the same basis."""
    store = _own_store(settings)
    parent = store.latest()
    checked = ((parent or {}).get("checks") or {}).get("contamination") or {}
    if parent is None or checked.get("basis") != basis:
        return None
    decisions = store.read("decisions", parent["version"])
    rows = decisions.filter(
        pl.col("error").is_null() & ~pl.col("split").is_in(list(settings.dedup.eval_splits))
    ).unique("content_hash", keep="first")
    found = zip(
        rows["content_hash"].to_list(),
        rows["contaminated_by"].to_list(),
        rows["contamination_similarity"].fill_null(0.0).to_list(),
        strict=True,
    )
    return Prior({h: (b, s) for h, b, s in found}, float(checked["threshold"]))


def reference_state(settings: FlowSettings) -> str:
    """What the references hold (part of the config hash): a reference store's latest version,
    a source's files by content, so a changed reference makes the next run check again though
    this dataset did not change. A hub reference is named by its settings alone (pin its
    `revision`)."""
    if not settings.leaks.against:
        return ""
    parts = []
    hashes = FileHashCache(
        _own_store(settings).cache_layout.file_hashes
    )  # a bucket: this machine's
    for ref in settings.leaks.against:
        if ref.store is not None:
            latest = reference_store(ref, settings).latest()
            parts.append(f"{ref.store}@{latest['version'] if latest else 0}")
        elif ref.source is not None and ref.source.type != "hub":
            parts.append(f"{ref.name}#{source_content(ref.source, hashes)}")
    hashes.save()
    return "|".join(parts)


def source_files(source: SourceSettings) -> list[Path]:
    """The files a (local) source reads: every file below its folder, or its data files."""
    if source.type in ("imagefolder", "disk") and source.path:
        return sorted(p for p in Path(source.path).rglob("*") if p.is_file())
    found = {Path(f) for pattern in source.data_files or [] for f in glob.glob(pattern)}
    return sorted(found)


def source_content(source: SourceSettings, hashes: FileHashCache) -> str:
    """One digest of a source's files (path and content hash each); a file is read only when
    its size or modification time changed since its hash was cached."""
    if is_url(source.path or "") or any(is_url(f) for f in source.data_files or []):
        return remote_state(source)
    entries = []
    for path in source_files(source):
        st = path.stat()
        known = hashes.get(str(path), st)
        content = known.hash if known else digest_file(path)
        if known is None:
            hashes.put(str(path), st, content)
        entries.append(f"{path}={content}")
    return digest("\n".join(entries).encode())
