"""A store on a read-only mount: `run` refuses before any work, and `queue export` / `queue import`
refuse, each with one message naming the store, no traceback, nothing changed.

The store is bind-mounted read-only in a private mount namespace (`unshare -rm`): the tests run as
root, for whom a chmod alone does not stop a write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leanset.pipelines.flows import clean_flow
from tests.helpers import make_imagefolder, pixel_flow, tree_digest, write_png
from tests.reliability.conftest import REPO, TALLY
from tests.reliability.test_labelstudio import task


def _can_remount(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = f"mount --bind {probe} {probe} && mount -o remount,ro,bind {probe}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, check=False)
    return done.returncode == 0


def read_only_cli(store: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`leanset ARGS` with `store` mounted read-only for that process only."""
    if not _can_remount(tmp_path):
        pytest.skip("cannot remount a folder read-only in a private namespace (unshare -rm)")
    leanset = " ".join([sys.executable, "-m", "leanset.pipelines.cli", *args])
    script = f"mount --bind {store} {store} && mount -o remount,ro,bind {store} && exec {leanset}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def committed(prefect_harness, tmp_path: Path) -> tuple[Path, Path]:
    images = make_imagefolder(tmp_path / "images")
    rng = np.random.default_rng(7)
    for k in range(6):
        write_png(images / f"unlabeled/a/pool{k}.png", rng.integers(0, 256, size=(16, 16)))
    config = pixel_flow(tmp_path, "ro", active_learning={"budget": 3, "diversity": "none"})
    clean_flow(config_path=str(config), flow_name="ro")
    return config, tmp_path / "store"


def _one_message(done: subprocess.CompletedProcess, store: Path) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"store {store} cannot be written" in done.stdout
    assert "Read-only file system" in done.stdout
    TALLY["hostile inputs refused"] += 1


def test_run_on_a_read_only_store_refuses_before_the_work(committed, tmp_path: Path):
    config, store = committed
    write_png(tmp_path / "images/train/a/new.png", np.full((16, 16), 77))  # not unchanged
    before = tree_digest(store)
    TALLY["hostile inputs tried: run on a read-only store"] += 1
    done = read_only_cli(store, tmp_path, "run", str(config), "--flow", "ro")
    _one_message(done, store)
    assert "embedded" not in done.stdout and "Starting temporary server" not in done.stderr
    assert tree_digest(store) == before


@pytest.mark.parametrize("command", ["export", "import"])
def test_queue_export_and_import_on_a_read_only_store_are_one_message(
    committed, tmp_path: Path, command: str
):
    _, store = committed
    before = tree_digest(store)
    TALLY[f"hostile inputs tried: queue {command} on a read-only store"] += 1
    if command == "export":
        out = str(tmp_path / "tasks.json")
        args = ["queue", "export", str(store), "--format", "label-studio", "--out", out]
    else:
        answers = tmp_path / "answers.json"
        answers.write_text(json.dumps([task("nobody")]))
        args = ["queue", "import", str(store), str(answers)]
    _one_message(read_only_cli(store, tmp_path, *args), store)
    assert tree_digest(store) == before
