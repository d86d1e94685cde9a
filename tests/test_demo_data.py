"""The bundled demo data: layout, counts against truth.json, determinism, findability, loading,
the unlabeled pool and the simulated annotator's round trip through the labeling queue."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.evaluate import evaluate_groups
from leanset.pipelines.demo import data as demo
from leanset.pipelines.demo.annotator import answer_tasks
from leanset.pipelines.demo.data import DemoTruth, make_demo
from leanset.pipelines.store.queue import (
    enqueue,
    export_label_studio,
    import_label_studio,
    read_answers,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data for seed 0, generated once for this module."""
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, seed=0)
    return root


@pytest.fixture(scope="module")
def truth(demo_root: Path) -> DemoTruth:
    """The parsed truth.json."""
    return DemoTruth.load(demo_root)


def _files(root: Path) -> dict[str, bytes]:
    """{path relative to images/: bytes} for every image file (not images/README.md)."""
    images = root / "images"
    return {
        p.relative_to(images).as_posix(): p.read_bytes()
        for p in sorted(images.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".jpg")
    }


def _digests(root: Path) -> dict[str, str]:
    """{relative path: sha256} for everything under root except the lock file."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".make_demo.lock"
    }


def _found_groups(files: dict[str, bytes], threshold: float) -> list[list[str]]:
    """What a dedup run finds: same bytes, or raw-pixel cosine >= threshold, joined transitively."""
    paths = list(files)
    feats = np.stack([demo._features(files[p]) for p in paths])
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[bytes, int] = {}
    for i, p in enumerate(paths):
        parent[find(i)] = find(first.setdefault(files[p], i))
    ii, jj = np.nonzero(np.triu(feats @ feats.T, k=1) >= threshold)
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        parent[find(i)] = find(j)
    groups: dict[int, list[str]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(find(i), []).append(p)
    return [g for g in groups.values() if len(g) > 1]


def test_layout_and_counts_match_truth(demo_root: Path, truth: DemoTruth) -> None:
    files = _files(demo_root)
    splits = Counter(p.split("/")[0] for p in files)
    assert set(splits) == {"train", "test", "unlabeled"}
    assert splits["train"] == truth.counts["train_files"] == 1318
    assert splits["test"] == truth.counts["test_files"] == 359
    assert splits["unlabeled"] == truth.counts["unlabeled_files"] == demo.N_POOL == 300
    assert len(files) == 1797 + truth.counts["copies"] == 1977
    others = [p for p in (demo_root / "images").rglob("*") if p.is_file()]
    assert len(others) == len(files) + 1 and (demo_root / "images" / "README.md").is_file()
    assert 0.18 < splits["test"] / 1797 < 0.22
    assert all(p.split("/")[1] in {str(d) for d in range(10)} for p in files)
    kinds = Counter(g.kind for g in truth.groups)
    assert kinds["exact"] == demo.N_EXACT_SOURCES
    assert kinds["near"] == demo.N_NEAR
    assert kinds["leak"] == demo.N_LEAK_EXACT + demo.N_LEAK_NEAR
    assert sum(len(g.paths) == 3 for g in truth.groups if g.kind == "exact") == demo.N_EXACT_TWICE
    assert truth.counts["copies"] == demo.N_EXACT_SOURCES + demo.N_EXACT_TWICE + demo.N_NEAR + 40
    assert (demo_root / "README.txt").read_text().startswith("leanset demo dataset")
    for group in truth.groups:
        assert all(p in files for p in group.paths), group


def test_planted_groups_are_what_they_claim(demo_root: Path, truth: DemoTruth) -> None:
    files = _files(demo_root)
    for g in truth.groups:
        labels = {p.split("/")[1] for p in g.paths}
        if g.kind == "natural":
            continue
        assert len(labels) == 1, f"a planted group spans labels: {g}"
        copies = {files[p] for p in g.paths}
        if g.kind == "exact" or (g.kind == "leak" and not g.perturbations):
            assert len(copies) == 1, f"exact copies differ: {g}"
        else:
            assert len(copies) == len(g.paths), f"near copy is byte-identical: {g}"
            assert g.similarity >= demo.MIN_COPY_SIMILARITY
        if g.kind == "leak":
            assert g.paths[0].startswith("test/") and g.paths[1].startswith("train/")
        else:
            assert all(p.startswith("train/") for p in g.paths)
    shifted = [g for g in truth.groups if any(p.startswith("shift") for p in g.perturbations)]
    jpegs = [g for g in truth.groups if g.paths[-1].endswith(".jpg")]
    assert len(shifted) == demo.N_NEAR_SHIFTED
    assert jpegs and all(any(p.startswith("jpeg") for p in g.perturbations) for g in jpegs)
    members = [p for g in truth.groups for p in g.paths]
    assert len(members) == len(set(members)), "truth groups overlap"


def test_flipped_labels(truth: DemoTruth) -> None:
    grouped = {p for g in truth.groups for p in g.paths}
    expected = round(demo.FLIP_FRACTION * (1797 - 359 - demo.N_EXACT_SOURCES - demo.N_NEAR))
    assert abs(len(truth.flipped) - expected) <= 2
    for f in truth.flipped:
        assert f.path.startswith(f"train/{f.given_label}/")
        assert f.given_label != f.true_label
        assert f.path not in grouped
    assert truth.counts["flipped"] == len(truth.flipped) == len(truth.flipped_paths())


def test_planted_pairs_are_found_at_the_recommended_threshold(
    demo_root: Path, truth: DemoTruth
) -> None:
    found = _found_groups(_files(demo_root), truth.recommended_threshold)
    assert truth.recommended_threshold == 0.99
    score = evaluate_groups(truth.duplicate_groups(), found)
    assert score.precision == 1.0 and score.recall == 1.0, score.summary()
    assert score.truth_pairs == 199
    pool = truth.pool_paths()
    assert not [p for g in found for p in g if p in pool], "a pool image has a duplicate"
    assert truth.stats["ungrouped_pairs_at_threshold"] == 0
    assert truth.stats["near_copy_similarity_min"] >= demo.MIN_COPY_SIMILARITY
    planted_only = evaluate_groups(truth.duplicate_groups(kinds=demo.PLANTED_KINDS), found)
    assert planted_only.recall == 1.0
    assert planted_only.found_pairs - planted_only.true_positives == truth.counts["natural_pairs"]


def test_natural_groups_at_other_thresholds(truth: DemoTruth) -> None:
    at_default = truth.duplicate_groups()
    assert truth.duplicate_groups(threshold=truth.recommended_threshold) == at_default
    assert len(truth.duplicate_groups(threshold=0.985)) > len(at_default)
    with pytest.raises(ValueError, match="natural_pair_floor"):
        truth.duplicate_groups(threshold=0.5)
    with pytest.raises(ValueError, match="unknown"):
        truth.duplicate_groups(kinds=("exact", "typo"))


def test_deterministic_idempotent_and_reseeded(demo_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    make_demo(other, seed=0)
    assert _digests(other) == _digests(demo_root)
    stamp = (other / "truth.json").stat().st_mtime_ns
    assert make_demo(other, seed=0).seed == 0
    assert (other / "truth.json").stat().st_mtime_ns == stamp, "an up-to-date demo was rewritten"
    reseeded = make_demo(other, seed=1)
    assert reseeded.seed == 1 and DemoTruth.load(other).seed == 1
    assert _digests(other)["truth.json"] != _digests(demo_root)["truth.json"]
    assert len(_files(other)) == len(_files(demo_root))
    assert not [p for p in other.iterdir() if p.name.startswith(".images-")]


def test_refuses_to_replace_a_foreign_images_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="images"):
        make_demo(tmp_path)
    assert (tmp_path / "images" / "mine.txt").read_text() == "keep me"


def test_truth_load_names_the_bad_key(tmp_path: Path, demo_root: Path) -> None:
    raw = json.loads((demo_root / "truth.json").read_text())
    del raw["flipped"]
    (tmp_path / "truth.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="'flipped'"):
        DemoTruth.load(tmp_path)
    raw = json.loads((demo_root / "truth.json").read_text())
    del raw["pool"]
    (tmp_path / "truth.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="'pool'"):
        DemoTruth.load(tmp_path)
    raw = json.loads((demo_root / "truth.json").read_text())
    raw["pool"][7]["path"] = "train/3/x.png"
    (tmp_path / "truth.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"pool\[7\]"):
        DemoTruth.load(tmp_path)
    raw = json.loads((demo_root / "truth.json").read_text())
    raw["groups"][3]["kind"] = "fuzzy"
    (tmp_path / "truth.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"groups\[3\]"):
        DemoTruth.load(tmp_path)


def test_features_match_the_pixel_embedder(demo_root: Path, truth: DemoTruth) -> None:
    from leanset.pipelines.embed import PixelEmbedder

    embedder = PixelEmbedder(demo.FEATURE_SIZE)
    paths = [p for g in truth.groups[:20] for p in g.paths]
    data = [(demo_root / "images" / p).read_bytes() for p in paths]
    theirs = embedder.encode([embedder.prepare(d) for d in data])
    ours = np.stack([demo._features(d) for d in data])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_loads_with_datasets_imagefolder(demo_root: Path, truth: DemoTruth, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    images = demo_root / "images"
    expected = {
        "train": truth.counts["train_files"],
        "test": truth.counts["test_files"],
        "unlabeled": truth.counts["unlabeled_files"],
    }
    # data_dir alone finds only the split folders datasets knows by name (train, test, ...)
    loaded = datasets.load_dataset(
        "imagefolder",
        data_dir=str(images),
        data_files=demo.SPLIT_DATA_FILES,
        cache_dir=str(tmp_path / "hf"),
    )
    assert {split: ds.num_rows for split, ds in loaded.items()} == expected
    names = loaded["train"].features["label"].names
    assert names == [str(d) for d in range(10)]
    for split in expected:
        rows = loaded[split].cast_column("image", datasets.Image(decode=False))
        for row in rows.select(range(0, rows.num_rows, 7)):
            rel = Path(row["image"]["path"]).relative_to(images).as_posix()
            assert names[row["label"]] == rel.split("/")[1]
            if split == "unlabeled":
                assert rel in truth.pool_paths() and names[row["label"]] == truth.true_label(rel)
    image = loaded["test"][0]["image"]
    assert image.size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE) and image.mode == "L"
    # the folder as a dataset: images/README.md's configs name the three splits
    card = datasets.load_dataset(str(images), cache_dir=str(tmp_path / "hf-card"))
    assert {split: ds.num_rows for split, ds in card.items()} == expected


def test_unlabeled_pool(demo_root: Path, truth: DemoTruth) -> None:
    pool = truth.pool
    assert len(pool) == len(truth.pool_paths()) == truth.counts["pool"] == demo.N_POOL
    assert Counter(p.true_label for p in pool) == {str(d): demo.N_POOL // 10 for d in range(10)}
    grouped = {p for g in truth.groups for p in g.paths}
    paired = {p for pair in truth.natural_pairs for p in pair.paths}
    for p in pool:
        assert p.path.startswith(f"unlabeled/{p.true_label}/unlabeled_"), p
        assert (demo_root / "images" / p.path).is_file()
        assert p.path not in grouped | paired | truth.flipped_paths()
    on_disk = {p for p in _files(demo_root) if p.startswith("unlabeled/")}
    assert on_disk == truth.pool_paths()


def test_true_label(truth: DemoTruth) -> None:
    for p in truth.pool[:5]:
        assert truth.true_label(p.path) == p.true_label
    for f in truth.flipped[:5]:
        assert truth.true_label(f.path) == f.true_label != f.path.split("/")[1]
    test_path = next(p for g in truth.groups if g.kind == "leak" for p in g.paths)
    assert truth.true_label(test_path) == test_path.split("/")[1]
    rel = truth.pool[0].path
    for ref in (
        f"/abs/data/demo/images/{rel}",
        f"http://localhost:8080/data/local-files/?d=demo%2Fimages%2F{rel.replace('/', '%2F')}",
        f"/data/local-files/?d={rel}",
        rel.replace("/", "\\"),
    ):
        assert demo.image_relpath(ref) == rel and truth.true_label(ref) == truth.pool[0].true_label
    for bad in ("unlabeled/3/not_in_pool.png", "train/x/a.png", "valid/3/a.png", "a.png"):
        with pytest.raises(ValueError):
            truth.true_label(bad)


def _queue_rows(truth: DemoTruth) -> pl.DataFrame:
    """A small selection: pool images, flipped train images, clean train and test images."""
    flipped = truth.flipped_paths()
    pool = [p.path for p in truth.pool[::30]]  # sorted by path: one per digit
    wrong = sorted(flipped)[:6]
    clean = [p for g in truth.groups if g.kind == "exact" for p in g.paths[:1]][:4]
    test = [g.paths[0] for g in truth.groups if g.kind == "leak"][:2]
    paths = pool + wrong + clean + test
    return pl.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(len(paths))],
            "source": paths,
            "reason": [
                "uncertain" if p in pool else "label_issue" if p in flipped else "label_conflict"
                for p in paths
            ],
            "label": [None if p.startswith("unlabeled/") else p.split("/")[1] for p in paths],
            "suggested_label": ["0"] * len(paths),
            "suggested_score": [0.4] * len(paths),
        }
    )


def _answered(path: Path) -> dict[str, str]:
    """{sample_id: chosen label} of an answered export."""
    return {
        t["data"]["sample_id"]: t["annotations"][0]["result"][0]["value"]["choices"][0]
        for t in json.loads(path.read_text())
    }


def test_answered_queue_imports_with_the_true_labels(
    demo_root: Path, truth: DemoTruth, tmp_path: Path
) -> None:
    store, classes = tmp_path / "store", [str(d) for d in range(10)]
    rows = _queue_rows(truth)
    true = {s: truth.true_label(p) for s, p in zip(rows["sample_id"], rows["source"], strict=True)}
    assert enqueue(store, rows, now=NOW).added == rows.height
    tasks_path = tmp_path / "tasks.json"
    export_label_studio(store, tasks_path, image_root=str(demo_root / "images"), now=NOW)
    tasks = json.loads(tasks_path.read_text())
    answered = answer_tasks(truth, tasks, accuracy=1.0, seed=0, now=NOW)
    assert [t["data"] for t in answered] == [t["data"] for t in tasks]
    ann = answered[0]["annotations"][0]
    assert ann["result"][0] == {
        "id": ann["result"][0]["id"],
        "from_name": "label",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [true[answered[0]["data"]["sample_id"]]]},
        "origin": "manual",
    }
    assert len({t["annotations"][0]["id"] for t in answered}) == len(answered)
    out = tmp_path / "answered.json"
    out.write_text(json.dumps(answered))
    result = import_label_studio(store, out, classes=classes, now=NOW)
    assert (result.applied, result.skipped) == (rows.height, 0), result
    got = read_answers(store)
    assert dict(zip(got["sample_id"], got["label"], strict=True)) == true
    assert set(got["completed_by"]) == {demo.ANNOTATOR["email"]}
    flipped_ids = rows.filter(pl.col("reason") == "label_issue")["sample_id"].to_list()
    relabeled = got.filter(pl.col("sample_id").is_in(flipped_ids))
    assert (relabeled["label"] != relabeled["previous_label"]).all()
    # answering the same export again gives the same annotation ids: a re-import changes nothing
    again = answer_tasks(truth, tasks, accuracy=1.0, seed=0, now=NOW)
    assert again == answered
    assert import_label_studio(store, out, classes=classes, now=NOW).unchanged == rows.height

    # round 2: the same samples re-queued, exported for Label Studio's local-files storage,
    # answered by an annotator who is always wrong: new annotation ids, every answer applied
    assert enqueue(store, rows, requeue_answered=True, now=NOW).requeued == rows.height
    tasks2 = tmp_path / "tasks2.json"
    export_label_studio(store, tasks2, image_root="/data/local-files/?d=data/demo/images")
    out2 = tmp_path / "answered2.json"
    out2.write_text(json.dumps(answer_tasks(truth, json.loads(tasks2.read_text()), 0.0, seed=3)))
    assert import_label_studio(store, out2, classes=classes).applied == rows.height
    wrong = _answered(out2)
    assert all(wrong[s] != true[s] and wrong[s] in classes for s in true)
    latest = read_answers(store)
    assert dict(zip(latest["sample_id"], latest["label"], strict=True)) == wrong


def test_answer_accuracy_seed_and_bad_tasks(truth: DemoTruth) -> None:
    tasks = [{"data": {"image": f"/x/images/{p.path}", "sample_id": p.path}} for p in truth.pool]

    def chosen(accuracy: float, seed: int) -> list[str]:
        answered = answer_tasks(truth, tasks, accuracy=accuracy, seed=seed, now=NOW)
        return [t["annotations"][0]["result"][0]["value"]["choices"][0] for t in answered]

    true = [p.true_label for p in truth.pool]
    half = chosen(0.5, seed=1)
    n_right = sum(a == b for a, b in zip(half, true, strict=True))
    assert 0.4 * len(true) < n_right < 0.6 * len(true)
    assert half == chosen(0.5, seed=1) and half != chosen(0.5, seed=2)
    assert chosen(1.0, seed=5) == true
    answered = answer_tasks(truth, tasks[:3], now=NOW)
    assert [t["id"] for t in answered] == [1, 2, 3] and "annotations" not in tasks[0]
    with pytest.raises(ValueError, match="accuracy"):
        answer_tasks(truth, tasks, accuracy=1.5)
    with pytest.raises(ValueError, match="no data.image"):
        answer_tasks(truth, [{"data": {"text": "hello", "sample_id": "t1"}}])
    with pytest.raises(ValueError, match="'t2'"):
        answer_tasks(truth, [{"data": {"image": "/x/images/train/3/nope.png", "sample_id": "t2"}}])


def test_answer_queue_script(demo_root: Path, truth: DemoTruth, tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "answer_queue", Path(__file__).resolve().parents[1] / "data" / "answer_queue.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    paths = [f.path for f in truth.flipped[:4]]
    tasks = [{"data": {"image": f"images/{p}", "sample_id": p}} for p in paths]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    argv = [str(tmp_path / "tasks.json"), str(tmp_path / "out.json"), "--demo", str(demo_root)]
    assert script.main(argv) == 0
    assert _answered(tmp_path / "out.json") == {f.path: f.true_label for f in truth.flipped[:4]}
    assert "answered 4 task(s)" in capsys.readouterr().out
    assert script.main([*argv, "--accuracy", "0"]) == 0
    assert "0 with the true label, 4 wrong" in capsys.readouterr().out
    assert script.main([argv[0], argv[1], "--demo", str(tmp_path / "none")]) == 2
    assert "truth.json" in capsys.readouterr().err
