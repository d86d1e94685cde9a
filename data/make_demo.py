"""Write leanset's demo dataset: python data/make_demo.py [--out data/demo] [--seed 0]."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from leanset.pipelines.demo.data import make_demo

DEFAULT_OUT = Path(__file__).resolve().parent / "demo"


def main(argv: list[str] | None = None) -> int:
    """Generate the demo data (a no-op when it is already there for this seed) and describe it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    truth = make_demo(args.out, seed=args.seed)
    elapsed = time.perf_counter() - start
    c = truth.counts
    print(f"demo data in {truth.root} (seed {truth.seed}, {elapsed:.1f} s)")
    print(
        f"  images:   {truth.images_dir}  ({c['train_files']} train, {c['test_files']} test, "
        f"{c['unlabeled_files']} unlabeled)"
    )
    print(f"  truth:    {truth.root / 'truth.json'}")
    print(
        f"  planted:  {c['exact_groups']} exact groups, {c['near_groups']} near, "
        f"{c['leak_groups']} train/test leaks ({c['copies']} extra files); "
        f"{c['flipped']} flipped labels"
    )
    print(
        f"  pool:     {c['pool']} unlabeled images in images/unlabeled/ (true labels in "
        "truth.json; data/answer_queue.py answers their labeling tasks)"
    )
    print(
        f"  natural:  {c['natural_groups']} groups of natural digits at or above the "
        f"recommended threshold {truth.recommended_threshold}"
    )
    for key, value in truth.stats.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
