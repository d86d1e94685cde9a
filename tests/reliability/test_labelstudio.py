"""A Label Studio import whose ids or paths point outside the store: skipped and counted, nothing
outside `STORE/labeling` is read or written, and the versions already in the store do not change."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import tree_digest
from tests.reliability._child import do_commit
from tests.reliability.conftest import TALLY

queue = pytest.importorskip(
    "leanset.pipelines.store.queue", reason="labeling/queue.py is not there yet"
)
LabelingError = pytest.importorskip("leanset.labeling.probe").LabelingError

CLASSES = ["cat", "dog"]


def ask(store: Path) -> None:
    rows = pl.DataFrame(
        {
            "sample_id": ["s1", "s2", "s3"],
            "source": ["train/cat/1.png", "train/dog/2.png", "train/cat/3.png"],
            "reason": ["uncertain", "label_issue", "uncertain"],
            "label": ["cat", "cat", None],
            "suggested_label": ["dog", "dog", "cat"],
            "suggested_score": [0.6, 0.9, 0.5],
        }
    )
    queue.enqueue(store, rows, version=1)


def task(sample_id, choice: str = "dog", image: str = "train/cat/1.png", ann_id: int = 1) -> dict:
    result = {"from_name": "label", "to_name": "image", "type": "choices"}
    return {
        "id": ann_id,
        "data": {"sample_id": sample_id, "image": image, "source": image},
        "annotations": [{"id": ann_id, "result": [{**result, "value": {"choices": [choice]}}]}],
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    do_commit(str(root), "v1", None)
    ask(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not touch")
    return root


def test_ids_and_paths_pointing_outside_the_store_are_skipped_and_counted(
    store: Path, tmp_path: Path
):
    outside = tmp_path / "outside"
    hostile_ids = [
        "../../outside/secret.txt",
        str(outside / "secret.txt"),
        "..\\..\\outside",
        "labeling/../../outside",
        12345,
        {"$ne": None},
        ["s1"],
        "",
    ]
    tasks = [task(sid, ann_id=10 + k) for k, sid in enumerate(hostile_ids)]
    tasks += [
        task("s1", image=str(outside / "secret.txt"), ann_id=30),  # a path in data: never read
        task("s2", choice="../../outside/secret.txt", ann_id=31),  # not one of the classes
        {"id": 32, "data": {"image": "../../outside"}, "annotations": []},  # no sample id
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    before_store = {k: v for k, v in tree_digest(store).items() if not k.startswith("labeling/")}
    before_outside = tree_digest(outside)

    result = queue.import_label_studio(store, path, classes=CLASSES)
    TALLY["hostile inputs tried: Label Studio import (ids/paths outside the store)"] += len(tasks)

    assert result.applied == 1 and result.skipped_unknown_id == len(hostile_ids)
    assert result.skipped_unknown_label == 1 and result.skipped_no_sample_id == 1
    answers = queue.read_answers(store)
    assert answers.select("sample_id", "label").rows() == [("s1", "dog")]
    assert tree_digest(outside) == before_outside
    assert {k: v for k, v in tree_digest(store).items() if not k.startswith("labeling/")} == (
        before_store
    )
    assert sorted(p.name for p in (store / "labeling").iterdir()) == [
        ".lock",
        "answers.parquet",
        "answers.parquet.sum",
        "queue.parquet",
        "queue.parquet.sum",
    ]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("secret*")) == [
        "outside/secret.txt"
    ]


def test_a_labeling_file_linked_outside_the_store_is_refused(store: Path, tmp_path: Path):
    TALLY["hostile inputs tried: Label Studio import (answers file linked outside)"] += 1
    target = tmp_path / "outside" / "answers.parquet"
    target.write_bytes(b"someone else's file")
    (store / "labeling" / "answers.parquet").symlink_to(target)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([task("s1")]))
    with pytest.raises(LabelingError, match="outside the store"):
        queue.import_label_studio(store, path, classes=CLASSES)
    assert target.read_bytes() == b"someone else's file"


def test_export_refuses_sources_that_climb_out_of_the_image_root(store: Path, tmp_path: Path):
    TALLY["hostile inputs tried: Label Studio export (source outside the image root)"] += 1
    rows = pl.DataFrame(
        {"sample_id": ["evil"], "source": ["../../outside/secret.txt"], "reason": ["uncertain"]}
    )
    queue.enqueue(store, rows)
    with pytest.raises(LabelingError, match="sample 'evil' has source '../../outside/secret.txt'"):
        queue.export_label_studio(store, tmp_path / "tasks.json", image_root="/data/images")
    assert not (tmp_path / "tasks.json").exists()


def _malformed_tasks() -> list[dict]:
    """Tasks for queued samples whose annotations are not in Label Studio's export shape."""
    good = task("s1", ann_id=40)["annotations"][0]
    bad_annotations = [
        {**good, "result": "abc"},
        {**good, "result": [{**good["result"][0], "value": ["dog"]}]},
        {**good, "updated_at": {"$date": 1}},
        {**good, "created_at": ["2026-01-01"]},
        {**good, "id": {"nested": [1, 2]}},
        {**good, "result": [{**good["result"][0], "value": {"choices": "dog"}}]},
        {**good, "result": [{**good["result"][0], "value": {"choices": [{"x": 1}]}}]},
        {**good, "result": ["dog"]},
        {**good, "was_cancelled": "no"},
        {**good, "completed_by": [1]},
        "an annotation",
    ]
    return [
        {"id": 100 + k, "data": {"sample_id": "s2"}, "annotations": [ann]}
        for k, ann in enumerate(bad_annotations)
    ]


def test_malformed_tasks_are_skipped_counted_and_named(store: Path, tmp_path: Path):
    """Before: `"result": "abc"`, a list as `value`, an object as a date... ended in tracebacks."""
    bad = _malformed_tasks()
    path = tmp_path / "export.json"
    path.write_text(json.dumps([*bad, task("s1", ann_id=41)]))
    before = tree_digest(store)
    result = queue.import_label_studio(store, path, classes=CLASSES)
    TALLY["hostile inputs tried: Label Studio import (malformed tasks)"] += len(bad)
    assert result.skipped_malformed == len(bad) and result.applied == 1
    assert result.malformed[0].startswith("task 0 (id 100): annotation 0: result is a str")
    assert "updated_at is a dict, not a date text" in result.malformed[2]
    assert queue.read_answers(store).select("sample_id", "label").rows() == [("s1", "dog")]
    only_bad = tmp_path / "bad.json"
    only_bad.write_text(json.dumps(bad))
    after_good = tree_digest(store)
    assert queue.import_label_studio(store, only_bad, classes=CLASSES).applied == 0
    assert tree_digest(store) == after_good  # nothing written for bad tasks
    assert {k for k in before if not k.startswith("labeling/")} <= set(after_good)


def test_a_deeply_nested_export_is_refused_and_the_store_unchanged(store: Path, tmp_path: Path):
    TALLY["hostile inputs tried: Label Studio import (deep nesting)"] += 1
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    before = tree_digest(store)
    with pytest.raises(LabelingError, match="nested too deeply"):
        queue.import_label_studio(store, path, classes=CLASSES)
    assert tree_digest(store) == before
