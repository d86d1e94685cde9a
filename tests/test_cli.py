"""The `leanset` command as a person uses it: init, flows, --set, --dry-run, report, and the
small things (help, --version, pipes, stores that are not stores, sizes, run names)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from leanset.pipelines.cli import main, parser
from leanset.pipelines.config import ConfigError, load_flow, load_flows
from leanset.pipelines.flows import clean_flow, run_flow
from leanset.pipelines.store import Store
from tests.helpers import make_imagefolder, pixel_flow, pixel_flow_body, tree_digest, write_flows

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`python -m leanset.pipelines.cli ARGS` in a child process (`env` values of None are unset)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "leanset.pipelines.cli", *args],
        env=full,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


# ---------------------------------------------------------------- init and flows


def test_init_writes_a_commented_image_flow_that_loads(tmp_path: Path, capsys):
    images = make_imagefolder(tmp_path / "photos")
    config = tmp_path / "flows.yaml"
    assert main(["init", str(images), "--config", str(config)]) == 0
    text = config.read_text()
    assert "# " in text and "type: imagefolder" in text
    flow = load_flow(config, "photos")
    assert flow.source.path == str(images)
    assert flow.embedder and flow.embedder.type == "pixels"  # 16 px images: raw pixels
    assert flow.label_noise is not None  # class folders: labels
    assert flow.store == str(tmp_path / "stores" / "photos")
    assert "added flow photos" in capsys.readouterr().out
    # the same name again is refused, and the file is left as it was
    assert main(["init", str(images), "--config", str(config)]) == 2
    assert config.read_text() == text


def test_init_detects_text_label_split_and_id_columns(tmp_path: Path):
    rows = [
        (f"t{i}", f"My parcel number {i} has not arrived and the tracking page is empty.", q, s)
        for i, (q, s) in enumerate([("shipping", "train"), ("billing", "test")] * 20)
    ]
    pl.DataFrame(rows, schema=["ticket_id", "body", "queue", "split"], orient="row").write_csv(
        tmp_path / "tickets.csv"
    )
    config = tmp_path / "flows.yaml"
    assert main(["init", str(tmp_path / "tickets.csv"), "--config", str(config)]) == 0
    flow = load_flow(config, "tickets")
    assert flow.source.type == "files" and flow.source.format == "csv"
    assert (flow.columns.text, flow.columns.label, flow.columns.split, flow.columns.id) == (
        "body",
        "queue",
        "split",
        "ticket_id",
    )
    assert flow.embedder and flow.embedder.type == "sentence_transformers"
    assert flow.embedder.model == "sentence-transformers/all-MiniLM-L6-v2"  # not its comment


def test_init_writes_auto_thresholds_and_warns_about_classes_too_small_for_the_folds(
    tmp_path: Path, capsys
):
    images = make_imagefolder(tmp_path / "photos")
    (tmp_path / "photos/train/rare").mkdir()
    for k in range(3):
        (tmp_path / "photos/train/rare" / f"r{k}.png").write_bytes(
            (images / "train/a/img000.png").read_bytes()
        )
    config = tmp_path / "flows.yaml"
    assert main(["init", str(images), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert load_flow(config, "photos").dedup.threshold == "auto"
    assert "WARNING" in out and "'rare' (3)" in out and "n_folds=5" in out


def _photos(root: Path, n: int = 12) -> Path:
    """`n` 96 px photo-like images in two classes (larger than raw pixels are meant for)."""
    from tests.helpers import write_png

    rng = np.random.default_rng(3)
    for k in range(n):
        base = np.kron(rng.integers(0, 256, (12, 12)), np.ones((8, 8)))
        write_png(root / f"train/{'ab'[k % 2]}/p{k:02d}.png", base)
    return root


@pytest.mark.parametrize("kind", ["images", "csv"])
def test_init_offline_writes_a_flow_that_runs_as_is_without_a_network(
    prefect_harness, tmp_path: Path, kind: str, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if kind == "images":
        path = _photos(tmp_path / "photos")
    else:
        path = tmp_path / "notes.csv"
        rows = [(f"note {i % 9} about topic {i % 4}", "ab"[i % 2]) for i in range(30)]
        pl.DataFrame(rows, schema=["text", "label"], orient="row").write_csv(path)
    config = tmp_path / "flows.yaml"
    assert main(["init", str(path), "--config", str(config), "--offline"]) == 0
    name = "photos" if kind == "images" else "notes"
    flow = load_flow(config, name)
    if kind == "images":
        assert flow.embedder and flow.embedder.type == "torch"
        assert flow.embedder.factory == "leanset.pipelines.embed.models:efficientnet_lite0"
    else:
        assert flow.embedder is None and not flow.dedup.near
    capsys.readouterr()
    assert main(["run", str(config), "--flow", name]) == 0
    latest = Store(flow.store).latest()
    assert latest is not None and latest["version"] == 1


def test_init_appends_and_keeps_the_file_comments_and_flows(tmp_path: Path):
    make_imagefolder(tmp_path / "images")
    config = pixel_flow(tmp_path, "old")
    original = "# my own comment\n" + config.read_text()
    config.write_text(original)
    make_imagefolder(tmp_path / "more")
    assert main(["init", str(tmp_path / "more"), "--config", str(config)]) == 0
    assert config.read_text().startswith(original)
    assert set(load_flows(config)) == {"old", "more"}


def test_flows_lists_every_flow(tmp_path: Path, capsys):
    config = write_flows(tmp_path, a=pixel_flow_body(), b=pixel_flow_body(description="second"))
    assert main(["flows", str(config)]) == 0
    out = capsys.readouterr().out
    assert "a" in out and "second" in out and "imagefolder" in out


# ---------------------------------------------------------------- --set and did you mean


def test_set_overrides_are_checked_like_the_file(tmp_path: Path):
    config = pixel_flow(tmp_path, "tiny")
    flow = load_flow(config, "tiny", ["dedup.threshold=0.97", "dedup.keep=largest"])
    assert flow.dedup.threshold == 0.97 and flow.dedup.keep == "largest"
    assert flow.fingerprint() != load_flow(config, "tiny").fingerprint()
    with pytest.raises(
        ConfigError, match=r"dedup\.treshold: unknown key \(did you mean 'dedup\.threshold'\?\)"
    ):
        load_flow(config, "tiny", ["dedup.treshold=0.9"])
    with pytest.raises(
        ConfigError, match="--set dedup.threshold=high: dedup.threshold: expected float"
    ):
        load_flow(config, "tiny", ["dedup.threshold=high"])
    with pytest.raises(ConfigError, match=r"expected a number in \(0, 1\]"):
        load_flow(config, "tiny", ["dedup.threshold=1.5"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_flow(config, "tiny", ["dedup.threshold"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_flow(config, "tiny", ["dedup.threshold.x=1"])


def test_did_you_mean_for_flow_names_and_file_keys(tmp_path: Path):
    config = write_flows(tmp_path, photos=pixel_flow_body(dedup={"treshold": 0.9}))
    with pytest.raises(
        ConfigError, match=r"dedup\.treshold: unknown key \(did you mean 'dedup\.threshold'\?\)"
    ):
        load_flows(config)
    config = pixel_flow(tmp_path, "photos")
    with pytest.raises(ConfigError, match=r"no flow named 'photo' \(did you mean 'photos'\?\)"):
        load_flow(config, "photo")


def test_missing_source_path_is_caught_before_prefect_starts(tmp_path: Path):
    config = write_flows(
        tmp_path, tiny=pixel_flow_body(source={"type": "imagefolder", "path": "nope"})
    )
    with pytest.raises(ConfigError, match=r"flow 'tiny': source\.path: .*nope is not a folder"):
        run_flow(config, "tiny")  # no Prefect harness here: it fails before any server


# ---------------------------------------------------------------- runs: dry run, report, names


@pytest.fixture
def tiny(tmp_path: Path, tiny_images: Path) -> Path:
    return write_flows(tmp_path, tiny=pixel_flow_body(dedup={"threshold": 0.95}))


def test_dry_run_decides_reports_and_leaves_the_store_unchanged(
    prefect_harness, tiny: Path, tmp_path: Path
):
    store = tmp_path / "store"
    first = clean_flow(config_path=str(tiny), flow_name="tiny", dry_run=True)
    assert first["dry_run"] and first["version"] == 1 and first["embed"]["computed"] > 0
    # a dry run on a new store keeps only the embedding cache: no version, manifest or report
    assert [p.name for p in store.iterdir()] == ["cache"] and not Store(store).manifests()
    assert Path(first["report"]).is_file() and store not in Path(first["report"]).parents

    real = clean_flow(config_path=str(tiny), flow_name="tiny")
    assert real["embed"]["computed"] == 0  # the dry run's embeddings served the real run
    before = tree_digest(store)
    dry = clean_flow(
        config_path=str(tiny), flow_name="tiny", overrides=["dedup.threshold=0.5"], dry_run=True
    )
    assert dry["dry_run"] and dry["version"] == 2 and dry["parent"] == 1
    assert dry["counts"]["input"] == 10
    assert tree_digest(store) == before  # nothing written: no version, queue or report
    assert [m["version"] for m in Store(store).manifests()] == [1]
    page = Path(dry["report"]).read_text()
    assert "Dry run" in page and "v000001.html" in page  # the parent's report is linked
    assert "search exact at 0.5" in page  # --set reached the flow run


def test_report_command_prints_or_opens_the_path(
    prefect_harness, tiny: Path, tmp_path: Path, capsys
):
    clean_flow(config_path=str(tiny), flow_name="tiny")
    store = str(tmp_path / "store")
    assert main(["report", store]) == 0
    path = capsys.readouterr().out.strip()
    assert path.endswith("reports/v000001.html") and Path(path).is_file()
    assert main(["show", store]) == 0  # `show` names the same page
    assert f"report: {path}" in " ".join(capsys.readouterr().out.split())
    assert main(["report", store, "--version", "7"]) == 2
    assert "no version 7" in capsys.readouterr().out
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"  # a "browser" that writes down what it was asked to open
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o755)
    out = cli("report", store, "--open", env={"BROWSER": str(browser)})
    assert out.returncode == 0, out.stderr
    assert opened.read_text() == Path(path).as_uri()
    assert "opened in the default web browser" in out.stdout
    headless = {"BROWSER": None, "DISPLAY": None, "WAYLAND_DISPLAY": None}
    out = cli("report", store, "--open", env=headless)
    assert out.returncode == 0 and "not opened: no display here" in out.stdout, out.stdout


def test_versions_and_diff_tables_are_whole_when_piped(prefect_harness, tiny: Path, tmp_path: Path):
    clean_flow(config_path=str(tiny), flow_name="tiny")
    clean_flow(config_path=str(tiny), flow_name="tiny", overrides=["dedup.threshold=0.5"])
    store = str(tmp_path / "store")
    out = cli("versions", store, env={"COLUMNS": None})
    assert out.returncode == 0 and "…" not in out.stdout, out.stdout
    assert "config_hash" in out.stdout and "promoted" in out.stdout
    out = cli("diff", store, "1", "2", env={"COLUMNS": None})
    assert out.returncode == 0 and "…" not in out.stdout, out.stdout


def test_flow_runs_are_named_after_flow_and_version_and_tagged(
    prefect_harness, tiny: Path, tmp_path: Path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterTags,
    )

    flows = yaml.safe_load(tiny.read_text())
    flows["flows"]["named-run"] = flows["flows"].pop("tiny")
    tiny.write_text(yaml.safe_dump(flows))
    run_flow(tiny, "named-run")  # the harness is a Prefect API: the flow starts at once
    run_flow(tiny, "named-run")  # unchanged
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["named-run"]))
        )
        names = sorted(r.name for r in runs)
        assert names == ["named-run-v1", "named-run-v1-unchanged"]
        assert all({"leanset", "named-run", "cli"} <= set(r.tags) for r in runs)
        unchanged = next(r for r in runs if r.name.endswith("unchanged"))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[unchanged.id]))
        )
    assert len(artifacts) == 1 and len(artifacts[0].data) < 600  # one small markdown artifact


def test_unchanged_run_answers_without_starting_a_flow_run(prefect_harness, tmp_path, tiny_images):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from leanset.pipelines.core import answer_if_unchanged
    from leanset.pipelines.summary import RunSummary

    config = write_flows(tmp_path, quiet=pixel_flow_body())
    clean_flow(config_path=str(config), flow_name="quiet")
    mine = FlowRunFilter(name=FlowRunFilterName(like_="quiet"))
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs(flow_run_filter=mine)) == 1
        summary = answer_if_unchanged(load_flow(config, "quiet"), dry_run=False)
        assert isinstance(summary, RunSummary) and summary.unchanged and summary.version == 1
        assert summary.embed == {} and summary.statement == ""  # nothing carried over as done
        assert len(client.read_flow_runs(flow_run_filter=mine)) == 1


# ---------------------------------------------------------------- the small things


def test_every_argument_has_help():
    def walk(p: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{where} {name}")
            elif (
                not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
                and not action.help
            ):
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(parser(), "leanset") == []


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("leanset ")


def test_versions_on_a_folder_that_is_not_a_store_is_an_error(tmp_path: Path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["versions", str(tmp_path / "photos")]) == 2
    assert "not a leanset store" in capsys.readouterr().out


def test_show_json_into_a_closed_pipe_is_not_a_traceback(prefect_harness, tiny, tmp_path):
    clean_flow(config_path=str(tiny), flow_name="tiny")
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "leanset.pipelines.cli",
                "show",
                str(tmp_path / "store"),
                "--json",
            ],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr
    assert out.returncode == 0


def test_sizes_are_readable():
    from leanset.pipelines.cli.console import human_bytes

    assert human_bytes(0) == "0 bytes"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"


def test_served_deployments_have_a_module_entrypoint_and_tags(tmp_path: Path, monkeypatch):
    from leanset.pipelines.serve import deployments

    config = write_flows(tmp_path, nightly=pixel_flow_body(schedule={"cron": "0 2 * * *"}))
    monkeypatch.chdir(tmp_path / "..")  # the entrypoint must not depend on the current folder
    (dep,) = deployments(config)
    assert dep.entrypoint == "leanset.pipelines.flows.clean_flow"
    assert set(dep.tags) == {"leanset", "nightly", "deployment"}


@pytest.mark.slow  # Prefect's temporary server starts in the child processes
def test_console_is_quiet_and_an_unchanged_rerun_starts_no_server(tmp_path: Path, tiny_images):
    config = write_flows(tmp_path, tiny=pixel_flow_body())
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": None}
    first = cli("run", str(config), "--flow", "tiny", env=env)
    assert first.returncode == 0, first.stderr
    assert "INFO" not in first.stderr and "Finished in state" not in first.stderr
    assert first.stdout.count("Cost delta:") == 1 and "version 1 committed" in first.stdout
    again = cli("run", str(config), "--flow", "tiny", "-v", env=env)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout
    assert "Starting temporary server" not in again.stdout + again.stderr
    tried = cli(
        "run",
        str(config),
        "--flow",
        "tiny",
        "-v",
        "--dry-run",
        "--set",
        "dedup.threshold=0.9",
        env=env,
    )
    assert tried.returncode == 0, tried.stderr
    assert "Starting temporary server" in tried.stdout + tried.stderr  # -v would have shown it
    assert "dry run: version 2 would be committed" in tried.stdout
