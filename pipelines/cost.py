"""The cost delta of a cleaning run: what one training epoch costs before and after, what the run
itself spent, when it pays for itself, and what the cleaning did to quality.

Only the training splits enter the epoch (see `pipelines.units`), counted in `cost.unit`. The raw
epoch is priced from the first of: `cost.gpu_hours_per_epoch`, a throughput per GPU in flows.yaml,
the store's `leanset calibrate` record; the cleaned epoch costs the raw one's fixed part plus its
per-unit part times the share of units left, times what a kept unit costs against an average one
when `leanset calibrate` measured that (`kept_weight`); with calibrate's race over several seeds the
statement also gives the range one training run's saving falls in (`kept_range`). Break-even compares everything the run spent (GPU-hours and CPU-hours) with the saving, in
money when both resources are involved, so it is stated only when every resource has a price.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

from leanset.pipelines.config import CostSettings, FlowSettings
from leanset.pipelines.contamination import reference_state
from leanset.pipelines.units import Accounting

JSON = dict[str, Any]


@dataclass(frozen=True)
class RunCompute:
    """The compute one leanset run spent, measured."""

    wall_seconds: float
    cpu_seconds: float
    gpu_seconds: float
    device: str

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600

    @property
    def cpu_hours(self) -> float:
        return self.cpu_seconds / 3600


class ComputeMeter:
    """Wall and CPU time since creation; GPU time is the time spent in stages that used a GPU."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = _cpu_seconds()
        self.gpu_seconds = 0.0

    def add_gpu(self, seconds: float, device: str) -> None:
        """Count `seconds` of a stage as GPU time when it ran on a CUDA device."""
        if str(device).startswith("cuda"):
            self.gpu_seconds += seconds

    def read(self) -> RunCompute:
        device = "cuda" if self.gpu_seconds else "cpu"
        return RunCompute(
            wall_seconds=time.perf_counter() - self._t0,
            cpu_seconds=_cpu_seconds() - self._cpu0,
            gpu_seconds=self.gpu_seconds,
            device=device,
        )


def _cpu_seconds() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


# ---------------------------------------------------------------- pricing an epoch


@dataclass(frozen=True)
class EpochPrice:
    """Hours of one epoch over the raw training splits, on which resource, and where that came from."""

    resource: str  # "GPU" or "CPU" (a calibration on a CPU prices CPU core-hours)
    hours: float
    source: str
    fixed_hours: float = 0.0  # the part of `hours` that does not shrink with the samples
    kept_weight: float = 1.0  # a kept sample's cost against an average one (calibrate measures it)
    kept_range: tuple[float, float] | None = None  # where one training run's weight falls (95%)

    def after(self, share: float, weight: float | None = None) -> float:
        """Hours of the cleaned epoch that keeps `share` of the units (at `weight`, else the
        priced kept weight)."""
        w = self.kept_weight if weight is None else weight
        return self.fixed_hours + (self.hours - self.fixed_hours) * share * w

    def saving_range(self, share: float) -> tuple[float, float] | None:
        """The share of the epoch's time one training run saves (95%), from the kept weight's
        range over calibrate's seeds; None without one."""
        if self.kept_range is None or not self.hours:
            return None
        low, high = (max(0.0, w) for w in self.kept_range)
        return 1 - self.after(share, high) / self.hours, 1 - self.after(share, low) / self.hours


def uses_calibration(cost: CostSettings) -> bool:
    """True when flows.yaml prices no epoch itself, so a stored calibration would."""
    return cost.gpu_hours_per_epoch is None and cost.throughput() is None


def config_hash(settings: FlowSettings, calibration: JSON | None) -> str:
    """The flow's config hash, with the calibration folded in when it prices the epoch (a new
    calibration is a new cost input: the next run states it in a new version)."""
    base = settings.fingerprint()
    if refs := reference_state(settings):
        base = hashlib.blake2b(f"{base}|{refs}".encode(), digest_size=8).hexdigest()
    if calibration is None or not uses_calibration(settings.cost):
        return base
    mixed = f"{base}|{calibration.get('id')}".encode()
    return hashlib.blake2b(mixed, digest_size=8).hexdigest()


