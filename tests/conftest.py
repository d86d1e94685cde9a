"""Test-wide setup: offline, no telemetry, Prefect and Hugging Face state in a temporary folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.helpers import write_png

if TYPE_CHECKING:
    from tests.ray_cluster import LocalCluster

_STATE = Path(tempfile.mkdtemp(prefix="leanset-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_STATE / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "HF_HOME": str(_STATE / "hf"),
        "HF_DATASETS_CACHE": str(_STATE / "hf" / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def tiny_images(tmp_path: Path) -> Path:
    """An imagefolder with known duplicates: exact copy, near copy, a train→test leak, a corrupt file.

    train/a/base0.png  + train/a/copy0.png (exact)  + train/a/near0.png (noise)
    train/b/base1.png  + test/b/leak1.png (near copy of base1)
    train/b/base2..base5.png distinct; train/a/broken.png is not an image.
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    bases = [rng.integers(0, 256, size=(16, 16)) for _ in range(6)]
    write_png(root / "train/a/base0.png", bases[0])
    write_png(root / "train/a/copy0.png", bases[0])
    write_png(root / "train/a/near0.png", np.clip(bases[0] + rng.normal(0, 3, (16, 16)), 0, 255))
    write_png(root / "train/b/base1.png", bases[1])
    write_png(root / "test/b/leak1.png", np.clip(bases[1] + rng.normal(0, 3, (16, 16)), 0, 255))
    for k in range(2, 6):
        write_png(root / f"train/b/base{k}.png", bases[k])
    (root / "train/a/broken.png").write_bytes(b"this is not a png")
    return root


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A real local Ray cluster (a hidden head: its node cannot see this process's folders),
    one per test module."""
    from tests.ray_cluster import hidden_head

    with hidden_head() as c:
        yield c


@pytest.fixture
def driver(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """This process connected to the cluster for one test."""
    import ray

    ray.init(address=cluster.address, log_to_driver=False, namespace="leanset-tests")
    try:
        yield cluster
    finally:
        ray.shutdown()
