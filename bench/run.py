"""leanset benchmark: `python -m bench --sizes 10k,100k --stages hash,knn-exact,knn-partitioned`.

Generates clustered synthetic embeddings with planted near-duplicate pairs per size, runs the
chosen stages (see bench/stages.py, STAGES), prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.stages import DEFAULT_STAGES, PEER_STAGES, STAGES, BenchContext
from leanset.pipelines.fsutil import atomic_write_json

EXACT_DEFAULT_MAX_N = 100_000
COLUMNS = (
    ("stage", "stage", "{}"),
    ("n", "N", "{:,}"),
    ("dim", "D", "{}"),
    ("seconds", "seconds", "{:.2f}"),
    ("samples_per_s", "samples/s", "{:,.0f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:,.0f}"),
    ("device", "device", "{}"),
    ("recall_planted", "recall planted", "{:.4f}"),
    ("recall_exact", "recall exact", "{:.4f}"),
    ("notes", "notes", "{}"),
)


def parse_size(text: str) -> int:
    """'10k' -> 10000, '1m' -> 1000000, '2500' -> 2500."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    digits = t[:-1] if scale != 1 else t
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like 10k, 1m or 2500, got {text!r}"
        ) from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"size must be at least 2, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--sizes", default="10k,100k", help="comma list: 10k,100k,1m")
    ap.add_argument(
        "--stages", default=",".join(DEFAULT_STAGES), help=f"comma list from: {', '.join(STAGES)}"
    )
    ap.add_argument("--out", default="bench/results/bench.json", help="JSON results path")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--device", default="cpu", help="find_near_pairs device (cpu, cpu-torch, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--exact-1m",
        action="store_true",
        help=f"run exact search above {EXACT_DEFAULT_MAX_N:,} rows too (hours on CPU)",
    )
    ap.add_argument(
        "--exact-max-n",
        type=parse_size,
        default=EXACT_DEFAULT_MAX_N,
        help="largest size exact search runs at (--exact-1m lifts the limit)",
    )
    ap.add_argument(
        "--exact-sample",
        type=int,
        default=5000,
        help="where exact is skipped, estimate recall on pairs touching this many sampled rows "
        "(exact between-search, untimed; 0 = off)",
    )
    ap.add_argument(
        "--peers",
        action="store_true",
        help="also run cleanlab Datalab near_duplicate and semhash where installed",
    )
    ap.add_argument(
        "--peers-max-n",
        type=parse_size,
        default=EXACT_DEFAULT_MAX_N,
        help="largest size the peers run at",
    )
    args = ap.parse_args(argv)
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stage_list if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    if args.peers:
        args.stage_list += [s for s in PEER_STAGES if s not in args.stage_list]
    if not 0.0 < args.threshold <= 1.0:
        ap.error(f"--threshold must be in (0, 1], got {args.threshold}")
    return args


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib(reset_ok: bool) -> float:
    """Peak RSS since the last reset (Linux VmHWM), else getrusage's lifetime peak."""
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_stage(name: str, ctx: BenchContext) -> dict[str, Any]:
    """Run one stage and complete its row (N, D, samples/s, peak RSS)."""
    if name != "hash":
        ctx.data()  # generate before the reset: data generation stays out of the stage's peak
    reset_ok = reset_peak_rss()
    row = STAGES[name](ctx)
    row = {"stage": name, "n": ctx.n, "dim": ctx.dim, **row}
    if "skipped" in row:
        row["notes"] = f"skipped: {row.pop('skipped')}"
        return row
    if row.get("recall_exact_basis"):
        row["notes"] = f"{row.get('notes', '')}; recall exact on {row['recall_exact_basis']}"
    row["peak_rss_mib"] = peak_rss_mib(reset_ok)
    row["samples_per_s"] = ctx.n / row["seconds"] if row["seconds"] else None
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a fixed-width text table."""
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        line = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            line.append("-" if value is None else fmt.format(value))
        cells.append(line)
    widths = [max(len(c[k]) for c in cells) for k in range(len(COLUMNS) - 1)]
    out = []
    for c in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=False)) + "  " + c[-1])
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    import faiss
    import numpy as np

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "load_avg_at_start": os.getloadavg(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    args = parse_args(argv)
    exact_max_n = sys.maxsize if args.exact_1m else args.exact_max_n
    rows: list[dict[str, Any]] = []
    started = time.time()
    for n in args.size_list:
        ctx = BenchContext(
            n=n,
            dim=args.dim,
            threshold=args.threshold,
            device=args.device,
            seed=args.seed,
            exact_max_n=exact_max_n,
            args=args,
        )
        for name in args.stage_list:
            row = run_stage(name, ctx)
            rows.append(row)
            print(format_table([row]).splitlines()[1], flush=True)
    print()
    print(format_table(rows))
    out = {
        "args": {k: v for k, v in vars(args).items() if not k.endswith("_list")},
        "machine": machine(),
        "started": started,
        "rows": rows,
    }
    atomic_write_json(args.out, out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
