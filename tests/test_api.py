"""`import leanset` from Python: clean a table or dataset in memory, read the Result, commit to a
store and read it back; inputs of each kind come back in their own type."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import leanset
from leanset.labeling.classorder import ClassOrderError
from leanset.pipelines.config import ConfigError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """300 sklearn digits as vectors, the last 20 exact copies of the first 20 (same labels)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x[:300].astype(np.float32), y[:300].copy()
    x[280:], y[280:] = x[:20], y[:20]
    return x, y


EXACT = {"threshold": 0.999}  # only the planted copies (the init default 0.95 joins digits)


def frame(y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i:03d}" for i in range(len(y))], "label": y.astype(str)})


def test_pandas_in_pandas_out_and_nothing_written(digits, tmp_path, monkeypatch):
    x, y = digits
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # every temporary file lands here
    r = leanset.clean(frame(y), id="id", label="label", embeddings=x, dedup=EXACT)
    kept = r.kept()
    assert isinstance(kept, pd.DataFrame) and len(kept) == 280
    assert set(kept["id"]) == {f"r{i:03d}" for i in range(280)}  # the copies are dropped
    assert r.decisions["drop_reason"].value_counts().filter(pl.col("drop_reason").is_not_null())[
        "count"
    ].to_list() == [20]
    groups = r.duplicates
    assert groups.height == 20 and groups["size"].to_list() == [2] * 20
    assert set(groups["evidence"]) == {"exact"} and all(len(m) == 1 for m in groups["members"])
    assert not r.committed and r.version is None
    assert r.summary.startswith("clean: decided in memory; nothing was written")
    assert r.cost is not None and (r.cost.samples_before, r.cost.samples_after) == (300, 280)
    assert os.listdir(tmp_path) == []  # the temporary input and store are gone


def test_each_input_kind_comes_back_in_its_own_type(digits):
    import datasets

    x, y = digits
    df = frame(y)
    inputs = {
        "polars": pl.from_pandas(df),
        "arrow": pa.Table.from_pandas(df, preserve_index=False),
        "dataset": datasets.Dataset.from_pandas(df, preserve_index=False),
    }
    for name, data in inputs.items():
        r = leanset.clean(data, id="id", label="label", embeddings=x, label_noise=None, dedup=EXACT)
        kept = r.kept()
        assert type(kept) is type(data), name
        assert kept.num_rows if name != "polars" else kept.height == 280
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(df.iloc[:280], preserve_index=False),
            "test": datasets.Dataset.from_pandas(df.iloc[280:], preserve_index=False),
        }
    )
    r = leanset.clean(dd, id="id", label="label", embeddings=x, label_noise=None, dedup=EXACT)
    kept = r.kept()
    assert isinstance(kept, datasets.DatasetDict) and kept["test"].num_rows == 20
    assert kept["train"].num_rows == 260  # the 20 originals leak into test
    assert r.decisions.filter(pl.col("drop_reason") == "test_leak").height == 20


def test_sections_are_checked_like_flows_yaml(digits):
    x, y = digits
    with pytest.raises(ConfigError, match=r"leanset.clean.*dedpu.*did you mean 'dedup'"):
        leanset.clean(frame(y), label="label", embeddings=x, dedpu={"threshold": 0.9})
    with pytest.raises(ConfigError, match=r"leanset.clean.*dedup.threshold"):
        leanset.clean(frame(y), label="label", embeddings=x, dedup={"threshold": "high"})
    with pytest.raises(ConfigError, match="embeddings: expected an array of 300 rows"):
        leanset.clean(frame(y), label="label", embeddings=x[:10])
    with pytest.raises(ConfigError, match="'source' is set by clean's arguments"):
        leanset.clean(frame(y), label="label", embeddings=x, source={})


