"""The embedding checks (outliers, drift, contamination) over a matrix kept on a real local Ray
cluster give the local engine's results bit for bit, and the driver never holds the matrix.

Slow (a cluster start): `python -m pytest -m slow tests/test_checks_ray.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DriftSettings, OutlierSettings
from leanset.dedup.contamination import Reference, find_contamination
from leanset.dedup.outliers import knn_distance, score_outliers
from leanset.pipelines.checks import run_checks
from leanset.pipelines.config import EngineSettings, FlowSettings, SourceSettings
from leanset.pipelines.engine.rows import BlockMatrix, RayRows
from tests.test_checks import _table, _unit
from tests.test_engine_ray import images  # noqa: F401 - the flow test's image folder

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def _kept(x: np.ndarray, rows: int = 700) -> RayRows:
    """`x` kept on the cluster in blocks of `rows` (not the checks' own chunking)."""
    return RayRows(BlockMatrix.put(x, rows))


def _bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(
        np.asarray(a, np.float64).view(np.uint64), np.asarray(b, np.float64).view(np.uint64)
    )


def _clusters(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    """Unit rows around a few centres, some far ones, and exact copies of some rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    x = centres[rng.integers(0, 6, n)] + 0.4 * rng.normal(size=(n, dim))
    x[rng.choice(n, 30, replace=False)] = rng.normal(size=(30, dim)) * 3
    return _unit(x)


@pytest.mark.parametrize("sample", [None, 900])
@pytest.mark.parametrize("chunk", [65_536, 333])
def test_knn_distances_on_the_cluster_equal_the_local_ones_bit_for_bit(driver, sample, chunk):
    from leanset.pipelines.engine import checks

    x = _clusters(2500)
    local = knn_distance(x, 10, "cpu", sample)
    remote = checks.knn_distance(_kept(x), 10, "cpu", sample, chunk=chunk)
    assert np.isfinite(local).all() and _bits(local, remote)
    tiny = checks.knn_distance(_kept(x[:1]), 10)
    assert tiny.shape == (1,) and np.isnan(tiny[0])


def _sample_table(x: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
    """A table over `x` with exact copies (equal hashes and vectors), an unreadable row and an
    eval split, and the matrix as the embedding step aligns it (the unreadable row is zeros)."""
    n = x.shape[0]
    hashes = [f"h{i}" for i in range(n)]
    for k in range(0, n - 1, 97):
        hashes[k + 1], x[k + 1] = hashes[k], x[k]
    split = ["test" if i % 4 == 0 else "train" for i in range(n)]
    table = _table(n, split=split, hashes=hashes).with_columns(
        pl.when(pl.int_range(n) == 5).then(pl.lit("unreadable: x")).otherwise(None).alias("error")
    )
    x[5] = 0.0
    return table, x


def _settings(**outliers) -> FlowSettings:
    return FlowSettings(
        name="t",
        source=SourceSettings(type="imagefolder", path="unused"),
        store="unused",
        outliers=OutlierSettings(policy="flag", z=2.5, **outliers),
        drift=DriftSettings(sample=300, permutations=200),
        engine=EngineSettings(type="ray"),
    )


@dataclass
class _Guarded(RayRows):
    """A matrix kept on the cluster that refuses to come to the driver: `dense` fails, and
    `fetch` fails above `most` rows (what the checks may bring here: the drift test's sample)."""

    most: int = 0

    def dense(self) -> np.ndarray:
        raise AssertionError("the checks brought the whole matrix to the driver")

    def fetch(self, rows: np.ndarray) -> np.ndarray:
        assert len(rows) <= self.most, f"the checks fetched {len(rows)} rows to the driver"
        return super().fetch(rows)

    def take(self, rows: np.ndarray) -> _Guarded:
        return _Guarded(super().take(rows).blocks, self.most)


def _guarded(x: np.ndarray, most: int) -> _Guarded:
    return _Guarded(_kept(x).blocks, most)


@pytest.mark.parametrize("sample", [200_000, 700])
def test_the_checks_over_a_kept_matrix_decide_as_locally_and_never_bring_it_here(driver, sample):
    from leanset.pipelines.engine import checks

    x = _clusters(3000, seed=1)
    x[3000 - 400 :: 4] = _unit(x[3000 - 400 :: 4] + 0.8)  # some eval rows shifted: drift
    table, x = _sample_table(x)
    settings = _settings(sample=sample)
    local = run_checks(table, x, settings)
    remote = run_checks(table, _guarded(x, 2 * settings.drift.sample), settings)
    assert local.table["outlier"].sum() > 10
    assert remote.table.equals(local.table) and remote.info == local.info
    assert remote.info["drift"]["splits"]["test"]["rows"] == (300, 300)
    here = score_outliers(table, x, settings.outliers)
    there = score_outliers(table, _kept(x), settings.outliers, knn=checks.knn_distance)
    assert _bits(here.distance, there.distance) and _bits(here.score, there.score)


def test_contamination_searched_on_the_cluster_finds_the_local_copies(driver):
    from leanset.pipelines.engine.checks import between

    x = _clusters(2000, seed=2)
    table, x = _sample_table(x)
    rng = np.random.default_rng(3)
    picked = rng.choice(np.arange(10, 2000), 40, replace=False)
    near = _unit(x[picked] + 0.02 * rng.normal(size=(40, 24)))
    ref = Reference("bench", [f"r{i}" for i in range(40)], [f"x{i}" for i in range(40)], near)
    local = find_contamination(table, x, [ref], 0.95, ["test"])
    search = between(EngineSettings(type="ray", task_rows=500))
    remote = find_contamination(table, _guarded(x, 0), [ref], 0.95, ["test"], between=search)
    assert sum(b is not None for b in local.by) >= 20
    assert remote.by == local.by and _bits(local.similarity, remote.similarity)
    assert (remote.searched, remote.found) == (local.searched, local.found)


def _labeling_table(n: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Digits pixels with a few flipped labels, 60 unlabeled rows, an exact copy pair."""
    from tests.test_labeling_noise import planted_flips

    x, noisy, _ = planted_flips(seed=3)
    x, noisy = np.ascontiguousarray(x[:n]), noisy[:n]
    labels = [str(v) if i < n - 60 else None for i, v in enumerate(noisy)]
    hashes = [f"h{i}" for i in range(n)]
    hashes[11], x[11] = hashes[10], x[10]
    table = pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "position": list(range(n)),
            "split": ["train"] * n,
            "label": labels,
            "error": [None] * n,
            "dedup_drop": [None] * n,
            "dup_group": ["g0" if i in (10, 11) else None for i in range(n)],
            "content_hash": hashes,
        },
        schema_overrides={"error": pl.Utf8, "dedup_drop": pl.Utf8, "dup_group": pl.Utf8},
    )
    return table, x


def test_the_probe_and_the_selection_run_on_the_cluster_and_decide_as_locally(driver):
    from leanset.labeling.config import ActiveLearningSettings, LabelNoiseSettings
    from leanset.labeling.stage import label_and_select

    table, x = _labeling_table(400)
    noise, pick = LabelNoiseSettings(), ActiveLearningSettings(budget=20)
    local = label_and_select(table, x, noise, pick, progress=False)
    most = int(pick.budget * pick.pool_factor)  # the selection's pool: all that comes here
    remote = label_and_select(table, _guarded(x, most), noise, pick, progress=False)
    assert local.table["queue_rank"].drop_nulls().len() == 20
    assert local.table["label_issue"].sum() > 0
    assert remote.table.equals(local.table) and remote.info == local.info


def _timeless(q: dict) -> dict:
    """The quality record without the fits' timings (they differ between any two runs)."""
    clock = {"wall_seconds", "cpu_seconds"}
    return {k: _timeless(v) if isinstance(v, dict) else v for k, v in q.items() if k not in clock}


def test_the_quality_probe_fits_on_the_cluster_as_locally(driver):
    from leanset.labeling.quality import table_quality
    from tests.test_promote import _leaky_table

    table, x, labels = _leaky_table()
    local = table_quality(table, labels, x, ["train"], ["test"])
    remote = table_quality(table, labels, _guarded(x, 0), ["train"], ["test"])
    assert local["paired"]["n"] == 160
    assert _timeless(remote) == _timeless(local) and remote["raw"]["wall_seconds"] > 0
    few = table.with_columns(pl.lit("train").alias("split"))
    assert "skipped" in table_quality(few, labels, _guarded(x, 0), ["train"], ["test"])


def test_a_flow_with_every_stage_after_dedup_on_decides_as_locally_without_the_matrix_here(
    prefect_harness,
    cluster,
    images,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
):
    from leanset.pipelines.flows import clean_flow
    from tests.test_engine_ray import _config, _ray_engine, _tables

    def config(store: Path, engine: str) -> str:
        cfg = _config(tmp_path, images, store, engine)
        cfg.write_text(  # embedding pairs only: the geometric route's k-NN reads rows here
            cfg.read_text().replace("threshold: 0.95}", "threshold: 0.95, confirm: embedding}")
            + "    label_noise: {n_folds: 3}\n"
            + "    active_learning: {budget: 5}\n"
            + "    outliers: {policy: flag, z: 2.0}\n"
        )
        return str(cfg)

    local = clean_flow(config_path=config(tmp_path / "local", "local"), flow_name="f")

    def refused(self: RayRows) -> np.ndarray:
        raise AssertionError("a stage brought the whole matrix to the driver")

    monkeypatch.setattr(RayRows, "dense", refused)
    remote = clean_flow(config_path=config(tmp_path / "ray", _ray_engine(cluster)), flow_name="f")
    assert remote["counts"] == local["counts"]
    want, got = _tables(tmp_path / "local"), _tables(tmp_path / "ray")
    for name, table in want.items():
        assert got[name].equals(table), name
    columns = set(want["decisions"].columns) | set(want["dataset"].columns)
    assert {"outlier_score", "label_issue", "pred_probs"} <= columns
