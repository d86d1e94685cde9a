"""Prefect's temporary server must not outlive the `leanset run` that started it.

Without a Prefect API, a flow run starts Prefect's temporary server as a child process; when the
run is killed (`kill -9`, the OOM killer) Prefect's exit hook never runs and the server stays,
with its memory and port. So before a flow starts, the process marks its environment with its
pid and start time (children inherit it) and starts a watchdog: a small process of this file,
standard library only, that waits for its parent to go and then ends every process still
carrying the mark. Each guarded start also ends marked processes whose parent is gone (a
watchdog that was itself killed). Linux only (it reads /proc); elsewhere nothing is done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "LEANSET_PARENT"  # environment variable: "<pid>:<start time>" of the guarded process
PROC = Path("/proc")


def guard() -> None:
    """Mark this process's future children and watch them (once per process)."""
    if not PROC.is_dir() or not sys.platform.startswith("linux"):
        return
    me = _mark_of(os.getpid())
    if me is None or os.environ.get(MARK) == me:
        return
    reap_stale()
    os.environ[MARK] = me
    env = {k: v for k, v in os.environ.items() if k != MARK}
    subprocess.Popen(  # our own interpreter running this file
        [sys.executable, "-S", str(Path(__file__).resolve()), me],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the run's process group leaves the watchdog
        close_fds=True,
    )


def reap_stale() -> list[int]:
    """End marked processes whose marking parent is gone; return their pids."""
    ended = []
    for mark, pids in _marked().items():
        pid = int(mark.split(":", 1)[0])
        if _mark_of(pid) != mark:  # the parent exited (or its pid now names another process)
            _end(pids)
            ended += pids
    return ended


def _marked() -> dict[str, list[int]]:
    """{mark: pids} of this user's processes that carry a mark."""
    found: dict[str, list[int]] = {}
    key = f"{MARK}=".encode()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:  # another user's process, or it just exited
            continue
        for item in env.split(b"\0"):
            if item.startswith(key):
                found.setdefault(item[len(key) :].decode(errors="replace"), []).append(
                    int(entry.name)
                )
    return found


def _mark_of(pid: int) -> str | None:
    """The mark of a live process, `<pid>:<start time in clock ticks>` (None when it is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    if fields[0] == "Z":  # a zombie has exited
        return None
    return f"{pid}:{fields[19]}"


def _end(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still running after `grace` seconds."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_mark_of(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _mark_of(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _watch(mark: str) -> None:
    """The watchdog: wait for the parent to go, then end what it left carrying its mark."""
    parent = int(mark.split(":", 1)[0])
    while os.getppid() == parent and _mark_of(parent) == mark:
        time.sleep(0.5)
    _end(_marked().get(mark, []))


if __name__ == "__main__":
    _watch(sys.argv[1])
