"""Export a version: Parquet, a Hugging Face `DatasetDict`, or an image folder, with extras.

The cleaned dataset table holds image paths relative to the dataset root (the source folder the
version's config names) and the bytes of images that had no file of their own (`save_to_disk`,
Parquet). An export resolves them: with `embed_images` every image's bytes go into the export,
otherwise the export keeps paths (relative to the dataset root, or absolute). Extras
(`--with embeddings,pred_probs,decisions`) add the cached vectors, the probe's out-of-fold
probabilities (one column per class, in `classes` order) and the decision columns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import datasets

from leanset.pipelines.fsutil import atomic_write_bytes, digest
from leanset.pipelines.sources.remote import fetch_prefix
from leanset.pipelines.store import Store, StoreError
from leanset.pipelines.store.layout import EMBEDDINGS
from leanset.pipelines.store.storage import is_url

FORMATS = ("parquet", "hf", "imagefolder")
EXTRAS = ("embeddings", "pred_probs", "decisions")
# decision columns added by `--with decisions` (the dataset table already has id, split, label)
DECISION_EXTRAS = (
    "dup_group",
    "exact_dup_of",
    "near_dup_of",
    "dup_similarity",
    "leak_of",
    "label_conflict",
    "label_quality",
    "label_issue",
    "suggested_label",
    "suggested_score",
    "label_action",
    "needs_review",
    "label_before_human",
    "relabel_source",
    "first_seen",
)
UNLABELED_FOLDER = "unlabeled"
Link = Literal["copy", "symlink", "hardlink"]


@dataclass(frozen=True)
class ExportOptions:
    """What an export writes besides the rows: extras, images embedded or not, how files go."""

    extras: tuple[str, ...] = ()
    embed_images: bool = False
    image_paths: Literal["relative", "absolute"] = "relative"
    link: Link = "copy"
    allow_changed: bool = False  # copy/embed source files whose bytes changed since the commit

    def __post_init__(self) -> None:
        unknown = [e for e in self.extras if e not in EXTRAS]
        if unknown:
            raise StoreError(f"unknown --with value(s) {unknown}; expected some of {list(EXTRAS)}")


def parse_extras(text: str | None) -> tuple[str, ...]:
    """`embeddings,pred_probs` -> ('embeddings', 'pred_probs'), checked."""
    extras = tuple(e.strip() for e in (text or "").split(",") if e.strip())
    ExportOptions(extras=extras)
    return extras


def export_version(
    store: Store,
    version: int | None,
    fmt: str,
    out: str | Path,
    decisions: bool = False,
    options: ExportOptions | None = None,
    changed: list[str] | None = None,
) -> Path:
    """Write the cleaned dataset (or the decisions) of a version to `out`.

    Image files copied or embedded must still hold the bytes the version hashed; with
    `allow_changed` they are exported anyway and their sample ids added to `changed`."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    opts = options or ExportOptions()
    view = VersionView.of(store, version, decisions, opts.extras)
    if changed is not None:
        view.changed = changed
    out = Path(out)
    try:
        if fmt == "parquet":
            return _write_parquet(view, out)
        if fmt == "hf":
            _save_hf(to_hf(view, opts), out.resolve(), view.root)
            return out
        return write_imagefolder(view, out, opts)
    except OSError as exc:
        raise StoreError(f"export to {out} failed: {exc}") from exc


