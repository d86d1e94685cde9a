"""The safety guard: a run that would drop an implausible share of a split commits nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupSettings
from leanset.dedup.guard import DedupGuardError, check_drops
from leanset.pipelines.store import Store
from tests.helpers import pixel_flow, write_png


def decided(n: int, dropped: int, group: int) -> pl.DataFrame:
    """A train split of n rows: `dropped` of them duplicates, `group` of those in one group."""
    ids = [f"s{i:03d}" for i in range(n)]
    drop = ["near_duplicate"] * dropped + [None] * (n - dropped)
    grp = ["s099"] * group + [f"s{i:03d}" for i in range(group, dropped)] + [None] * (n - dropped)
    return pl.DataFrame(
        {"sample_id": ids, "split": ["train"] * n, "dedup_drop": drop, "dup_group": grp},
        schema_overrides={"dedup_drop": pl.Utf8, "dup_group": pl.Utf8},
    )


def test_refuses_a_split_losing_more_than_the_allowed_share():
    with pytest.raises(DedupGuardError) as err:
        check_drops(decided(100, 40, 5), DedupSettings())
    msg = str(err.value)
    assert "split 'train'" in msg and "drop 40% of its 100 samples" in msg
    assert "40 near_duplicate" in msg and "max_drop_fraction 0.3" in msg
    assert "Nothing was committed" in msg and "--force" in msg


def test_refuses_one_group_holding_too_much_of_a_split():
    with pytest.raises(DedupGuardError, match=r"largest group holds 15 samples \(15% .*s099"):
        check_drops(decided(100, 20, 15), DedupSettings())


def test_allows_what_the_settings_allow_and_ignores_tiny_splits():
    assert check_drops(decided(100, 40, 5), DedupSettings(max_drop_fraction=0.5))
    assert check_drops(decided(100, 40, 5), DedupSettings(max_drop_fraction=None))
    assert check_drops(decided(20, 15, 15), DedupSettings())  # fewer rows than guard_min_rows


def _mostly_copies(root: Path) -> None:
    """60 training images, 30 of them exact copies of one another's pairs (50% duplicates)."""
    rng = np.random.default_rng(1)
    for k in range(30):
        img = rng.integers(0, 256, (16, 16))
        write_png(root / f"train/a/img{k:02d}.png", img)
        write_png(root / f"train/a/copy{k:02d}.png", img)


def test_flow_stops_before_commit_and_force_commits(prefect_harness, tmp_path: Path):
    from leanset.pipelines.flows import clean_flow

    _mostly_copies(tmp_path / "images")
    config = pixel_flow(tmp_path, "copies")
    with pytest.raises(DedupGuardError, match="drop 50% of its 60 samples"):
        clean_flow(config_path=str(config), flow_name="copies")
    assert Store(tmp_path / "store").manifests() == []  # nothing was committed
    out = clean_flow(config_path=str(config), flow_name="copies", force=True)
    assert out["version"] == 1 and out["counts"]["by_reason"] == {"exact_duplicate": 30}
    guard = Store(tmp_path / "store").manifest(1)["guard"]
    assert guard["forced"] and guard["splits"]["train"] == {
        "samples": 60,
        "dropped": 30,
        "largest_group": 2,
    }
