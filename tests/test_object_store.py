"""The store on object storage: a real S3 API (moto's server) started here, no mocks in leanset.

Commits, reads, diffs, verify and the near-pair index on a bucket give what a folder gives; the
commit point is a conditional PUT, so racing writers make one version per parent and a writer
killed with SIGKILL mid-commit leaves only whole versions.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from leanset.pipelines.store import Store, StoreConflict, StoreError
from leanset.pipelines.store.verify import verify_store
from tests import s3_server
from tests.s3_server import S3Server, frames

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server.serving() as server:
        yield server


def _commit(store: Store, ids: list[str], kept: list[bool], parent: int | None) -> dict:
    d = pl.DataFrame(
        {
            "sample_id": ids,
            "kept": kept,
            "drop_reason": [None if k else "near_duplicate" for k in kept],
        },
        schema_overrides={"drop_reason": pl.Utf8},
    )
    pairs = pl.DataFrame({"i": [0], "j": [len(ids) - 1], "sim": [0.93]})
    dataset = d.filter(pl.col("kept")).select("sample_id")
    return store.commit(dataset, d, {"counts": {}}, parent, pairs=pairs)


def test_a_bucket_store_commits_reads_diffs_and_verifies_like_a_folder(s3, tmp_path):
    url = f"s3://{s3.bucket()}/stores/photos"
    remote, local = Store(url, s3.options), Store(tmp_path / "s")
    for store in (remote, local):
        assert _commit(store, ["a", "b"], [True, True], None)["version"] == 1
        assert _commit(store, ["a", "b", "c"], [True, False, True], 1)["version"] == 2
    for table in ("dataset", "decisions"):
        for v in (1, 2):
            assert remote.read(table, v).equals(local.read(table, v))
    d = remote.diff(1, 2)
    assert d.entered["sample_id"].to_list() == ["c"]
    assert d.left.select("sample_id", "drop_reason").rows() == [("b", "near_duplicate")]
    pairs = remote.read_pairs(remote.manifest(2))
    assert pairs is not None and pairs.equals(local.read_pairs(local.manifest(2)))
    with pytest.raises(StoreError, match=r"has no version 5; versions: \[1, 2\]"):
        remote.read("decisions", 5)
    report = verify_store(url, s3.options)
    assert report.ok and report.versions == [1, 2] and report.files_checked >= 10
    assert report.store == url


def test_credentials_and_endpoint_come_from_the_environment(s3, monkeypatch):
    url = f"s3://{s3.bucket()}/s"
    for key, value in s3.options.items():
        monkeypatch.setenv(key, value)
    store = Store(url)
    _commit(store, ["a"], [True], None)
    assert Store(url).read("dataset")["sample_id"].to_list() == ["a"]


def test_storage_options_on_a_local_path_are_refused(tmp_path):
    with pytest.raises(StoreError, match="apply to object-storage URLs only"):
        Store(tmp_path / "s", {"AWS_REGION": "us-east-1"})


def test_a_second_commit_on_the_same_parent_loses_and_changes_nothing(s3):
    url = f"s3://{s3.bucket()}/s"
    store = Store(url, s3.options)
    _commit(store, ["a"], [True], None)
    _commit(store, ["a", "b"], [True, True], 1)
    with pytest.raises(StoreConflict, match="version 2 was committed by another run"):
        _commit(Store(url, s3.options), ["z"], [True], 1)
    assert [m["version"] for m in store.manifests()] == [1, 2]
    assert store.read("dataset")["sample_id"].to_list() == ["a", "b"]


def test_a_damaged_object_is_named_by_verify(s3):
    url = f"s3://{s3.bucket()}/s"
    store = Store(url, s3.options)
    _commit(store, ["a", "b"], [True, True], None)
    data = [n for n in store.storage.list("decisions") if n.endswith(".parquet")]
    raw = bytearray(store.storage.read(data[0]))
    raw[len(raw) // 2] ^= 0x01
    store.storage.write(data[0], bytes(raw))
    report = verify_store(url, s3.options)
    assert not report.ok
    assert any(f.severity == "damaged" and "decisions" in f.path for f in report.findings)


def test_requests_per_commit_are_counted(s3):
    store = Store(f"s3://{s3.bucket()}/s", s3.options)
    _commit(store, ["a", "b"], [True, True], None)
    t = store.storage.traffic
    assert t.requests["put-if-absent"] == 1  # the commit point: one conditional PUT
    assert t.bytes_out > 0 and t.bytes_in > 0


def _spawn(mode: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.s3_server", mode, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_racing_writers_on_a_bucket_make_one_version_per_parent(s3, tmp_path):
    url, opts = f"s3://{s3.bucket()}/s", json.dumps(s3.options)
    for rnd, parent in enumerate((None, 1)):
        go = tmp_path / f"go-{rnd}"
        kids = [
            (
                _spawn(
                    "race", url, opts, f"r{rnd}w{w}", str(tmp_path / f"ready-{rnd}-{w}"), str(go)
                ),
                w,
            )
            for w in range(3)
        ]
        for kid, w in kids:
            while not (tmp_path / f"ready-{rnd}-{w}").exists():
                assert kid.poll() is None, kid.communicate()[1]
                time.sleep(0.01)
        go.write_text("go")
        results = []
        for kid, _ in kids:
            out, err = kid.communicate(timeout=180)
            assert kid.returncode == 0, err
            results.append(json.loads(out))
        winners = [r for r in results if "version" in r]
        assert len(winners) == 1 and winners[0]["version"] == (parent or 0) + 1, results
        assert all("another run" in r["conflict"] for r in results if "conflict" in r)
        store = Store(url, s3.options)
        assert [m["version"] for m in store.manifests()] == list(range(1, rnd + 2))
        assert store.latest()["tag"] == winners[0]["tag"]
        kept = store.read("dataset")["sample_id"].to_list()
        assert kept == [f"{winners[0]['tag']}-{k}" for k in range(50)]
    assert verify_store(url, s3.options).ok


@pytest.mark.slow
def test_a_writer_killed_mid_commit_leaves_only_whole_versions(s3, tmp_path):
    url, opts = f"s3://{s3.bucket()}/s", json.dumps(s3.options)
    rng, orphans = random.Random(7), 0
    for kill in range(3):
        marker = tmp_path / f"done-{kill}"
        kid = _spawn("loop", url, opts, str(marker))
        deadline = time.monotonic() + 120
        while not marker.exists():  # at least one commit done: the next one is under way
            assert kid.poll() is None, kid.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.8))
        kid.send_signal(signal.SIGKILL)
        kid.communicate()
        store = Store(url, s3.options)
        versions = [m["version"] for m in store.manifests()]
        assert versions == list(range(1, len(versions) + 1))
        for m in store.manifests()[-2:]:  # the loop's versions hold 50 rows, ours one
            assert store.read("dataset", m["version"]).height == (50 if "tag" in m else 1)
        report = verify_store(url, s3.options)
        assert report.ok, report.findings
        orphans += _unreferenced(store)
        latest = store.latest()
        ds, dec = frames(["after-kill"])
        assert (
            store.commit(ds, dec, {"counts": {}}, latest["version"])["version"] == versions[-1] + 1
        )
    print(f"objects left by killed commits (never read): {orphans}")


def _unreferenced(store: Store) -> int:
    """Data files and indexes no manifest names: what a killed commit left behind."""
    named = {m["index"]["pairs"] for m in store.manifests() if m.get("index")}
    for m in store.manifests():
        for table in ("dataset", "decisions"):
            named |= {f"{table}/{rel}" for rel in m["files"][table]["data"]}
    found = [n for n in store.storage.list("") if n.endswith(".parquet")]
    return len([n for n in found if n not in named])


def test_the_cli_verifies_diffs_lists_and_runs_on_a_bucket(s3, monkeypatch, capsys, tmp_path):
    from leanset.pipelines.cli import main
    from tests.helpers import make_imagefolder, pixel_flow

    make_imagefolder(tmp_path / "images")
    for key, value in s3.options.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3.bucket()}/s"
    store = Store(url)
    _commit(store, ["a", "b"], [True, True], None)
    _commit(store, ["a", "b", "c"], [True, False, True], 1)
    assert main(["verify", url]) == 0
    assert main(["diff", url, "1", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["entered"] == [{"sample_id": "c", "drop_reason": None}]
    url = f"s3://{s3.bucket()}/run"
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "cache"))  # the bucket's mirror
    flows = pixel_flow(tmp_path, "f", store=url)
    assert main(["run", str(flows), "--flow", "f"]) == 0  # credentials from the environment
    capsys.readouterr()
    assert main(["show", url, "--json"]) == 0  # the manifest and its promotions
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["version"] == 1
    assert main(["versions", url, "--json"]) == 0
    out = capsys.readouterr().out
    assert [r["version"] for r in json.loads(out[out.index("[") :])] == [1]