def epoch_price(cost: CostSettings, acc: Accounting, calibration: JSON | None) -> EpochPrice | None:
    """What one epoch over the raw training splits costs (None when nothing prices it)."""
    samples, units = acc.total("train", "samples_before"), acc.total("train", "units_before")
    if cost.gpu_hours_per_epoch is not None:
        return EpochPrice("GPU", cost.gpu_hours_per_epoch, "cost.gpu_hours_per_epoch")
    given = cost.throughput()
    if given is not None:
        value, unit = given
        amount = samples if unit == "samples" else units
        return EpochPrice(
            "GPU", amount / value / 3600, f"cost.{unit}_per_second_per_gpu = {value:,.6g}"
        )
    if calibration is None:
        return None
    return _calibrated_price(cost, calibration, samples, units)


def _calibrated_price(cost: CostSettings, cal: JSON, samples: int, units: int) -> EpochPrice | None:
    """An epoch priced by the stored `leanset calibrate` record (in the unit, else in samples)."""
    rates = cal.get("throughput", {})
    unit = cost.unit if cost.unit in rates else "samples"
    if unit not in rates:
        return None
    amount = samples if unit == "samples" else units
    gpu = cal.get("resource") == "GPU"
    stats = rates[unit]["per_s" if gpu else "per_cpu_s"]
    spread = stats["std"] / stats["mean"] if stats["mean"] else 0.0
    rate = "/s" if gpu else "/CPU-s"
    fixed = float(
        (cal.get("epoch") or {}).get("fixed_wall_seconds" if gpu else "fixed_cpu_seconds", 0.0)
    )
    kept = cal.get("kept") or {}
    weight = float(kept.get("weight_wall" if gpu else "weight_cpu", 1.0))
    m = kept.get("measured_weight_wall" if gpu else "measured_weight_cpu") or {}
    span = (float(m["range_low"]), float(m["range_high"])) if "range_low" in m else None
    source = (
        f"leanset calibrate on {cal.get('device_name')} ({cal.get('model')}): "
        f"{stats['mean']:,.4g} {unit}{rate} ±{100 * spread:.1f}% over {len(stats['runs'])} "
        f"repeats"
        + (f", plus {fixed:,.3g} {'s' if gpu else 'CPU-s'} fixed per epoch" if fixed else "")
        + (_kept_source(kept, "wall" if gpu else "cpu") if kept else "")
        + f", {cal.get('measured_at')}"
    )
    hours = (fixed + amount / stats["mean"]) / 3600
    return EpochPrice("GPU" if gpu else "CPU", hours, source, fixed / 3600, weight, span)


def _kept_source(kept: JSON, clock: str) -> str:
    """The calibration's kept-sample weight in the statement's source: as priced, as measured."""
    m = kept.get(f"measured_weight_{clock}") or {}
    measured = (
        f"; measured {m['weight']:.3g}x, 95% {m['ci_low']:.3g}-{m['ci_high']:.3g}" if m else ""
    )
    if "range_low" in m:
        measured += f", one training run {m['range_low']:.3g}-{m['range_high']:.3g}x"
    seeds = int(kept.get("seeds", 1))
    return (
        f"; a kept sample priced at {float(kept[f'weight_{clock}']):.3g}x an average one (one "
        f"model trained on the sampled rows, one on those version {kept['version']} keeps, "
        f"{kept['epochs']} timed epochs each, {seeds} seed{'s' * (seeds > 1)}{measured}; 1 "
        "where the interval holds 1)"
    )


# ---------------------------------------------------------------- the delta


@dataclass(frozen=True)
class CostDelta:
    """The cost delta statement's numbers (stored in the manifest's `cost`)."""

    accounting: JSON
    unit: str
    samples_before: int
    samples_after: int
    units_before: int
    units_after: int
    reduction: float  # share of the training units the cleaning removes
    resource: str | None
    price_source: str | None
    hours_per_epoch_before: float | None
    hours_per_epoch_after: float | None
    hours_saved_per_epoch: float | None
    eval_hours_per_epoch_before: float | None
    eval_hours_per_epoch_after: float | None
    total_hours_saved_per_epoch: float | None  # training plus, when priced, the eval pass
    run_gpu_hours: float
    run_cpu_hours: float
    run_wall_seconds: float
    price_per_gpu_hour: float | None
    price_per_cpu_hour: float | None
    money_saved_per_epoch: float | None  # of the total saving
    run_money: float | None
    break_even_epochs: float | None
    break_even_basis: str | None  # "money", "GPU-hours", "CPU-hours", or why it is not stated
    net_from_first_epoch: bool
    epochs: int | None
    saved_over_planned_epochs: float | None
    num_gpus: int
    quality: JSON
    fixed_hours_per_epoch: float = 0.0  # the part of an epoch that does not shrink with samples
    kept_cost_weight: float = 1.0  # a kept sample's cost against an average one (measured)
    time_reduction_low: float | None = None  # the range (95%) one training run's saving falls in
    time_reduction_high: float | None = None

    @property
    def time_reduction(self) -> float:
        """The share of an epoch's time the cleaning saves (the sample share when all of it
        scales with the samples)."""
        b, a = self.hours_per_epoch_before, self.hours_per_epoch_after
        return 1.0 - a / b if b and a is not None else self.reduction

    def to_dict(self) -> JSON:
        return asdict(self) | {"time_reduction": self.time_reduction}


