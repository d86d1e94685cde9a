"""`leaks.against`: near copies of outside sets leave the training splits, named in the decisions."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupError
from leanset.dedup.contamination import (
    Prior,
    Reference,
    contamination_columns,
    find_contamination,
)
from leanset.pipelines.config import ConfigError, load_flow
from leanset.pipelines.store import Store
from tests.helpers import pixel_flow_body, write_flows, write_png


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_training_rows_near_a_reference_are_named_and_eval_rows_are_left_alone():
    rng = np.random.default_rng(0)
    x = _unit(rng.normal(size=(6, 16)))
    ref = Reference("bench", ["r0", "r1"], ["hr0", "h5"], _unit(x[[0, 3]] + 0.01))
    table = pl.DataFrame(
        {
            "content_hash": [f"h{i}" for i in range(6)],
            "error": [None] * 6,
            "split": ["train", "train", "train", "test", "train", "train"],
        },
        schema_overrides={"error": pl.Utf8},
    )
    found = find_contamination(table, x, [ref], 0.95, ["test"])
    assert found.by == ["bench:r0", None, None, None, None, "bench:r1"]  # h5: same bytes
    assert found.similarity[5] == 1.0 and found.similarity[0] > 0.95
    out = contamination_columns(table, found, "drop")
    assert out["contamination_drop"].to_list() == ["contaminated", *[None] * 4, "contaminated"]
    assert found.found == {"bench": 2}
    with pytest.raises(DedupError, match="same embedder"):
        find_contamination(table, x, [Reference("b", ["r"], ["x"], _unit(x[:1, :8]))], 0.9, [])


def _images(root: Path, bases: list[np.ndarray], split: str, names: list[str]) -> None:
    for name, img in zip(names, bases, strict=True):
        write_png(root / f"{split}/a/{name}.png", img)


def test_a_flow_drops_copies_of_a_reference_store_and_rechecks_when_it_changes(
    prefect_harness, tmp_path: Path
):
    from leanset.pipelines.flows import clean_flow

    rng = np.random.default_rng(3)
    bases = [rng.integers(0, 256, (16, 16)) for _ in range(8)]
    _images(tmp_path / "bench", bases[:2], "test", ["b0", "b1"])
    near = [np.clip(b + rng.normal(0, 3, (16, 16)), 0, 255) for b in bases]
    _images(tmp_path / "mine", [near[0], *bases[2:6]], "train", ["c0", "m2", "m3", "m4", "m5"])
    common = {"dedup": {"threshold": 0.95}, "outliers": {"policy": "off"}}
    ref_body = pixel_flow_body(source={"type": "imagefolder", "path": "bench"}, store="benchstore")
    leaks = {"against": [{"store": "benchstore", "splits": ["test"]}]}
    mine = pixel_flow_body(source={"type": "imagefolder", "path": "mine"}, leaks=leaks)
    config = write_flows(tmp_path, bench=ref_body | common, mine=mine | common)
    clean_flow(config_path=str(config), flow_name="bench")
    first = clean_flow(config_path=str(config), flow_name="mine")
    store = Store(tmp_path / "store")
    rows = {r["source"]: r for r in store.read("decisions").iter_rows(named=True)}
    bench = {
        r["source"]: r
        for r in Store(tmp_path / "benchstore").read("decisions").iter_rows(named=True)
    }
    assert rows["train/a/c0.png"]["drop_reason"] == "contaminated"
    assert (
        rows["train/a/c0.png"]["contaminated_by"]
        == f"benchstore:{bench['test/a/b0.png']['sample_id']}"
    )
    assert first["counts"]["by_reason"] == {"contaminated": 1}
    assert store.latest()["checks"]["contamination"]["found"] == {"benchstore": 1}
    assert clean_flow(config_path=str(config), flow_name="mine")["unchanged"]
    # the reference gains a sample this dataset holds a copy of: the next run checks again
    _images(tmp_path / "bench", [near[3]], "test", ["b3"])
    clean_flow(config_path=str(config), flow_name="bench")
    again = clean_flow(config_path=str(config), flow_name="mine")
    assert not again["unchanged"] and again["counts"]["by_reason"] == {"contaminated": 2}


def test_a_source_reference_is_embedded_into_this_stores_cache_once(prefect_harness, tmp_path):
    from leanset.pipelines.flows import clean_flow

    rng = np.random.default_rng(4)
    bases = [rng.integers(0, 256, (16, 16)) for _ in range(5)]
    _images(tmp_path / "bench", bases[:2], "test", ["b0", "b1"])
    copy = np.clip(bases[1] + rng.normal(0, 3, (16, 16)), 0, 255)
    _images(tmp_path / "mine", [copy, *bases[2:]], "train", ["c1", "m2", "m3", "m4"])
    leaks = {"against": [{"source": {"type": "imagefolder", "path": "bench"}}], "policy": "flag"}
    body = pixel_flow_body(source={"type": "imagefolder", "path": "mine"}, leaks=leaks)
    config = write_flows(tmp_path, mine=body | {"dedup": {"threshold": 0.95}})
    clean_flow(config_path=str(config), flow_name="mine")
    shards = _shards(tmp_path / "store")
    decisions = Store(tmp_path / "store").read("decisions")
    flagged = decisions.filter(pl.col("contaminated_by").is_not_null())
    assert flagged["source"].to_list() == ["train/a/c1.png"] and flagged["kept"].to_list() == [True]
    assert flagged["contaminated_by"][0].startswith("bench:")
    write_png(tmp_path / "mine/train/a/m9.png", rng.integers(0, 256, (16, 16)))
    clean_flow(config_path=str(config), flow_name="mine")
    grown = {k: n - shards.get(k, 0) for k, n in _shards(tmp_path / "store").items()}
    assert set(grown.values()) == {1}  # one shard per cache: the new image; none for the reference


def _shards(store: Path) -> dict[str, int]:
    """Shards per cache folder (the embedder's, the thumbnails', the image measures')."""
    found: dict[str, int] = {}
    for path in (store / "cache").rglob("shard-*.npz"):
        found[path.parent.name] = found.get(path.parent.name, 0) + 1
    return found


def test_a_reference_needs_one_of_store_or_source(tmp_path: Path):
    body = pixel_flow_body(leaks={"against": [{"splits": ["test"]}]})
    with pytest.raises(ConfigError, match=r"leaks.against\[0\]: expected exactly one"):
        load_flow(write_flows(tmp_path, f=body), "f")


def test_a_changed_source_reference_is_read_again_by_the_next_run(prefect_harness, tmp_path):
    """Before: a source reference was re-read only when this dataset or its settings changed, so
    a reference file rewritten with a copy of a training image left that copy in."""
    from leanset.pipelines.flows import clean_flow

    rng = np.random.default_rng(6)
    bases = [rng.integers(0, 256, (16, 16)) for _ in range(6)]
    _images(tmp_path / "bench", bases[:2], "test", ["b0", "b1"])
    _images(tmp_path / "mine", bases[2:], "train", ["m2", "m3", "m4", "m5"])
    leaks = {"against": [{"source": {"type": "imagefolder", "path": "bench"}, "name": "bench"}]}
    body = pixel_flow_body(source={"type": "imagefolder", "path": "mine"}, leaks=leaks)
    config = write_flows(tmp_path, mine=body | {"dedup": {"threshold": 0.95}})
    first = clean_flow(config_path=str(config), flow_name="mine")
    assert first["counts"]["by_reason"] == {}
    assert clean_flow(config_path=str(config), flow_name="mine")["unchanged"]
    copy = np.clip(bases[4] + rng.normal(0, 3, (16, 16)), 0, 255)
    _images(tmp_path / "bench", [copy], "test", ["b1"])  # the same file, new content
    again = clean_flow(config_path=str(config), flow_name="mine")
    assert not again["unchanged"] and again["counts"]["by_reason"] == {"contaminated": 1}
    rows = Store(tmp_path / "store").read("decisions").filter(pl.col("kept").not_())
    assert rows["source"].to_list() == ["train/a/m4.png"]
    assert rows["contaminated_by"][0].startswith("bench:")
    assert clean_flow(config_path=str(config), flow_name="mine")["unchanged"]
    store = Store(tmp_path / "store")
    assert _searched(store) == (4, 0)  # the reference changed: every training content again
    # this dataset grows by a copy of a reference image: only the new row is searched
    _images(tmp_path / "mine", [bases[0]], "train", ["n0"])
    grown = clean_flow(config_path=str(config), flow_name="mine")
    assert grown["counts"]["by_reason"] == {"contaminated": 2}
    assert _searched(store) == (1, 4)
    dropped = store.read("decisions").filter(pl.col("kept").not_())["source"].sort().to_list()
    assert dropped == ["train/a/m4.png", "train/a/n0.png"]


def _searched(store: Store) -> tuple[int, int]:
    checked = store.latest()["checks"]["contamination"]
    return checked["searched"], checked["carried"]


def test_a_prior_search_is_carried_only_where_it_still_holds():
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(5, 16)))
    ref = Reference("b", ["r0", "r1"], ["hr0", "hr1"], _unit(x[[0, 1]] + 0.01))
    table = pl.DataFrame(
        {"content_hash": [f"h{i}" for i in range(5)], "error": [None] * 5, "split": ["train"] * 5},
        schema_overrides={"error": pl.Utf8},
    )
    full = find_contamination(table, x, [ref], 0.95, [])
    known = {f"h{i}": (full.by[i], float(full.similarity[i])) for i in range(4)}
    known["h1"] = (None, 0.0)  # what the prior says wins where it is used
    found = find_contamination(table, x, [ref], 0.95, [], prior=Prior(known, 0.95))
    assert (found.searched, found.carried) == (1, 4)
    assert found.by == ["b:r0", None, None, None, None] and found.found == {"b": 1}
    lower = find_contamination(table, x, [ref], 0.9, [], prior=Prior(known, 0.95))
    assert (lower.searched, lower.by[:2]) == (5, ["b:r0", "b:r1"])  # a miss may be a hit now
