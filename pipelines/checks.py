"""The quality checks of a run, between labeling and the decision: outliers in embedding space
(and, for images, the unusable-image measures taken while embedding). Each check is a pure stage
in `dedup/`; this module runs the configured ones and gathers what the manifest records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from leanset.dedup.drift import split_shift_rows
from leanset.dedup.imagequality import image_columns, judge_images
from leanset.dedup.imagequality import info as image_info
from leanset.dedup.matrix import Rows
from leanset.dedup.outliers import KnnDistance, knn_distance, outlier_columns, score_outliers
from leanset.pipelines.config import FlowSettings
from leanset.pipelines.contamination import check_contamination
from leanset.pipelines.embed import EmbedResult
from leanset.pipelines.embed.measures import ImageMeasure, Measure, measure_rows
from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.store.manifest import JSON

MEASURE_COLUMN = "_image_measures"  # the embed step's measures, until the check replaces them
REVIEW_REASONS = {"outlier_review": "outlier", "image_review": "unusable_image"}


@dataclass(frozen=True)
class Basis:
    """What the contamination search shares with the run: the embedder fingerprint, the dedup
    threshold as calibrated, and whether the run is dry (the store's cache is then read only)."""

    fingerprint: str
    threshold: float
    dry_run: bool = False

    @classmethod
    def of(cls, settings: FlowSettings, fingerprint: str, calibration: JSON, dry: bool) -> Basis:
        """The basis of a run whose dedup stage recorded `calibration`."""
        t = settings.dedup.threshold
        threshold = float(calibration.get("threshold", 0.95)) if t == "auto" else float(t)
        return cls(fingerprint, min(threshold, 0.999), dry)


@dataclass
class Checked:
    """The table with the checks' columns, and what each check found (the manifest's `checks`)."""

    table: pl.DataFrame
    info: JSON = field(default_factory=dict)


def run_checks(
    table: pl.DataFrame,
    matrix: Rows | None,
    settings: FlowSettings,
    basis: Basis | None = None,
) -> Checked:
    """The configured checks over the table (checks that need embeddings skip without them).
    `basis`: the embedder and dedup threshold contamination is searched with. A matrix kept on
    a Ray cluster stays there: tasks compute what the checks need from its blocks."""
    info: JSON = {}
    iq = settings.image_quality
    if iq.policy != "off" and MEASURE_COLUMN in table.columns:
        measures = table.select(MEASURE_COLUMN).to_series().to_numpy()
        flags = judge_images(measures, iq)
        table = image_columns(
            table.drop(MEASURE_COLUMN), measures, flags, iq, settings.dedup.eval_splits
        )
        info["image_quality"] = image_info(flags, iq)
    if matrix is None or matrix.shape[1] == 0:  # the checks below need embeddings
        return Checked(table, info)
    if settings.leaks.against and basis is not None:
        table, info["contamination"] = check_contamination(
            table, matrix, settings, basis.fingerprint, basis.threshold, basis.dry_run
        )
    out = settings.outliers
    if out.policy != "off":
        device = settings.embedder.device if settings.embedder else "auto"
        scores = score_outliers(table, matrix, out, device, _knn(matrix))
        table = outlier_columns(table, scores, out, settings.dedup.eval_splits)
        info["outliers"] = scores.info(out)
    if settings.drift.enabled and (drift := split_drift(table, matrix, settings)):
        info["drift"] = {"splits": drift}
    return Checked(table, info)


def _knn(matrix: Rows) -> KnnDistance:
    """The outlier check's k-NN distances: here, or (kept on a cluster) by the engine's tasks."""
    if isinstance(matrix, np.ndarray):
        return knn_distance
    from leanset.pipelines.engine.checks import knn_distance as on_cluster

    return on_cluster


def split_drift(table: pl.DataFrame, matrix: Rows, settings: FlowSettings) -> JSON:
    """{eval split: its two-sample test against the training rows} (readable distinct rows)."""
    evals = settings.dedup.eval_splits
    skip = [*evals, *settings.columns.unlabeled_splits]
    rows = table.select("content_hash", "error", "split").with_row_index("_i")
    rows = rows.filter(pl.col("error").is_null())
    rows = rows.unique("content_hash", keep="first", maintain_order=True)
    train = rows.filter(~pl.col("split").is_in(skip))["_i"].to_numpy()
    device = settings.embedder.device if settings.embedder else "auto"
    out: JSON = {}
    for name in sorted(set(rows["split"].to_list()) & set(evals)):
        other = rows.filter(pl.col("split") == name)["_i"].to_numpy()
        if len(train) >= 2 and len(other) >= 2:
            test = split_shift_rows(matrix, train, other, settings.drift, device)
            out[name] = test.to_dict()
    return out


def wants_queue(settings: FlowSettings) -> bool:
    """A check sends its finds to the labeling queue (`policy: queue`)."""
    return "queue" in (settings.outliers.policy, settings.image_quality.policy)


def review_reasons(table: pl.DataFrame) -> list[pl.Expr]:
    """The queue reasons of rows a check sent for review."""
    return [
        pl.when(pl.col(col).fill_null(False)).then(pl.lit(reason))
        for col, reason in REVIEW_REASONS.items()
        if col in table.columns
    ]


def with_review_rows(rows: pl.DataFrame, decided: pl.DataFrame) -> pl.DataFrame:
    """The labeling queue's rows plus the rows a check sent for review (one row per sample)."""
    reasons = review_reasons(decided)
    if not reasons:
        return rows
    extra = (
        decided.with_columns(pl.coalesce(reasons).alias("reason"))
        .filter(pl.col("reason").is_not_null())
        .select("sample_id", "source", "reason", "label")
    )
    if extra.height == 0:
        return rows
    if rows.height == 0:
        return extra
    both = pl.concat([rows, extra], how="diagonal_relaxed")
    return both.unique("sample_id", keep="first", maintain_order=True)


def image_measure(data: LoadedDataset, settings: FlowSettings) -> Measure | None:
    """What the embed step measures while it decodes: image measures, when the check is on."""
    on = data.modality == "image" and settings.image_quality.policy != "off"
    return ImageMeasure() if on else None


def measures_after(
    data: LoadedDataset, settings: FlowSettings, res: EmbedResult, root: Path
) -> np.ndarray | None:
    """The measures of an embedding that did not take them (`engine: ray`): cached (under
    `root`, the run's embedding cache folder: a bucket store's local mirror), or read."""
    measure = image_measure(data, settings)
    if measure is None:
        return None
    return measure_rows(data, measure, root, {}, list(res.errors))


def with_measures(table: pl.DataFrame, measures: np.ndarray | None) -> pl.DataFrame:
    """The table with the embed step's measures as one array column (dropped by the check)."""
    if measures is None:
        return table
    return table.with_columns(pl.Series(MEASURE_COLUMN, measures))