@dataclass
class VersionView:
    """A version's rows with the extras joined, and what is needed to read their images."""

    frame: pl.DataFrame
    classes: list[str]
    root: Path | None  # the dataset root image paths are relative to
    version: int
    changed: list[str] = field(default_factory=list)  # samples whose file changed (allowed)

    @classmethod
    def of(
        cls, store: Store, version: int | None, decisions: bool, extras: Sequence[str]
    ) -> VersionView:
        """Read the table of `version` and join the extras asked for."""
        manifest = store.manifest(version)
        frame = store.read("decisions" if decisions else "dataset", manifest["version"])
        dec = frame if decisions else None
        if set(extras) & {"pred_probs", "decisions"} and dec is None:
            dec = store.read("decisions", manifest["version"])
        if "decisions" in extras and not decisions and dec is not None:
            cols = [c for c in DECISION_EXTRAS if c in dec.columns]
            frame = frame.join(dec.select("sample_id", *cols), on="sample_id", how="left")
        classes = version_classes(manifest, dec if dec is not None else frame)
        if "pred_probs" in extras:
            frame = _with_pred_probs(frame, dec, manifest, classes)
        if "embeddings" in extras:
            frame = frame.with_columns(embedding_column(store, manifest, frame))
        source = manifest.get("config", {}).get("source", {})
        root = Path(source["path"]) if source.get("path") else None
        if source.get("path") and is_url(source["path"]):  # images in a bucket: its local mirror
            opts = getattr(store.storage, "options", None)
            root = fetch_prefix(source["path"], opts)
        return cls(frame, classes, root, manifest["version"])


def version_classes(manifest: dict[str, Any], frame: pl.DataFrame) -> list[str]:
    """The class names of a version: the source's order when it had one, then any other label."""
    named = list(manifest.get("classes", {}).get("names") or [])
    seen = frame["label"].drop_nulls().unique().sort().to_list() if "label" in frame.columns else []
    return named + [c for c in seen if c not in named]


def _with_pred_probs(
    frame: pl.DataFrame, dec: pl.DataFrame | None, manifest: dict[str, Any], classes: list[str]
) -> pl.DataFrame:
    """The probe's out-of-fold probabilities as `pred_probs`, one entry per class of `classes`
    (the export's label order, so column i is the probability of label i)."""
    probe = manifest.get("labeling", {}).get("pred_probs_classes")
    if dec is None or "pred_probs" not in dec.columns or not probe:
        raise StoreError(
            f"version {manifest['version']} has no stored probabilities; configure label_noise "
            "in the flow and run it again to get --with pred_probs"
        )
    where = {c: i for i, c in enumerate(probe)}
    order = [where.get(c) for c in classes]
    rows = []
    for value in dec["pred_probs"].to_list():
        rows.append(None if value is None else [0.0 if k is None else value[k] for k in order])
    probs = dec.select("sample_id").with_columns(
        pl.Series("pred_probs", rows, dtype=pl.List(pl.Float64))
    )
    return frame.drop("pred_probs", strict=False).join(probs, on="sample_id", how="left")


def embedding_column(store: Store, manifest: dict[str, Any], frame: pl.DataFrame) -> pl.Series:
    """Each row's vector: the precomputed column, else the embedding cache by content hash."""
    if "embedding" in frame.columns:
        return frame["embedding"]
    from leanset.pipelines.embed import EmbeddingCache

    fingerprint = manifest.get("embed", {}).get("fingerprint")
    if not fingerprint:
        raise StoreError(f"version {manifest['version']} was made without an embedder")
    hashes = frame["content_hash"].to_list()
    store.cache.pull(EMBEDDINGS, new_names_only=True)  # a bucket store: into its local mirror
    found, vectors = EmbeddingCache(store.cache_layout.embeddings, fingerprint).get(hashes)
    # every kept sample was read; among the decisions, unreadable ones have no vector
    readable = (
        frame["error"].is_null().to_numpy()
        if "error" in frame.columns
        else np.ones(len(hashes), dtype=bool)
    )
    missing = np.flatnonzero(readable & ~found)
    if missing.size:
        raise StoreError(
            f"the embedding cache of {store.where} no longer holds the vectors of {missing.size} "
            f"sample(s) (first: {frame['sample_id'][int(missing[0])]!r}); rerun the flow to "
            "recompute them, then export again"
        )
    rows: list[list[float] | None] = [None] * frame.height  # None: an unreadable sample
    for k, i in enumerate(np.flatnonzero(found)):
        assert vectors is not None  # found has a true entry
        rows[int(i)] = vectors[k].tolist()
    return pl.Series("embedding", rows, dtype=pl.List(pl.Float32))


