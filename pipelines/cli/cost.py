"""`leanset calibrate` (measure the training throughput) and `leanset promote` (the quality gate)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from leanset.pipelines.cli.console import console
from leanset.pipelines.cli.store import STORE_HELP
from leanset.pipelines.config import CostSettings, FlowSettings


def add_commands(sub: Any) -> None:
    """Register the cost commands."""
    cal = sub.add_parser(
        "calibrate",
        help="time a short real training loop on this machine and store the throughput",
    )
    cal.add_argument("config", help="path to flows.yaml")
    cal.add_argument("--flow", required=True, help="name of the flow in the file")
    cal.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    cal.add_argument(
        "--repeats", type=int, default=5, help="timed rounds (the spread is over them)"
    )
    cal.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    cal.add_argument("--batch-size", type=int, default=32, help="samples per timed step")
    cal.add_argument("--max-samples", type=int, default=512, help="training samples to draw from")
    cal.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    cal.add_argument(
        "--kept-epochs",
        type=int,
        default=6,
        help="epochs of the race between a model on the sampled rows and one on those the latest "
        "version keeps (the first untimed; 0 skips it; default %(default)s)",
    )
    cal.add_argument(
        "--kept-seeds",
        type=int,
        default=3,
        help="run that race this many times, fresh models and batch orders each: the statement's "
        "range for one training run comes from their spread (default %(default)s)",
    )
    cal.add_argument("--json", action="store_true", help="print the stored record as JSON")
    cal.set_defaults(func=cmd_calibrate)

    pro = sub.add_parser(
        "promote",
        help="mark a version as the one to train on, if its accuracy did not drop too far",
    )
    pro.add_argument("store", help=STORE_HELP)
    pro.add_argument("version", type=int, help="the version to promote")
    pro.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=CostSettings().max_accuracy_drop,
        help="largest allowed drop in probe accuracy against the promoted version (default "
        "%(default)s)",
    )
    pro.add_argument("--reason", default="", help="why (recorded; default: the gate's statement)")
    pro.add_argument("--by", default=None, help="who (default: user@host)")
    pro.add_argument("--json", action="store_true", help="print the promotion record as JSON")
    pro.set_defaults(func=cmd_promote)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from leanset.pipelines.limits import check_address_space

    check_address_space("calibrate")
    from leanset.pipelines.calibrate import CalibrateOptions, calibrate
    from leanset.pipelines.config import load_flow

    settings = load_flow(args.config, args.flow)
    options = CalibrateOptions(
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        device=args.device,
        kept_epochs=args.kept_epochs,
        kept_seeds=args.kept_seeds,
    )
    record = calibrate(settings, options)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    for line in calibration_lines(record, settings):
        console.print(line, highlight=False)
    return 0


def calibration_lines(record: dict[str, Any], settings: FlowSettings) -> list[str]:
    """What `leanset calibrate` prints: the throughput with its spread, and what it prices."""
    from leanset.pipelines.cost import uses_calibration

    lines = [f"calibrated flow {record['flow']} on {record['device_name']} with {record['model']}"]
    for unit, rates in record["throughput"].items():
        s, c = rates["per_s"], rates["per_cpu_s"]
        lines.append(
            f"  {unit}/s: {s['mean']:,.4g} ± {100 * s['std'] / s['mean']:.1f}% (min "
            f"{s['min']:,.4g}, max {s['max']:,.4g}; {record['repeats']} repeats of "
            f"{record['steps']} steps, batch {record['batch_size']}); per CPU-second "
            f"{c['mean']:,.4g}"
        )
    ep = record.get("epoch")
    if ep:
        lines.append(
            f"  per epoch: {ep['fixed_wall_seconds']:,.3g} s fixed (evaluation, checkpoint, "
            f"start-up) + {ep['per_sample_wall_seconds'] * 1e3:,.3g} ms per sample (wall; CPU: "
            f"{ep['fixed_cpu_seconds']:,.3g} s + {ep['per_sample_cpu_seconds'] * 1e3:,.3g} ms), "
            f"from whole epochs of {min(ep['samples']):,} and {max(ep['samples']):,} samples"
        )
    if record.get("kept"):
        lines.append(_kept_line(record["kept"]))
    lines.append(f"stored in {_record_place(settings.store)}")
    if not uses_calibration(settings.cost):
        lines.append(
            "note: flows.yaml prices the epoch itself (cost.gpu_hours_per_epoch or a throughput), "
            "so runs use that; remove it to use this measurement"
        )
        return lines
    lines.append(f"the next run of flow {record['flow']} prices its epochs with it")
    return lines + _latest_price(record, settings)


def _kept_line(kept: dict[str, Any]) -> str:
    """The kept-sample race: the measured weight with its interval, and what is priced."""
    m = kept["measured_weight_wall"], kept["measured_weight_cpu"]
    seeds = int(kept.get("seeds", 1))
    text = (
        f"  a kept sample costs {m[0]['weight']:.3g}x an average one (wall, 95% "
        f"{m[0]['ci_low']:.3g}-{m[0]['ci_high']:.3g}; CPU {m[1]['weight']:.3g}x, "
        f"{m[1]['ci_low']:.3g}-{m[1]['ci_high']:.3g}): one model trained on "
        f"{kept['samples']['all']:,} sampled rows and one on the {kept['samples']['kept']:,} "
        f"of them version {kept['version']} keeps, {kept['epochs']} timed epochs each, in "
        f"turn, {seeds} seed{'s' * (seeds > 1)}; priced at {kept['weight_wall']:.3g}x (wall), "
        f"{kept['weight_cpu']:.3g}x (CPU), 1 where the interval holds 1"
    )
    if "range_low" in m[1]:
        text += (
            f"\n  one training run's kept weight (95%, over the seeds "
            f"{', '.join(f'{w:.3g}x' for w in m[1]['seeds'])}, CPU): "
            f"{m[1]['range_low']:.3g}-{m[1]['range_high']:.3g}x; wall "
            f"{m[0]['range_low']:.3g}-{m[0]['range_high']:.3g}x: the statement's range"
        )
    return text


def _record_place(store: str) -> str:
    """Where the calibration record is: its path, or for a bucket store its object's URL."""
    from leanset.pipelines.store.layout import StoreLayout
    from leanset.pipelines.store.storage import is_url

    if not is_url(store):
        return str(StoreLayout.of(store).calibration)
    return f"{str(store).rstrip('/')}/{StoreLayout.of('.').calibration.as_posix()}"


