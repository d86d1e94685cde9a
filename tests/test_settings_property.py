"""Property: any settings the flows.yaml validator accepts run through the whole flow on a small
table without an unexpected exception (a refusal is one of USER_ERRORS, with its message).

The values are drawn from each field's declared range widened past both ends (so the validator
sees bad values too), the enumerations from their literal choices, on a table of 72 precomputed
vectors in 3 classes with exact copies, near copies, a test split, flipped and missing labels.
A dry run decides everything a run does (embed, dedup, guard, label noise, selection, cost and
quality) and commits nothing.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from leanset.dedup.bounds import Bound, bound_of
from leanset.dedup.config import DedupSettings
from leanset.labeling.config import ActiveLearningSettings, LabelNoiseSettings
from leanset.pipelines.config import ConfigError, CostSettings, EmbedderSettings, load_flow
from leanset.pipelines.errors import USER_ERRORS
from leanset.pipelines.flows import clean_flow

SECTIONS: dict[str, type] = {
    "dedup": DedupSettings,
    "label_noise": LabelNoiseSettings,
    "active_learning": ActiveLearningSettings,
    "cost": CostSettings,
    "embedder": EmbedderSettings,
}
# how a run is computed elsewhere, or what needs a tokenizer, a GPU or a training step
FIXED = {
    "embedder": {"type", "model", "factory", "pretrained", "device", "precision"},
    "label_noise": {"pred_probs_column", "classes", "device"},
    "cost": {"unit", "tokenizer", "train_step", "train_splits", "promote"},
    "dedup": {"eval_splits"},
}
BASE = {
    "source": {"type": "files", "format": "parquet", "data_files": ["t.parquet"]},
    "columns": {"id": "id", "embedding": "emb", "label": "label", "split": "split"},
    "embedder": {"type": "precomputed"},
    "store": "store",
}


def _table(folder: Path) -> None:
    """72 rows: 3 well separated classes, 6 exact and 6 near copies, 6 flipped, 6 unlabeled."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4
    y = np.repeat(np.arange(3), 20)
    x = centers[y] + rng.normal(size=(60, 8))
    x = np.vstack([x, x[:6], x[6:12] + 1e-3 * rng.normal(size=(6, 8))])
    labels: list[str | None] = [f"k{c}" for c in np.concatenate([y, y[:12]])]
    for i in (20, 21, 40, 41, 50, 59):
        labels[i] = f"k{(int(y[i]) + 1) % 3}"
    for i in range(54, 60):
        labels[i] = None
    split = ["test" if i % 6 == 5 else "train" for i in range(72)]
    pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(72)],
            "emb": list(x.astype(np.float32)),
            "label": labels,
            "split": split,
        },
        schema={"id": pl.Utf8, "emb": pl.List(pl.Float32), "label": pl.Utf8, "split": pl.Utf8},
    ).write_parquet(folder / "t.parquet")


def _number(bound: Bound, whole: bool) -> st.SearchStrategy[Any]:
    """A number around a declared range: inside it mostly, past each end sometimes."""
    low = -2.0 if bound.low is None else bound.low
    high = (low + 40.0) if bound.high is None else bound.high
    span = max(high - low, 1.0)
    lo, hi = low - 0.1 * span, high + 0.1 * span
    if whole:
        return st.integers(math.floor(lo), math.ceil(hi))
    return st.floats(lo, hi, allow_nan=False)


def _value(hint: Any, bound: Bound | None) -> st.SearchStrategy[Any] | None:
    """A strategy for one field from its type and declared range (None: left at its default)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return st.sampled_from(args)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_value(a, bound) for a in args if a is not type(None)]
        options = [p for p in parts if p is not None]
        if type(None) in args:
            options.append(st.none())
        return st.one_of(options) if options else None
    if typing.get_origin(hint) is list and bound is not None:
        item = _value(args[0], bound)
        return st.lists(item, min_size=0, max_size=3) if item is not None else None
    if hint is bool:
        return st.booleans()
    if hint in (int, float) and bound is not None:
        return _number(bound, hint is int)
    return None


def _section(name: str, cls: type) -> st.SearchStrategy[dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        if f.name in FIXED.get(name, set()):
            continue
        strategy = _value(hints[f.name], bound_of(f))
        if strategy is not None:
            fields[f.name] = strategy
    return st.fixed_dictionaries({}, optional=fields)


BODIES = st.fixed_dictionaries(
    {},
    optional={name: _section(name, cls) for name, cls in SECTIONS.items()},
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("property")
    _table(path)
    return path


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same examples on every machine: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sections=BODIES)
def test_accepted_settings_run_without_an_unexpected_exception(
    prefect_harness, folder: Path, sections: dict[str, Any]
):
    body = BASE | sections
    body["embedder"] = {**sections.get("embedder", {}), "type": "precomputed"}
    config = folder / "flows.yaml"
    config.write_text(yaml.safe_dump({"flows": {"p": body}}))
    try:
        load_flow(config, "p")
    except ConfigError:
        event("refused by the validator")
        return  # refused with its key path: the validator's side of the property
    try:
        clean_flow(config_path=str(config), flow_name="p", dry_run=True)
        event("accepted, ran")
    except USER_ERRORS as exc:
        event(f"accepted, refused by the run: {type(exc).__name__}")
        assert str(exc) and "Traceback" not in str(exc)
