"""`bench.ray_engine driver --checks ray|dense`: the stages after dedup over a kept matrix.

Run by `bench.ray_engine driver --via cache --checks MODE` in each size's own process, after the
cache was aligned into a matrix kept on the cluster. It runs what a flow runs after the dedup stage
on `engine: ray` with its defaults: the embedding checks (`run_checks`: outliers, drift) and the
cost statement's quality probe (`table_quality`); the label-noise probe and the selection run
only when configured and go through the same path as the quality probe (`RayRows.apply`) and a
bounded `fetch`. `ray` passes the kept matrix (this branch); `dense` brings it to the driver
first (`RayRows.dense`, what these stages did before). Prints the driver's RSS and peak after
each step. `--outlier-sample` bounds the outlier check's sample (its default, 200,000, costs
N x 200,000 products, hours on a 2-core machine at 4M rows); the driver's memory does not depend
on it (the sample stays on the cluster).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any


def after_dedup(a: argparse.Namespace, kept: Any, hashes: Any) -> dict[str, Any]:
    """The checks and the quality probe over `kept` (or its dense copy), with the driver's marks."""
    import polars as pl

    from bench.ray_engine import _Steps
    from leanset.dedup.config import OutlierSettings
    from leanset.labeling.probe import ProbeOptions
    from leanset.labeling.quality import table_quality
    from leanset.pipelines.checks import run_checks
    from leanset.pipelines.config import EngineSettings, FlowSettings, SourceSettings

    steps, table = _Steps.over_table(hashes)
    del hashes  # the table holds what the checks need
    t0 = time.perf_counter()
    matrix = kept if a.checks == "ray" else kept.dense()
    steps.mark("matrix (dense: on the driver)", t0)
    settings = FlowSettings(
        name="bench",
        source=SourceSettings(type="imagefolder", path="unused"),
        store="unused",
        outliers=OutlierSettings(sample=a.outlier_sample),
        engine=EngineSettings(type="ray", task_rows=a.task_rows),
    )
    t0 = time.perf_counter()
    checked = run_checks(table, matrix, settings)
    steps.mark("run_checks (outliers, drift)", t0)
    t0 = time.perf_counter()
    decided = checked.table.with_columns(pl.lit(True).alias("kept"))
    labels = table["label"].to_list()  # the raw labels, as the flow's cost step takes them
    quality = table_quality(decided, labels, matrix, ["train"], ["test"], ProbeOptions())
    steps.mark("table_quality (the cost probe)", t0)
    return {
        "checks": a.checks,
        "outlier_sample": a.outlier_sample,
        "steps_rss_anon_shmem_hwm_mib_s": steps.rows,
        "outliers_flagged": checked.info["outliers"]["flagged"],
        "drift": checked.info.get("drift", {}).get("splits", {}).get("test", {}).get("p_value"),
        "quality_accuracy_raw": quality.get("raw", {}).get("accuracy"),
        "load_1min": round(os.getloadavg()[0], 1),
    }
