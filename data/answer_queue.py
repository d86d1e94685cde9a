"""Answer the demo's Label Studio tasks as a simulated annotator.

    python data/answer_queue.py TASKS.json OUT.json [--demo data/demo] [--accuracy 1.0] [--seed 0]

TASKS.json is what `leanset queue export STORE --format label-studio --out TASKS.json` wrote for a
run over the demo data; OUT.json is what Label Studio's JSON export would hold once a human had
answered every task (the true digit from the demo's truth.json, or with probability 1 - accuracy a
wrong one). Record it with `leanset queue import STORE OUT.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leanset.pipelines.demo.annotator import answer_tasks, task_image_path
from leanset.pipelines.demo.data import DemoTruth
from leanset.pipelines.fsutil import atomic_write_bytes

DEFAULT_DEMO = Path(__file__).resolve().parent / "demo"


def main(argv: list[str] | None = None) -> int:
    """Read the tasks, answer them from the demo truth, write the annotated export."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", type=Path, help="Label Studio tasks exported by leanset")
    parser.add_argument("out", type=Path, help="where to write the answered tasks (JSON)")
    parser.add_argument(
        "--demo", type=Path, default=DEFAULT_DEMO, help="demo data folder holding truth.json"
    )
    parser.add_argument(
        "--accuracy", type=float, default=1.0, help="chance of the true label (default 1.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        truth = DemoTruth.load(args.demo)
        tasks = json.loads(args.tasks.read_text(encoding="utf-8"))
        answered = answer_tasks(truth, tasks, accuracy=args.accuracy, seed=args.seed)
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        print(f"answer_queue: {exc}", file=sys.stderr)
        return 2
    atomic_write_bytes(args.out, (json.dumps(answered, indent=2) + "\n").encode())
    wrong = sum(
        t["annotations"][0]["result"][0]["value"]["choices"][0]
        != truth.true_label(task_image_path(truth, t))
        for t in answered
    )
    print(
        f"answered {len(answered)} task(s) in {args.out} "
        f"({len(answered) - wrong} with the true label, {wrong} wrong)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
