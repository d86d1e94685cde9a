"""The quality checks: outliers, class balance, split drift (stage functions and the flow)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupError, DriftSettings, OutlierSettings
from leanset.dedup.drift import split_shift
from leanset.dedup.outliers import outlier_columns, score_outliers
from leanset.pipelines.decide import decide
from leanset.pipelines.report.balance import balance_info, class_balance
from leanset.pipelines.store import Store
from tests.helpers import pixel_flow, write_png


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _table(n: int, split: list[str] | None = None, hashes: list[str] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "content_hash": hashes or [f"h{i}" for i in range(n)],
            "error": [None] * n,
            "split": split or ["train"] * n,
            "label": ["a"] * n,
        },
        schema_overrides={"error": pl.Utf8},
    )


def _cluster(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(1, 32)) + 0.3 * rng.normal(size=(n, 32)))


def test_a_planted_far_sample_is_the_one_outlier_and_its_copy_shares_its_score():
    x = _cluster(120)
    x[7] = _unit(np.random.default_rng(5).normal(size=(1, 32)))[0]
    x[8] = x[7]  # an exact copy: one content, so not its own neighbour
    hashes = [f"h{i}" for i in range(120)]
    hashes[8] = "h7"
    table = _table(120, hashes=hashes).with_columns(
        pl.when(pl.int_range(120) == 9).then(pl.lit("unreadable: x")).otherwise(None).alias("error")
    )
    x[9] = 0.0
    scores = score_outliers(table, x, OutlierSettings(z=5, max_fraction=0.1))
    assert np.flatnonzero(scores.flagged).tolist() == [7, 8]
    assert scores.score[7] == scores.score[8] > 5
    assert np.isnan(scores.score[9]) and np.nanmax(np.delete(scores.score, [7, 8])) < 5


def test_the_cap_keeps_the_most_extreme_and_policies_drop_only_training_rows():
    x = _cluster(100)
    far = _unit(np.random.default_rng(9).normal(size=(4, 32)))
    x[[1, 2, 3, 4]] = far
    split = ["train"] * 50 + ["test"] * 50
    split[3] = split[4] = "test"
    table = _table(100, split=split)
    capped = score_outliers(table, x, OutlierSettings(z=5, max_fraction=0.02))
    assert capped.flagged.sum() == 2
    assert set(np.flatnonzero(capped.flagged)) <= {1, 2, 3, 4}
    settings = OutlierSettings(policy="drop", z=5, max_fraction=0.1)
    out = outlier_columns(table, score_outliers(table, x, settings), settings, ["test"])
    decided = decide(out)
    dropped = decided.filter(pl.col("drop_reason") == "outlier")["sample_id"].to_list()
    assert dropped == ["s1", "s2"]  # s3, s4 are eval rows: flagged, kept
    assert decided.filter(pl.col("outlier"))["sample_id"].to_list() == ["s1", "s2", "s3", "s4"]
    queued = outlier_columns(
        table, score_outliers(table, x, settings), OutlierSettings("queue"), []
    )
    assert queued["outlier_review"].sum() == 4 and queued["outlier_drop"].null_count() == 100


def test_a_sampled_neighbour_search_finds_the_same_outliers_for_a_bounded_cost():
    """Above `outliers.sample` distinct contents, each row meets only a random sample of the rows:
    the planted far rows still stand out, and the ranking agrees with the exact search."""
    x = _cluster(3000, seed=2)
    planted = [5, 1500, 2999]
    x[planted] = _unit(np.random.default_rng(8).normal(size=(3, 32)))
    table = _table(3000)
    exact = score_outliers(table, x, OutlierSettings(z=5, max_fraction=0.01))
    sampled = score_outliers(table, x, OutlierSettings(z=5, max_fraction=0.01, sample=400))
    assert (
        np.flatnonzero(sampled.flagged).tolist()
        == planted
        == np.flatnonzero(exact.flagged).tolist()
    )
    rank = np.corrcoef(
        np.argsort(np.argsort(exact.distance)), np.argsort(np.argsort(sampled.distance))
    )
    assert rank[0, 1] > 0.8
    same = score_outliers(table[:300], x[:300], OutlierSettings(sample=300))
    assert np.array_equal(same.score, score_outliers(table[:300], x[:300], OutlierSettings()).score)


def test_bad_outlier_settings_name_the_key():
    with pytest.raises(DedupError, match="outliers.k"):
        OutlierSettings(k=0)
    with pytest.raises(DedupError, match="outliers.max_fraction"):
        OutlierSettings(max_fraction=0)


def _decided(kept_a: int, kept_b: int, n: int = 200) -> pl.DataFrame:
    rows = []
    for label, kept in (("a", kept_a), ("b", kept_b)):
        for i in range(n):
            ok = i < kept
            rows.append((label, "train", ok, None if ok else "near_duplicate"))
    rows += [("a", "test", False, "test_leak")] * 50  # eval rows do not count
    schema = {"label": pl.Utf8, "split": pl.Utf8, "kept": pl.Boolean, "drop_reason": pl.Utf8}
    return pl.DataFrame(rows, schema=schema, orient="row")


def test_a_class_losing_far_more_than_the_others_is_warned_about():
    losses = {c.label: c for c in class_balance(_decided(120, 190), ["test"])}
    assert losses["a"].input == 200 and losses["a"].kept == 120
    assert losses["a"].removed_by == {"near_duplicate": 80}
    assert losses["a"].warn and not losses["b"].warn
    info = balance_info(_decided(120, 190), ["test"])["balance"]
    assert len(info["warnings"]) == 1 and "class 'a' lost 80 of its 200" in info["warnings"][0]
    assert info["imbalance_after"] == round(190 / 120, 2)


def test_proportional_losses_are_not_warned_about():
    assert not any(c.warn for c in class_balance(_decided(180, 178), ["test"]))
    assert balance_info(_decided(200, 200).filter(pl.col("split") == "test"), ["test"]) == {}


def test_the_split_shift_test_tells_a_shifted_eval_split_from_a_like_one():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 64))

    def draw(n: int, shift: float = 0.0) -> np.ndarray:
        return _unit(centres[rng.integers(0, 10, n)] + 0.8 * rng.normal(size=(n, 64)) + shift)

    settings = DriftSettings(sample=400, permutations=200)
    alike = split_shift(draw(800), draw(300), settings)
    shifted = split_shift(draw(800), draw(300, 0.3), settings)
    assert alike.p_value > 0.05 and alike.verdict == "looks like train"
    assert shifted.p_value < 0.01 and shifted.statistic > shifted.expected
    assert shifted.rows == (400, 300)


def _gradients(root: Path) -> None:
    """Noisy horizontal gradients in two classes and a test split; one noise image per split."""
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, 16), (16, 1))
    for k in range(40):
        img = np.clip(ramp + rng.normal(0, 25, (16, 16)), 0, 255)
        write_png(root / f"train/{'ab'[k % 2]}/g{k:02d}.png", img)
    for k in range(12):
        write_png(
            root / f"test/{'ab'[k % 2]}/t{k:02d}.png",
            np.clip(ramp + rng.normal(0, 25, (16, 16)), 0, 255),
        )
    write_png(root / "train/b/dark.png", np.clip(ramp + rng.normal(0, 25, (16, 16)), 0, 255) * 0.05)
    write_png(root / "train/a/odd.png", rng.integers(0, 256, (16, 16)))
    write_png(root / "test/b/odd.png", rng.integers(0, 256, (16, 16)))


def test_flow_records_outliers_balance_and_drift_and_the_report_shows_them(
    prefect_harness, tmp_path: Path
):
    from leanset.pipelines.flows import clean_flow

    _gradients(tmp_path / "images")
    checks = {"policy": "drop", "z": 5, "max_fraction": 0.1}
    config = pixel_flow(tmp_path, "g", outliers=checks, dedup={"threshold": 0.999})
    out = clean_flow(config_path=str(config), flow_name="g")
    decisions = Store(tmp_path / "store").read("decisions")
    flagged = decisions.filter(pl.col("outlier"))
    assert sorted(flagged["source"]) == ["test/b/odd.png", "train/a/odd.png"]
    assert out["counts"]["by_reason"] == {"outlier": 1}  # the eval split's outlier is kept
    manifest = Store(tmp_path / "store").latest()
    assert manifest["checks"]["outliers"]["flagged"] == 2
    assert set(manifest["checks"]["balance"]["classes"]) == {"a", "b"}
    assert manifest["checks"]["drift"]["splits"]["test"]["verdict"] == "looks like train"
    page = Path(out["report"]).read_text()
    assert "Outliers (2 flagged, policy drop)" in page and "Class balance" in page
    assert "Eval splits against the training split" in page
    dark = decisions.filter(pl.col("image_issue").is_not_null())
    assert dark["source"].to_list() == ["train/b/dark.png"] and dark["kept"].to_list() == [True]
    assert "dark: 90% of its pixels at or below" in dark["image_issue"][0]
    assert manifest["checks"]["image_quality"]["found"]["dark"] == 1
    assert "Unusable images (1, policy flag)" in page and "_image_measures" not in decisions.columns


def test_rows_a_check_sends_for_review_join_the_queue_once():
    from leanset.pipelines.checks import with_review_rows

    decided = pl.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "source": ["a.png", "b.png", "c.png"],
            "label": ["x", None, "y"],
            "outlier_review": [True, False, True],
            "image_review": [False, True, True],
        }
    )
    queued = pl.DataFrame({"sample_id": ["c"], "source": ["c.png"], "reason": ["uncertain"]})
    rows = with_review_rows(queued, decided)
    assert dict(zip(rows["sample_id"], rows["reason"], strict=True)) == {
        "c": "uncertain",
        "a": "outlier",
        "b": "unusable_image",
    }
    assert with_review_rows(pl.DataFrame(), decided).height == 3
