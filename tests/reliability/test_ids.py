"""Derived ids of tabular rows are stable: reordering rows, appending rows or adding a file keeps
every existing sample's id (so `first_seen` and imported labels keep applying); identical rows are
still told apart; a run that sees most ids change says so."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.sources import load_source
from leanset.pipelines.store import Store
from tests.helpers import write_flows
from tests.reliability.conftest import TALLY

TEXTS = ["a cat", "a dog", "a cat", "the sea", "a cat", "rain"]


def _write(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"text": texts}).write_parquet(path)


def _ids(folder: Path, pattern: str = "*.parquet") -> pl.DataFrame:
    src = SourceSettings(type="files", format="parquet", data_files=[str(folder / pattern)])
    return load_source(src, ColumnSettings(label=None)).table.select("sample_id", "source")


def _by_text(table: pl.DataFrame, folder: Path) -> dict[str, set[str]]:
    texts = {}
    for path in sorted(folder.glob("*.parquet")):
        for row, text in enumerate(pl.read_parquet(path)["text"]):
            texts[f"{path.name}:{row}"] = text
    out: dict[str, set[str]] = {}
    for sid, src in table.iter_rows():
        out.setdefault(f"{src.split(':')[0]}|{texts[src]}", set()).add(sid)
    return out


@pytest.mark.parametrize(
    "change", ["reorder rows", "append rows", "add a file", "add a file first"]
)
def test_row_ids_survive_reorder_and_append(tmp_path: Path, change: str):
    data = tmp_path / "data"
    _write(data / "m.parquet", TEXTS)
    before = _by_text(_ids(data), data)
    assert len(set().union(*before.values())) == len(TEXTS)  # identical rows: distinct ids
    if change == "reorder rows":
        _write(data / "m.parquet", TEXTS[::-1])
    elif change == "append rows":
        _write(data / "m.parquet", TEXTS + ["snow", "a cat"])
    else:
        _write(data / ("a.parquet" if change == "add a file first" else "z.parquet"), ["new"])
    TALLY[f"faults injected: tabular source changed ({change})"] += 1
    after = _by_text(_ids(data), data)
    for key, ids in before.items():
        assert ids <= after[key], f"{key}: ids {ids} became {after[key]}"
    TALLY["faults survived"] += 1


def test_first_seen_survives_reorder_and_a_new_file(prefect_harness, tmp_path: Path):
    _write(tmp_path / "data" / "m.parquet", TEXTS)
    body = {
        "source": {"type": "files", "format": "parquet", "data_files": ["data/*.parquet"]},
        "columns": {"label": None},
        "dedup": {"near": False},
        "store": "store",
    }
    config = write_flows(tmp_path, rows=body)
    clean_flow(config_path=str(config), flow_name="rows")
    _write(tmp_path / "data" / "m.parquet", TEXTS[2:] + TEXTS[:2])
    _write(tmp_path / "data" / "a-new.parquet", ["first of a new file", "a cat"])
    TALLY["faults injected: tabular source reordered and grown"] += 1
    clean_flow(config_path=str(config), flow_name="rows")
    dec = Store(tmp_path / "store").read("decisions", 2)
    seen = dict(zip(dec["source"], dec["first_seen"], strict=True))
    assert all(seen[f"m.parquet:{r}"] == 1 for r in range(len(TEXTS)))
    assert seen["a-new.parquet:0"] == seen["a-new.parquet:1"] == 2
    assert Store(tmp_path / "store").manifest(2)["counts"]["new_samples"] == 2
    TALLY["faults survived"] += 1


def test_a_run_that_sees_most_ids_change_says_so(prefect_harness, tmp_path: Path, leanset_warnings):
    texts = [f"text {i}" for i in range(20)]
    frame = pl.DataFrame({"id": [f"a{i}" for i in range(20)], "text": texts})
    frame.write_parquet(tmp_path / "t.parquet")
    body = {
        "source": {"type": "files", "format": "parquet", "data_files": ["t.parquet"]},
        "columns": {"id": "id", "label": None},
        "dedup": {"near": False},
        "store": "store",
    }
    config = write_flows(tmp_path, ids=body)
    clean_flow(config_path=str(config), flow_name="ids")
    assert "most ids changed" not in leanset_warnings.text
    frame.with_columns(("b" + pl.col("id")).alias("id")).write_parquet(tmp_path / "t.parquet")
    TALLY["hostile inputs tried: every sample id changed between runs"] += 1
    clean_flow(config_path=str(config), flow_name="ids")
    assert "20 of 20 sample ids are new" in leanset_warnings.text
    assert "most ids changed" in leanset_warnings.text and "columns.id" in leanset_warnings.text
    TALLY["hostile inputs refused"] += 1
