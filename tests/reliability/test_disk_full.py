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


def test_full_disk_after_the_commit_says_the_version_is_committed(tmp_path: Path):
    """The report write hit ENOSPC after the commit: three tracebacks and rc 1, although the
    version was committed. Now: one warning naming what is pending, rc 0; the next run (disk
    freed, input unchanged) writes the report."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs in a private namespace here (unshare -rm)")
    from tests.helpers import make_imagefolder, pixel_flow

    disk = tmp_path / "disk"
    disk.mkdir()
    make_imagefolder(tmp_path / "images")
    config = pixel_flow(tmp_path, "full", store=str(disk / "store"))
    script = (
        f"mount -t tmpfs -o size=8m tmpfs {disk} && exec {sys.executable} -m "
        f"tests.reliability._child full_after_commit {config} full {disk / 'ballast'}"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    TALLY["faults injected: disk full after the commit (report write)"] += 1
    assert done.returncode == 0, done.stderr
    err, _, later = done.stderr.partition("--- first run rc=")
    out = done.stdout.split("--- first run rc=")[0]
    assert later.startswith("0"), done.stderr
    assert "Traceback" not in err and "Error" not in err, err
    assert err.count("Version 1 is committed, but no space is left") == 1
    assert "for its report" in err and "the next `leanset run`" in err
    assert "version 1 committed" in out
    second = json.loads(done.stdout.split("--- first run rc=0\n")[1])
    assert second["unchanged"] and second["version"] == 1 and second["report"]
    assert "--- second run rc=0" in later
    TALLY["faults survived"] += 1
