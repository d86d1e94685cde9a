"""The promotion gate: a version is promoted only when its probe accuracy did not drop too far;
promotions are records beside the manifests, and `export` reads the promoted version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.labeling.quality import (
    mcnemar_exact,
    paired_difference,
    quality_delta,
    unpack_bits,
)
from leanset.pipelines.cli import main
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from leanset.pipelines.store.promotions import promoted_version, promotions
from tests.helpers import write_flows, write_png


def test_paired_difference_and_mcnemar_on_known_counts():
    a = np.array([True] * 80 + [False] * 20)
    b = a.copy()
    b[80:90] = True  # b gets 10 more right, a none that b misses
    p = paired_difference(a, b)
    assert (p.only_a, p.only_b, p.n) == (0, 10, 100)
    assert p.difference == pytest.approx(0.10)
    assert p.p_value == pytest.approx(2 * 0.5**10)
    assert 0 < p.ci_low < 0.10 < p.ci_high
    same = paired_difference(a, a)
    assert same.p_value == 1.0 and same.ci_low < 0 < same.ci_high
    assert mcnemar_exact(5, 5) == 1.0


def test_quality_delta_sees_flipped_training_labels():
    """Cleaning that removes flipped labels improves the probe; removing half the data at random
    from a clean set does not change it much."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 2
    y = rng.integers(0, 3, 900)
    x = (centres[y] + rng.normal(size=(900, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    train = np.arange(900) < 600
    noisy = y.copy()
    flip = train & (rng.random(900) < 0.45)
    noisy[flip] = (y[flip] + 1) % 3
    q = quality_delta(x, noisy, y, train, train & ~flip, ~train, 3)
    assert q.paired.n == 300 and q.clean.n_train == int((train & ~flip).sum())
    assert q.paired.accuracy_b > q.paired.accuracy_a
    assert q.raw.cpu_seconds >= 0 and q.raw.device == "cpu"


def _digits(root: Path, n: int = 500) -> Path:
    """The first `n` scikit-learn digits as 16x16 PNGs: 3/4 train, 1/4 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(n):
        img = np.kron(d.images[i] * 15, np.ones((2, 2)))
        split = "test" if i % 4 == 0 else "train"
        write_png(root / f"{split}/{d.target[i]}/d{i:04d}.png", img)
    return root


def _flow(dedup: dict) -> dict:
    return {
        "source": {"type": "imagefolder", "path": "digits"},
        "embedder": {"type": "pixels", "size": 16},
        "dedup": dedup,
        "store": "store",
    }


def test_gate_accepts_a_version_that_kept_its_accuracy_and_refuses_one_that_lost_it(
    prefect_harness, tmp_path: Path, capsys
):
    _digits(tmp_path / "digits")
    store = tmp_path / "store"
    config = write_flows(tmp_path, digits=_flow({"near": False}))
    v1 = clean_flow(config_path=str(config), flow_name="digits")
    q1 = v1["cost"]["quality"]["paired"]
    assert q1["n"] == 125 and q1["accuracy_a"] - q1["accuracy_b"] <= 0.01
    assert main(["promote", str(store), "1"]) == 0
    assert "within the bound: promoted" in capsys.readouterr().out
    assert promoted_version(Store(store)) == 1

    # a threshold this low drops most of train; the dedup guard would refuse it, so it is forced
    config = write_flows(tmp_path, digits=_flow({"threshold": 0.9}))
    v2 = clean_flow(config_path=str(config), flow_name="digits", force=True)
    q2 = v2["cost"]["quality"]["paired"]
    assert v2["version"] == 2 and v2["cost"]["samples_after"] < v1["cost"]["samples_after"] / 2
    assert q2["accuracy_b"] < q1["accuracy_b"] - 0.05
    manifests = sorted((store / "manifests").iterdir())
    before = {p.name: p.read_bytes() for p in manifests}

    assert main(["promote", str(store), "2"]) == 2
    out = capsys.readouterr().out
    assert "against" in out and "for version 1 (promoted)" in out and "not promoted" in out
    assert promoted_version(Store(store)) == 1 and len(promotions(Store(store))) == 1
    assert {p.name: p.read_bytes() for p in manifests} == before  # manifests never change

    target = tmp_path / "out.parquet"
    assert main(["export", str(store), "--format", "parquet", "--out", str(target)]) == 0
    assert "promoted version 1" in capsys.readouterr().out
    assert pl.read_parquet(target).height == v1["counts"]["kept"]

    assert main(["promote", str(store), "2", "--max-accuracy-drop", "1", "--by", "qa"]) == 0
    capsys.readouterr()
    record = promotions(Store(store))[-1]
    assert record["version"] == 2 and record["previous"] == 1 and record["by"] == "qa"
    assert record["gate"]["baseline"] == "version 1 (promoted)" and record["gate"]["passed"]
    assert main(["versions", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["promoted"] for r in rows] == [False, True]
    assert main(["show", str(store), "--version", "1"]) == 0
    assert "promoted: earlier (now version 2)" in capsys.readouterr().out


def test_flow_option_promotes_only_through_the_gate(prefect_harness, tmp_path: Path):
    _digits(tmp_path / "digits", n=200)
    body = _flow({"near": False}) | {"cost": {"promote": True, "max_accuracy_drop": 0.02}}
    out = clean_flow(config_path=str(write_flows(tmp_path, digits=body)), flow_name="digits")
    assert "Promotion (cost.promote): Version 1" in out["statement"]
    record = promotions(Store(tmp_path / "store"))[-1]
    assert record["version"] == 1 and record["by"] == "leanset run (flow digits)"


def _leaky_table(n: int = 600, leaks: int = 40) -> tuple[pl.DataFrame, np.ndarray, list]:
    """Three noisy classes; `leaks` test rows with odd labels, each with a train copy that the
    cleaning removed as a test leak."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 1.2
    y = rng.integers(0, 3, n)
    x = (centres[y] + rng.normal(size=(n, 8))).astype(np.float32)
    split = np.where(np.arange(n) < n * 2 // 3, "train", "test")
    test_rows = np.flatnonzero(split == "test")[:leaks]
    copies = np.flatnonzero(split == "train")[:leaks]
    x[copies], y[copies] = x[test_rows], y[test_rows]
    ids = [f"s{i}" for i in range(n)]
    leak_of: list[str | None] = [None] * n
    for t, c in zip(test_rows, copies, strict=True):
        leak_of[c], leak_of[t] = ids[t], ids[c]
    kept = np.ones(n, dtype=bool)
    kept[copies] = False
    labels = [str(v) for v in y]
    table = pl.DataFrame(
        {
            "sample_id": ids,
            "split": split.tolist(),
            "label": labels,
            "kept": kept,
            "error": pl.Series([None] * n, dtype=pl.Utf8),
            "leak_of": pl.Series(leak_of, dtype=pl.Utf8),
        }
    )
    return table, x, labels


def test_quality_leaves_out_eval_rows_a_removed_train_row_leaked_into():
    from leanset.labeling.quality import table_quality

    table, x, labels = _leaky_table()
    q = table_quality(table, labels, x, ["train"], ["test"])
    assert q["all_rows"]["paired"]["n"] == 200
    assert q["paired"]["n"] == 160 and q["excluded"]["rows"] == 40
    assert "test_leak" in q["excluded"]["why"] and "inflated by leaks" in q["all_rows"]["note"]
    free = unpack_bits(q["leak_free"], q["n_scored"])
    assert free.sum() == 160 and not free[:40].any()  # the first 40 test rows were leaked into


def test_run_statement_and_gate_report_the_leak_free_figure_beside_the_inflated_one(
    prefect_harness, tmp_path: Path, capsys
):
    import shutil

    root = _digits(tmp_path / "digits", n=240)
    tests = sorted((root / "test").rglob("*.png"))[:12]
    for k, path in enumerate(tests):  # plant train copies of 12 test images
        target = root / "train" / path.parent.name / f"leak{k}.png"
        shutil.copy(path, target)
    config = write_flows(tmp_path, digits=_flow({"near": False}))
    v1 = clean_flow(config_path=str(config), flow_name="digits")
    q = v1["cost"]["quality"]
    assert q["excluded"]["rows"] == 12 and q["all_rows"]["paired"]["n"] == 60
    assert q["paired"]["n"] == 48
    assert "without leaked rows" in v1["statement"] and "inflated by leaks" in v1["statement"]
    assert main(["promote", str(tmp_path / "store"), "1", "--max-accuracy-drop", "1"]) == 0
    out = capsys.readouterr().out
    assert "n = 48" in out and "Left out: 12 eval rows" in out and "inflated by leaks" in out
