"""The labeling queue: persistence, no re-queueing, a Label Studio round trip that loses nothing."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from leanset.labeling.config import LabelingError
from leanset.labeling.labelstudio import label_studio_config
from leanset.pipelines.store.queue import (
    STATUSES,
    enqueue,
    export_label_studio,
    export_table,
    import_label_studio,
    read_answers,
    read_queue,
)

CLASSES = [str(d) for d in range(10)]
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _rows(n: int, start: int = 0, reason: str = "uncertain") -> pl.DataFrame:
    """Selection rows for samples s<start>..s<start+n-1>."""
    ids = [f"s{i:03d}" for i in range(start, start + n)]
    return pl.DataFrame(
        {
            "sample_id": ids,
            "source": [f"train/{i % 10}/img{i}.png" for i in range(start, start + n)],
            "reason": [reason] * n,
            "al_score": [1.0 - i / 100 for i in range(n)],
            "queue_rank": list(range(1, n + 1)),
            "label": [None] * n,
            "suggested_label": [str(i % 10) for i in range(n)],
            "suggested_score": [0.4] * n,
        }
    )


def _annotate(tasks: list[dict], answer: dict[str, str]) -> list[dict]:
    """What Label Studio's JSON export looks like after a human answered every task."""
    out = []
    for i, task in enumerate(tasks):
        label = answer[task["data"]["sample_id"]]
        result = {
            "from_name": "label",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [label]},
        }
        annotation = {
            "id": 1000 + i,
            "completed_by": {"id": 7, "email": "ann@example.org"},
            "result": [result],
            "was_cancelled": False,
            "created_at": "2026-01-03T10:00:00.000000Z",
            "updated_at": "2026-01-03T10:00:00.000000Z",
        }
        out.append({**task, "id": 500 + i, "annotations": [annotation]})
    return out


def _write_json(path: Path, obj: object) -> Path:
    """Write JSON for an import."""
    path.write_text(json.dumps(obj))
    return path


def test_export_import_round_trip_keeps_every_id_and_label(tmp_path: Path) -> None:
    store = tmp_path / "store"
    rows = _rows(40)
    assert enqueue(store, rows, run_id="run-1", version=3, now=T0).added == 40
    exported = export_label_studio(
        store, tmp_path / "tasks.json", image_root="/data/local-files/?d="
    )
    tasks = json.loads(exported.path.read_text())
    assert exported.n_tasks == len(tasks) == 40
    assert set(read_queue(store)["status"]) == {"exported"}
    truth = {sid: str((i * 7) % 10) for i, sid in enumerate(rows["sample_id"])}
    annotations = _write_json(tmp_path / "export.json", _annotate(tasks, truth))
    result = import_label_studio(store, annotations, classes=CLASSES)
    assert (result.applied, result.skipped) == (40, 0)
    answers = read_answers(store)
    assert dict(zip(answers["sample_id"], answers["label"], strict=True)) == truth
    assert set(answers["annotation_id"]) == {str(1000 + i) for i in range(40)}
    assert set(answers["completed_by"]) == {"ann@example.org"}
    assert set(read_queue(store)["status"]) == {"answered"}
    again = import_label_studio(store, annotations, classes=CLASSES)
    assert (again.applied, again.unchanged) == (0, 40)
    assert read_answers(store, latest=False).height == 40


def test_tasks_carry_the_suggestion_as_a_scored_pre_annotation(tmp_path: Path) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(2), now=T0)
    tasks = json.loads(
        export_label_studio(store, tmp_path / "t.json", image_root="imgs/").path.read_text()
    )
    first = tasks[0]
    assert first["data"]["image"] == "imgs/train/0/img0.png"
    assert first["data"]["sample_id"] == "s000"
    prediction = first["predictions"][0]
    assert prediction["score"] == pytest.approx(0.4)
    result = prediction["result"][0]
    assert result["from_name"] == "label" and result["to_name"] == "image"
    assert result["type"] == "choices" and result["value"] == {"choices": ["0"]}
    assert result["score"] == pytest.approx(0.4)


def test_label_studio_config_matches_the_tasks() -> None:
    xml = label_studio_config(["cat", "a&b"], kind="text")
    assert '<Text name="text" value="$text"/>' in xml
    assert '<Choices name="label" toName="text" choice="single"' in xml
    assert '<Choice value="a&amp;b"/>' in xml


