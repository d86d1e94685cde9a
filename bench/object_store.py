"""What a store on object storage costs: requests and bytes per commit, read and verify, and
per whole `leanset run` with the source and the store in a bucket.

    python -m bench.object_store [--rows 100000]
    python -m bench.object_store --run [--images 1000]

Runs against a real S3 API (moto's server, started here on 127.0.0.1; `pip install
'leanset[test]'`) and counts in leanset's storage layer (manifests, index, Delta commit files
read back, checksums) plus, from the server's access log, every request deltalake made itself.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import polars as pl


class _Log(logging.Handler):
    """Counts the server's requests by method."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for method in ("GET", "PUT", "HEAD", "POST", "DELETE"):
            if f'"{method} ' in text:
                self.methods[method] += 1


def _frames(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    kept = rng.random(n) > 0.1
    ids = [f"s{k:08d}" for k in range(n)]
    dec = pl.DataFrame(
        {
            "sample_id": ids,
            "content_hash": [f"{h:032x}" for h in rng.integers(0, 2**62, n)],
            "kept": kept,
            "drop_reason": [None if k else "near_duplicate" for k in kept],
        },
        schema_overrides={"drop_reason": pl.Utf8},
    )
    pairs = pl.DataFrame({"i": np.arange(n // 20), "j": np.arange(n // 20) + 1, "sim": 0.95})
    return dec.filter(pl.col("kept")).select("sample_id", "content_hash"), dec, pairs


def measure(rows: int) -> list[dict[str, Any]]:
    """Requests and bytes of: first commit, second commit, reading both tables, verify."""
    from leanset.pipelines.store import Store
    from leanset.pipelines.store.verify import verify_store
    from tests import s3_server

    server = s3_server.start()
    log = _Log()
    logging.getLogger("werkzeug").addHandler(log)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    url = f"s3://{server.bucket()}/store"
    out = []
    try:
        steps = [
            (
                "commit v1",
                lambda s: s.commit(*_frames(rows, 1)[:2], {}, None, pairs=_frames(rows, 1)[2]),
            ),
            (
                "commit v2",
                lambda s: s.commit(*_frames(rows, 2)[:2], {}, 1, pairs=_frames(rows, 2)[2]),
            ),
            ("read dataset + decisions", lambda s: (s.read("dataset"), s.read("decisions"))),
            ("verify", lambda s: verify_store(url, server.options)),
        ]
        for name, step in steps:
            store = Store(url, server.options)
            log.methods.clear()
            t0 = time.perf_counter()
            step(store)
            t = store.storage.traffic.as_dict()
            out.append(
                {
                    "step": name,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "server_requests": dict(log.methods),
                    "leanset_requests": t["requests"],
                    "leanset_bytes_written": t["bytes_written"],
                    "leanset_bytes_read": t["bytes_read"],
                }
            )
    finally:
        server.server.stop()  # type: ignore[attr-defined]
    return out


def measure_runs(images: int) -> list[dict[str, Any]]:
    """Requests and bytes of whole runs on a bucket (source and store): the first run, an
    unchanged rerun, a run after 1% new images, and an unchanged rerun on a new machine (an empty
    local mirror)."""
    import os
    import tempfile
    from pathlib import Path

    from leanset.pipelines.config import load_flow
    from leanset.pipelines.core import run_core
    from leanset.pipelines.store.storage import PROCESS, ObjectStorage
    from tests import s3_server
    from tests.helpers import make_imagefolder, pixel_flow_body, write_flows, write_png

    server, log = s3_server.start(), _Log()
    logging.getLogger("werkzeug").addHandler(log)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    work = Path(tempfile.mkdtemp(prefix="leanset-bench-s3-"))
    bucket = server.bucket()
    folder = make_imagefolder(work / "images", n=max(6, images // 6 * 6))
    source = f"s3://{bucket}/images"
    _sync(folder, ObjectStorage(source, server.options))
    opts = {"storage_options": server.options}
    body = pixel_flow_body(
        source={"type": "imagefolder", "path": source, **opts}, store=f"s3://{bucket}/s", **opts
    )
    settings = load_flow(write_flows(work, bench=body), "bench")
    out = []

    def new_images() -> None:
        for k in range(max(1, images // 100)):
            write_png(folder / f"train/a/new{k:05d}.png", np.full((16, 16), k % 256))
        _sync(folder, ObjectStorage(source, server.options))

    steps = [
        ("first run", None, "machine-1"),
        ("unchanged rerun", None, "machine-1"),
        ("1% new images", new_images, "machine-1"),
        ("unchanged rerun, new machine", None, "machine-2"),
    ]
    try:
        for name, before, machine in steps:
            if before:
                before()
            os.environ["LEANSET_CACHE_DIR"] = str(work / machine)
            log.methods.clear()
            start = PROCESS.as_dict()
            t0 = time.perf_counter()
            res = run_core(settings, force=True)  # random tiles: the guard is not the point
            now = PROCESS.as_dict()
            moved = {k: v - start["requests"].get(k, 0) for k, v in now["requests"].items()}
            out.append(
                {
                    "step": name,
                    "version": res.summary.version,
                    "embedded": (res.summary.embed or {}).get("computed", 0),
                    "seconds": round(time.perf_counter() - t0, 2),
                    "server_requests": dict(log.methods),
                    "leanset_requests": {k: v for k, v in sorted(moved.items()) if v},
                    "leanset_bytes_read": now["bytes_read"] - start["bytes_read"],
                    "leanset_bytes_written": now["bytes_written"] - start["bytes_written"],
                }
            )
    finally:
        server.server.stop()  # type: ignore[attr-defined]
    return out


def _sync(folder: Any, bucket: Any) -> None:
    """Upload a local folder under a bucket prefix (what `aws s3 sync` does; not counted)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        bucket.write(path.relative_to(folder).as_posix(), path.read_bytes())


def main(argv: list[str] | None = None) -> int:
    """Print one line per step."""
    ap = argparse.ArgumentParser(prog="python -m bench.object_store", description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--run", action="store_true", help="whole runs on a bucket instead")
    ap.add_argument("--images", type=int, default=1000, help="with --run: distinct images")
    args = ap.parse_args(argv)
    logging.getLogger("leanset").setLevel(logging.WARNING)
    for row in measure_runs(args.images) if args.run else measure(args.rows):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
