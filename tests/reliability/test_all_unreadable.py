"""A dataset where every sample is unreadable is refused, naming the first errors; the store gets
no (empty) version."""

from __future__ import annotations

from pathlib import Path

import pytest

from leanset.pipelines.flows import clean_flow
from leanset.pipelines.sources import SourceError
from leanset.pipelines.store import Store
from tests.helpers import pixel_flow
from tests.reliability.conftest import TALLY


def _junk_folder(root: Path, empty: bool) -> Path:
    for split, cls, k in (("train", "a", 0), ("train", "b", 1), ("test", "a", 2)):
        path = root / split / cls / f"bad{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if empty else b"not a png at all")
    return root


@pytest.mark.parametrize(
    ("empty", "overrides", "why"),
    [
        (False, {}, "cannot decode image"),  # every file fails to decode (embedding)
        (True, {"dedup": {"near": False}, "embedder": None}, "empty file"),  # no embedder
    ],
    ids=["undecodable, pixel embedder", "empty files, exact dedup only"],
)
def test_every_sample_unreadable_is_refused(
    prefect_harness, tmp_path: Path, empty: bool, overrides: dict, why: str
):
    _junk_folder(tmp_path / "images", empty)
    config = pixel_flow(tmp_path, "junk", **overrides)
    TALLY["hostile inputs tried: dataset of unreadable samples only"] += 1
    with pytest.raises(SourceError, match="every one of the 3 samples is unreadable") as err:
        clean_flow(config_path=str(config), flow_name="junk")
    assert "train/a/bad0.png" in str(err.value) and why in str(err.value)
    assert Store(tmp_path / "store").latest() is None
    TALLY["hostile inputs refused"] += 1