def test_text_tasks_carry_the_text(tmp_path: Path) -> None:
    store = tmp_path / "store"
    rows = _rows(2).with_columns(pl.Series("text", ["hello", "world"]))
    enqueue(store, rows, now=T0)
    tasks = json.loads(export_label_studio(store, tmp_path / "t.json").path.read_text())
    assert [t["data"]["text"] for t in tasks] == ["hello", "world"]
    assert tasks[0]["predictions"][0]["result"][0]["to_name"] == "text"


def test_text_export_without_text_names_the_sample(tmp_path: Path) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(1), now=T0)
    with pytest.raises(LabelingError, match="sample 's000' has no text"):
        export_label_studio(store, tmp_path / "t.json")


def test_pending_samples_are_not_requeued(tmp_path: Path) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(10), now=T0)
    export_label_studio(store, tmp_path / "t.json", image_root="x")
    counts = enqueue(store, _rows(15), now=T0)  # s000..s009 exported and unanswered
    assert (counts.added, counts.skipped_pending) == (5, 10)
    assert read_queue(store).height == 15


def test_answered_samples_are_requeued_only_when_asked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(3), now=T0)
    tasks = json.loads(
        export_label_studio(store, tmp_path / "t.json", image_root="x").path.read_text()
    )
    answer = {t["data"]["sample_id"]: "1" for t in tasks}
    import_label_studio(store, _write_json(tmp_path / "a.json", _annotate(tasks, answer)))
    skipped = enqueue(store, _rows(3, reason="label_issue"), now=T0)
    assert (skipped.added, skipped.skipped_answered) == (0, 3)
    again = enqueue(store, _rows(3, reason="label_issue"), requeue_answered=True, now=T0)
    assert again.requeued == 3
    queue = read_queue(store)
    assert queue.height == 3 and set(queue["status"]) == {"queued"}
    assert set(queue["reason"]) == {"label_issue"}


def test_unknown_ids_and_empty_answers_are_skipped_and_counted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(4), now=T0)
    tasks = json.loads(
        export_label_studio(store, tmp_path / "t.json", image_root="x").path.read_text()
    )
    done = _annotate(tasks, {t["data"]["sample_id"]: "3" for t in tasks})
    done[1]["annotations"][0]["was_cancelled"] = True
    done[2]["annotations"] = []
    done[3]["annotations"][0]["result"][0]["value"]["choices"] = ["cow"]
    stranger = {"id": 1, "data": {"sample_id": "not-queued"}, "annotations": done[0]["annotations"]}
    no_id = {"id": 2, "data": {"image": "x.png"}, "annotations": done[0]["annotations"]}
    path = _write_json(tmp_path / "a.json", [*done, stranger, no_id])
    result = import_label_studio(store, path, classes=CLASSES)
    assert result.applied == 1
    assert result.skipped_cancelled == 1
    assert result.skipped_no_choice == 1
    assert result.skipped_unknown_label == 1
    assert result.skipped_unknown_id == 1 and result.unknown_ids == ("not-queued",)
    assert result.skipped_no_sample_id == 1
    assert result.skipped == 5
    assert read_answers(store)["sample_id"].to_list() == ["s000"]


def test_the_latest_annotation_of_a_task_wins(tmp_path: Path) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(1), now=T0)
    tasks = json.loads(
        export_label_studio(store, tmp_path / "t.json", image_root="x").path.read_text()
    )
    task = _annotate(tasks, {"s000": "2"})[0]
    later = json.loads(json.dumps(task["annotations"][0]))
    later.update(id=2000, updated_at="2026-02-01T00:00:00Z")
    later["result"][0]["value"]["choices"] = ["5"]
    task["annotations"] = [later, task["annotations"][0]]
    import_label_studio(store, _write_json(tmp_path / "a.json", [task]))
    answer = read_answers(store).row(0, named=True)
    assert (answer["label"], answer["annotation_id"]) == ("5", "2000")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"tasks": []}', "holds a dict; expected Label Studio's JSON export"),
        ('[{"sample_id": "s000", "label": "1"}]', "has no 'annotations' list"),
    ],
)
def test_malformed_annotation_files_are_clear_errors(tmp_path: Path, content, message) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(1), now=T0)
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(LabelingError, match=message):
        import_label_studio(store, path)


def test_missing_annotation_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LabelingError, match="does not exist"):
        import_label_studio(tmp_path / "store", tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (_rows(2).drop("reason"), r"lack column\(s\) \['reason'\]"),
        (_rows(2).with_columns(pl.lit(1).alias("priority")), r"unknown column\(s\) \['priority'\]"),
        (_rows(2, reason="curious"), "sample 's000' has reason 'curious'"),
        (pl.concat([_rows(2), _rows(1)]), "sample 's000' more than once"),
        (_rows(2).with_columns(pl.lit("high").alias("al_score")), "wrong type"),
    ],
)
def test_bad_queue_rows_are_clear_errors(tmp_path: Path, rows, message) -> None:
    with pytest.raises(LabelingError, match=message):
        enqueue(tmp_path / "store", rows)


