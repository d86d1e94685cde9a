"""The labeling loop against a real Label Studio server on 127.0.0.1: `leanset queue push` twice
(nothing duplicated), the task images served, two annotators and a skip, `leanset queue pull`
twice (only what is new), and the next version carrying the answers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.cli import main
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.labelstudio import connect
from leanset.pipelines.store import Store
from leanset.pipelines.store.queue import read_answers, read_queue
from tests import labelstudio_server as ls
from tests.helpers import write_flows, write_png

# the server's first start (Django migrations) is most of the time: 1-2 min, far more when busy
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
PROJECT = "leanset live test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    exe = ls.find_executable(Path(__file__).resolve().parents[1])
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install Label Studio (.ls-venv or ${ls.EXECUTABLE_ENV})")
        pytest.skip(f"Label Studio is not installed (set {ls.EXECUTABLE_ENV})")
    with ls.running(exe, tmp_path_factory.mktemp("label-studio")) as running:
        yield running


def _dataset(root: Path) -> None:
    """Two classes of striped images (labeled), a few with wrong labels, an unlabeled pool."""
    rng = np.random.default_rng(0)
    for k in range(40):
        cls = "ab"[k % 2]
        base = np.tile(np.arange(16) * (8 if cls == "a" else 3), (16, 1))
        image = np.clip(base.T if cls == "a" else base, 0, 255) + rng.normal(0, 20, (16, 16))
        label = cls if k >= 4 else "ba"[k % 2]  # four flipped labels
        write_png(root / f"train/{label}/img {k:02d}#.png", np.clip(image, 0, 255))
    for k in range(12):
        image = rng.integers(0, 256, (16, 16))
        write_png(root / f"unlabeled/a/pool{k:02d}.png", image)


FLOW = {
    "source": {"type": "imagefolder", "path": "photos"},
    "embedder": {"type": "pixels", "size": 16},
    "dedup": {"threshold": 0.999},
    "label_noise": {"policy": "flag", "n_folds": 3},
    "active_learning": {"budget": 5, "diversity": "none"},
    "store": "store",
}


def test_push_annotate_skip_pull_and_the_next_version(prefect_harness, server, monkeypatch, capsys):
    import requests

    folder = server.document_root / "work"
    _dataset(folder / "photos")
    config = write_flows(folder, live=FLOW)
    clean_flow(config_path=str(config), flow_name="live")
    store = Store(folder / "store")
    waiting = read_queue(store.root)
    assert waiting.height >= 5
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(server.document_root))
    push = ["queue", "push", str(store.root), "--url", server.url, "--project", PROJECT]
    assert main(push) == 0
    assert f"{waiting.height} task(s) created, 0 updated, 0 unchanged" in _said(capsys)
    assert main(push) == 0
    assert f"0 task(s) created, 0 updated, {waiting.height} unchanged" in _said(capsys)
    assert set(read_queue(store.root)["status"]) == {"exported"}

    admin = connect(server.url, server.token)
    project = next(p for p in admin.projects.list(title=PROJECT) if p.title == PROJECT)
    tasks = {t.data["sample_id"]: t for t in admin.tasks.list(project=project.id, fields="all")}
    assert set(tasks) == set(waiting["sample_id"])
    first = tasks[waiting["sample_id"][0]]
    image = requests.get(
        server.url + first.data["image"],
        headers={"Authorization": f"Token {server.token}"},
        timeout=30,
    )
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert first.data["context"].startswith("Current label: ")

    pool = waiting.filter(pl.col("reason") == "uncertain")["sample_id"].to_list()
    issue = waiting.filter(pl.col("reason") == "label_issue")["sample_id"].to_list()
    second = connect(server.url, ls.second_user_token(server.url, "b@leanset.test", "b-pass-1234"))
    _answer(admin, tasks[pool[0]].id, "b")
    _answer(second, tasks[(issue or pool[2:])[0]].id, "a")
    admin.annotations.create(id=tasks[pool[1]].id, result=[], was_cancelled=True)

    pull = ["queue", "pull", str(store.root), "--url", server.url, "--project", PROJECT]
    assert main(pull) == 0
    out = _said(capsys)
    assert "2 answer(s) recorded, 0 unchanged, 1 skipped of 3 task(s)" in out, out
    assert "skipped: 1 cancelled" in out
    answers = read_answers(store.root)
    assert set(answers["completed_by"]) == {"admin@leanset.test", "b@leanset.test"}
    assert main(pull) == 0
    assert "pulled 0 task(s)" in _said(capsys)

    after = clean_flow(config_path=str(config), flow_name="live")
    assert after["version"] == 2 and after["labeling"]["human_labels"] == 2
    moved = store.read("decisions").filter(pl.col("sample_id") == pool[0]).row(0, named=True)
    assert (moved["label"], moved["split"], moved["split_before_human"]) == (
        "b",
        "train",
        "unlabeled",
    )


def _said(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed, with the console's line wrapping undone."""
    return " ".join(capsys.readouterr().out.split())


def _answer(client, task_id: int, choice: str) -> None:
    result = [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [choice]},
        }
    ]
    client.annotations.create(id=task_id, result=result, lead_time=2.0)
