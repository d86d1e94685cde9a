"""`python -m bench.trust`: leanset's decisions on packaged real data, scored, beside Datalab.

    python -m bench.trust [--quick] [--sets diverse,dense,text] [--seeds 0,1] [--force]
                          [--set-key dedup.threshold=0.95 ...] [--threads 1] [--rebuild]
                          [--root bench/results/trust] [--out F]

For each set and seed: build the set if needed (bench/trust/build.py, bench/trust/text.py), run
the real leanset flow on it through its CLI (bench/trust/flow.py), score the committed decisions against truth.json
(bench/trust/score.py), run cleanlab Datalab on the same vectors (bench/trust/datalab.py), then
print the tables and write every number as JSON. See bench/trust/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.trust import build, datalab, flow, report, score
from leanset.pipelines.store.tables import DECISION_COLUMNS

CONTRACT_COLUMNS = frozenset(DECISION_COLUMNS)
DEFAULT_SEEDS = "0,1"
ENVIRONMENT = {  # set unless already set: no telemetry, no hub, patience with a busy machine
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}
MANIFEST_KEYS = (
    "config",
    "counts",
    "embed",
    "search",
    "labeling",
    "guard",
    "calibration",
    "timings",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(prog="python -m bench.trust", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sets", default=",".join(build.SETS), help="comma list of: " + ", ".join(build.SETS)
    )
    ap.add_argument(
        "--seeds",
        default=None,
        help=f"comma list of build seeds (default {DEFAULT_SEEDS}; --quick: 0)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="small sets, seed 0: a check that it all runs"
    )
    ap.add_argument("--set-key", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a flow setting (repeatable), e.g. dedup.threshold=0.95")  # fmt: skip
    ap.add_argument("--force", action="store_true", help="score a run the dedup guard refuses")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and BLAS")
    ap.add_argument("--rebuild", action="store_true", help="build the sets again")
    ap.add_argument("--root", type=Path, default=build.DEFAULT_ROOT, help="sets, runs and caches")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default ROOT/results-TAG.json)")
    ap.add_argument("--dropped-limit", type=int, default=20, help="dropped originals printed")
    args = ap.parse_args(argv)
    args.set_list = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in args.set_list if s not in build.SETS]
    if bad or not args.set_list:
        ap.error(f"--sets: unknown {bad or 'none given'}; expected from {', '.join(build.SETS)}")
    try:
        seeds = args.seeds or ("0" if args.quick else DEFAULT_SEEDS)
        args.seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        args.overrides = [flow.parse_override(t) for t in args.set_key]
    except ValueError as exc:
        ap.error(str(exc))
    return args


def content_hashes(data: Path, truth: score.Truth) -> list[str]:
    """leanset's content hash of every sample (an image file's bytes, a text's UTF-8), in truth
    row order."""
    import polars as pl

    from leanset.pipelines.fsutil import digest

    if data.is_dir():
        return [digest((data / p).read_bytes()) for p in truth.paths]
    table = pl.read_parquet(data)
    text_of = dict(zip(table["id"].to_list(), table["text"].to_list(), strict=True))
    return [digest(text_of[p].encode("utf-8")) for p in truth.paths]


def leanset_part(run: flow.FlowRun, truth: score.Truth) -> dict[str, Any]:
    """The run's record: where, how long, the guard's verdict, the manifest's facts, the scores."""
    out: dict[str, Any] = {
        "tag": run.tag,
        "flows": str(run.flows),
        "store": str(run.store),
        "seconds": run.seconds,
        "guard": vars(run.verdict),
        "version": run.summary["version"] if run.summary else None,
        "error": run.error,
    }
    if run.manifest is not None and run.decisions is not None:
        out["manifest"] = {k: run.manifest.get(k) for k in MANIFEST_KEYS}
        out["scores"] = score.score_leanset(score.decisions_from_table(run.decisions, truth), truth)
        out["extra_columns"] = [c for c in run.decisions.columns if c not in CONTRACT_COLUMNS]
    return out


def datalab_part(vectors: np.ndarray, truth: score.Truth, labels: list[str]) -> dict[str, Any]:
    """Datalab near_duplicate on every row and label on the train rows, scored."""
    near = datalab.near_duplicates(vectors, list(labels))
    near_scores = score.score_pair_set(near.pairs, truth)
    near_scores.update(seconds=near.seconds, settings=near.info)
    train = np.flatnonzero(truth.is_train)
    x, y = vectors[train], [labels[i] for i in train]
    knn = datalab.label_issues(x, y)
    probs, accuracy = datalab.oof_probabilities(x, y)
    oof = datalab.label_issues(x, y, pred_probs=probs)
    knn_scores = score.label_scores(train[knn.flagged].tolist(), truth)
    oof_scores = score.label_scores(train[oof.flagged].tolist(), truth)
    knn_scores.update(seconds=knn.seconds)
    oof_scores.update(seconds=oof.seconds, oof_accuracy=accuracy)
    return {"near_duplicate": near_scores, "label_knn": knn_scores, "label_oof": oof_scores}


def vectors_for(run: flow.FlowRun, data: Path, truth: score.Truth) -> np.ndarray:
    """The vectors leanset embedded for every sample, in truth row order (from its cache)."""
    return flow.cached_vectors(run, content_hashes(data, truth))


def bench_set(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Build (if needed), run leanset, run Datalab and score both on one set."""
    where = build.set_dir(args.root, name, seed, args.quick)
    raw = build.ensure_set(name, seed, where, args.rebuild, args.quick)
    truth = score.load_truth(raw)
    data = build.data_path(name, where)
    work = where / "runs" / flow.run_tag(args.overrides)
    cache = args.root / flow.CACHE_STORE
    print(f"\n== {name} seed {seed}: {raw['counts']} -> {work}", flush=True)
    run = flow.run_leanset(f"trust-{name}-s{seed}", data, work, cache, args.overrides,
                           args.force, args.threads)  # fmt: skip
    print(f"   leanset: {run.seconds:.0f} s, guard {'refused' if run.verdict.refused else 'passed'}"
          + (f", error: {run.error}" if run.error else ""), flush=True)  # fmt: skip
    labels = [s["label"] for s in raw["samples"]]
    return {
        "set": name,
        "seed": seed,
        "dir": str(where),
        "counts": raw["counts"],
        "leanset": leanset_part(run, truth),
        "datalab": datalab_part(vectors_for(run, data, truth), truth, labels),
    }


def limit_threads(n: int) -> Any:
    """Keep torch, BLAS and OpenMP to `n` threads (the machine is shared); returns the limiter."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    return threadpool_limits(n)


def write_results(out: Path, results: list[dict[str, Any]]) -> None:
    """Every number so far, as JSON (written whole, then moved into place)."""
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=1, default=str))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; write the JSON (after each set, so a long run that
    is stopped keeps what it measured)."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    args = parse_args(argv)
    tag = ("quick-" if args.quick else "") + flow.run_tag(args.overrides)
    out = args.out or args.root / f"results-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with limit_threads(args.threads):
        for seed in args.seed_list:
            for name in args.set_list:
                results.append(bench_set(name, seed, args))
                write_results(out, results)
    print("\n" + report.render(results, args.dropped_limit))
    print(f"\nAll numbers: {out}")
    return 0