def test_classes_name_the_order_of_given_probabilities(digits):
    """Probabilities in a user's class order decide as those in the sorted order."""
    x, y = digits
    rng = np.random.default_rng(0)
    y = y.copy()
    flipped = rng.choice(250, 15, replace=False)
    y[flipped] = (y[flipped] + 3) % 10
    names = [f"c{k}" for k in range(10)]  # c0..c9 sort as their digits
    probs = np.full((300, 10), 0.02, np.float32)
    probs[np.arange(300), digits[1]] = 0.82  # the true digit, whatever the given label
    df = pd.DataFrame({"label": [names[k] for k in y]})
    order = names[::-1]  # the user's model writes its columns c9..c0
    sorted_run = leanset.clean(df, label="label", embeddings=x, pred_probs=probs, dedup=EXACT)
    mine = leanset.clean(
        df, label="label", embeddings=x, pred_probs=probs[:, ::-1], classes=order, dedup=EXACT
    )
    flagged = set(mine.label_issues["sample_id"])
    assert flagged == set(sorted_run.label_issues["sample_id"]) and len(flagged) >= 10
    assert mine.label_issues["suggested_label"].to_list()[0] in names


def test_twenty_classes_in_their_natural_order_need_classes_and_are_recorded(digits):
    """c0..c19: the text order (c10 before c2) is refused before any commit; `classes=` runs."""
    x, y = digits
    rng = np.random.default_rng(1)
    y20 = np.where(rng.random(300) < 0.5, y, y + 10)  # 20 classes named c0..c19
    names = [f"c{k}" for k in range(20)]
    probs = np.full((300, 20), 0.01, np.float32)
    probs[np.arange(300), y20] = 0.81  # columns in the natural order c0, c1, ..., c19
    df = pd.DataFrame({"label": [names[k] for k in y20]})
    with pytest.raises(ClassOrderError, match="c10"):
        leanset.clean(df, label="label", embeddings=x, pred_probs=probs, dedup=EXACT)
    ok = leanset.clean(
        df, label="label", embeddings=x, pred_probs=probs, classes=names, dedup=EXACT
    )
    assert "classes c0, c1, c2, c3" in ok.summary and "order from label_noise.classes" in ok.summary
    assert ok.label_issues.height <= 3  # the given labels are the argmax: next to nothing to flag


def test_store_commits_and_open_store_reads_it(digits, tmp_path):
    x, y = digits
    store = tmp_path / "store"
    first = leanset.clean(frame(y), id="id", label="label", embeddings=x, store=store, dedup=EXACT)
    assert first.committed and first.version == 1 and "version 1 committed" in first.summary
    again = leanset.clean(frame(y), id="id", label="label", embeddings=x, store=store, dedup=EXACT)
    assert again.run.unchanged and again.version == 1
    assert again.decisions.sort("sample_id").equals(first.decisions.sort("sample_id"))
    more = leanset.clean(
        frame(y), id="id", label="label", embeddings=x, store=store, dedup={"threshold": 0.99}
    )
    assert more.version == 2
    s = leanset.open_store(store)
    assert s.versions() == [1, 2]
    assert s.decisions(1).sort("sample_id").equals(first.decisions.sort("sample_id"))
    kept = [set(s.decisions(v).filter(pl.col("kept"))["sample_id"]) for v in (1, 2)]
    diff = s.diff(1, 2)
    assert set(diff.left["sample_id"]) == kept[0] - kept[1]
    assert set(diff.entered["sample_id"]) == kept[1] - kept[0]
    out = s.export(tmp_path / "v2.parquet", version=2, decisions=True)
    assert pl.read_parquet(out).height == 300
    assert s.verify().ok
    with pytest.raises(Exception, match="no store here"):
        leanset.open_store(tmp_path / "nothing")


def test_images_render_with_thumbnails_and_the_histogram(tiny_images: Path):
    r = leanset.clean(tiny_images, embedder={"type": "pixels", "size": 16}, label_noise=None)
    page = r._repr_html_()
    assert "Largest duplicate groups" in page and page.count("data:image/png;base64,") >= 2
    assert "<svg" in page  # the threshold's histogram (threshold: auto from leanset init)
    assert isinstance(r.kept(), pl.DataFrame) and "image_path" in r.kept().columns


def test_run_runs_a_flow_without_prefect(tmp_path, tiny_images):
    from tests.helpers import pixel_flow

    config = pixel_flow(tmp_path, "tiny")
    r = leanset.run(config, "tiny", dedup={"threshold": 0.95})
    assert r.committed and r.version == 1
    assert r.decisions.filter(pl.col("drop_reason") == "exact_duplicate").height == 1
    assert leanset.run(config, "tiny", dedup={"threshold": 0.95}).run.unchanged
