"""`engine: ray` against `engine: local` on this machine: same run, ratio, driver peak memory.

    python -m bench.ray_engine search [--rows 1000000] [--dim 512] [--method partitioned]
    python -m bench.ray_engine embed                     # the demo's images, pixel embedder
    python -m bench.ray_engine driver --sizes 1m,4m --dim 32 [--via blocks|cache]

Each side runs in a fresh process (so each peak RSS is its own), `--repeats` times (default 3,
alternating local and Ray so that a change in the machine's load hits both); the result prints
each side's median, its spread (min-max) and the 1-minute load average before and after. The Ray side starts a local
cluster of 2 CPUs (`ray start --head --num-cpus 2`: 2 worker processes) whose start is timed
apart. In `search` the Ray driver never loads the matrix: tasks read their blocks from the .npy
file (as they would read cache shards on shared storage). Pairs, or the embedding matrix, are
compared bit for bit. Data goes to --workdir (default /tmp/leanset-bench-ray).

`driver` measures how the Ray driver's memory grows with N on the near-duplicate path: workers
make N synthetic unit rows (clustered, 1% planted near-copies) as object-store blocks
(`--via blocks`) or write them as embedding-cache shards that tasks then align with N content
hashes held by the driver (`--via cache`, what a flow's embed stage does); then the dedup stage's
work runs as `find_duplicates` runs it with `engine: ray`: validation, calibration (2,000 sampled
rows' neighbours), the partitioned search, the pairs' cosines. Each size runs in a fresh process;
it prints the driver's peak RSS (VmHWM, whole process), the largest peak of the cluster's worker
processes, the time of each step and the 1-minute load average. With `--stage` and two sizes it
also prints each step's growth in bytes per row from the first size to the last
(`growth_bytes_per_row_by_step`): which step's memory grows with N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _hwm_reset() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cluster(object_store_mb: int) -> Any:
    from leanset.pipelines.engine.cluster import map_large_allocations
    from tests.ray_cluster import start_head

    map_large_allocations()  # as a flow's driver does when it connects (engine.cluster)
    t0 = time.perf_counter()
    c = start_head(num_cpus=2, object_store_mb=object_store_mb)
    import ray

    ray.init(address=c.address, log_to_driver=False)
    print(f"  cluster start + connect: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return c


def _load_rows(path: str, s: int, e: int) -> np.ndarray:
    """Rows s:e of an .npy file, read by a task (memory-mapped)."""
    return np.ascontiguousarray(np.load(path, mmap_mode="r")[s:e], dtype=np.float32)


def _search_side(side: str, a: argparse.Namespace) -> dict[str, Any]:
    from leanset.dedup import near
    from leanset.dedup.near import SearchOptions

    path = str(Path(a.workdir) / f"emb-{a.rows}x{a.dim}.npy")
    opts = SearchOptions(method=a.method, device="cpu")
    if side == "local":
        x = np.load(path)
        _hwm_reset()
        t0 = time.perf_counter()
        found = near.find_near_pairs(x, a.threshold, opts)
        i, j, s, params = found.i, found.j, found.sim, found.params
    else:
        import ray

        from leanset.pipelines.engine import search
        from leanset.pipelines.engine.rows import STORE_ROWS

        c = _cluster(a.object_store_mb)
        try:
            _hwm_reset()
            t0 = time.perf_counter()
            n, dim = np.load(path, mmap_mode="r").shape
            bounds = near._blocks(n, STORE_ROWS)
            load = ray.remote(_load_rows)
            refs = [load.remote(path, s0, e0) for s0, e0 in bounds]
            bm = search.BlockMatrix(refs, np.array([b[0] for b in bounds] + [n]), dim)
            run = search.SEARCHERS[a.method]
            pairs, params = run(bm, None, a.threshold, opts, 1.0)
            i, j, s = near._finish(pairs, n)
        finally:
            ray.shutdown()
            c.stop()
    seconds = time.perf_counter() - t0
    np.savez(Path(a.workdir) / f"pairs-{side}.npz", i=i, j=j, s=s)
    return {
        "side": side,
        "seconds": round(seconds, 1),
        "driver_peak_mib": round(_hwm_mib()),
        "pairs": int(i.size),
        "params": params,
    }


def _embed_side(side: str, a: argparse.Namespace) -> dict[str, Any]:
    from leanset.pipelines.config import (
        ColumnSettings,
        EmbedderSettings,
        EngineSettings,
        SourceSettings,
    )
    from leanset.pipelines.embed import embed_dataset, make_embedder
    from leanset.pipelines.sources import load_source

    source = SourceSettings(type="imagefolder", path=str(Path(a.workdir) / "demo" / "images"))
    data = load_source(source, ColumnSettings())
    settings = EmbedderSettings(type="pixels", size=16, shard_rows=256)
    cache = Path(a.workdir) / f"cache-{side}"
    shutil.rmtree(cache, ignore_errors=True)  # every repeat embeds everything again
    if side == "local":
        _hwm_reset()
        t0 = time.perf_counter()
        res = embed_dataset(data, make_embedder(settings), cache, progress=False)
    else:
        from leanset.pipelines.engine.embed import embed_dataset_ray

        c = _cluster(512)
        try:
            _hwm_reset()
            t0 = time.perf_counter()
            engine = EngineSettings(type="ray", workers=2)
            res, _ = embed_dataset_ray(data, settings, engine, cache)
        finally:
            import ray

            ray.shutdown()
            c.stop()
    seconds = time.perf_counter() - t0
    np.save(Path(a.workdir) / f"matrix-{side}.npy", res.matrix)
    return {
        "side": side,
        "seconds": round(seconds, 1),
        "driver_peak_mib": round(_hwm_mib()),
        "computed": res.computed,
    }


def _child(kind: str, side: str, a: argparse.Namespace) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "bench.ray_engine",
        kind,
        "--side",
        side,
        "--workdir",
        a.workdir,
        "--rows",
        str(a.rows),
        "--dim",
        str(a.dim),
        "--method",
        a.method,
        "--threshold",
        str(a.threshold),
        "--object-store-mb",
        str(a.object_store_mb),
    ]
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(
        f"  {side}: {result['seconds']} s, driver peak {result['driver_peak_mib']} MiB",
        file=sys.stderr,
    )
    return result


def _prepare(kind: str, a: argparse.Namespace) -> None:
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if kind == "embed":
        from leanset.pipelines.demo.data import make_demo

        make_demo(work / "demo")
        return
    path = work / f"emb-{a.rows}x{a.dim}.npy"
    if not path.exists():
        from bench.synth import clustered_embeddings

        np.save(path, clustered_embeddings(a.rows, a.dim, threshold=a.threshold).emb)


def _same(kind: str, work: Path) -> bool:
    if kind == "embed":
        return bool(
            np.array_equal(np.load(work / "matrix-local.npy"), np.load(work / "matrix-ray.npy"))
        )
    a, b = np.load(work / "pairs-local.npz"), np.load(work / "pairs-ray.npz")
    return all(np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in ("i", "j", "s"))


def _synth_block(b: int, rows: int, dim: int, n_centres: int) -> np.ndarray:
    """Block b of the synthetic rows (made in a task): clustered, every 100th row a near-copy."""
    centres = np.random.default_rng(0).standard_normal((n_centres, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng([1, b])
    x = centres[rng.integers(0, n_centres, rows)]
    x += 0.12 * rng.standard_normal((rows, dim), dtype=np.float32)
    k = np.arange(1, rows, 100)
    x[k] = x[k - 1] + 0.02 * rng.standard_normal((k.size, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _synth_shard(folder: str, b: int, start: int, rows: int, dim: int, n_centres: int) -> int:
    """Block b written as one embedding-cache shard (row r's content hash: r, 32 digits)."""
    from leanset.pipelines.embed.cache import write_shard

    hashes = [f"{start + r:032d}" for r in range(rows)]
    write_shard(Path(folder), hashes, _synth_block(b, rows, dim, n_centres), f"shard-{b:06d}.npz")
    return rows


def _table(hashes: Any) -> Any:
    """A sample table as the loader makes it (ids, split, label, hash, error, size, source),
    built by polars column by column (NumPy string arrays of N rows cost the driver more than
    the table itself, and would be the peak of this benchmark rather than the dedup stage's)."""
    import polars as pl

    n, r = len(hashes), pl.col("position")

    def nulls() -> pl.Series:  # one column each, as a loader's
        return pl.repeat(None, n, dtype=pl.Utf8, eager=True)

    return pl.DataFrame({"position": pl.int_range(n, eager=True, dtype=pl.Int64)}).select(
        r.cast(pl.Utf8).alias("sample_id"),
        r,
        pl.when(r % 5 == 0).then(pl.lit("test")).otherwise(pl.lit("train")).alias("split"),
        (r % 10).cast(pl.Utf8).alias("label"),
        pl.lit(hashes).alias("content_hash"),
        pl.lit(nulls()).alias("error"),
        pl.repeat(1000, n, dtype=pl.Int64).alias("size_bytes"),
        pl.lit(nulls()).alias("source"),
    )


class _Steps:
    """The driver's RSS (all, private, shared memory) after each step of the dedup stage and its
    peak so far (VmHWM), in MiB: which step raises the peak (the stage's own functions, wrapped)."""

    NAMES = ("exact_representatives", "_take", "_unique_pairs", "_confirm", "resolve_groups")
    NAMES += ("_row_evidence", "_to_columns")
    METHODS = (("_Calibrator", "run"), ("_Finder", "candidates"), ("_Finder", "run"))

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []

    def mark(self, name: str, t0: float) -> None:
        rss = [round(_status_mib(os.getpid(), k)) for k in ("VmRSS", "RssAnon", "RssShmem")]
        self.rows.append([name, *rss, round(_hwm_mib()), round(time.perf_counter() - t0, 1)])

    @classmethod
    def over_table(cls, hashes: Any) -> tuple[_Steps, Any]:
        """A new record whose first step is building the sample table of `hashes` (returned)."""
        steps, t0 = cls(), time.perf_counter()
        table = _table(hashes)
        steps.mark("sample table", t0)
        return steps, table

    def wrap(self, fn: Any, name: str) -> Any:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            self.mark(name, t0)
            return out

        return timed

    def install(self, module: Any) -> None:
        for name in self.NAMES:
            setattr(module, name, self.wrap(getattr(module, name), name))
        for cls, method in self.METHODS:
            owner = getattr(module, cls)
            setattr(owner, method, self.wrap(getattr(owner, method), f"{cls}.{method}"))


def _stage(a: argparse.Namespace, kept: Any, hashes: Any) -> dict[str, Any]:
    """The whole dedup stage with `engine: ray` (find_duplicates over the kept rows)."""
    from leanset.dedup import stage
    from leanset.dedup.config import DedupSettings
    from leanset.pipelines.config import EngineSettings
    from leanset.pipelines.steps import _searchers

    steps, table = _Steps.over_table(hashes)
    del hashes  # the table holds what the stage needs
    steps.install(stage)
    t0 = time.perf_counter()
    search, between = _searchers(EngineSettings(type="ray", task_rows=a.task_rows))
    settings = DedupSettings(threshold=a.threshold, search="partitioned", confirm="embedding")
    res = stage.find_duplicates(table, kept, settings, search=search, search_between=between)
    steps.mark("find_duplicates", t0)
    return {
        "steps_rss_anon_shmem_hwm_mib_s": steps.rows,
        "table_bytes_per_row": round(table.estimated_size() / table.height, 1),
        "decided_bytes_per_row": round(res.table.estimated_size() / table.height, 1),
        "pairs": res.pairs.height,
        "dropped": int(res.table["dedup_drop"].is_not_null().sum()),
        "dedup_stage_s": round(time.perf_counter() - t0, 1),
    }


def _kept(a: argparse.Namespace, n: int) -> tuple[Any, dict[str, float]]:
    """N synthetic rows kept on the cluster, made by workers (blocks, or cache shards aligned)."""
    import ray

    from leanset.dedup import near
    from leanset.pipelines.engine.rows import (
        STORE_ROWS,
        BlockMatrix,
        CacheRead,
        RayRows,
        cached_mask,
        from_cache,
    )
    from leanset.pipelines.store.shardplace import ShardPlace

    t0, bounds = time.perf_counter(), near._blocks(n, STORE_ROWS)
    if a.via == "blocks":
        make = ray.remote(_synth_block)
        centres = max(1, n // a.rows_per_centre)
        refs = [make.remote(b, e - s, a.dim, centres) for b, (s, e) in enumerate(bounds)]
        starts = np.array([s for s, _ in bounds] + [n], dtype=np.int64)
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
        return RayRows(BlockMatrix(refs, starts, a.dim)), {"make_s": time.perf_counter() - t0}
    import polars as pl

    folder = Path(a.workdir) / f"cache-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write = ray.remote(_synth_shard)
    centres = max(1, n // a.rows_per_centre)
    ray.get(
        [write.remote(str(folder), b, s, e - s, a.dim, centres) for b, (s, e) in enumerate(bounds)]
    )
    t1 = time.perf_counter()
    hashes = pl.Series(np.arange(n)).cast(pl.Utf8).str.zfill(32)  # the sample table's column
    read = CacheRead(ShardPlace(str(folder)))
    cached = cached_mask(read, hashes)  # a rerun's embed stage asks first, as it does
    assert cached.all()
    del cached
    a.hwm_cached_check = round(_hwm_mib())
    t2 = time.perf_counter()
    kept = from_cache(read, hashes, np.ones(n, bool))
    assert kept is not None
    ray.wait(kept.blocks.refs, num_returns=len(kept.blocks.refs), fetch_local=False)
    a.hashes = hashes  # the stage's table is built from them
    times = {"make_s": t1 - t0, "cached_check_s": t2 - t1, "align_s": time.perf_counter() - t2}
    return kept, times


def _driver_side(a: argparse.Namespace) -> dict[str, Any]:
    """One size: the dedup stage's Ray path over rows kept on the cluster, with peaks."""
    from leanset.dedup import calibrate
    from leanset.dedup.matrix import check_rows
    from leanset.dedup.near import SearchOptions
    from leanset.dedup.stage import _pair_cosines
    from leanset.pipelines.engine import search

    c = _cluster(a.object_store_mb)
    a.anon_peak = _AnonPeak(c)
    try:
        started = _hwm_mib()
        kept, times = _kept(a, a.rows)
        if a.checks:  # the stages after dedup (bench/ray_checks.py)
            from bench.ray_checks import after_dedup

            aligned = _hwm_mib()
            done = after_dedup(a, kept, a.__dict__.pop("hashes"))
            marks = {"driver_hwm_mib_started_aligned": [round(started), round(aligned)]}
            return _peaks(a, c) | marks | done | {k: round(v, 1) for k, v in times.items()}
        if a.stage:
            aligned = _hwm_mib()
            staged = _stage(a, kept, a.__dict__.pop("hashes"))
            marks = {"driver_hwm_mib_started_aligned": [round(started), round(aligned)]}
            marks["driver_hwm_mib_after_cached_check"] = a.hwm_cached_check
            return _peaks(a, c) | marks | staged | {k: round(v, 1) for k, v in times.items()}
        t0 = time.perf_counter()
        check_rows(kept, unit=True)
        t1 = time.perf_counter()
        nb = kept.neighbours(calibrate.K, calibrate.SAMPLE)
        t2 = time.perf_counter()
        opts = SearchOptions(method="partitioned", device="cpu")
        found = search.find_near_pairs(kept, a.threshold, opts, 1.0, a.task_rows)
        t3 = time.perf_counter()
        k = found.i.size
        cos = _pair_cosines(kept, found.i, found.j)  # as the dedup stage scores them
        times |= {"check_s": t1 - t0, "calibrate_s": t2 - t1, "search_s": t3 - t2}
        times["pairs_cos_s"] = time.perf_counter() - t3
        return _peaks(a, c) | {
            "pairs": int(k),
            "min_pair_cos": round(float(cos.min()), 4) if k else None,
            "calibration_rows": int(nb.rows.size),
            "groups": found.params.get("groups"),
            "largest_cluster": found.params.get("largest_cluster"),
            **{key: round(v, 1) for key, v in times.items()},
        }
    finally:
        import ray

        ray.shutdown()
        c.stop()


class _AnonPeak:
    """The largest private (anonymous) RSS any worker process of the cluster reached, sampled
    every 0.2 s: VmHWM also counts the object-store pages a worker maps, which are shared."""

    def __init__(self, cluster: Any) -> None:
        import threading

        self.cluster, self.peak_mib, self.stop = cluster, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            for pid in self.cluster.worker_pids("ray::"):
                self.peak_mib = max(self.peak_mib, _status_mib(pid, "RssAnon"))


def _peaks(a: argparse.Namespace, c: Any) -> dict[str, Any]:
    """The driver's peak RSS and the largest of the cluster's worker processes' peaks."""
    workers = [_peak_mib(p) for p in c.worker_pids("ray::")]
    anon = a.anon_peak.peak_mib if getattr(a, "anon_peak", None) else None
    return {
        "rows": a.rows,
        "dim": a.dim,
        "via": a.via,
        "stage": a.stage,
        "driver_peak_mib": round(_hwm_mib()),
        "worker_peak_mib_max": round(max(workers, default=0)),
        "worker_private_peak_mib_max": round(anon) if anon is not None else None,
        "workers": len(workers),
    }


def _peak_mib(pid: int) -> float:
    return _status_mib(pid, "VmHWM")


def _status_mib(pid: int, key: str) -> float:
    """A /proc status figure in MiB; 0 for a worker that exited between listing and reading
    (it adds nothing to the maximum over the live ones)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


def _driver_sizes(a: argparse.Namespace) -> int:
    """Each size in its own process; a table of the results."""
    from bench.run import parse_size

    rows = []
    for size in a.sizes.split(","):
        load = os.getloadavg()[0]
        args = [sys.executable, "-m", "bench.ray_engine", "driver", "--side", "ray"]
        args += ["--rows", str(parse_size(size)), "--dim", str(a.dim), "--via", a.via]
        args += ["--workdir", a.workdir, "--threshold", str(a.threshold)]
        args += ["--rows-per-centre", str(a.rows_per_centre)] + (["--stage"] if a.stage else [])
        args += ["--object-store-mb", str(a.object_store_mb), "--task-rows", str(a.task_rows)]
        args += (
            ["--checks", a.checks, "--outlier-sample", str(a.outlier_sample)] if a.checks else []
        )
        out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["load_1min_before_after"] = [round(load, 1), round(os.getloadavg()[0], 1)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) > 1:
        first, last = rows[0]["driver_peak_mib"], rows[-1]["driver_peak_mib"]
        print(json.dumps({"driver_peak_ratio_last_over_first": round(last / first, 3)}))
        if a.stage:
            print(json.dumps({"growth_bytes_per_row_by_step": step_growth(rows[0], rows[-1])}))
    return 0


def step_growth(small: dict[str, Any], large: dict[str, Any]) -> list[list[Any]]:
    """Per step of `--stage`, from the smaller size to the larger, in bytes per row: how the
    driver's RSS after the step grew, how the step's own increment (RSS after it less RSS
    before it) grew, and how the peak so far grew: which step's memory is per row."""
    key, mib = "steps_rss_anon_shmem_hwm_mib_s", 2**20
    per_row = mib / (large["rows"] - small["rows"])
    out, before = [], [0.0, 0.0]
    for s, g in zip(small[key], large[key], strict=False):
        if s[0] != g[0]:
            break
        own = (g[1] - before[1]) - (s[1] - before[0])
        out.append([s[0], round((g[1] - s[1]) * per_row), round(own * per_row)])
        out[-1].append(round((g[4] - s[4]) * per_row))
        before = [s[1], g[1]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["search", "embed", "driver"])
    p.add_argument("--sizes", default="1m,4m", help="driver: row counts, each in its own process")
    p.add_argument("--via", choices=["blocks", "cache"], default="blocks")
    p.add_argument("--stage", action="store_true", help="driver: the whole dedup stage (cache)")
    p.add_argument("--rows-per-centre", type=int, default=250, help="driver: cluster density")
    p.add_argument("--checks", choices=["ray", "dense"], help="driver: the stages after dedup")
    p.add_argument("--outlier-sample", type=int, default=20_000, help="driver --checks")
    p.add_argument("--task-rows", type=int, default=262_144, help="driver: engine.task_rows")
    p.add_argument("--side", choices=["local", "ray"])  # internal: one side in this process
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--method", choices=["exact", "partitioned"], default="partitioned")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--object-store-mb", type=int, default=7000)
    p.add_argument("--workdir", default="/tmp/leanset-bench-ray")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side (median, spread)")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if a.kind == "driver":
        if a.checks and a.via != "cache":
            p.error("--checks needs --via cache (the table's hashes align the cache)")
        if a.stage and a.via != "cache":
            p.error("--stage needs --via cache (the table's hashes align the cache)")
        if a.side:
            print(json.dumps(_driver_side(a), default=str))
            return 0
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
        return _driver_sizes(a)
    if a.side:
        run = _search_side if a.kind == "search" else _embed_side
        print(json.dumps(run(a.side, a), default=str))
        return 0
    _prepare(a.kind, a)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    identical = True
    for _ in range(a.repeats):
        for side in ("local", "ray"):
            runs[side].append(_child(a.kind, side, a))
        identical = identical and _same(a.kind, Path(a.workdir))
    local, remote = _stats(runs["local"]), _stats(runs["ray"])
    row = {
        "kind": a.kind,
        "rows": a.rows if a.kind == "search" else runs["local"][0].get("computed"),
        "repeats": a.repeats,
        "local_s": local,
        "ray_s": remote,
        "ray_speedup_of_medians": round(local["median"] / max(remote["median"], 1e-9), 2),
        "local_driver_peak_mib": _stats(runs["local"], "driver_peak_mib"),
        "ray_driver_peak_mib": _stats(runs["ray"], "driver_peak_mib"),
        "identical_every_time": identical,
        "load_1min_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "cpus": os.cpu_count(),
    }
    if a.kind == "search":
        row["pairs"] = runs["local"][0]["pairs"]
    print(json.dumps(row))
    return 0


def _stats(results: list[dict[str, Any]], key: str = "seconds") -> dict[str, float]:
    """Median and spread (min, max) of one measurement over the repeats."""
    values = [float(r[key]) for r in results]
    return {
        "median": round(float(np.median(values)), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
