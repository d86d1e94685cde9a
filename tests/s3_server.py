"""A real S3 API server for tests: moto's server mode on 127.0.0.1, one bucket per test store.

python -m tests.s3_server race URL OPTIONS_JSON TAG READY GO     (a racing writer)
python -m tests.s3_server loop URL OPTIONS_JSON MARKER           (commits until killed)
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass
class S3Server:
    """A running moto S3 server and the storage options that reach it."""

    server: object
    endpoint: str

    @property
    def options(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def bucket(self) -> str:
        """A new empty bucket; its name."""
        import boto3

        name = f"leanset-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)
        return name


def start() -> S3Server:
    """Start moto's threaded S3 server on a free port of 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Server(server, f"http://{host}:{port}")


@contextlib.contextmanager
def serving() -> Iterator[S3Server]:
    """moto's S3 server, started, and stopped on exit (a test module's fixture)."""
    server = start()
    try:
        yield server
    finally:
        server.server.stop()  # type: ignore[attr-defined]


def frames(ids: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A dataset and decisions table keeping every id."""
    d = pl.DataFrame(
        {"sample_id": ids, "kept": [True] * len(ids), "drop_reason": [None] * len(ids)}
    )
    d = d.with_columns(pl.col("drop_reason").cast(pl.Utf8))
    return d.select("sample_id"), d


def _commit(url: str, options: dict[str, str], tag: str, parent: int | None) -> dict:
    from leanset.pipelines.store import Store, StoreConflict

    store = Store(url, options)
    ds, dec = frames([f"{tag}-{k}" for k in range(50)])
    pairs = pl.DataFrame({"i": [0], "j": [1], "sim": [0.95]})
    try:
        m = store.commit(ds, dec, {"tag": tag, "counts": {}}, parent, pairs=pairs)
    except StoreConflict as exc:
        return {"tag": tag, "parent": parent, "conflict": str(exc)}
    return {"tag": tag, "parent": parent, "version": m["version"]}


def race(url: str, options: str, tag: str, ready: str, go: str) -> None:
    """Read the parent, say ready, wait for the go, commit on that parent."""
    from leanset.pipelines.store import Store

    opts = json.loads(options)
    latest = Store(url, opts).latest()
    parent = latest["version"] if latest else None
    Path(ready).write_text("ready")
    while not Path(go).exists():
        time.sleep(0.005)
    print(json.dumps(_commit(url, opts, tag, parent)))


def loop(url: str, options: str, marker: str) -> None:
    """Commit version after version until killed (the marker counts the commits done)."""
    from leanset.pipelines.store import Store

    opts = json.loads(options)
    for k in range(10_000):
        latest = Store(url, opts).latest()
        _commit(url, opts, f"loop{k}", latest["version"] if latest else None)
        Path(marker).write_text(str(k + 1))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"race": race, "loop": loop}[mode](*args)
