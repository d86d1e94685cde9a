"""`leanset demo`: make the bundled demo data, run the demo flow, score it against the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from leanset.dedup.evaluate import evaluate_flags, evaluate_groups
from leanset.pipelines.config import ConfigError, load_flow
from leanset.pipelines.demo.data import DemoTruth, make_demo
from leanset.pipelines.store import Store


def run_demo(config: str, flow_name: str = "demo", data: str | None = None) -> dict[str, Any]:
    """Generate the demo data if missing, run the flow through Prefect, and score what it found."""
    from leanset.pipelines.flows import run_flow

    settings = load_flow(config, flow_name)
    if settings.source.type != "imagefolder":
        raise ConfigError(f"{config}: flow {flow_name!r}: the demo needs an imagefolder source")
    images = Path(settings.source.path or "")  # an imagefolder source always has a path
    root = Path(data) if data else images.parent
    truth = make_demo(root)
    if truth.images_dir.resolve() != images.resolve():
        raise ConfigError(
            f"{config}: flow {flow_name!r}: source.path {settings.source.path} is not the demo's "
            f"images folder {truth.images_dir}"
        )
    summary = run_flow(config, flow_name, trigger="demo")
    store = Store(settings.store)
    decisions = store.read("decisions", summary["version"])
    t = settings.dedup.threshold
    used = store.manifest(summary["version"]).get("calibration", {}).get("threshold", 0.99)
    return {"summary": summary, "scores": score(decisions, truth, used if t == "auto" else t)}


def score(decisions: pl.DataFrame, truth: DemoTruth, threshold: float) -> dict[str, dict[str, Any]]:
    """Precision and recall of the found duplicate groups, leaks and label issues against the truth."""
    found = (
        decisions.filter(pl.col("dup_group").is_not_null())
        .group_by("dup_group")
        .agg(pl.col("source"))["source"]
        .to_list()
    )
    truth_groups = truth.duplicate_groups(threshold=threshold)
    dup = evaluate_groups(truth_groups, [_posix(g) for g in found])
    test_split = {p for g in truth_groups for p in g if p.startswith("test/")}
    leaking = {
        p
        for g in truth_groups
        if any(x.startswith("train/") for x in g)
        for p in g
        if p in test_split
    }
    flagged = set(
        _posix(
            decisions.filter(pl.col("leak_of").is_not_null() & (pl.col("split") == "test"))[
                "source"
            ].to_list()
        )
    )
    out = {
        "duplicate pairs": _row(dup.precision, dup.recall, dup.truth_pairs, dup.found_pairs),
        "train/test leaks": _flag_row(evaluate_flags(leaking, flagged)),
    }
    if "label_issue" in decisions.columns:
        issues = set(
            _posix(decisions.filter(pl.col("label_issue").fill_null(False))["source"].to_list())
        )
        out["flipped labels"] = _flag_row(evaluate_flags(truth.flipped_paths(), issues))
    return out


def _flag_row(s: Any) -> dict[str, Any]:
    return _row(s.precision, s.recall, s.truth, s.flagged)


def _row(precision: float, recall: float, truth: int, found: int) -> dict[str, Any]:
    return {"precision": precision, "recall": recall, "truth": truth, "found": found}


def _posix(paths: list[str]) -> list[str]:
    return [p.replace("\\", "/") for p in paths]
