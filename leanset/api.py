"""`leanset.clean` and `leanset.run`: the same run core as `leanset run`, from Python, with no
Prefect server (a table, a dataset or a path in; a `Result` out)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from leanset.inputs import DATA_FILE, Prepared, kind_of, prepare
from leanset.pipelines.config import ConfigError, FlowSettings, load_body, load_flow
from leanset.pipelines.core import Hooks, run_core
from leanset.pipelines.scaffold import flow_yaml, inspect
from leanset.pipelines.store.storage import is_url
from leanset.result import Result, result_of

FLOW_NAME = "clean"  # the flow's name in what `clean` commits (its manifest, its store)
ROLES = ("id", "label", "split", "text", "image")
ARGUMENT_KEYS = ("source", "columns", "store", "name")  # set by clean's own arguments


def _no_report(*_: Any) -> str:
    return ""  # without a store nothing is written; the Result renders itself


def clean(
    data: Any,
    *,
    id: str | None = None,
    label: str | None = None,
    split: str | None = None,
    text: str | None = None,
    image: str | None = None,
    embeddings: str | np.ndarray | None = None,
    pred_probs: str | np.ndarray | None = None,
    classes: list[str] | None = None,
    store: str | Path | None = None,
    **sections: Any,
) -> Result:
    """Clean `data` and return what the run decided.

    `data`: a pandas or polars DataFrame, a pyarrow Table, a Hugging Face `Dataset` or
    `DatasetDict` (its splits become the `split`), or a path (a file or folder, detected as
    `leanset init` does). `id`, `label`, `split`, `text`, `image`: column names (unset ones are
    detected). `embeddings`: a column of vectors, or an N x D array (then no model runs).
    `pred_probs`: your own model's out-of-fold probabilities, a column or an N x K array, its
    columns in the order of `classes` (default: a `ClassLabel`'s order, else the sorted label
    names). `sections`: flows.yaml's sections as dicts (`dedup={...}`, `label_noise={...}`,
    `embedder={...}`, `active_learning={...}`, `cost={...}`), checked like flows.yaml; those not
    given are what `leanset init` writes for this data. Without `store` nothing is written
    (inputs in memory go through a temporary folder, removed before this returns); with it, a
    version is committed exactly as `leanset run` commits it.
    """
    for key in ARGUMENT_KEYS:
        if key in sections:
            raise ConfigError(f"leanset.clean: {key!r} is set by clean's arguments, not a section")
    roles = {k: v for k, v in zip(ROLES, (id, label, split, text, image), strict=True) if v}
    with tempfile.TemporaryDirectory(prefix="leanset-clean-") as tmp:
        where: Path | str = Path(tmp) / "store"
        if store:  # a bucket URL as it is; a folder made absolute
            where = str(store) if is_url(store) else Path(store).expanduser().resolve()
        folder = _data_folder(where) if store else Path(tmp) / "data"
        try:
            prepared = prepare(data, folder, embeddings, pred_probs, roles, classes)
            settings = _settings(prepared, roles, embeddings, pred_probs, classes, where, sections)
            scratch = Path(tmp) / "store"  # a dry run's report folder (never read back)
            hooks = (
                Hooks() if store else Hooks(html_report=_no_report, dry_run_folder=lambda: scratch)
            )
            run = run_core(settings, dry_run=store is None, hooks=hooks)
            opts = settings.storage_options
            return result_of(run, data, prepared, committed=store is not None, options=opts)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _data_folder(store: Path | str) -> Path:
    """Where an input in memory is written for a run into `store`: the same folder for every run
    into that store, so its path in the config (and so the config hash) stays the same and an
    unchanged input makes no new version."""
    key = hashlib.blake2b(str(store).encode(), digest_size=8).hexdigest()
    return Path(tempfile.gettempdir()) / f"leanset-clean-{key}"


def _settings(
    prepared: Prepared,
    roles: dict[str, str],
    embeddings: str | np.ndarray | None,
    pred_probs: str | np.ndarray | None,
    classes: list[str] | None,
    store: Path | str,
    sections: dict[str, Any],
) -> FlowSettings:
    """The flow `leanset init` would write for this data, with the caller's columns and sections."""
    columns = dict(roles) | prepared.columns
    if isinstance(embeddings, str):
        columns["embedding"] = embeddings
    probs = columns.pop("pred_probs", pred_probs if isinstance(pred_probs, str) else None)
    body, kind = _detected(prepared, columns, probs)
    body["columns"] = columns
    for key, section in sections.items():
        body[key] = section
    content = {"image", "text", "embedding"} & set(columns) or kind == "imagefolder"
    if probs is not None and not content and "embedder" not in sections:
        body.pop("embedder", None)  # ids, labels and probabilities: nothing to embed
    if probs is not None:
        noise = dict(body.get("label_noise") or {})
        body["label_noise"] = noise | {"pred_probs_column": probs}
        if prepared.class_names is not None and "classes" not in noise:
            body["label_noise"]["classes"] = prepared.class_names  # the columns' own order
    body["store"] = str(store)
    body.pop("description", None)
    return load_body(body, FLOW_NAME, prepared.path.parent, "leanset.clean")


def _detected(
    prepared: Prepared, columns: dict[str, str], probs: str | None
) -> tuple[dict[str, Any], str]:
    """What `leanset init` detects for the data, the caller's columns taking precedence."""
    det = inspect(prepared.path)
    given = set(columns.values()) | ({probs} if probs else set())
    det.columns = {
        k: v for k, v in det.columns.items() if v not in given or columns.get(k) == v
    } | columns
    if probs and det.columns.get("embedding") == probs:
        det.columns.pop("embedding")
    det.labeled = det.labeled or "label" in columns
    base = prepared.path.parent
    text = "flows:\n" + flow_yaml(FLOW_NAME, det, base)
    body: dict[str, Any] = yaml.safe_load(text)["flows"][FLOW_NAME]
    if prepared.kind != "path":  # the Parquet file clean wrote
        body["source"] = {"type": "files", "format": "parquet", "data_files": [DATA_FILE]}
    columns.update({k: v for k, v in det.columns.items() if k not in columns})
    return body, det.kind


def run(flows_yaml: str | Path, flow: str, **overrides: Any) -> Result:
    """Run a flow of a flows.yaml as `leanset run` does (a new version when anything changed),
    with no Prefect server. `overrides`: `dedup={"threshold": 0.97}` or `dedup__threshold=0.97`
    (as `--set dedup.threshold=0.97`)."""
    sets = [
        f"{k.replace('__', '.')}={yaml.safe_dump(v, default_flow_style=True).strip()}"
        for k, v in _flat(overrides)
    ]
    settings = load_flow(flows_yaml, flow, sets)
    from leanset.pipelines.config import check_source_exists

    check_source_exists(settings, flows_yaml)
    outcome = run_core(settings)
    data = Path(settings.source.path or flows_yaml)
    return result_of(outcome, data, None, committed=True, options=settings.storage_options)


def _flat(overrides: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`{"dedup": {"threshold": 0.9}}` -> [("dedup.threshold", 0.9)]."""
    out: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _flat(value, path + ".")
        else:
            out.append((path, value))
    return out


__all__ = ["clean", "run", "kind_of"]