def cost_delta(
    cost: CostSettings,
    acc: Accounting,
    run: RunCompute,
    calibration: JSON | None = None,
    quality: JSON | None = None,
) -> CostDelta:
    """The cost delta of a cleaning run over the training splits of `acc`."""
    ub, ua = acc.total("train", "units_before"), acc.total("train", "units_after")
    share = ua / ub if ub else 1.0
    price = epoch_price(cost, acc, calibration)
    before = price.hours if price else None
    fixed = price.fixed_hours if price else 0.0
    after = price.after(share) if price is not None else None
    saved = before - after if before is not None and after is not None else None
    span = price.saving_range(share) if price else None
    eval_b, eval_a = _eval_hours(cost, acc)
    saved_total = saved
    if saved is not None and price is not None and price.resource == "GPU" and eval_b is not None:
        saved_total = saved + eval_b - (eval_a or 0.0)  # the eval pass is priced in GPU-hours
    per_hour = _price(cost, price.resource) if price else None
    money = saved_total * per_hour if saved_total is not None and per_hour is not None else None
    run_money, basis, be = _break_even(cost, run, price, saved_total)
    return CostDelta(
        accounting=acc.to_dict(),
        unit=acc.unit,
        samples_before=acc.total("train", "samples_before"),
        samples_after=acc.total("train", "samples_after"),
        units_before=ub,
        units_after=ua,
        reduction=1.0 - share,
        resource=price.resource if price else None,
        price_source=price.source if price else None,
        hours_per_epoch_before=before,
        hours_per_epoch_after=after,
        hours_saved_per_epoch=saved,
        eval_hours_per_epoch_before=eval_b,
        eval_hours_per_epoch_after=eval_a,
        run_gpu_hours=run.gpu_hours,
        run_cpu_hours=run.cpu_hours,
        run_wall_seconds=run.wall_seconds,
        price_per_gpu_hour=cost.price_per_gpu_hour,
        price_per_cpu_hour=cost.price_per_cpu_hour,
        money_saved_per_epoch=money,
        run_money=run_money,
        break_even_epochs=be,
        break_even_basis=basis,
        net_from_first_epoch=be is not None and be <= 1.0,
        epochs=cost.epochs,
        saved_over_planned_epochs=saved * cost.epochs
        if saved is not None and cost.epochs
        else None,
        total_hours_saved_per_epoch=saved_total,
        num_gpus=cost.num_gpus,
        quality=quality or {"skipped": "not measured"},
        fixed_hours_per_epoch=fixed,
        kept_cost_weight=price.kept_weight if price else 1.0,
        time_reduction_low=span[0] if span else None,
        time_reduction_high=span[1] if span else None,
    )


def _eval_hours(cost: CostSettings, acc: Accounting) -> tuple[float | None, float | None]:
    """GPU-hours of the evaluation pass per epoch over the eval splits, before and after."""
    if cost.eval_gpu_hours_per_epoch is None:
        return None, None
    ub, ua = acc.total("eval", "units_before"), acc.total("eval", "units_after")
    return cost.eval_gpu_hours_per_epoch, cost.eval_gpu_hours_per_epoch * (ua / ub if ub else 1.0)


def _price(cost: CostSettings, resource_name: str) -> float | None:
    return cost.price_per_gpu_hour if resource_name == "GPU" else cost.price_per_cpu_hour


