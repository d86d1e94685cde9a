"""Simulate the labeling loop on scikit-learn digits and compare selection strategies.

Start from a small labeled seed (a few per class), train the probe, let a strategy choose `budget`
samples from the unlabeled pool, "label" them from the held-back truth, retrain, repeat. Prints the
probe's accuracy on a held-out test set against the number of labels for each strategy (mean over
several seeds), and the labels each strategy needed to reach the accuracy random selection reached
with its final number of labels.

    python bench/labeling_loop.py [--rounds 10] [--budget 30] [--seeds 5] [--per-class 5]

Not a test: it takes about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from leanset.labeling.probe import ProbeOptions, train_probe
from leanset.labeling.select import select_batch

STRATEGIES: dict[str, tuple[str, str]] = {
    "margin + kcenter": ("margin", "kcenter"),
    "entropy + kcenter": ("entropy", "kcenter"),
    "least_confidence + kcenter": ("least_confidence", "kcenter"),
    "margin + kmeans": ("margin", "kmeans"),
    "entropy + kmeans": ("entropy", "kmeans"),
    "least_confidence + kmeans": ("least_confidence", "kmeans"),
    "margin (no diversity)": ("margin", "none"),
    "random": ("random", "none"),
}


@dataclass(frozen=True)
class Split:
    """Pool (features, truth), test set, and the seed's labeled pool rows."""

    pool_x: np.ndarray
    pool_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    seed_idx: np.ndarray


def load_split(seed: int, per_class: int, test_fraction: float = 0.3) -> Split:
    """Digits pixels (L2-normalised), a stratified test split, a seed of `per_class` per class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    px, tx, py, ty = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    seed_idx = np.concatenate(
        [rng.choice(np.flatnonzero(py == k), per_class, replace=False) for k in np.unique(py)]
    )
    return Split(px, py.astype(np.int64), tx, ty.astype(np.int64), seed_idx)


def run_loop(
    split: Split, strategy: str, diversity: str, rounds: int, budget: int, seed: int
) -> list[tuple[int, float]]:
    """Accuracy on the test set after each round, with the number of labels at that point."""
    n_classes = int(split.pool_y.max()) + 1
    labels = np.full(len(split.pool_y), -1, dtype=np.int64)
    labels[split.seed_idx] = split.pool_y[split.seed_idx]
    curve: list[tuple[int, float]] = []
    for r in range(rounds + 1):
        predict = train_probe(
            split.pool_x, labels, n_classes, options=ProbeOptions(device="cpu", seed=seed)
        )
        acc = float(np.mean(predict(split.test_x).argmax(axis=1) == split.test_y))
        curve.append((int((labels >= 0).sum()), acc))
        if r == rounds:
            break
        unlabeled = np.flatnonzero(labels < 0)
        sel = select_batch(
            predict(split.pool_x),
            split.pool_x,
            budget=budget,
            candidate_idx=unlabeled,
            strategy=strategy,
            diversity=diversity,
            seed=seed * 1000 + r,
        )
        labels[sel.indices] = split.pool_y[sel.indices]  # the "human" answers from the truth
    return curve


def labels_to_reach(counts: np.ndarray, accs: np.ndarray, target: float) -> float:
    """Labels needed to reach `target` accuracy, interpolated on the mean curve (inf if never)."""
    hit = np.flatnonzero(accs >= target - 1e-9)
    if hit.size == 0:
        return float("inf")
    i = int(hit[0])
    if i == 0:
        return float(counts[0])
    x0, x1, y0, y1 = counts[i - 1], counts[i], accs[i - 1], accs[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def main() -> None:
    """Run every strategy over several seeds and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=5)
    args = parser.parse_args()
    start = time.perf_counter()
    curves: dict[str, np.ndarray] = {}
    with threadpool_limits(1):
        for name, (strategy, diversity) in STRATEGIES.items():
            runs = [
                run_loop(
                    load_split(s, args.per_class), strategy, diversity, args.rounds, args.budget, s
                )
                for s in range(args.seeds)
            ]
            curves[name] = np.asarray(runs, dtype=np.float64)  # seeds x rounds x (count, acc)
    print_table(curves, args)
    print(f"\n({args.seeds} seeds, {time.perf_counter() - start:.0f} s)")


def print_table(curves: dict[str, np.ndarray], args: argparse.Namespace) -> None:
    """Accuracy per label count, and labels needed to match random's final accuracy."""
    counts = curves["random"][0, :, 0]
    target = float(curves["random"][:, -1, 1].mean())
    shown = list(range(0, len(counts), 2)) + ([len(counts) - 1] if len(counts) % 2 == 0 else [])
    head = " | ".join(f"{int(counts[i])}" for i in shown)
    print(
        f"Test accuracy (mean of {args.seeds} seeds) by number of labels; budget "
        f"{args.budget}/round; target = random's accuracy at {int(counts[-1])} labels "
        f"({target:.3f})\n"
    )
    print(f"| strategy | {head} | labels to target | saved vs random |")
    print("|---" * (len(shown) + 3) + "|")
    for name, runs in curves.items():
        accs = runs[:, :, 1].mean(axis=0)
        need = labels_to_reach(counts, accs, target)
        saved = int(round(counts[-1] - need)) if need != float("inf") else 0
        cells = " | ".join(f"{accs[i]:.3f}" for i in shown)
        need_s = "not reached" if need == float("inf") else f"{need:.0f}"
        saved_s = "-" if need == float("inf") else f"{saved} ({saved / counts[-1]:.0%})"
        print(f"| {name} | {cells} | {need_s} | {saved_s} |")


if __name__ == "__main__":
    main()
