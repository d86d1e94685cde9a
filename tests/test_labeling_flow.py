"""The labeling loop through the real flow: label issues, the queue, Label Studio round trip."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from leanset.pipelines.store.queue import export_label_studio, import_label_studio, read_queue
from tests.helpers import write_flows

DIGITS = {
    "source": {"type": "files", "format": "parquet", "data_files": ["digits.parquet"]},
    "columns": {"id": "id", "embedding": "emb", "label": "label"},
    "embedder": {"type": "precomputed"},
    "dedup": {"threshold": 0.995},
    "label_noise": {"policy": "drop"},
    "active_learning": {"budget": 20, "strategy": "margin", "diversity": "kmeans"},
    "store": "store",
}


@pytest.fixture
def digits(tmp_path: Path) -> dict:
    """sklearn digits as precomputed pixel vectors: 5% flipped labels, 200 unlabeled."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    labels = y.astype(str).astype(object)
    unlabeled = rng.choice(len(y), 200, replace=False)
    rest = np.setdiff1d(np.arange(len(y)), unlabeled)
    flipped = rng.choice(rest, int(0.05 * len(rest)), replace=False)
    for i in flipped:
        labels[i] = str((y[i] + rng.integers(1, 10)) % 10)
    labels[unlabeled] = None
    ids = [f"d{i:04d}" for i in range(len(y))]
    pl.DataFrame(
        {"id": ids, "emb": list(x.astype(np.float32)), "label": list(labels)},
        schema={"id": pl.Utf8, "emb": pl.List(pl.Float32), "label": pl.Utf8},
    ).write_parquet(tmp_path / "digits.parquet")
    return {
        "truth": {ids[i]: str(y[i]) for i in range(len(y))},
        "flipped": {ids[i] for i in flipped},
        "unlabeled": {ids[i] for i in unlabeled},
    }


def test_label_issues_queue_and_answers_round_trip(prefect_harness, tmp_path, digits):
    config = write_flows(tmp_path, digits=DIGITS)
    first = clean_flow(config_path=str(config), flow_name="digits")
    store = Store(tmp_path / "store")
    dec = store.read("decisions")

    issues = set(dec.filter(pl.col("label_issue").fill_null(False))["sample_id"])
    tp = len(issues & digits["flipped"])
    precision, recall = tp / max(len(issues), 1), tp / len(digits["flipped"])
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert first["counts"]["by_reason"]["label_issue"] == len(issues)  # policy: drop
    assert {"label_quality", "suggested_label", "al_score", "queue_rank"} <= set(dec.columns)

    queue = read_queue(store.root)
    picked = queue.filter(pl.col("reason") == "uncertain")
    assert picked.height == 20 and set(picked["sample_id"]) <= digits["unlabeled"]
    groups = dec.filter(pl.col("sample_id").is_in(picked["sample_id"].implode()))["dup_group"]
    assert groups.drop_nulls().is_unique().all()  # never two members of one duplicate group

    # a human answers every task in Label Studio; the export comes back
    tasks_path = tmp_path / "tasks.json"
    export_label_studio(store.root, tasks_path)
    tasks = json.loads(tasks_path.read_text())
    for t in tasks:
        label = digits["truth"][t["data"]["sample_id"]]
        t["annotations"] = [
            {
                "id": 7,
                "completed_by": 1,
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": [label]},
                    }
                ],
            }
        ]
    (tmp_path / "answers.json").write_text(json.dumps(tasks))
    res = import_label_studio(store.root, tmp_path / "answers.json")
    assert res.applied + res.unchanged == len(tasks)

    second = clean_flow(config_path=str(config), flow_name="digits")
    assert second["version"] == 2  # answers changed the labels: a new version
    dec2 = store.read("decisions").filter(
        pl.col("sample_id").is_in([t["data"]["sample_id"] for t in tasks])
    )
    assert dec2["label"].to_list() == [digits["truth"][i] for i in dec2["sample_id"]]
    human = dec2.filter(pl.col("relabel_source").is_not_null())
    assert (
        human.height == res.applied
        and human["relabel_source"].str.starts_with("label-studio:").all()
    )
    again = read_queue(store.root)
    assert again.filter(pl.col("sample_id").is_in(picked["sample_id"].implode()))[
        "status"
    ].unique().to_list() == ["answered"]


GIVEN = {
    "source": {"type": "files", "format": "parquet", "data_files": ["given.parquet"]},
    "columns": {"id": "id", "embedding": "emb", "label": "label"},
    "embedder": {"type": "precomputed"},
    "dedup": {"near": False},
    "label_noise": {"pred_probs_column": "probs"},
    "store": "store-given",
}


def _given(tmp_path: Path, probs: np.ndarray, labels: list[str]) -> Path:
    n = len(labels)
    pl.DataFrame(
        {
            "id": [f"g{i}" for i in range(n)],
            "emb": list(np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)),
            "label": labels,
            "probs": list(probs),
        },
        schema={
            "id": pl.Utf8,
            "emb": pl.List(pl.Float32),
            "label": pl.Utf8,
            "probs": pl.List(pl.Float64),
        },
    ).write_parquet(tmp_path / "given.parquet")
    return write_flows(tmp_path, given=GIVEN)


