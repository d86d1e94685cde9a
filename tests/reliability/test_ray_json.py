"""`leanset run --json` prints only JSON on stdout even when a Ray worker dies mid-run: Ray's
"worker died" lines go to stderr (slow: a local Ray cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, TALLY
from tests.test_engine_ray import (  # noqa: F401  (fixtures)
    _config,
    _kill_one_worker_after_first_shard,
    _ray_engine,
    images,
)

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def test_run_json_stays_json_when_a_ray_worker_dies(cluster, images, tmp_path: Path):  # noqa: F811
    store = tmp_path / "store"
    cfg = _config(tmp_path, images, store, _ray_engine(cluster))
    thread, killed = _kill_one_worker_after_first_shard(cluster, store / "cache")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "leanset.pipelines.cli", "run", str(cfg), "--flow", "f", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    thread.join(1)
    TALLY["faults injected: Ray worker killed during `run --json`"] += 1
    assert killed, "no embedding worker was killed"
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert summary["version"] == 1 and summary["counts"]
    TALLY["faults survived"] += 1
