"""GPU-hours per training epoch before and after cleaning, against what the cleaning spent."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

from pipelines.config import CostSettings


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


@dataclass(frozen=True)
class CostDelta:
    """The cost delta statement's numbers (stored in the manifest)."""

    samples_before: int
    samples_after: int
    gpu_hours_per_epoch_before: float | None
    gpu_hours_per_epoch_after: float | None
    gpu_hours_saved_per_epoch: float | None
    run_gpu_hours: float
    run_cpu_hours: float
    run_wall_seconds: float
    break_even_epochs: float | None
    saved_over_planned_epochs: float | None
    money_saved_per_epoch: float | None
    run_money: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def epoch_gpu_hours(settings: CostSettings, samples: int, samples_before: int) -> float | None:
    """GPU-hours of one training epoch over `samples` samples, from the flow's cost inputs."""
    if settings.gpu_hours_per_epoch is not None:
        return settings.gpu_hours_per_epoch * samples / max(samples_before, 1)
    if settings.samples_per_second_per_gpu:
        seconds = samples / (settings.samples_per_second_per_gpu * settings.num_gpus)
        return seconds * settings.num_gpus / 3600
    return None


def cost_delta(settings: CostSettings, before: int, after: int, run: RunCompute) -> CostDelta:
    """Compute the cost delta of a cleaning run."""
    b = epoch_gpu_hours(settings, before, before)
    a = epoch_gpu_hours(settings, after, before)
    saved = None if b is None or a is None else b - a
    break_even = run.gpu_hours / saved if saved and run.gpu_hours > 0 else None
    price = settings.price_per_gpu_hour
    return CostDelta(
        samples_before=before,
        samples_after=after,
        gpu_hours_per_epoch_before=b,
        gpu_hours_per_epoch_after=a,
        gpu_hours_saved_per_epoch=saved,
        run_gpu_hours=run.gpu_hours,
        run_cpu_hours=run.cpu_hours,
        run_wall_seconds=run.wall_seconds,
        break_even_epochs=break_even,
        saved_over_planned_epochs=saved * settings.epochs
        if saved is not None and settings.epochs
        else None,
        money_saved_per_epoch=saved * price if saved is not None and price is not None else None,
        run_money=run.gpu_hours * price if price is not None else None,
    )


def statement(cd: CostDelta) -> str:
    """The cost delta statement: one paragraph a person can act on."""
    removed = cd.samples_before - cd.samples_after
    pct = 100 * removed / max(cd.samples_before, 1)
    lines = [
        f"Cleaning removes {removed:,} of {cd.samples_before:,} samples ({pct:.1f}%) from every epoch."
    ]
    if cd.gpu_hours_saved_per_epoch is None:
        lines.append(
            "GPU-hours per epoch: not stated (set cost.gpu_hours_per_epoch, or "
            "cost.samples_per_second_per_gpu and cost.num_gpus, in flows.yaml)."
        )
    else:
        money = (
            f" (${cd.money_saved_per_epoch:,.2f})" if cd.money_saved_per_epoch is not None else ""
        )
        lines.append(
            f"Training: {_h(cd.gpu_hours_per_epoch_before)} -> {_h(cd.gpu_hours_per_epoch_after)} "
            f"GPU-h per epoch, saving {_h(cd.gpu_hours_saved_per_epoch)} GPU-h per epoch{money}."
        )
        if cd.saved_over_planned_epochs is not None:
            lines.append(
                f"Over the planned epochs: {_h(cd.saved_over_planned_epochs)} GPU-h saved."
            )
    spent = f"This run spent {_h(cd.run_gpu_hours)} GPU-h and {_h(cd.run_cpu_hours)} CPU-h"
    spent += f" ({cd.run_wall_seconds:,.1f} s wall)"
    if cd.break_even_epochs is not None:
        spent += f"; it pays for itself after {cd.break_even_epochs:.3g} epochs."
    elif cd.gpu_hours_saved_per_epoch and not cd.run_gpu_hours:
        spent += "; it used no GPU, so the saving is net from the first epoch."
    else:
        spent += "."
    lines.append(spent)
    return " ".join(lines)


def _h(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.4g}" if abs(x) < 1 else f"{x:,.2f}"
