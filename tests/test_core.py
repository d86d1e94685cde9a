"""One run core: the CLI, the Prefect flow and the Prefect-free core decide the same on the same
data, and the core runs with no Prefect imported."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.config import load_flow
from leanset.pipelines.core import RunResult, run_core
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from tests.helpers import write_flows

ROOT = Path(__file__).resolve().parents[1]


def digits_body(store: str) -> dict:
    """Dedup, label noise and a labeling queue over precomputed vectors."""
    return {
        "source": {"type": "files", "format": "parquet", "data_files": ["digits.parquet"]},
        "columns": {"id": "id", "embedding": "emb", "label": "label"},
        "embedder": {"type": "precomputed"},
        "dedup": {"threshold": 0.995},
        "label_noise": {"policy": "drop"},
        "active_learning": {"budget": 10, "strategy": "margin"},
        "store": store,
    }


@pytest.fixture
def digits_parquet(tmp_path: Path) -> Path:
    """600 sklearn digits as vectors, with planted copies, 5% flipped labels and 60 unlabeled."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(3)
    x, y = x[:600].astype(np.float32), y[:600]
    x[500:520] = x[:20]  # exact copies
    labels = y.astype(str).astype(object)
    for i in rng.choice(np.arange(20, 540), 26, replace=False):
        labels[i] = str((y[i] + 1) % 10)
    labels[540:] = None
    path = tmp_path / "digits.parquet"
    pl.DataFrame(
        {"id": [f"d{i:04d}" for i in range(600)], "emb": list(x), "label": list(labels)},
        schema={"id": pl.Utf8, "emb": pl.List(pl.Float32), "label": pl.Utf8},
    ).write_parquet(path)
    return path


def _decisions(store: Path) -> pl.DataFrame:
    return Store(store).read("decisions").sort("sample_id")


def test_cli_flow_core_and_api_decide_the_same(prefect_harness, tmp_path, digits_parquet):
    import leanset
    from leanset.pipelines.cli import main

    config = write_flows(
        tmp_path, cli=digits_body("s-cli"), flow=digits_body("s-flow"), core=digits_body("s-core")
    )
    assert main(["run", str(config), "--flow", "cli"]) == 0
    clean_flow(config_path=str(config), flow_name="flow")
    result = run_core(load_flow(config, "core"))
    assert isinstance(result, RunResult) and result.summary.version == 1
    assert result.cost is not None and result.cost.samples_before == 600
    body = digits_body("s-api")
    api = leanset.clean(
        digits_parquet,
        id="id",
        label="label",
        embeddings="emb",
        store=tmp_path / "s-api",
        **{k: body[k] for k in ("embedder", "dedup", "label_noise", "active_learning")},
    )
    assert api.committed and api.version == 1
    cli, flow, core = (_decisions(tmp_path / s) for s in ("s-cli", "s-flow", "s-core"))
    assert api.decisions.sort("sample_id").equals(cli) and _decisions(tmp_path / "s-api").equals(
        cli
    )
    assert cli.height == 600 and cli["label_issue"].fill_null(False).sum() > 0
    assert cli["drop_reason"].value_counts().height >= 2  # duplicates and label issues decided
    assert cli.equals(flow) and cli.equals(core)
    assert result.decisions is not None and result.decisions.sort("sample_id").equals(core)
    queues = [Store(tmp_path / s).layout.root for s in ("s-cli", "s-flow", "s-core", "s-api")]
    from leanset.pipelines.store.queue import read_queue

    picked = [read_queue(q).sort("sample_id")["sample_id"].to_list() for q in queues]
    assert picked[0] and picked[0] == picked[1] == picked[2] == picked[3]


def test_the_core_runs_without_prefect(tmp_path, digits_parquet):
    config = write_flows(tmp_path, core=digits_body("store"))
    code = (
        "import sys\n"
        "from leanset.pipelines.config import load_flow\n"
        "from leanset.pipelines.core import run_core\n"
        f"r = run_core(load_flow({str(config)!r}, 'core'))\n"
        "assert r.summary.version == 1, r.summary\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [m["version"] for m in Store(tmp_path / "store").manifests()] == [1]