# ---------------------------------------------------------------- parquet


def _write_parquet(view: VersionView, out: Path) -> Path:
    """The rows as one Parquet file (image bytes and paths as stored)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    view.frame.write_parquet(out)
    return out


# ---------------------------------------------------------------- images


def image_cell(view: VersionView, row: dict[str, Any], opts: ExportOptions) -> dict[str, Any]:
    """`{"path", "bytes"}` for one row: bytes when embedding (or stored), else its path."""
    stored = row.get("image_bytes")
    rel = row.get("image_path")
    if stored is not None:
        return {"path": PurePosixPath(rel).name if rel else None, "bytes": stored}
    path = resolve_image(view, row)
    if opts.embed_images:
        return {"path": path.name, "bytes": committed_bytes(view, row, path, opts)}
    shown = str(path) if opts.image_paths == "absolute" else rel
    return {"path": shown, "bytes": None}


def resolve_image(view: VersionView, row: dict[str, Any]) -> Path:
    """The image file of a row, which must exist (the error names the sample and the file)."""
    rel = row.get("image_path")
    if not rel:
        raise StoreError(f"sample {row['sample_id']!r} has neither an image path nor image bytes")
    path = Path(rel) if Path(rel).is_absolute() or view.root is None else view.root / rel
    if not path.is_file():
        raise StoreError(
            f"version {view.version}: the image of sample {row['sample_id']!r} ({path}) is "
            "missing; restore the file, or export the version that no longer holds it"
        )
    return path


# ---------------------------------------------------------------- Hugging Face


def to_hf(view: VersionView, opts: ExportOptions | None = None) -> datasets.DatasetDict:
    """A `DatasetDict` by split: `label` a ClassLabel (unlabeled = -1), images an Image feature."""
    import datasets

    opts = opts or ExportOptions()
    frame = view.frame
    splits = frame["split"].unique(maintain_order=True).to_list() if frame.height else ["train"]
    out = {}
    for split in splits:
        part = frame.filter(pl.col("split") == split) if frame.height else frame
        out[str(split)] = _hf_split(view, part, opts)
    if view.root is not None and not opts.embed_images and opts.image_paths == "relative":
        for ds in out.values():
            ds.info.description = f"image paths are relative to {view.root.resolve()}"
    return datasets.DatasetDict(out)


def _save_hf(dd: datasets.DatasetDict, out: Path, root: Path | None) -> None:
    """`save_to_disk`, from the dataset root: `datasets` sizes the images by their paths, and
    relative paths resolve only from there."""
    previous = Path.cwd()
    if root is not None and root.is_dir():
        os.chdir(root)
    try:
        dd.save_to_disk(str(out))
    finally:
        os.chdir(previous)


def _hf_split(view: VersionView, part: pl.DataFrame, opts: ExportOptions) -> datasets.Dataset:
    """One split as a `datasets.Dataset` with typed label, image and probability features."""
    import datasets

    has_image = "image_path" in part.columns
    typed = "label" in part.columns and bool(view.classes)  # no labels at all: left as is
    dropped = ("image_path", "image_bytes") + (("label",) if typed else ())
    ds = datasets.Dataset.from_polars(part.drop([c for c in dropped if c in part.columns]))
    if typed:
        index = {c: i for i, c in enumerate(view.classes)}
        codes = [-1 if v is None else index[v] for v in part["label"].to_list()]
        ds = ds.add_column("label", codes).cast_column(
            "label", datasets.ClassLabel(names=view.classes)
        )
    if has_image:
        images = [image_cell(view, r, opts) for r in part.iter_rows(named=True)]
        ds = ds.add_column("image", images).cast_column("image", datasets.Image())
    return ds


# ---------------------------------------------------------------- image folder


def write_imagefolder(view: VersionView, out: Path, opts: ExportOptions) -> Path:
    """`out/<split>/<label>/<file>` (unlabeled samples in `out/unlabeled/`), files copied or linked;
    with extras, `out/leanset.parquet` (one row per file) and `.npy` matrices in its row order."""
    if "image_path" not in view.frame.columns:
        raise StoreError(f"version {view.version} holds no images; use --format parquet or hf")
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not empty; give a new folder for the image folder")
    names: list[str] = []
    taken: set[str] = set()
    for row in view.frame.iter_rows(named=True):
        rel = _folder_name(row, taken)
        _place(view, row, out / rel, opts)
        names.append(rel)
    meta = view.frame.drop(["image_path", "image_bytes"], strict=False).with_columns(
        pl.Series("file_name", names, dtype=pl.Utf8)
    )
    _write_sidecars(out, meta, view.classes)
    return out


def _folder_name(row: dict[str, Any], taken: set[str]) -> str:
    """`split/label/name`, made unique with the sample id when two files share a name."""
    name = PurePosixPath(row.get("image_path") or f"{row['sample_id']}.png").name
    label = row.get("label")
    folder = UNLABELED_FOLDER if label is None else f"{row['split']}/{_safe(label)}"
    rel = f"{folder}/{name}"
    if rel in taken:
        stem, dot, suffix = name.rpartition(".")
        rel = f"{folder}/{stem or suffix}-{row['sample_id'][:12]}{dot}{suffix if stem else ''}"
    taken.add(rel)
    return rel


def _safe(label: str) -> str:
    """A label usable as one folder name (no separators, not '.' or '..')."""
    cleaned = str(label).replace("/", "_").replace("\\", "_")
    return cleaned if cleaned not in ("", ".", "..") else f"_{cleaned}_"


def _place(view: VersionView, row: dict[str, Any], target: Path, opts: ExportOptions) -> None:
    """Write or link one image file (its bytes checked against the version's content hash)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if row.get("image_bytes") is not None:
        target.write_bytes(row["image_bytes"])
        return
    source = resolve_image(view, row).resolve()
    data = committed_bytes(view, row, source, opts)
    if opts.link == "symlink":
        target.symlink_to(source)
    elif opts.link == "hardlink":
        os.link(source, target)
    else:
        target.write_bytes(data)


def committed_bytes(
    view: VersionView, row: dict[str, Any], path: Path, opts: ExportOptions
) -> bytes:
    """The bytes of a row's image file, refused when they are not the ones the version hashed
    (edited after the commit), unless `allow_changed` (then the sample is listed in `changed`)."""
    data = path.read_bytes()
    want = row.get("content_hash")
    if want is None or digest(data) == want:
        return data
    if not opts.allow_changed:
        raise StoreError(
            f"version {view.version}: the image of sample {row['sample_id']!r} ({path}) changed "
            f"after the version was committed (its bytes no longer match its content_hash); "
            f"restore the file, run the flow again for a version that holds it, or export with "
            f"--allow-changed to export it anyway"
        )
    view.changed.append(str(row["sample_id"]))
    return data


def _write_sidecars(out: Path, meta: pl.DataFrame, classes: list[str]) -> None:
    """`leanset.parquet` with the rows, `classes.json`, and each vector column as a `.npy`."""
    for column in ("embedding", "pred_probs"):
        if column in meta.columns:
            width = max((len(v) for v in meta[column].drop_nulls().to_list()), default=0)
            matrix = np.full((meta.height, width), np.nan, dtype=np.float32)
            for i, v in enumerate(meta[column].to_list()):
                if v is not None:
                    matrix[i] = v
            np.save(out / f"{column}.npy", matrix)
    meta.drop(["embedding", "pred_probs"], strict=False).write_parquet(out / "leanset.parquet")
    atomic_write_bytes(out / "classes.json", (json.dumps(classes) + "\n").encode())
