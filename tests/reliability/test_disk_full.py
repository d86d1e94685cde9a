"""A full disk: one clear message naming the store, nothing committed, no retry.

The store lives on a 3 MiB tmpfs mounted in a private mount namespace (`unshare -rm`), so the
disk really fills: Delta's Rust writer and Python's writes both see ENOSPC."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leanset.pipelines.store import StoreError, StoreFull
from tests.reliability.conftest import REPO, TALLY


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = f"mount -t tmpfs -o size=1m tmpfs {probe} && touch {probe}/x"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, check=False)
    return done.returncode == 0


def test_full_disk_says_so_once_and_commits_nothing(tmp_path: Path):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs in a private namespace here (unshare -rm)")
    disk = tmp_path / "disk"
    disk.mkdir()
    store = disk / "store"
    script = (
        f"mount -t tmpfs -o size=3m tmpfs {disk} && "
        f"exec {sys.executable} -m tests.reliability._child fill_disk {store}"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    TALLY["faults injected: disk full during a commit"] += 2
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    said = f"StoreFull: no space left on the store's disk ({store}), nothing was committed"
    # refused before writing: Delta's writer never starts, so nothing else is printed
    assert out["clearly_too_big"].startswith(said + " (about ")
    assert "MiB free); free some space and rerun" in out["clearly_too_big"]
    early = done.stderr.split("--- after clearly_too_big")[0]
    assert "panicked" not in early and "os error 28" not in early
    # the disk fills half-way through Delta's write: the same message, no Delta error text
    assert out["fills_while_writing"] == said + "; free some space and rerun"
    assert out["latest"] == 1 and out["v1_rows"] == 3000  # the previous version is intact
    assert not (store / "manifests" / "v000002.json").exists()
    TALLY["faults survived"] += 2


def test_full_disk_is_never_retried():
    from leanset.pipelines.flows import _worth_retrying

    class Failed:
        def result(self):
            raise StoreFull("no space left on the store's disk (/s), nothing was committed")

    assert issubclass(StoreFull, StoreError)
    assert _worth_retrying(None, None, Failed()) is False