def _break_even(
    cost: CostSettings, run: RunCompute, price: EpochPrice | None, saved: float | None
) -> tuple[float | None, str | None, float | None]:
    """(run money, basis, epochs until the saving repays everything the run spent)."""
    spent = {"GPU": run.gpu_hours, "CPU": run.cpu_hours}
    prices = {"GPU": cost.price_per_gpu_hour, "CPU": cost.price_per_cpu_hour}
    involved = [r for r, h in spent.items() if h > 0]
    run_money = (
        sum(spent[r] * (prices[r] or 0.0) for r in involved)
        if all(prices[r] is not None for r in involved)
        else None
    )
    if price is None or not saved or saved <= 0:
        return run_money, None, None
    if set(involved) <= {price.resource}:  # the run spent only what the saving is counted in
        return run_money, f"{price.resource}-hours", spent[price.resource] / saved
    unpriced = [r for r in involved + [price.resource] if prices[r] is None]
    if unpriced:
        keys = " and ".join(f"cost.price_per_{r.lower()}_hour" for r in dict.fromkeys(unpriced))
        return run_money, f"not stated: set {keys} to compare GPU-hours with CPU-hours", None
    saved_money = saved * (prices[price.resource] or 0.0)
    return run_money, "money", (run_money or 0.0) / saved_money if saved_money else None


# ---------------------------------------------------------------- the statement


def statement(cd: CostDelta) -> str:
    """The cost delta statement: a headline, then one line per part (splits, training, eval,
    quality, what the run spent)."""
    lines = [_headline(cd), _splits_line(cd), _training_line(cd)]
    lines += [line for line in (_eval_line(cd), _quality_line(cd.quality)) if line]
    lines.append(_spent_line(cd))
    return "\n".join(lines)


def _headline(cd: CostDelta) -> str:
    what = f"{cd.resource}-h" if cd.resource else f"{cd.unit} (not priced)"
    head = f"{_signed_pct(-cd.time_reduction)} {what} per epoch{_range(cd)}"
    q = cd.quality
    if "paired" in q:
        p = q["paired"]
        head += (
            f"; probe accuracy on {', '.join(q['eval_splits'])} {p['accuracy_a']:.3f} → "
            f"{p['accuracy_b']:.3f} (n = {p['n']:,}"
            + (", without leaked rows" if (q.get("excluded") or {}).get("rows") else "")
            + ")"
        )
    return head + "."


def _range(cd: CostDelta) -> str:
    """The range one training run's saving falls in, when calibrate measured one."""
    if cd.time_reduction_low is None or cd.time_reduction_high is None:
        return ""
    low, high = _signed_pct(-cd.time_reduction_high), _signed_pct(-cd.time_reduction_low)
    return f" ({low} to {high} for one training run, 95%)"


def _splits_line(cd: CostDelta) -> str:
    acc = cd.accounting
    names = ", ".join(r["split"] for r in acc["train"]) or "none"
    text = f"Training splits ({names}): {cd.samples_before:,} → {cd.samples_after:,} samples"
    if cd.unit != "samples":
        text += f", {cd.units_before:,} → {cd.units_after:,} {cd.unit} ({acc['counted_with']})"
    text += f": {_signed_pct(-cd.reduction)} {cd.unit} per epoch"
    if acc["ignored"]:
        text += f"; not counted: {', '.join(acc['ignored'])}"
    return text + "."


def _training_line(cd: CostDelta) -> str:
    if cd.hours_per_epoch_before is None:
        return (
            "Training cost: not priced (set cost.gpu_hours_per_epoch or a throughput per GPU in "
            "flows.yaml, or measure one with `leanset calibrate`)."
        )
    r = cd.resource
    text = (
        f"Training: {_h(cd.hours_per_epoch_before)} → {_h(cd.hours_per_epoch_after)} {r}-h per "
        f"epoch, saving {_h(cd.hours_saved_per_epoch)} {r}-h"
    )
    per_hour = cd.price_per_gpu_hour if r == "GPU" else cd.price_per_cpu_hour
    if per_hour is not None and cd.hours_saved_per_epoch is not None:
        text += f" (${cd.hours_saved_per_epoch * per_hour:,.2f})"
    text += " per epoch"
    if cd.fixed_hours_per_epoch or cd.kept_cost_weight != 1.0 or _range(cd):
        parts = [f"{_h(cd.fixed_hours_per_epoch)} {r}-h of each epoch is fixed"] * bool(
            cd.fixed_hours_per_epoch
        )
        if cd.kept_cost_weight != 1.0:
            parts.append(f"a kept sample costs {cd.kept_cost_weight:.3g}x an average one")
        if _range(cd):
            parts.append("what a kept sample costs varies between training runs")
        text += (
            f" ({_signed_pct(-cd.time_reduction)} of the epoch's time{_range(cd)} beside "
            f"{_signed_pct(-cd.reduction)} of its {cd.unit}: {' and '.join(parts)}, measured by "
            "`leanset calibrate`)"
        )
    if cd.saved_over_planned_epochs is not None:
        text += f"; {_h(cd.saved_over_planned_epochs)} {r}-h over {cd.epochs} epochs"
    if r == "GPU" and cd.num_gpus > 1 and cd.hours_per_epoch_after is not None:
        wall = 60 * cd.hours_per_epoch_after / cd.num_gpus
        text += f" (≈ {wall:,.3g} min wall per epoch on {cd.num_gpus} GPUs)"
    return text + f". Source: {cd.price_source}."