@pytest.mark.parametrize("source", ["../secret.png", "/etc/passwd", "C:/x.png", None])
def test_sources_that_leave_the_image_root_are_refused(tmp_path: Path, source) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(1).with_columns(pl.lit(source, dtype=pl.String).alias("source")), now=T0)
    with pytest.raises(LabelingError, match="sample 's000' has source"):
        export_label_studio(store, tmp_path / "t.json", image_root="imgs")
    assert set(read_queue(store)["status"]) == {"queued"}


def test_a_labeling_folder_that_leaves_the_store_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (store / "labeling").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LabelingError, match="outside the store"):
        enqueue(store, _rows(1))


def test_a_store_that_is_a_file_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.write_text("")
    with pytest.raises(LabelingError, match="is a file"):
        read_queue(store)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_table_writes_the_queue(tmp_path: Path, fmt: str) -> None:
    store = tmp_path / "store"
    enqueue(store, _rows(5), now=T0)
    out = export_table(store, tmp_path / f"queue.{fmt}", format=fmt, statuses=STATUSES)
    read = pl.read_csv if fmt == "csv" else pl.read_parquet
    table = read(out.path)
    assert table["sample_id"].to_list() == [f"s{i:03d}" for i in range(5)]
    assert set(read_queue(store)["status"]) == {"queued"}


def test_export_table_unknown_format_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LabelingError, match="format must be one of csv, parquet"):
        export_table(tmp_path / "store", tmp_path / "q.xlsx", format="xlsx")


def test_an_empty_queue_exports_no_tasks(tmp_path: Path) -> None:
    result = export_label_studio(tmp_path / "store", tmp_path / "t.json", image_root="x")
    assert result.n_tasks == 0
    assert json.loads(result.path.read_text()) == []


def test_a_second_export_hands_out_only_new_tasks(tmp_path: Path) -> None:
    """Before: every export re-exported the tasks already handed out (duplicates on re-import)."""
    store = tmp_path / "store"
    enqueue(store, _rows(10), now=T0)
    assert export_label_studio(store, tmp_path / "a.json", image_root="x").n_tasks == 10
    assert export_label_studio(store, tmp_path / "b.json", image_root="x").n_tasks == 0
    enqueue(store, _rows(15), now=T0)
    fresh = export_label_studio(store, tmp_path / "c.json", image_root="x")
    assert fresh.sample_ids == tuple(f"s{i:03d}" for i in range(10, 15))
    again = export_label_studio(store, tmp_path / "d.json", image_root="x", statuses=["exported"])
    assert again.n_tasks == 15 and set(read_queue(store)["status"]) == {"exported"}


def test_local_storage_urls_are_below_the_document_root_and_percent_encoded(
    tmp_path: Path,
) -> None:
    """Before: the default was a filesystem path, `?d=` + a leading '/', and no quoting ('#',
    '+', '&' in a name broke the URL)."""
    from leanset.labeling.labelstudio import image_ref, local_files_prefix

    dataset = tmp_path / "data" / "my photos"
    dataset.mkdir(parents=True)
    prefix = local_files_prefix(dataset, tmp_path)
    assert prefix == "/data/local-files/?d=data/my%20photos"
    assert image_ref(prefix, "s", "train/a/h#1 p+q&r.png") == (
        "/data/local-files/?d=data/my%20photos/train/a/h%231%20p%2Bq%26r.png"
    )
    with pytest.raises(LabelingError, match="not inside the Label Studio document root"):
        local_files_prefix(dataset, dataset)


def test_tasks_show_the_current_label_and_why_they_are_queued(tmp_path: Path) -> None:
    store = tmp_path / "store"
    rows = pl.concat([_rows(1), _rows(1, start=1, reason="label_issue")]).with_columns(
        pl.Series("label", [None, "7"], dtype=pl.String)
    )
    enqueue(store, rows, now=T0)
    tasks = json.loads(
        export_label_studio(store, tmp_path / "t.json", image_root="x").path.read_text()
    )
    assert tasks[0]["data"]["context"].startswith(
        "Current label: none (unlabeled) | queued because: uncertain"
    )
    assert tasks[1]["data"]["context"].startswith("Current label: 7 | queued because: label issue")
    xml = label_studio_config(CLASSES)
    assert '<Header value="$context"/>' in xml and 'maxWidth="320px"' in xml


