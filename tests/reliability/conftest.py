"""Helpers for the reliability suite: child processes to kill, tree digests, tallies of faults."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import make_imagefolder

REPO = Path(__file__).resolve().parents[2]

# What the suite did, printed at the end of the run: faults injected and survived, hostile inputs
# refused or skipped, invariant examples generated.
TALLY: Counter[str] = Counter()


def pytest_terminal_summary(terminalreporter) -> None:
    if TALLY:
        terminalreporter.write_sep("-", "reliability tally")
        for key in sorted(TALLY):
            terminalreporter.write_line(f"{key}: {TALLY[key]}")


# ---------------------------------------------------------------- child processes


def spawn(mode: str, *args: str | os.PathLike) -> subprocess.Popen:
    """Start `python -m tests.reliability._child MODE ARGS...` in the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._child", mode, *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90.0) -> str:
    """Wait until the child writes `path` (its "I am at the kill point" marker)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"child exited ({proc.returncode}) before {path.name}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"child did not reach {path.name} in {timeout} s")
        time.sleep(0.01)
    return path.read_text()


def kill9(proc: subprocess.Popen, fault: str) -> None:
    """SIGKILL the child (no cleanup handlers run) and count the injected fault."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    TALLY[f"faults injected: {fault}"] += 1


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """Wait for a child that should succeed; return its stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return out


# ---------------------------------------------------------------- data and digests


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "images")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def leanset_warnings():
    """Warnings of the `leanset` loggers (caplog loses them when Prefect configures logging)."""
    handler = _Records()
    logger = logging.getLogger("leanset")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
