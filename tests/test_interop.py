"""README's cleanlab and FiftyOne snippets, run as written on a real leanset export.

FiftyOne cannot share leanset's environment (it pins starlette below what Prefect's server
uses), so its snippet runs in the Python that `LEANSET_FIFTYONE_PYTHON` names, and is skipped
without one."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import polars as pl
import pytest

from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from leanset.pipelines.store.export import ExportOptions, export_version
from tests.helpers import make_imagefolder, write_flows

README = Path(__file__).resolve().parents[1] / "README.md"
FLOW = {
    "source": {"type": "imagefolder", "path": "images"},
    "embedder": {"type": "pixels", "size": 16},
    "label_noise": {"policy": "flag", "n_folds": 3},
    "store": "store",
}


def snippet(marker: str) -> str:
    """The README's python block that contains `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README has {len(found)} python blocks with {marker!r}"
    return found[0]


@pytest.fixture
def store(prefect_harness, tmp_path: Path) -> Store:
    make_imagefolder(tmp_path / "images", n=36)
    clean_flow(config_path=str(write_flows(tmp_path, f=FLOW)), flow_name="f")
    return Store(tmp_path / "store")


def test_readme_datalab_snippet_runs_on_the_hf_export(store: Store, tmp_path: Path, capsys):
    out = export_version(
        store,
        None,
        "hf",
        tmp_path / "clean-hf",
        options=ExportOptions(extras=("embeddings", "pred_probs")),
    )
    code = snippet("from cleanlab import Datalab").replace('"clean-hf"', repr(str(out)))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "label" in printed and "num_issues" in printed


def test_readme_fiftyone_snippet_sees_every_group(store: Store, tmp_path: Path):
    parquet = export_version(
        store,
        None,
        "parquet",
        tmp_path / "decisions.parquet",
        decisions=True,
        options=ExportOptions(extras=("embeddings",)),
    )
    decisions = pl.read_parquet(parquet)
    unreadable = decisions["error"].is_not_null()
    assert unreadable.any() and decisions.filter(unreadable)["embedding"].null_count() > 0
    assert decisions.filter(~unreadable)["embedding"].null_count() == 0
    python = os.environ.get("LEANSET_FIFTYONE_PYTHON")
    if not python:
        pytest.skip("set LEANSET_FIFTYONE_PYTHON to a Python with fiftyone installed")
    code = (
        snippet("import fiftyone")
        .replace('"data/demo/images"', repr(str(tmp_path / "images")))
        .replace('"decisions.parquet"', repr(str(parquet)))
        .replace('fo.Dataset("leanset-demo")', "fo.Dataset()")
    )
    env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}
    env["FIFTYONE_DATABASE_DIR"] = str(tmp_path / "fiftyone-db")
    done = subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    groups = decisions["dup_group"].drop_nulls().n_unique()
    dropped = int((~decisions["kept"]).sum())
    assert f"{groups} duplicate groups; {dropped} samples dropped" in done.stdout


def test_readme_installs_label_studio_exactly_as_ci_does_with_the_pins_that_make_it_start():
    """README's Label Studio install names the version and `sentry-sdk<3` (3.x stops `label-studio
    start`), and `.ci/run`, whose slow tests use that server, installs the same pins."""
    root = Path(__file__).resolve().parents[1]
    pins = re.compile(r"pip install ('label-studio==[^']+'(?: '[^']+')*)")
    readme = pins.findall((root / "README.md").read_text())
    ci = pins.findall((root / ".ci/run").read_text())
    assert readme and ci, "both must install Label Studio with pip"
    assert set(readme) == set(ci), (readme, ci)
    assert all("'sentry-sdk<3'" in found for found in readme)
