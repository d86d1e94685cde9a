"""The bundled demo data: layout, counts against truth.json, determinism, findability, loading."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dedup.evaluate import evaluate_groups
from pipelines import demo
from pipelines.demo import DemoTruth, make_demo


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
    """{path relative to images/: bytes} for every image file."""
    images = root / "images"
    return {
        p.relative_to(images).as_posix(): p.read_bytes()
        for p in sorted(images.rglob("*"))
        if p.is_file()
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
    assert set(splits) == {"train", "test"}
    assert splits["train"] == truth.counts["train_files"]
    assert splits["test"] == truth.counts["test_files"]
    assert len(files) == 1797 + truth.counts["copies"]
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
    score = evaluate_groups(truth.duplicate_groups(), found)
    assert score.precision >= 0.97 and score.recall >= 0.97, score.summary()
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
    raw["groups"][3]["kind"] = "fuzzy"
    (tmp_path / "truth.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"groups\[3\]"):
        DemoTruth.load(tmp_path)


def test_features_match_the_pixel_embedder(demo_root: Path, truth: DemoTruth) -> None:
    embed = pytest.importorskip("pipelines.embed")
    embedder_cls = getattr(embed, "PixelEmbedder", None)
    if embedder_cls is None:
        pytest.skip("pipelines.embed has no PixelEmbedder")
    embedder = embedder_cls(demo.FEATURE_SIZE)
    paths = [p for g in truth.groups[:20] for p in g.paths]
    data = [(demo_root / "images" / p).read_bytes() for p in paths]
    theirs = embedder.encode([embedder.prepare(d) for d in data])
    ours = np.stack([demo._features(d) for d in data])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_loads_with_datasets_imagefolder(demo_root: Path, truth: DemoTruth, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(demo_root / "images"), cache_dir=str(tmp_path / "hf")
    )
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].num_rows == truth.counts["train_files"]
    assert loaded["test"].num_rows == truth.counts["test_files"]
    names = loaded["train"].features["label"].names
    assert names == [str(d) for d in range(10)]
    rows = loaded["train"].cast_column("image", datasets.Image(decode=False))
    for row in rows.select(range(50)):
        folder = Path(row["image"]["path"]).parent.name
        assert names[row["label"]] == folder
    image = loaded["test"][0]["image"]
    assert image.size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE) and image.mode == "L"
