"""Connect to a Ray cluster and check it before any work, so a bad setting is one clear message.

Every way a cluster can be unusable becomes one `EngineError` naming the setting and the fix:
an address nothing answers at (a TCP probe first: Ray itself retries for minutes), `auto` with no
cluster, a token the cluster wants and this process did not send, embedding workers no node can
hold (Ray would leave them pending forever), paths a node cannot see or write, buckets it cannot
reach with its credentials, or another leanset there (one task pinned to each alive node checks
them).
"""

from __future__ import annotations

import ctypes
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leanset.pipelines.config import EngineSettings


class EngineError(ValueError):
    """The Ray engine cannot run as configured; the message names the setting and the fix."""


@dataclass
class ClusterInfo:
    """What the manifest records about the cluster a run used."""

    address: str
    ray_version: str
    nodes: int
    resources: dict[str, float]
    per_node: list[dict[str, Any]] = field(default_factory=list)
    dashboard_url: str | None = None
    job_id: str | None = None
    seconds_to_connect: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise EngineError(
            "engine.type ray: Ray is not installed here; pip install 'leanset[ray]' "
            "(the same Ray version as the cluster's)"
        ) from exc
    return ray


def _probe_tcp(host: str, port: int, timeout: float) -> str | None:
    """None when something accepts TCP connections at host:port, else why not."""
    try:
        socket.create_connection((host, port), timeout).close()
        return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def _check_reachable(address: str, timeout: float) -> None:
    """The head answers at HOST:PORT, or (auto) some cluster is there to be found."""
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        why = _probe_tcp(host, int(port), timeout)
        if why is not None:
            raise EngineError(
                f"engine.address: cannot reach the Ray cluster at {address} ({why}); is it "
                f"running (`ray status` on its head) and is port {port} open from here?"
            )
        return
    if os.environ.get("RAY_ADDRESS"):
        return
    from ray._private import services

    if not services.find_gcs_addresses() and services.find_bootstrap_address(None) is None:
        raise EngineError(
            "engine.address: 'auto' found no Ray cluster (RAY_ADDRESS is unset and no Ray head "
            "runs on this machine); start one with `ray start --head` or set engine.address "
            "to HOST:PORT"
        )


def _auth_hint() -> str:
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    return (
        f"the cluster uses token authentication and this process did not send its token "
        f"(RAY_AUTH_MODE={mode}). Set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
        f"RAY_AUTH_TOKEN_PATH) to the cluster's token before starting leanset"
    )


_GCS_WAIT = "RAY_gcs_server_port_wait_time_s"  # Ray's own (lower-case) config variable


