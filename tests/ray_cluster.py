"""A real local Ray cluster for tests and benchmarks: `ray start --head --block` in its own session.

`--block` keeps the `ray start` process alive as the parent of the head's daemons; on SIGTERM it
stops all of them within seconds. `ray stop` is never used: it kills every Ray process of the
machine by name, other people's clusters included. Each cluster gets its own short `--temp-dir`
(Ray's socket paths under it must stay under 108 bytes), a free GCS, client and dashboard port,
a small object store and its own random auth token, passed through the environment (Ray 2.60
wants a token; a driver connecting to an explicit address sends it only with RAY_AUTH_MODE=token).
With `hide`, the head runs in its own mount namespace with an empty tmpfs over that folder: the
cluster's nodes cannot see what the driver sees there (root and `unshare` needed).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

RAY_BIN = str(Path(sys.executable).with_name("ray"))


def _die_with_parent() -> None:
    """Linux: `ray start` gets SIGTERM when the test process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux (no libc.so.6 or no prctl): the test's own
        return  # teardown stops the cluster; only a killed test process can leave it behind


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def use_token_auth() -> None:
    """This process and the clusters it starts share one random token (Ray caches RAY_AUTH_MODE
    at import: refreshed here the way Ray's own test helpers do when ray is imported already)."""
    changed = os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN")
    if changed:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "warning")
    if changed and "ray" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def can_hide() -> bool:
    """Whether a head can run with a folder hidden from it (root and unshare)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@dataclass
class LocalCluster:
    """A head started by `ray start ... --block`; stop() ends it and everything it started."""

    port: int
    temp_dir: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    hidden: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def descendants(self) -> list[int]:
        """Pids of every process this cluster started (from /proc: parent links)."""
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [p.pid for p in self.procs]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def worker_pids(self, title: str) -> list[int]:
        """Pids of this cluster's processes whose title starts with `title` (e.g. ray::EmbedWorker)."""
        found = []
        for pid in self.descendants():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if cmd.startswith(title):
                found.append(pid)
        return found

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM each `ray start` (it drains its daemons), then SIGKILL what is left."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.hidden:
            shutil.rmtree(self.hidden, ignore_errors=True)


@contextlib.contextmanager
def hidden_head() -> Iterator[LocalCluster]:
    """A 2-CPU head with a folder hidden from it, for a test module; on exit this process's Ray
    connection is shut down and the cluster stopped."""
    use_token_auth()  # before the first `import ray` of this process
    c = start_head(num_cpus=2, object_store_mb=256, hide=True)
    try:
        yield c
    finally:
        import ray

        ray.shutdown()
        c.stop()


def start_head(
    num_cpus: int = 2, object_store_mb: int = 256, hide: bool = False, timeout: float = 180
) -> LocalCluster:
    """Start a head node; return once it reports started. On a loaded machine `ray start` now
    and then gives up ("The current node timed out during startup"): tried once more then."""
    try:
        return _start_head(num_cpus, object_store_mb, hide, timeout)
    except RuntimeError as exc:
        if "timed out during startup" not in str(exc):
            raise
        return _start_head(num_cpus, object_store_mb, hide, timeout)


def _start_head(num_cpus: int, object_store_mb: int, hide: bool, timeout: float) -> LocalCluster:
    use_token_auth()
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    c = LocalCluster(free_port(), temp_dir)
    args = [
        RAY_BIN,
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--port",
        str(c.port),
        "--num-cpus",
        str(num_cpus),
        "--object-store-memory",
        str(object_store_mb << 20),
        "--temp-dir",
        temp_dir,
        "--include-dashboard",
        "false",
        "--ray-client-server-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
    ]
    if hide and can_hide():
        c.hidden = tempfile.mkdtemp(prefix="lshide-", dir="/tmp")
        inner = f'mount -t tmpfs none {c.hidden} && exec "$@"'
        args = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner, "sh", *args]
    log_path = Path(temp_dir) / "head.log"
    with open(log_path, "ab") as log:
        c.procs.append(
            subprocess.Popen(
                args,
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        )
    atexit.register(c.stop)
    deadline = time.monotonic() + timeout
    while b"Ray runtime started" not in log_path.read_bytes():
        if c.procs[0].poll() is not None or time.monotonic() > deadline:
            text = log_path.read_text()[-3000:]
            c.stop()
            raise RuntimeError(f"ray start --head failed:\n{text}")
        time.sleep(0.1)
    return c


def kill_one_worker_when(
    cluster: LocalCluster, ready: Callable[[], bool], name: str = "ray::EmbedWorker"
) -> tuple[threading.Thread, list[int]]:
    """A thread that SIGKILLs one worker of `cluster` named `name` once `ready()` holds (for a
    test of a run killed part way); the pids it killed come back in the list."""
    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if ready():
                pids = cluster.worker_pids(name)
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed
