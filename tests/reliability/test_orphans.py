"""`kill -9` of `leanset run` must not leave Prefect's temporary server running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leanset.pipelines.orphans import MARK, reap_stale
from tests.helpers import pixel_flow
from tests.reliability.conftest import REPO, TALLY

pytestmark = pytest.mark.slow  # starts Prefect's temporary server and kills processes

SERVER = b"prefect.server.api.server:create_app"


def children(pid: int) -> list[int]:
    """Live child processes of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            out.append(int(entry.name))
    return out


def is_server(pid: int) -> bool:
    try:
        return SERVER in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(what, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(step)
    return None


def start_run(tmp_path: Path) -> subprocess.Popen:
    from tests.helpers import make_imagefolder

    make_imagefolder(tmp_path / "images", n=12)
    config = pixel_flow(tmp_path, "tiny")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", MARK)}
    env |= {"PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect")}
    return subprocess.Popen(
        [sys.executable, "-m", "leanset.pipelines.cli", "run", str(config), "--flow", "tiny"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_run_takes_its_temporary_server_with_it(tmp_path: Path):
    run = start_run(tmp_path)
    server = None
    try:
        server = wait_until(lambda: next((p for p in children(run.pid) if is_server(p)), None), 240)
        assert server, "the run never started Prefect's temporary server"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        TALLY["faults injected: kill -9 of leanset run with its temporary server up"] += 1
        gone = wait_until(lambda: not alive(server), timeout=20)
        assert gone, f"Prefect's temporary server (pid {server}) outlived the killed run"
    finally:
        if run.poll() is None:
            run.kill()
        if server and alive(server):  # leave nothing behind, even when the test fails
            os.kill(server, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stale_marked_process_is_reaped_at_the_next_start(tmp_path: Path):
    # a process marked by a parent that no longer exists (its watchdog was killed too)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, MARK: f"{dead.pid}:1"},
    )
    try:
        assert wait_until(lambda: alive(stale.pid), 5)
        assert stale.pid in reap_stale()
        stale.wait(timeout=10)
        TALLY["faults injected: orphan left by a killed watchdog"] += 1
    finally:
        if stale.poll() is None:
            stale.kill()