def _init(ray: Any, address: str, metadata: dict[str, str]) -> None:
    """ray.init, every failure reworded as one EngineError (the port answered: a GCS that
    refuses us will not change its mind, so 5 one-second retries instead of Ray's 20)."""
    env = (
        {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
        if "PYTHONPATH" in os.environ
        else None
    )
    extra: dict[str, Any] = {}
    if not address.startswith("ray://"):  # Ray Client cannot carry a JobConfig
        extra["job_config"] = ray.job_config.JobConfig(metadata=metadata)
    before = os.environ.get(_GCS_WAIT)
    os.environ[_GCS_WAIT] = "5"
    try:
        ray.init(
            address=address, namespace="leanset", log_to_driver=False, runtime_env=env, **extra
        )
    except Exception as exc:  # every failure becomes one message
        chain: list[str] = []
        e: BaseException | None = exc
        while e is not None:
            chain.append(f"{type(e).__name__}: {e}")
            e = e.__cause__ or e.__context__
        text = "\n".join(chain)
        if "InvalidAuthToken" in text or "AuthenticationError" in text:
            raise EngineError(
                f"engine.address: cannot connect to {address}: {_auth_hint()}"
            ) from exc
        first = chain[0].strip().splitlines()[0][:300]
        raise EngineError(f"engine.address: cannot connect to Ray at {address}: {first}") from exc
    finally:
        if before is None:
            os.environ.pop(_GCS_WAIT, None)
        else:
            os.environ[_GCS_WAIT] = before


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's live nodes, as `ray.nodes()` lists them."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_resources(settings: EngineSettings, address: str) -> None:
    """An embedding worker must fit on some node (Ray never fails an infeasible request)."""
    nodes = alive_nodes()
    need = {"CPU": settings.cpus_per_worker, "GPU": settings.gpus_per_worker}
    if any(all(n["Resources"].get(k, 0) >= v for k, v in need.items() if v > 0) for n in nodes):
        return
    total: dict[str, float] = {}
    for n in nodes:
        for k in ("CPU", "GPU"):
            total[k] = total.get(k, 0) + n["Resources"].get(k, 0)
    have = ", ".join(f"{k} {v:g}" for k, v in sorted(total.items()))
    cpu, gpu = max(
        ((n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes),
        default=(0, 0),
    )
    key = "gpus_per_worker" if settings.gpus_per_worker > gpu else "cpus_per_worker"
    raise EngineError(
        f"engine.{key}: an embedding worker needs {need['CPU']:g} CPU and {need['GPU']:g} GPU "
        f"on one node, and no node of the cluster at {address} has that ({len(nodes)} node(s), "
        f"{have} in all; largest node CPU {cpu:g}, GPU {gpu:g}). Lower the request or add "
        f"such nodes"
    )


Buckets = dict[str, tuple[str, dict[str, str] | None, bool]]  # name: (URL, options, written)


def node_check(paths: dict[str, str], writable: list[str], buckets: Buckets) -> dict[str, Any]:
    """Runs on one node: which paths it cannot see or write, which buckets it cannot reach, and
    which leanset it imports."""
    import importlib.metadata
    import tempfile

    out: dict[str, Any] = {"host": socket.gethostname(), "missing": {}, "unwritable": {}}
    out["buckets"] = bucket_problems(buckets)
    for name, p in paths.items():
        try:
            os.stat(p)
        except OSError as exc:
            out["missing"][name] = f"{p}: {exc.strerror or exc}"
    for name in writable:
        if name in out["missing"]:
            continue
        try:
            fd, tmp = tempfile.mkstemp(prefix=".leanset-check-", dir=paths[name])
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            out["unwritable"][name] = f"{paths[name]}: {exc.strerror or exc}"
    try:
        out["leanset"] = importlib.metadata.version("leanset")
    except importlib.metadata.PackageNotFoundError:
        out["leanset"] = "not installed"
    return out


def bucket_problems(buckets: Buckets) -> dict[str, str]:
    """Why this machine cannot list (or, where its workers write, put into) each bucket."""
    from leanset.pipelines.store.errors import StoreError
    from leanset.pipelines.store.storage import ObjectStorage

    out = {}
    for name, (url, options, written) in buckets.items():
        try:
            ObjectStorage(url, options, quick=True).check_access(written)
        except StoreError as exc:
            out[name] = str(exc)
    return out


def check_paths(
    paths: dict[str, str], writable: list[str], buckets: Buckets, timeout: float
) -> None:
    """node_check on every alive node (pinned there); the first problem is raised."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0)(node_check)  # never waits for a free CPU
    nodes = alive_nodes()
    refs = [
        remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(paths, writable, buckets)
        for n in nodes
    ]
    try:
        results = ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError as exc:
        raise EngineError(
            f"engine.check_timeout_s: the path check did not finish on every node within "
            f"{timeout:g} s (a node without a free worker, or a hung filesystem mount)"
        ) from exc
    here = node_check({}, [], {})["leanset"]
    for n, r in zip(nodes, results, strict=True):
        where = f"node {n['NodeManagerAddress']} ({r['host']}, id {n['NodeID'][:8]})"
        for name, why in r["missing"].items():
            raise EngineError(
                f"{name} is not visible on {where}: {why}. Every Ray node must see the store "
                f"and the dataset at the same path (a shared filesystem mounted everywhere)"
            )
        for name, why in r["unwritable"].items():
            raise EngineError(f"{name} is not writable from {where}: {why}")
        for name, why in r["buckets"].items():
            raise EngineError(
                f"{name} cannot be used from {where}: {why}. Every Ray node needs obstore and "
                f"the bucket's credentials: set them in that node's environment (or the "
                f"cluster's runtime environment), or in flows.yaml's storage_options"
            )
        if r["leanset"] != here:
            raise EngineError(
                f"leanset on {where} is {r['leanset']}, here it is {here}: install the same "
                f"leanset (and its pinned stack) on every node"
            )


def _info(ray: Any, t0: float) -> ClusterInfo:
    nodes = alive_nodes()
    ctx = ray.get_runtime_context()
    try:
        dash = ray.worker.get_dashboard_url() or None
    except Exception:  # no dashboard on this cluster
        dash = None
    return ClusterInfo(
        address=str(ctx.gcs_address),
        ray_version=str(ray.__version__),
        nodes=len(nodes),
        resources={
            k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")
        },
        per_node=[
            {
                "ip": n["NodeManagerAddress"],
                "CPU": n["Resources"].get("CPU", 0),
                "GPU": n["Resources"].get("GPU", 0),
            }
            for n in nodes
        ],
        dashboard_url=dash,
        job_id=str(ctx.get_job_id()),
        seconds_to_connect=round(time.perf_counter() - t0, 3),
    )


MMAP_THRESHOLD = 1 << 20  # the driver's allocations over 1 MiB: their own mappings
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def map_large_allocations() -> bool:
    """Give the rest of this process's allocations over 1 MiB their own mappings, so a freed
    N-row array goes back to the system (glibc raises its bound to 32 MiB as arrays are freed;
    past it, freed arrays stay in the heap behind small live objects: at 1M rows that was
    70-140 MiB of the Ray driver's peak). False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


@contextmanager
def ray_session(
    settings: EngineSettings,
    paths: dict[str, Path],
    writable: list[str],
    metadata: dict[str, str] | None = None,
    buckets: Buckets | None = None,
) -> Iterator[ClusterInfo]:
    """Connected to the cluster and checked (resources, then `paths` and `buckets` on every
    node) before the body runs; disconnected after it (a driver whose cluster goes away is ended
    by Ray). A process already connected (ray.init by the caller) stays connected. `writable`
    names the paths every node must be able to write (created here when missing)."""
    ray = _import_ray()
    t0 = time.perf_counter()
    map_large_allocations()  # the driver works on N-row arrays the cluster's results index
    _check_reachable(settings.address, settings.connect_timeout_s)
    owned = not ray.is_initialized()
    if owned:
        _init(ray, settings.address, metadata or {})
    try:
        check_resources(settings, settings.address)
        for name in writable:  # a new store: created here, then written from every node
            paths[name].mkdir(parents=True, exist_ok=True)
        where = {k: str(v) for k, v in paths.items()}
        check_paths(where, writable, buckets or {}, settings.check_timeout_s)
        yield _info(ray, t0)
    finally:
        if owned:
            ray.shutdown()
