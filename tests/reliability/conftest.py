"""Helpers for the reliability suite: child processes to kill, tree digests, tallies of faults."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_png

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


def tree_digest(root: Path) -> dict[str, tuple[int, int, str]]:
    """{relative path: (mode, mtime_ns, blake2b of bytes)} for every file under `root`."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return out


def make_imagefolder(root: Path, n: int = 24, seed: int = 0) -> Path:
    """An imagefolder of `n` distinct 16x16 images plus exact copies, near copies, leaks, junk."""
    rng = np.random.default_rng(seed)
    bases = [rng.integers(0, 256, size=(16, 16)) for _ in range(n)]
    for k, img in enumerate(bases):
        write_png(root / f"train/{'ab'[k % 2]}/img{k:03d}.png", img)
    for k in range(0, n, 6):
        write_png(root / f"train/{'ab'[k % 2]}/copy{k:03d}.png", bases[k])
        noisy = np.clip(bases[k + 1] + rng.normal(0, 3, (16, 16)), 0, 255)
        write_png(root / f"train/{'ab'[(k + 1) % 2]}/near{k:03d}.png", noisy)
        leak = np.clip(bases[k + 2] + rng.normal(0, 3, (16, 16)), 0, 255)
        write_png(root / f"test/{'ab'[k % 2]}/leak{k:03d}.png", leak)
    write_png(root / "test/a/only_test.png", rng.integers(0, 256, size=(16, 16)))
    (root / "train/a/broken.png").write_bytes(b"not an image")
    return root


class BrutePairs:
    """What `dedup.near.find_near_pairs` returns, computed by brute force (for stage tests)."""

    def __init__(self, i: np.ndarray, j: np.ndarray, sim: np.ndarray):
        self.i, self.j, self.sim = i, j, sim
        self.method, self.params = "brute", {}

    def __len__(self) -> int:
        return len(self.i)


def brute_search(emb: np.ndarray, threshold: float, **_: object) -> BrutePairs:
    """Every pair (i < j) with cosine similarity >= threshold."""
    sims = emb @ emb.T
    i, j = np.nonzero(np.triu(sims >= np.float32(threshold), k=1))
    return BrutePairs(i.astype(np.int64), j.astype(np.int64), sims[i, j])


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


def pixel_flow(folder: Path, name: str) -> Path:
    """A flows.yaml in `folder` with one flow `name`: images/ with the pixel embedder, store/."""
    from tests.conftest import flows_yaml

    body = (
        f"flows:\n  {name}:\n    source: {{type: imagefolder, path: images}}\n"
        "    embedder: {type: pixels, size: 16}\n    store: store\n"
    )
    return flows_yaml(folder, body)