def _eval_line(cd: CostDelta) -> str | None:
    ev = cd.accounting["eval"]
    if not ev:
        return None
    before = sum(r["samples_before"] for r in ev)
    after = sum(r["samples_after"] for r in ev)
    names = ", ".join(r["split"] for r in ev)
    text = f"Eval splits ({names}), not in the training figures: {before:,} → {after:,} samples"
    if cd.eval_hours_per_epoch_before is not None:
        text += (
            f"; their evaluation pass costs {_h(cd.eval_hours_per_epoch_before)} → "
            f"{_h(cd.eval_hours_per_epoch_after)} GPU-h per epoch (in the break-even)"
        )
    else:
        text += " (set cost.eval_gpu_hours_per_epoch to count their evaluation pass)"
    return text + "."


def _quality_line(q: JSON) -> str | None:
    if "paired" not in q:
        return f"Quality: not measured ({q.get('skipped', 'no probe')})."
    p, raw, clean = q["paired"], q["raw"], q["clean"]
    verdict = (
        "not distinguishable from noise"
        if p["p_value"] >= 0.05
        else "unlikely to be noise (p < 0.05)"
    )
    return (
        f"Quality: probe accuracy on {', '.join(q['eval_splits'])} {p['accuracy_a']:.3f} "
        f"(trained on {raw['n_train']:,} raw) → {p['accuracy_b']:.3f} (on {clean['n_train']:,} "
        f"cleaned), n = {p['n']:,}; difference {p['difference']:+.4f}, 95% CI "
        f"{p['ci_low']:+.4f} to {p['ci_high']:+.4f}, McNemar p = {p['p_value']:.3g}: {verdict}. "
        f"The fits took {raw['cpu_seconds']:.2f} and {clean['cpu_seconds']:.2f} CPU-s "
        f"({raw['device']})." + _leak_note(q)
    )


def _leak_note(q: JSON) -> str:
    """The all-rows figure beside the leak-free one, when leaked eval rows were left out."""
    excluded = q.get("excluded") or {}
    if not excluded.get("rows"):
        return ""
    a = q["all_rows"]["paired"]
    return (
        f" Left out: {excluded['rows']:,} eval rows ({excluded['why']}). On all "
        f"{a['n']:,} rows {a['accuracy_a']:.3f} → {a['accuracy_b']:.3f}, "
        f"difference {a['difference']:+.4f}: the raw figure is inflated by leaks."
    )


def _spent_line(cd: CostDelta) -> str:
    text = (
        f"This run spent {_h(cd.run_gpu_hours)} GPU-h and {_h(cd.run_cpu_hours)} CPU-h "
        f"({cd.run_wall_seconds:,.1f} s wall)"
    )
    if cd.run_money is not None:
        text += f", ${cd.run_money:,.4g}"
    be, basis = cd.break_even_epochs, cd.break_even_basis
    if be is not None and cd.net_from_first_epoch:
        return text + (
            f"; it pays for itself within the first epoch (after {be:.3g} epochs, in {basis}): "
            "the saving is net from the first epoch."
        )
    if be is not None:
        return text + f"; it pays for itself after {be:.3g} epochs (in {basis})."
    if basis:
        return text + f"; break-even {basis}."
    if cd.hours_per_epoch_before is None:
        return text + "; break-even not stated (the epoch is not priced)."
    return text + "; no saving to repay it."


def _signed_pct(x: float) -> str:
    text = f"{100 * x:+.1f}%"
    return "±0.0%" if text in ("+0.0%", "-0.0%") else text.replace("-", "−")


def _h(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.4g}" if abs(x) < 1 else f"{x:,.2f}"


def canonical(obj: JSON) -> str:
    """A stable hash of a JSON object (ids for calibration records)."""
    data = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.blake2b(data, digest_size=8).hexdigest()
