"""Child processes for the crash and race tests: each runs real leanset code, stops at a point the
parent chooses (writing a marker file there, then sleeping), and is killed with SIGKILL.

    python -m tests.reliability._child embed IMAGES CACHE KILL_POINT MARKER
    python -m tests.reliability._child commit STORE TAG PARENT KILL_POINT MARKER
    python -m tests.reliability._child loop STORE MARKER
    python -m tests.reliability._child race STORE TAG READY GO
    python -m tests.reliability._child gc STORE KEEP_LAST MARKER
    python -m tests.reliability._child fill_disk STORE      (on a tiny disk: see test_disk_full)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import polars as pl


def pause_here(marker: str, note: str = "") -> None:
    """Tell the parent we are at the kill point, then wait to be killed."""
    Path(marker).write_text(note)
    time.sleep(600)
    os._exit(3)  # never reached when the parent kills us


def nth_call(n: int, fn, on_hit):
    """Wrap `fn` so that its n-th call runs `on_hit(*args)` first."""
    calls = {"k": 0}

    def wrapper(*args, **kwargs):
        calls["k"] += 1
        if calls["k"] == n:
            on_hit(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- embedding


def embed(images: str, cache: str, kill_point: str, marker: str) -> None:
    from leanset.pipelines import embed as E
    from leanset.pipelines.config import ColumnSettings, SourceSettings
    from leanset.pipelines.sources import load_source

    point, _, k = kill_point.partition(":")
    k = int(k or 1)
    data = load_source(SourceSettings(type="imagefolder", path=images), ColumnSettings())
    if point == "after_shard":  # the k-th shard is complete on disk, the next is not started
        real_put = E.EmbeddingCache.put

        def put(self, hashes, vectors):
            path = real_put(self, hashes, vectors)
            if len(list(self.dir.glob("shard-*.npz"))) == k:
                pause_here(marker, json.dumps({"rows": len(self)}))
            return path

        E.EmbeddingCache.put = put
    elif point == "before_rename":  # the k-th shard's temp file is complete, not yet renamed
        os.replace = nth_call(k, os.replace, lambda *a: pause_here(marker))
    elif point == "mid_write":  # the k-th shard's temp file holds half its bytes
        real_fdopen = os.fdopen

        def fdopen(fd, mode="r", *args, **kwargs):
            fh = real_fdopen(fd, mode, *args, **kwargs)
            name = os.readlink(f"/proc/self/fd/{fd}")
            if "wb" in mode and ".shard-" in name:
                fdopen.count += 1
                if fdopen.count == k:
                    return _HalfWriter(fh, marker)
            return fh

        fdopen.count = 0
        os.fdopen = fdopen
    E.embed_dataset(data, E.PixelEmbedder(16), cache, batch_size=2, shard_rows=4, progress=False)
    Path(marker).write_text("finished")


class _HalfWriter:
    """A file that writes half of what it is given, flushes, and stops there."""

    def __init__(self, fh, marker: str):
        self.fh, self.marker = fh, marker

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        os.fsync(self.fh.fileno())
        pause_here(self.marker)
        return len(data)


# ---------------------------------------------------------------- committing


def payload(tag: str, n: int = 3000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A version's tables, recognisable by `tag` in every row."""
    ids = [f"{tag}-{i}" for i in range(n)]
    kept = [i % 3 != 0 for i in range(n)]
    decisions = pl.DataFrame(
        {
            "sample_id": ids,
            "tag": [tag] * n,
            "kept": kept,
            "drop_reason": [None if k else "near_duplicate" for k in kept],
        },
        schema_overrides={"drop_reason": pl.Utf8},
    )
    return decisions.filter(pl.col("kept")).select("sample_id", "tag"), decisions


def do_commit(store_path: str, tag: str, parent: int | None) -> dict:
    from leanset.pipelines.store import Store

    dataset, decisions = payload(tag)
    return Store(store_path).commit(dataset, decisions, {"tag": tag, "counts": {}}, parent)