def test_an_annotation_edited_after_an_import_is_recorded_again(tmp_path: Path) -> None:
    """Before: a known annotation id was 'unchanged' even when its label had been edited."""
    store = tmp_path / "store"
    enqueue(store, _rows(1), now=T0)
    tasks = json.loads(
        export_label_studio(store, tmp_path / "t.json", image_root="x").path.read_text()
    )
    answered = _annotate(tasks, {"s000": "2"})
    import_label_studio(store, _write_json(tmp_path / "a.json", answered))
    answered[0]["annotations"][0]["result"][0]["value"]["choices"] = ["4"]
    answered[0]["annotations"][0]["updated_at"] = "2026-01-04T10:00:00.000000Z"
    result = import_label_studio(store, _write_json(tmp_path / "b.json", answered))
    assert (result.applied, result.unchanged) == (1, 0)
    assert read_answers(store)["label"].to_list() == ["4"]
    assert import_label_studio(store, tmp_path / "b.json").unchanged == 1


def _conflict_row(text: bool = False) -> pl.DataFrame:
    """One label-conflict row (s000, label 1) with two twins (s001 label 2, s002 label 3)."""
    twins = [
        {"sample_id": f"s00{k}", "label": str(k + 1), "source": f"train/{k}/t{k}.png"}
        | {"text": f"twin <{k}>" if text else None}
        for k in (1, 2)
    ]
    return pl.DataFrame(
        {
            "sample_id": ["s000"],
            "source": ["train/0/x.png"],
            "reason": ["label_conflict"],
            "label": ["1"],
            "text": ["me & you" if text else None],
            "twins": [twins],
        }
    )


def test_a_text_conflict_task_shows_every_text_with_its_label(tmp_path: Path) -> None:
    store = tmp_path / "store"
    enqueue(store, _conflict_row(text=True), now=T0)
    (task,) = json.loads(export_label_studio(store, tmp_path / "t.json").path.read_text())
    shown = task["data"]["twins"]
    assert "me &amp; you" in shown and "twin &lt;1&gt;" in shown and "twin &lt;2&gt;" in shown
    assert shown.index("label: 1") < shown.index("label: 2") < shown.index("label: 3")
    assert '<HyperText name="twins" value="$twins"' in label_studio_config(CLASSES, kind="text")


def test_a_twins_own_task_wins_over_its_groups_answer(tmp_path: Path) -> None:
    store = tmp_path / "store"
    own = _rows(1, start=2, reason="label_issue")
    enqueue(store, pl.concat([_conflict_row(), own], how="diagonal_relaxed"), now=T0)
    tasks = json.loads(
        export_label_studio(store, tmp_path / "t.json", image_root="x").path.read_text()
    )
    answered = _annotate(tasks, {"s000": "5", "s002": "7"})
    result = import_label_studio(store, _write_json(tmp_path / "a.json", answered))
    assert (result.applied, result.twins_labeled) == (2, 1)
    answers = read_answers(store)
    assert dict(zip(answers["sample_id"], answers["label"], strict=True)) == {
        "s000": "5",
        "s001": "5",
        "s002": "7",
    }
    lead = answers.filter(pl.col("sample_id") == "s000").row(0, named=True)
    twin = answers.filter(pl.col("sample_id") == "s001").row(0, named=True)
    assert (twin["previous_label"], twin["reason"]) == ("2", "label_conflict")
    assert (twin["task_id"], twin["annotation_id"]) == (lead["task_id"], lead["annotation_id"])


def test_a_queue_file_written_before_twins_existed_still_reads(tmp_path: Path) -> None:
    from leanset.pipelines.store.layout import StoreLayout
    from leanset.pipelines.store.sealed import write_sealed

    store = tmp_path / "store"
    enqueue(store, _rows(3, start=10), now=T0)
    path = StoreLayout(store).queue
    older = io.BytesIO()
    read_queue(store).drop("twins").write_parquet(older)
    write_sealed(path, older.getvalue())
    queue = read_queue(store)
    assert queue.height == 3 and queue["twins"].null_count() == 3
    assert enqueue(store, _conflict_row(), now=T0).added == 1
    assert read_queue(store)["twins"].list.len().to_list() == [None, None, None, 2]
    csv = export_table(store, tmp_path / "q.csv", format="csv").path.read_text()
    assert '""sample_id"": ""s001""' in csv
