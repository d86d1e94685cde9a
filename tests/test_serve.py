"""`leanset serve` against a real Prefect server started here; runs go through the deployment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from leanset.pipelines.store import Store
from tests.helpers import pixel_flow_body, write_flows, write_png

FLOWS = {
    "nightly": pixel_flow_body(
        description="tiny nightly cleaning",
        dedup={"threshold": 0.95},
        schedule={"interval_minutes": 1440, "timezone": "Europe/Paris"},
    ),
    "adhoc": pixel_flow_body(embedder={"type": "pixels"}, store="store2"),
}

TRIGGER = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

with get_client(sync_client=True) as c:
    dep = c.read_deployment_by_name("leanset-clean/nightly")
    sched = [s.schedule.model_dump(mode="json") for s in dep.schedules]
run = run_deployment("leanset-clean/nightly", timeout=240, poll_interval=1)
print(json.dumps({"state": run.state.type.value, "parameters": dep.parameters, "schedules": sched}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on loopback, with its own PREFECT_HOME (schedules need it)."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
    }
    log = home / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health", 120, proc, log)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _trigger(env: dict, cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", TRIGGER],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a real `prefect server start` and `leanset serve` in child processes
def test_served_deployment_runs_and_second_run_embeds_only_new(
    prefect_server, tmp_path, tiny_images
):
    config = write_flows(tmp_path, **FLOWS)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "leanset.pipelines.cli", "serve", str(config)],
            env=prefect_server,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        first = _trigger_when_served(prefect_server, tmp_path, serve, log)
        assert first["state"] == "COMPLETED", log.read_text()[-3000:]
        assert first["parameters"] == {"config_path": str(config), "flow_name": "nightly"}
        assert first["schedules"][0]["interval"] == 86400.0
        assert first["schedules"][0]["timezone"] == "Europe/Paris"

        write_png(
            tiny_images / "train/b/added.png", np.random.default_rng(3).integers(0, 256, (16, 16))
        )
        write_png(
            tiny_images / "test/a/added.png", np.random.default_rng(4).integers(0, 256, (16, 16))
        )
        second = _trigger(prefect_server, tmp_path)
        assert second["state"] == "COMPLETED", log.read_text()[-3000:]
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    manifests = Store(tmp_path / "store").manifests()
    assert [m["version"] for m in manifests] == [1, 2]
    assert manifests[0]["embed"]["computed"] == 8
    assert manifests[1]["embed"]["computed"] == 2
    assert manifests[1]["embed"]["cached"] == 8
    assert manifests[1]["counts"]["new_samples"] == 2
    assert manifests[1]["search"]["incremental"]
    assert "adhoc" not in log.read_text()  # only scheduled flows are served


def _trigger_when_served(env, cwd, serve, log, seconds: float = 120) -> dict:
    """The deployment appears once `leanset serve` has registered it; then trigger a run."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise RuntimeError(f"leanset serve exited:\n{log.read_text()[-3000:]}")
        if "serving" in log.read_text() and "leanset-clean/nightly" in log.read_text():
            return _trigger(env, cwd)
        time.sleep(0.5)
    raise TimeoutError(f"deployment not served after {seconds} s:\n{log.read_text()[-3000:]}")


def test_serve_without_scheduled_flows_is_a_clear_error(tmp_path):
    from leanset.pipelines.config import ConfigError
    from leanset.pipelines.serve import scheduled_flows

    config = write_flows(
        tmp_path, a={"source": {"type": "hub", "name": "x"}, "store": "s", "dedup": {"near": False}}
    )
    with pytest.raises(ConfigError, match="no flow to serve"):
        scheduled_flows(config)


@pytest.mark.slow  # a real server, `leanset serve --pool` and a Prefect worker in child processes
def test_work_pool_deployment_runs_on_a_worker_in_another_folder(
    prefect_server, tmp_path, tiny_images
):
    repo = str(Path(__file__).resolve().parents[1])
    env = {**prefect_server, "PYTHONPATH": repo}
    config = write_flows(tmp_path, **FLOWS)
    pool = ["-m", "prefect", "work-pool", "create", "leanset-pool", "--type", "process"]
    made = subprocess.run([sys.executable, *pool], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    registered = subprocess.run(
        [
            sys.executable,
            "-m",
            "leanset.pipelines.cli",
            "serve",
            str(config),
            "--pool",
            "leanset-pool",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert registered.returncode == 0, registered.stderr[-3000:]
    assert "leanset-clean/nightly is registered with work pool leanset-pool" in registered.stdout
    elsewhere = tmp_path / "elsewhere"  # the worker runs from a folder unrelated to the flows
    elsewhere.mkdir()
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "leanset-pool"],
            env=env,
            cwd=elsewhere,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        run = _trigger(env, elsewhere)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert run["state"] == "COMPLETED", log.read_text()[-3000:]
    assert [m["version"] for m in Store(tmp_path / "store").manifests()] == [1]