def commit(store_path: str, tag: str, parent: str, kill_point: str, marker: str) -> None:
    import leanset.pipelines.store.versions as S

    if kill_point == "between_tables":  # dataset table written, decisions not yet
        S.Store._write_table = nth_call(2, S.Store._write_table, lambda *a: pause_here(marker))
    elif kill_point == "before_manifest":  # both tables written, no manifest
        import leanset.pipelines.store.storage as T  # the commit point: LocalStorage.create

        T.create_exclusive = nth_call(1, T.create_exclusive, lambda *a: pause_here(marker))
    elif kill_point == "mid_manifest":  # manifest's temp file written, not yet linked in place
        os.link = nth_call(1, os.link, lambda *a: pause_here(marker))
    out = do_commit(store_path, tag, None if parent == "none" else int(parent))
    if kill_point == "after_manifest":
        pause_here(marker, json.dumps({"version": out["version"]}))
    print(json.dumps({"version": out["version"]}))


def loop(store_path: str, marker: str) -> None:
    """Commit version after version until killed."""
    from leanset.pipelines.store import Store

    store = Store(store_path)
    while True:
        latest = store.latest()
        parent = latest["version"] if latest else None
        do_commit(store_path, f"v{(parent or 0) + 1}", parent)
        Path(marker).write_text("running")


def race(store_path: str, tag: str, ready: str, go: str) -> None:
    """Read the parent, say so, wait for the start signal, then commit on that parent."""
    from leanset.pipelines.store import Store, StoreConflict

    latest = Store(store_path).latest()
    parent = latest["version"] if latest else None
    dataset, decisions = payload(tag, 500)
    Path(ready).write_text("ready")
    while not Path(go).exists():
        time.sleep(0.001)
    try:
        out = Store(store_path).commit(dataset, decisions, {"tag": tag, "counts": {}}, parent)
        print(json.dumps({"tag": tag, "parent": parent, "version": out["version"]}))
    except StoreConflict as exc:
        print(json.dumps({"tag": tag, "parent": parent, "conflict": str(exc)}))


def fill_disk(store_path: str) -> None:
    """Commit a small version, then one too large for the store's (tiny) disk; print what each
    commit did."""
    import numpy as np

    from leanset.pipelines.store import Store, StoreError

    store = Store(store_path)
    out = {"v1": do_commit(store_path, "v1", None)["version"]}
    rng = np.random.default_rng(0)
    for name, rows in (("clearly_too_big", 1_000_000), ("fills_while_writing", 150_000)):
        big = pl.DataFrame({"sample_id": [rng.bytes(24).hex() for _ in range(rows)]})
        try:
            store.commit(big, big.with_columns(pl.lit(True).alias("kept")), {"counts": {}}, 1)
            out[name] = "committed"
        except StoreError as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
        print(f"--- after {name}", file=sys.stderr, flush=True)
    out["latest"] = Store(store_path).latest()["version"]
    out["v1_rows"] = Store(store_path).read("decisions", 1).height
    print(json.dumps(out))


def full_after_commit(config: str, flow: str, ballast: str) -> None:
    """`leanset run` whose disk fills right after the commit (a ballast file takes the space left
    just before the report is written); then the ballast is removed and `leanset run` runs again.
    Each run's exit status is printed to stderr between markers."""
    import leanset.pipelines.report.html as html
    from leanset.pipelines.cli import main

    real = html.write_html_report

    def fill_then_write(*args, **kwargs):
        with open(ballast, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        return real(*args, **kwargs)

    html.write_html_report = fill_then_write
    rc = main(["run", config, "--flow", flow])
    print(f"--- first run rc={rc}", file=sys.stderr, flush=True)
    print(f"--- first run rc={rc}", flush=True)
    html.write_html_report = real
    os.unlink(ballast)
    rc = main(["run", config, "--flow", flow, "--json"])
    print(f"--- second run rc={rc}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- gc


def gc(store_path: str, keep_last: str, marker: str) -> None:
    import leanset.pipelines.store.gc as G

    G._remove_paths = nth_call(2, G._remove_paths, lambda *a: pause_here(marker))
    G.collect_garbage(store_path, keep_last=int(keep_last), grace_seconds=0)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    modes = {"embed": embed, "commit": commit, "loop": loop, "race": race, "gc": gc}
    modes["fill_disk"] = fill_disk
    modes["full_after_commit"] = full_after_commit
    modes[mode](*args)