def test_user_given_pred_probs_replace_the_probe(prefect_harness, tmp_path):
    labels = ["a"] * 10 + ["b"] * 10
    probs = np.array([[0.95, 0.05]] * 10 + [[0.05, 0.95]] * 10)
    probs[3] = [0.02, 0.98]  # g3 is labeled "a", but the user's model is sure it is "b"
    out = clean_flow(config_path=str(_given(tmp_path, probs, labels)), flow_name="given")
    assert out["labeling"]["probe"] == "given pred_probs"
    dec = Store(tmp_path / "store-given").read("decisions")
    assert dec.filter(pl.col("label_issue"))["sample_id"].to_list() == ["g3"]
    assert dec.filter(pl.col("sample_id") == "g3")["suggested_label"].item() == "b"


def test_pred_probs_that_do_not_sum_to_one_are_refused_by_sample(prefect_harness, tmp_path):
    from leanset.labeling.config import LabelingError

    probs = np.array([[0.9, 0.1]] * 20)
    probs[5] = [0.9, 0.3]
    with pytest.raises(LabelingError, match="g5"):
        clean_flow(
            config_path=str(_given(tmp_path, probs, ["a"] * 10 + ["b"] * 10)), flow_name="given"
        )
    assert not (tmp_path / "store-given" / "manifests").exists()  # nothing was committed


def test_a_class_too_small_for_the_folds_is_left_unjudged_and_the_run_goes_on(
    prefect_harness, tmp_path
):
    """Three samples of 'rare' cannot fill 5 folds: they are left unjudged with one line saying
    so, the other classes are judged, and the run commits."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    labels = [str(v) for v in y[:300]] + ["rare"] * 3
    emb = np.vstack([x[:300], x[300:303] + 7.0]).astype(np.float32)
    pl.DataFrame(
        {"id": [f"d{i:04d}" for i in range(303)], "emb": list(emb), "label": labels},
        schema={"id": pl.Utf8, "emb": pl.List(pl.Float32), "label": pl.Utf8},
    ).write_parquet(tmp_path / "digits.parquet")
    body = DIGITS | {"active_learning": None}
    body = {k: v for k, v in body.items() if v is not None}
    out = clean_flow(config_path=str(write_flows(tmp_path, digits=body)), flow_name="digits")
    lab = out["labeling"]
    assert lab["unjudged"]["classes"] == {"rare": 3}
    assert "'rare' (3)" in lab["unjudged"]["line"] and "n_folds=5" in lab["unjudged"]["line"]
    dec = Store(tmp_path / "store").read("decisions")
    rare = dec.filter(pl.col("label") == "rare")
    assert rare.height == 3 and rare["label_issue"].null_count() == 3
    assert dec.filter(pl.col("label") != "rare")["label_issue"].null_count() == 0


def _conflict_photos(root: Path) -> None:
    """Two classes of distinct images; img00 (class a) has a near copy filed under b and an
    exact copy filed under c: one group, three labels."""
    from tests.helpers import write_png

    rng = np.random.default_rng(5)
    bases = [rng.integers(0, 256, (16, 16)) for _ in range(12)]
    for k, img in enumerate(bases):
        write_png(root / f"train/{'ab'[k % 2]}/img{k:02d}.png", img)
    write_png(root / "train/b/twin.png", np.clip(bases[0] + rng.normal(0, 3, (16, 16)), 0, 255))
    write_png(root / "train/c/copy.png", bases[0])


def test_a_label_conflict_task_shows_its_twins_and_its_answer_labels_the_group(
    prefect_harness, tmp_path
):
    """Before: the conflict's task showed one sample, and its answer relabeled only that one,
    so the next run kept the conflict."""
    from tests.helpers import pixel_flow_body

    _conflict_photos(tmp_path / "images")
    body = pixel_flow_body(dedup={"threshold": 0.95}, active_learning={"budget": 1})
    config = write_flows(tmp_path, photos=body)
    clean_flow(config_path=str(config), flow_name="photos")
    store = Store(tmp_path / "store")
    dec = store.read("decisions")
    group = dec.filter(pl.col("label_conflict"))
    assert sorted(group["source"]) == ["train/a/img00.png", "train/b/twin.png", "train/c/copy.png"]
    queue = read_queue(store.root).filter(pl.col("reason") == "label_conflict")
    assert queue.height == 1  # one task per conflict group
    tasks_path = tmp_path / "tasks.json"
    export_label_studio(store.root, tasks_path, image_root="/data/local-files/?d=images")
    (task,) = [t for t in json.loads(tasks_path.read_text()) if t["data"]["twins"]]
    shown = task["data"]["twins"]
    for source, label in [("img00.png", "a"), ("twin.png", "b"), ("copy.png", "c")]:
        assert source in shown and f"label: {label}" in shown
    assert "2 other sample(s) labeled" in task["data"]["context"]

    task["annotations"] = [
        {
            "id": 11,
            "completed_by": 1,
            "result": [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["a"]},
                }
            ],
        }
    ]
    (tmp_path / "answers.json").write_text(json.dumps([task]))
    res = import_label_studio(store.root, tmp_path / "answers.json", classes=["a", "b", "c"])
    assert (res.applied, res.twins_labeled) == (1, 2)
    again = import_label_studio(store.root, tmp_path / "answers.json", classes=["a", "b", "c"])
    assert (again.applied, again.unchanged, again.twins_labeled) == (0, 1, 0)

    second = clean_flow(config_path=str(config), flow_name="photos")
    assert second["version"] == 2
    after = store.read("decisions").filter(pl.col("sample_id").is_in(group["sample_id"].implode()))
    assert after["label"].to_list() == ["a", "a", "a"]
    assert not after["label_conflict"].any()
    assert after["relabel_source"].drop_nulls().to_list() == ["label-studio:11"] * 2
