"""A memory limit (`ulimit -v`) too small for a run: one leanset message naming the limit and the
need, instead of an allocator abort or `libgomp: Thread creation failed`; store commands that map
little still work under it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from leanset.pipelines.flows import clean_flow
from tests.helpers import make_imagefolder, pixel_flow
from tests.reliability.conftest import REPO, TALLY

GIB = 1 << 30


def _limited(gib: float, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * GIB), resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(cwd / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "leanset.pipelines.cli", *args],
        cwd=cwd,
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("gib", [1.5, 3.0])
def test_a_run_under_a_small_address_space_limit_is_one_message(tmp_path: Path, gib: float):
    make_imagefolder(tmp_path / "images")
    config = pixel_flow(tmp_path, "small")
    TALLY[f"hostile inputs tried: `ulimit -v` {gib:g} GiB"] += 1
    done = _limited(gib, "run", str(config), "--flow", "small", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    text = done.stdout + done.stderr
    assert "Traceback" not in text and "Thread creation failed" not in text
    assert f"limited to {gib:.2f} GiB (`ulimit -v`)" in done.stdout
    assert "needs about 8 GiB" in done.stdout and "ulimit -v unlimited" in done.stdout
    assert not (tmp_path / "store").exists()
    TALLY["hostile inputs refused"] += 1


def test_store_commands_still_work_under_the_limit(prefect_harness, tmp_path: Path):
    make_imagefolder(tmp_path / "images")
    clean_flow(config_path=str(pixel_flow(tmp_path, "small")), flow_name="small")
    done = _limited(1.5, "verify", str(tmp_path / "store"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 1 version(s)" in done.stdout
