"""What a store on object storage costs: requests and bytes per commit, read and verify.

    python -m bench.object_store [--rows 100000]

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


def main(argv: list[str] | None = None) -> int:
    """Print one line per step."""
    ap = argparse.ArgumentParser(prog="python -m bench.object_store", description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    for row in measure(args.rows):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
