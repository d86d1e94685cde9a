"""`export` copies or embeds source image files: one edited after its version was committed is
refused (named, with what to do), or with `--allow-changed` exported and listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leanset.pipelines.cli import main
from leanset.pipelines.flows import clean_flow
from leanset.pipelines.store import Store
from tests.helpers import make_imagefolder, pixel_flow, write_png
from tests.reliability.conftest import TALLY


@pytest.fixture
def edited(prefect_harness, tmp_path: Path) -> tuple[Store, str, bytes]:
    """A committed version, then one of its kept images rewritten with other pixels."""
    make_imagefolder(tmp_path / "images")
    clean_flow(config_path=str(pixel_flow(tmp_path, "f")), flow_name="f")
    store = Store(tmp_path / "store")
    rel = store.read("dataset")["image_path"][0]
    path = tmp_path / "images" / rel
    write_png(path, np.random.default_rng(9).integers(0, 256, size=(16, 16)))
    return store, rel, path.read_bytes()


FORMATS = [["--format", "imagefolder"], ["--format", "hf", "--embed-images"]]


@pytest.mark.parametrize("fmt", FORMATS, ids=["imagefolder", "hf-embed"])
def test_an_image_edited_after_the_commit_is_refused(edited, tmp_path: Path, fmt, capsys):
    store, rel, _ = edited
    TALLY[f"hostile inputs tried: export of an image edited after the commit ({fmt[1]})"] += 1
    out = tmp_path / "out"
    assert main(["export", str(store.root), *fmt, "--out", str(out)]) == 2
    printed = capsys.readouterr().out
    assert Path(rel).name in printed and "changed after the version was committed" in printed
    assert "--allow-changed" in printed and "Traceback" not in printed
    TALLY["hostile inputs refused"] += 1


def test_allow_changed_exports_the_file_and_lists_it(edited, tmp_path: Path, capsys):
    store, rel, now = edited
    out = tmp_path / "out"
    args = ["export", str(store.root), "--format", "imagefolder", "--out", str(out)]
    assert main([*args, "--allow-changed"]) == 0
    printed = capsys.readouterr().out
    row = store.read("dataset").filter(image_path=rel).row(0, named=True)
    assert "1 image file(s) changed" in printed and row["sample_id"] in printed
    copied = out / row["split"] / row["label"] / Path(rel).name
    assert copied.read_bytes() == now