def _latest_price(record: dict[str, Any], settings: FlowSettings) -> list[str]:
    """What the store's latest version's training splits cost per epoch at this rate."""
    from leanset.pipelines.cost import epoch_price
    from leanset.pipelines.store import Store
    from leanset.pipelines.store.layout import StoreLayout
    from leanset.pipelines.units import accounting_from_dict

    store = Store(settings.store, settings.storage_options)
    local = not store.storage.remote
    if local and not StoreLayout.of(settings.store).manifests.is_dir():
        return []
    latest = store.latest()
    acc = (latest or {}).get("cost", {}).get("accounting")
    if not latest or not acc:
        return []
    a = accounting_from_dict(acc)
    price = epoch_price(settings.cost, a, record)
    if price is None:
        return []
    ub, ua = a.total("train", "units_before"), a.total("train", "units_after")
    after = price.after(ua / ub if ub else 1.0)
    return [
        f"at this rate version {latest['version']}'s training splits ({ub:,} → {ua:,} "
        f"{a.unit}) cost {price.hours:,.4g} → {after:,.4g} {price.resource}-h per epoch"
    ]


def cmd_promote(args: argparse.Namespace) -> int:
    from leanset.pipelines.cli.store import open_store
    from leanset.pipelines.store.promotions import promote

    store = open_store(args.store)
    record, gate = promote(
        store, args.version, args.max_accuracy_drop, by=args.by, reason=args.reason
    )
    if args.json:
        print(json.dumps({"gate": gate.to_dict(), "record": record}, indent=2))
        return 0
    console.print(gate.statement(), highlight=False)
    if record is None:
        console.print(f"version {args.version} is already the promoted version", highlight=False)
    else:
        console.print(
            f"promoted version {record['version']} (record {record['number']}, by "
            f"{record['by']}; previous: {record['previous'] or 'none'})",
            highlight=False,
        )
    return 0
