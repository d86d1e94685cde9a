"""Label issues from the user's own probabilities alone: a table of (id, label, pred_probs) with no
image, text or embedding is valid; dedup is skipped with one line, the queue uses the
probabilities."""

import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import leanset
from tests.helpers import write_flows


@pytest.fixture
def probs_table(tmp_path: Path) -> tuple[Path, set[str], set[str]]:
    """400 rows of 4 classes: probabilities of a decent model, 20 flipped labels, 40 unlabeled
    rows (10 of them uncertain: flat probabilities)."""
    rng = np.random.default_rng(1)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n) * 0.2
    probs[np.arange(n), y] += 0.8
    label = np.array([f"class{v}" for v in y], dtype=object)
    flipped = rng.choice(360, 20, replace=False)
    label[flipped] = [f"class{(y[i] + 1) % k}" for i in flipped]
    label[360:] = None
    probs[360:370] = 1.0 / k
    ids = [f"row{i:03d}" for i in range(n)]
    path = tmp_path / "probs.parquet"
    pl.DataFrame(
        {"id": ids, "label": list(label), "pred_probs": [list(p) for p in probs]},
        schema={"id": pl.Utf8, "label": pl.Utf8, "pred_probs": pl.List(pl.Float64)},
    ).write_parquet(path)
    return path, {ids[i] for i in flipped}, set(ids[360:370])


def _checks(r: leanset.Result, flipped: set[str], flat: set[str]) -> None:
    found = set(r.label_issues["sample_id"])
    assert len(found & flipped) >= 18 and len(found - flipped) <= 4, (found & flipped, found)
    assert r.decisions["dup_group"].null_count() == 400  # nothing grouped: dedup did not run
    uncertain = r.queue.filter(pl.col("reason") == "uncertain")["sample_id"].to_list()
    assert len(uncertain) == 10 and set(uncertain) == flat


def test_from_leanset_clean(probs_table, caplog):
    path, flipped, flat = probs_table
    table = pl.read_parquet(path)
    with caplog.at_level(logging.WARNING, logger="leanset.flow"):
        r = leanset.clean(
            table,
            id="id",
            label="label",
            pred_probs="pred_probs",
            active_learning={"budget": 10, "strategy": "margin", "diversity": "none"},
        )
    said = [m for m in caplog.messages if m.startswith("Dedup skipped: it needs content")]
    assert len(said) == 1
    _checks(r, flipped, flat)
    assert r.kept().height == 400  # policy flag keeps every row


def test_from_flows_yaml(probs_table, tmp_path):
    path, flipped, flat = probs_table
    config = write_flows(
        tmp_path,
        probs={
            "source": {"type": "files", "format": "parquet", "data_files": [path.name]},
            "columns": {"id": "id", "label": "label"},
            "label_noise": {"pred_probs_column": "pred_probs", "policy": "drop"},
            "active_learning": {"budget": 10, "strategy": "margin", "diversity": "none"},
            "store": "store",
        },
    )
    r = leanset.run(config, "probs")
    assert r.committed and r.version == 1
    _checks(r, flipped, flat)
    dropped = set(r.decisions.filter(pl.col("drop_reason") == "label_issue")["sample_id"])
    assert dropped == set(r.label_issues["sample_id"])
    stored = leanset.open_store(tmp_path / "store").dataset()
    assert stored.height == 400 - len(dropped) and "sample_id" in stored.columns
