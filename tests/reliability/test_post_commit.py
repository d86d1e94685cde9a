"""Work after the commit point is finished later: a kill or an error in the queue fill or the HTML
report leaves the version recorded as incomplete, and the next run (even an unchanged one) or
`leanset show` finishes it; the manifest itself never changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leanset.pipelines import finish
from leanset.pipelines.cli import main
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from leanset.pipelines.store.queue import read_queue
from tests.helpers import pixel_flow, write_png
from tests.reliability.conftest import TALLY


def _labeling_flow(tmp_path: Path, images: Path) -> Path:
    rng = np.random.default_rng(7)
    for k in range(6):  # a pool to pick from
        write_png(images / f"unlabeled/a/pool{k}.png", rng.integers(0, 256, size=(16, 16)))
    return pixel_flow(
        tmp_path,
        "after",
        label_noise={"policy": "flag", "n_folds": 2},
        active_learning={"budget": 3, "diversity": "none"},
    )


def _boom(*args, **kwargs):
    raise OSError("injected: the process died here")


def test_a_failed_report_is_written_by_the_next_run(
    prefect_harness, imagefolder: Path, tmp_path: Path, monkeypatch
):
    import leanset.pipelines.report.html as html

    config = _labeling_flow(tmp_path, imagefolder)
    monkeypatch.setattr(html, "write_html_report", _boom)
    with pytest.raises(OSError, match="injected"):
        clean_flow(config_path=str(config), flow_name="after")
    TALLY["faults injected: error in the HTML report after the commit"] += 1
    store = Store(tmp_path / "store")
    manifest_bytes = store.layout.manifest(1).read_bytes()
    assert store.latest()["version"] == 1 and not store.layout.report(1).exists()
    assert finish.pending_steps(store, store.latest()) == ["report"]
    queued = read_queue(store.root).height
    assert queued > 0

    monkeypatch.undo()
    again = clean_flow(config_path=str(config), flow_name="after")
    assert again["unchanged"] and again["version"] == 1
    assert (
        store.layout.report(1).is_file() and "leanset: after" in store.layout.report(1).read_text()
    )
    assert finish.pending_steps(store, store.manifest(1)) == []
    assert read_queue(store.root).height == queued  # nothing queued twice
    assert store.layout.manifest(1).read_bytes() == manifest_bytes  # the manifest never changes
    TALLY["faults survived"] += 1


def test_a_failed_queue_fill_is_finished_by_the_next_run(
    prefect_harness, imagefolder: Path, tmp_path: Path, monkeypatch
):
    import leanset.pipelines.steps as steps

    config = _labeling_flow(tmp_path, imagefolder)
    monkeypatch.setattr(steps, "enqueue", _boom)
    with pytest.raises(OSError, match="injected"):
        clean_flow(config_path=str(config), flow_name="after")
    TALLY["faults injected: error in the queue fill after the commit"] += 1
    store = Store(tmp_path / "store")
    assert read_queue(store.root).height == 0 and not store.layout.report(1).exists()
    rows = finish.queue_rows(store, store.manifest(1))
    assert rows.height > 0

    monkeypatch.undo()
    again = clean_flow(config_path=str(config), flow_name="after")
    assert again["unchanged"]
    queue = read_queue(store.root)
    assert sorted(queue["sample_id"]) == sorted(rows["sample_id"])
    assert set(queue["version"].to_list()) == {1}
    assert store.layout.report(1).is_file()
    TALLY["faults survived"] += 1


def test_leanset_show_finishes_an_incomplete_version(
    prefect_harness, imagefolder: Path, tmp_path: Path, monkeypatch, capsys
):
    import leanset.pipelines.report.html as html

    config = _labeling_flow(tmp_path, imagefolder)
    real = html.write_html_report
    monkeypatch.setattr(html, "write_html_report", _boom)
    with pytest.raises(OSError):
        clean_flow(config_path=str(config), flow_name="after")
    TALLY["faults injected: error in the HTML report after the commit"] += 1
    monkeypatch.setattr(html, "write_html_report", real)
    store = Store(tmp_path / "store")
    assert main(["show", str(store.root)]) == 0
    assert "finished what its run left undone: report" in capsys.readouterr().out
    assert store.layout.report(1).is_file()
    assert finish.pending_steps(store, store.manifest(1)) == []
    assert main(["show", str(store.root)]) == 0
    assert "left undone" not in capsys.readouterr().out
    TALLY["faults survived"] += 1


def test_an_unchanged_cli_run_without_a_prefect_api_finishes_the_queue_and_report(
    prefect_harness, imagefolder: Path, tmp_path: Path, monkeypatch
):
    """`leanset run` with no PREFECT_API_URL answers "unchanged" without starting Prefect; it still
    fills the queue and writes the report a kill after the commit left undone."""
    import leanset.pipelines.steps as steps
    from tests.test_cli import cli

    config = _labeling_flow(tmp_path, imagefolder)
    monkeypatch.setattr(steps, "enqueue", _boom)
    with pytest.raises(OSError, match="injected"):
        clean_flow(config_path=str(config), flow_name="after")
    TALLY["faults injected: error in the queue fill after the commit (unchanged CLI run)"] += 1
    store = Store(tmp_path / "store")
    rows = finish.queue_rows(store, store.manifest(1))
    assert read_queue(store.root).height == 0 and rows.height > 0
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": None}
    again = cli("run", str(config), "--flow", "after", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert '"unchanged": true' in again.stdout
    assert sorted(read_queue(store.root)["sample_id"]) == sorted(rows["sample_id"])
    assert store.layout.report(1).is_file()
    assert finish.pending_steps(store, store.manifest(1)) == []
    TALLY["faults survived"] += 1
