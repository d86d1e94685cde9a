"""A store on Azure Blob storage (``az://``) against a real Azure Blob API server, Azurite, started
here: the same commit point (a conditional PUT), the same decisions as on a folder. Skipped where
Azurite is not installed (`.ci/run` installs it; elsewhere set LEANSET_AZURITE_BLOB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.config import load_flow
from leanset.pipelines.core import run_core
from leanset.pipelines.store import Store, StoreConflict
from leanset.pipelines.store.verify import verify_store
from tests import azurite_server
from tests.azurite_server import Azurite
from tests.helpers import make_imagefolder, pixel_flow_body, write_flows, write_png

REPO = Path(__file__).resolve().parents[1]
EXECUTABLE = azurite_server.find_executable(REPO)

pytestmark = [
    pytest.mark.skipif(EXECUTABLE is None, reason="Azurite is not installed (npm azurite)"),
]
pytest.importorskip("obstore")


@pytest.fixture(scope="module")
def azure() -> Iterator[Azurite]:
    assert EXECUTABLE is not None
    server = azurite_server.start(EXECUTABLE)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "machine-1"))


def _decisions(store: Store) -> pl.DataFrame:
    table = store.read("decisions").drop("first_seen", "run_id", strict=False)
    return table.sort("sample_id")


def test_a_run_on_an_azure_store_decides_as_on_a_folder(azure, tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "images")
    url = f"az://{azure.container()}/stores/photos"
    body = pixel_flow_body(store=url, storage_options=azure.options)
    config = write_flows(tmp_path, local=pixel_flow_body(), azure=body)
    run_core(load_flow(config, "local"))
    assert run_core(load_flow(config, "azure")).summary.version == 1
    remote = Store(url, azure.options)
    assert _decisions(remote).equals(_decisions(Store(tmp_path / "store")))
    assert run_core(load_flow(config, "azure")).summary.unchanged
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "machine-2"))
    write_png(tmp_path / "images/train/a/new.png", np.full((16, 16), 90))
    assert run_core(load_flow(config, "azure")).summary.version == 2
    assert remote.manifest(2)["embed"]["computed"] == 1  # the container's shards were pulled
    run_core(load_flow(config, "local"))
    assert _decisions(remote).equals(_decisions(Store(tmp_path / "store")))
    assert verify_store(url, azure.options).ok


def test_a_second_commit_on_the_same_parent_loses_on_azure(azure):
    url = f"az://{azure.container()}/s"
    ids = ["a", "b"]
    frame = pl.DataFrame({"sample_id": ids, "kept": [True, True]}).with_columns(
        pl.lit(None, dtype=pl.Utf8).alias("drop_reason")
    )
    pairs = pl.DataFrame({"i": [0], "j": [1], "sim": [0.95]})

    def commit(parent: int | None) -> dict:
        store = Store(url, azure.options)
        return store.commit(frame.select("sample_id"), frame, {"counts": {}}, parent, pairs=pairs)

    assert commit(None)["version"] == 1
    with pytest.raises(StoreConflict, match="version 1 was committed by another run"):
        commit(None)
    assert [m["version"] for m in Store(url, azure.options).manifests()] == [1]
