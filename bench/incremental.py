"""Incremental run vs full re-run: N versioned samples plus M new ones, through the real flow.

    python -m bench.incremental --sizes 20k,100k --new 1k

For each N it writes N precomputed 512-d embeddings (clustered, with planted near-duplicates) as
Parquet, runs the flow (version 1), adds M rows in a second file, runs again (version 2: only the
M new rows are searched, against the corpus and among themselves), then runs a fresh store over
all N + M rows (a full re-run). Prints the wall times of the three runs and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.run import parse_size
from bench.synth import clustered_embeddings

CONFIG = """
flows:
  {name}:
    source: {{type: files, format: parquet, data_files: ["{data}/*.parquet"]}}
    columns: {{embedding: emb, label: null}}
    embedder: {{type: precomputed}}
    dedup: {{threshold: {threshold}}}
    store: {store}
"""


def _write_part(path: Path, emb: np.ndarray, start: int) -> None:
    ids = [f"s{start + k:08d}" for k in range(len(emb))]
    pl.DataFrame(
        {"id": ids, "emb": list(emb)}, schema={"id": pl.Utf8, "emb": pl.List(pl.Float32)}
    ).write_parquet(path)


def _run(work: Path, name: str, data: Path, store: Path, threshold: float) -> tuple[float, dict]:
    from leanset.pipelines.flows import clean_flow

    config = work / f"{name}.yaml"
    config.write_text(CONFIG.format(name=name, data=data, store=store, threshold=threshold))
    t0 = time.perf_counter()
    summary = clean_flow(config_path=str(config), flow_name=name)
    return time.perf_counter() - t0, summary


def bench_size(n: int, m: int, threshold: float, work: Path) -> dict:
    """Time version 1 (N), the incremental version 2 (N + M), and a full run over N + M."""
    syn = clustered_embeddings(n + m, 512, threshold=threshold, seed=n)
    data = work / f"data-{n}"
    data.mkdir()
    _write_part(data / "part-000.parquet", syn.emb[:n], 0)
    t_first, _ = _run(work, f"n{n}", data, work / f"store-{n}", threshold)
    _write_part(data / "part-001.parquet", syn.emb[n:], n)
    t_incr, incr = _run(work, f"n{n}", data, work / f"store-{n}", threshold)
    t_full, full = _run(work, f"n{n}full", data, work / f"store-{n}-full", threshold)
    same = incr["counts"]["by_reason"] == full["counts"]["by_reason"]
    return {
        "N": n,
        "M": m,
        "first_run_s": round(t_first, 2),
        "incremental_s": round(t_incr, 2),
        "full_rerun_s": round(t_full, 2),
        "speedup": round(t_full / t_incr, 1),
        "incremental_search_s": incr["timings"]["dedup"],
        "full_search_s": full["timings"]["dedup"],
        "reused_pairs": incr["search"].get("reused_pairs"),
        "same_decisions": same,
        "dropped": incr["counts"]["dropped"],
        "incremental_stages": incr["timings"],
        "full_stages": full["timings"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="20k,100k")
    p.add_argument("--new", default="1k")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--out", default="bench/results/incremental.json")
    args = p.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="leanset-incr-") as tmp:
        for n in [parse_size(s) for s in args.sizes.split(",")]:
            rows.append(bench_size(n, parse_size(args.new), args.threshold, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
