"""Peak memory of a run over precomputed vectors, and what each version adds to the store on disk.

    python -m bench.memory --sizes 200k,1m [--dim 512]

For each N it writes N random clustered D-dimensional float32 vectors as Parquet, then runs the
real flow in a child process (so the peak is the run's own: `VmHWM` of that process, which counts
every resident page, file-backed ones included) and prints the peak RSS against the vectors' size.
A tiny run (1,000 rows) gives the fixed overhead (Python, polars, Prefect, FAISS). Then 1% more
rows arrive in a second file and the flow runs again: the store's growth on disk shows whether the
new version shares the unchanged vectors or stores another full copy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from bench.run import parse_size

CONFIG = """
flows:
  mem:
    source: {{type: files, format: parquet, data_files: ["{data}/*.parquet"]}}
    columns: {{embedding: emb, label: null}}
    embedder: {{type: precomputed}}
    dedup: {{threshold: 0.95, search: partitioned}}
    store: {store}
"""
CHUNK = 100_000


def write_vectors(path: Path, n: int, dim: int, seed: int, start: int = 0) -> None:
    """`n` clustered unit vectors (1,000 centres) as Parquet, written chunk by chunk."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    writer = None
    for lo in range(0, n, CHUNK):
        k = min(CHUNK, n - lo)
        x = centres[rng.integers(0, 1000, k)] + rng.standard_normal((k, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        frame = pl.DataFrame(
            {"id": [f"s{start + lo + i:09d}" for i in range(k)], "emb": x},
        ).with_columns(pl.col("emb").cast(pl.List(pl.Float32)))
        table = frame.to_arrow()
        writer = writer or pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def child(config: str) -> None:
    """Run the flow once and print its summary's timings with this process's peak RSS."""
    from leanset.pipelines.flows import clean_flow

    summary = clean_flow(config_path=config, flow_name="mem")
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM")))
    print(
        json.dumps(
            {
                "peak_rss_mib": round(peak_kb / 1024, 1),
                "version": summary["version"],
                "timings": summary["timings"],
            }
        )
    )


def run_child(work: Path, data: Path, store: Path) -> dict:
    config = work / "flows.yaml"
    config.write_text(CONFIG.format(data=data, store=store))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"the run failed:\n{out.stderr[-4000:]}")
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "cache" not in p.parts)


def bench_size(n: int, dim: int, work: Path, base_mib: float) -> dict:
    data, store = work / f"data-{n}", work / f"store-{n}"
    data.mkdir()
    write_vectors(data / "part-000.parquet", n, dim, seed=n)
    first = run_child(work, data, store)
    size_v1 = tree_bytes(store)
    extra = max(1, n // 100)
    write_vectors(data / "part-001.parquet", extra, dim, seed=n + 1, start=n)
    second = run_child(work, data, store)
    vectors_mib = n * dim * 4 / 2**20
    return {
        "N": n,
        "vectors_mib": round(vectors_mib, 1),
        "peak_rss_mib": first["peak_rss_mib"],
        "peak_minus_fixed_over_vectors": round((first["peak_rss_mib"] - base_mib) / vectors_mib, 2),
        "store_mib_v1": round(size_v1 / 2**20, 1),
        "store_growth_mib_v2": round((tree_bytes(store) - size_v1) / 2**20, 1),
        "new_rows_v2": extra,
        "peak_rss_mib_v2": second["peak_rss_mib"],
        "timings_v1": first["timings"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="200k,1m")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results/memory.json")
    args = p.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if args.child:
        child(args.child)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="leanset-mem-") as tmp:
        (Path(tmp) / "base").mkdir()
        base = Path(tmp) / "base" / "data"
        base.mkdir()
        write_vectors(base / "part-000.parquet", 1000, args.dim, seed=0)
        fixed = run_child(Path(tmp) / "base", base, Path(tmp) / "base" / "store")["peak_rss_mib"]
        print(json.dumps({"fixed_overhead_mib (N=1,000)": fixed}), flush=True)
        for n in [parse_size(s) for s in args.sizes.split(",")]:
            rows.append(bench_size(n, args.dim, Path(tmp), fixed))
            print(json.dumps(rows[-1]), flush=True)
    cols = [c for c in rows[0] if c != "timings_v1"]
    print(f"\nfixed overhead: {fixed} MiB\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"fixed_mib": fixed, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
