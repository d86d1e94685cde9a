"""The HTML report and the console summary, rendered from hand-made manifests and decisions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl

from leanset.pipelines.cli.console import console, print_summary
from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.report.calibration import calibration_section
from leanset.pipelines.report.html import render
from leanset.pipelines.sources import load_source
from leanset.pipelines.store.manifest import Counts
from leanset.pipelines.summary import RunSummary

EDGES = [round(0.6 + 0.01 * i, 2) for i in range(41)]  # 0.60 .. 1.00
COUNTS = [0] * 10 + [3, 9, 40, 120, 300, 500, 420, 300, 200, 90] + [40] * 10 + [5] * 9 + [60]
CALIBRATION = {
    "threshold": 0.973,
    "rule": "the valley between the bulk and the duplicate peak",
    "nn_histogram": {"edges": EDGES, "counts": COUNTS},
    "drops_by_threshold": {"0.95": 812, "0.96": 401, "0.97": 133, "0.98": 90, "0.99": 61},
}


def test_calibration_histogram_threshold_line_and_drops_table():
    page = calibration_section(
        {"calibration": CALIBRATION, "config": {"dedup": {"threshold": 0.973}}}
    )
    svg = page[page.index("<svg") : page.index("</svg>")]
    bars = re.findall(r"<rect x='([\d.]+)' y='[\d.]+' width='([\d.]+)'[^>]*fill='#4a7fb5'", svg)
    assert len(bars) == sum(1 for c in COUNTS if c)  # one bar per non-empty bin
    line = float(re.search(r"<line x1='([\d.]+)'[^>]*stroke='#d22'", svg).group(1))
    # the red line sits at 0.973 on the x axis (plot from x=56 to x=704 for 0.60 .. 1.00)
    left, right = 56, 720 - 16
    assert abs(line - (left + (0.973 - 0.6) / 0.4 * (right - left))) < 0.2
    bin_97 = float(bars[sum(1 for c in COUNTS[:37] if c)][0])  # the bar of bin 0.97..0.98
    assert bin_97 < line < bin_97 + (right - left) / 40
    assert "threshold 0.973" in svg
    assert "the valley between" in page
    rows = re.findall(r"<td class=n>([\d.]+)</td><td class=n>([\d,]+)</td>", page)
    assert rows == [
        ("0.95", "812"),
        ("0.96", "401"),
        ("0.97", "133"),
        ("0.98", "90"),
        ("0.99", "61"),
    ]
    assert "font-weight:700><td class=n>0.97<" in page  # the nearest threshold is marked


def test_no_or_malformed_calibration_evidence_is_said_in_words():
    assert "No calibration evidence" in calibration_section({})
    broken = dict(CALIBRATION, nn_histogram={"edges": EDGES[:10], "counts": COUNTS})
    assert "malformed" in calibration_section({"calibration": broken})


def test_calibration_as_the_dedup_stage_records_it_pixels_hashes_and_too_few_samples():
    # the record's shape when the threshold was read off the data: extra keys, a note on what the
    # drop counts are, a pixels route with its own histogram, a hashes route with a rule only
    record = dict(
        CALIBRATION,
        drops_note="samples with a neighbour at least that similar, estimated from 2,000 sampled",
        basis="embedding:fp",
        setting="auto",
        contents=1897,
        reused=True,
        pixels={
            "threshold": 0.9,
            "rule": "pixels: 0.5 of the way from 0.8 to 1",
            "nn_histogram": {"edges": EDGES, "counts": COUNTS},
            "drops_by_threshold": {"0.9000": 7},
        },
        hashes={"threshold": 4.0, "rule": "hashes: 4 bits: half of 8.0 bits"},
    )
    page = calibration_section({"calibration": record, "config": {"dedup": {"threshold": "auto"}}})
    assert page.count("<svg") == 2 and "malformed" not in page
    assert "Samples with a neighbour at least that similar, estimated from 2,000" in page
    assert "Kept from the parent version" in page
    assert "<h3>Thumbnails (pixels route)</h3>" in page and "pixels: 0.5 of the way" in page
    assert "<h3>Perceptual hashes</h3>" in page and "hashes: 4 bits: half of 8.0 bits" in page
    assert "At most <b>4</b> bits apart." in page
    assert "<code>dedup.threshold</code> is <b>auto</b>" in page
    assert re.findall(r"<td class=n>([\d.]+)</td><td class=n>([\d,]+)</td>", page)[-1] == (
        "0.9",
        "7",
    )
    # too few samples to draw a histogram: the threshold and its rule, in words, not "malformed"
    few = {"threshold": 0.999, "rule": "embedding: too few samples to calibrate (5)", "contents": 5}
    page = calibration_section({"calibration": few})
    assert "<svg" not in page and "malformed" not in page
    assert "Threshold <b>0.999</b>; no nearest-neighbour histogram" in page
    assert "too few samples to calibrate (5)" in page
    assert "malformed" in calibration_section({"calibration": {"rule": "no threshold"}})
    assert "malformed" in calibration_section({"calibration": dict(few, pixels="high")})


def _version(tmp_path: Path):
    """A tiny imagefolder, its loaded dataset and hand-made decisions for it."""
    from tests.helpers import write_png

    rng = np.random.default_rng(0)
    for k, split in enumerate(["train", "train", "train", "test", "train", "train"]):
        write_png(tmp_path / f"images/{split}/{'ab'[k % 2]}/s{k}.png", rng.integers(0, 255, (8, 8)))
    data = load_source(
        SourceSettings(type="imagefolder", path=str(tmp_path / "images")), ColumnSettings()
    )
    t = data.table.sort("position")
    ids = t["sample_id"].to_list()
    n = t.height
    g = [ids[0]] * 3 + [None] * (n - 3)
    decisions = t.select("sample_id", "position", "source", "split", "label").with_columns(
        pl.Series("dup_group", g, dtype=pl.Utf8),
        pl.Series("exact_dup_of", [None, ids[0]] + [None] * (n - 2), dtype=pl.Utf8),
        pl.Series("near_dup_of", [None, None, ids[0]] + [None] * (n - 3), dtype=pl.Utf8),
        pl.Series("dup_similarity", [None, 1.0, 0.991] + [None] * (n - 3)),
        pl.Series("leak_of", [None] * n, dtype=pl.Utf8),
        pl.Series("kept", [True, False, False] + [True] * (n - 3)),
        pl.Series("drop_reason", [None, "exact_duplicate", "near_duplicate"] + [None] * (n - 3)),
        pl.Series("error", [None] * n, dtype=pl.Utf8),
        pl.Series("label_issue", [False] * (n - 1) + [True]),
        pl.Series("label_quality", [0.9] * (n - 1) + [5.1e-06]),
        pl.Series("suggested_label", ["a"] * (n - 1) + ["b" if t["label"][-1] == "a" else "a"]),
        pl.Series("suggested_score", [0.9] * (n - 1) + [0.93]),
        pl.Series("label_action", [None] * (n - 1) + ["flagged"], dtype=pl.Utf8),
        pl.Series("label_before_human", [None] * (n - 1) + ["z"], dtype=pl.Utf8),
        pl.Series("relabel_source", [None] * (n - 1) + ["label-studio:42"], dtype=pl.Utf8),
    )
    counts = Counts.of(decisions.with_columns(pl.lit(False).alias("label_conflict")), ["test"], {})
    summary = RunSummary("demo", str(tmp_path / "store"), 2, 1, False, counts, statement="Saves.")
    return data, decisions, summary


def test_report_counts_groups_issues_human_labels_and_parent_link(tmp_path: Path):
    data, decisions, summary = _version(tmp_path)
    page = render(summary, decisions, data, {"calibration": CALIBRATION}, "v000001.html")
    assert "Counts by split" in page and "Counts by class" in page
    assert "<a href='v000001.html'>version 1</a>" in page
    groups = json.loads(re.search(r"const GROUPS=(\[.*?\]);const PER", page).group(1))
    assert len(groups) == 1 and groups[0].count("class='card") == 3  # every group, every member
    assert "given <b class=given>" in page and "suggested <b class=suggested>" in page
    assert "label quality &lt;0.001" in page and "5.1e-06" not in page
    assert "(93%)" in page
    assert "Human labels applied in this version (1)" in page and "Label Studio #42" in page
    assert "<span class=nowrap>sim 0.991</span>" in page
    assert "opacity" not in page  # dropped copies are not dimmed
    assert "<svg" in page


def test_group_thumbnails_are_small_jpegs_a_person_can_still_see(tmp_path: Path):
    """The group cards' thumbnails are JPEG (PNG encoding was most of a 10k-image report's
    time): each decodes to the sample's picture, at most THUMB_PX on its longer side."""
    import base64
    import io

    from PIL import Image

    from leanset.pipelines.report.html import THUMB_PX

    data, decisions, summary = _version(tmp_path)
    page = render(summary, decisions, data, {"calibration": CALIBRATION})
    uris = re.findall(r"src='data:image/(\w+);base64,([^']+)'", page)
    assert uris and {kind for kind, _ in uris} == {"jpeg"}
    for _, b64 in uris:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= THUMB_PX


def test_console_summary_prints_each_thing_once_and_no_reprs(tmp_path: Path):
    _, decisions, summary = _version(tmp_path)
    summary.statement = "Cleaning removes 2 of 6 samples. " + "Saves [some] GPU-hours. " * 9
    summary.labeling = {
        "label_issues": 1,
        "actions": {"flagged": 1},
        "policy": "flag",
        "probe_accuracy": 0.9221,
        "queue": {"added": 3, "by_reason": {"label_issue": 1, "uncertain": 2}, "waiting": 3},
    }
    summary.report = str(tmp_path / "r.html")
    Path(summary.report).write_text("x")
    with console.capture() as cap:
        print_summary(summary)
    out = cap.get()
    assert out.count("Cleaning removes 2 of 6 samples.") == 1
    assert " ".join(out.split()).count("Saves [some] GPU-hours.") == 9  # brackets are not markup
    assert not [line for line in out.splitlines() if line.endswith(" ")]
    assert "{" not in out and "None" not in out and "Result(" not in out
    assert "label issues: 1 (1 flagged: kept and queued for review)" in out
    assert "labeling queue: 3 added (1 label issues, 2 to label)" in out
    assert "report: " in out and "dropped: exact_duplicate" in out
    assert re.search(r"input\s+5\s+1\s+6", out)  # by split: train, test, all


def test_closest_calls_name_the_route_that_accepted_each_pair_and_its_setting(tmp_path: Path):
    data, decisions, summary = _version(tmp_path)
    n = decisions.height
    for evidence, words in (
        ("pixels", ["<b>pixels</b>", "leave <code>pixels</code> out of <code>dedup.confirm"]),
        ("hashes", ["<b>hashes</b>", "leave <code>hashes</code> out of"]),
        ("embedding", ["<b>embedding</b>", "<code>dedup.threshold</code>: raise it"]),
        ("embedding+pixels", ["Every one of these routes accepted it"]),
    ):
        dec = decisions.with_columns(
            pl.Series("dup_evidence", [None, "exact", evidence] + [None] * (n - 3), dtype=pl.Utf8)
        )
        page = render(summary, dec, data, {"calibration": CALIBRATION}, "v000001.html")
        closest = page[page.index("Closest calls") :]
        for w in words:
            assert w in closest, (evidence, w)
        if evidence == "pixels":
            assert "accepted by <b>embedding</b>" not in closest


def test_queue_line_adds_up_and_an_unlabeled_card_says_unlabeled(tmp_path: Path):
    data, decisions, summary = _version(tmp_path)
    summary.labeling = {
        "queue": {"added": 7, "by_reason": {"uncertain": 7}, "skipped_pending": 71, "waiting": 128}
    }
    with console.capture() as cap:
        print_summary(summary)
    out = " ".join(cap.get().split())
    assert (
        "128 waiting for a human in all = 7 added now + 71 proposed again (already waiting) + "
        "50 from earlier runs" in out
    )
    unlabeled = decisions.with_columns(pl.lit(None, dtype=pl.Utf8).alias("label"))
    page = render(summary, unlabeled, data, {}, None)
    assert "· unlabeled" in page and "label None" not in page and "· label <" not in page


def test_label_conflicts_are_shown_with_both_samples(tmp_path: Path):
    data, decisions, summary = _version(tmp_path)
    n = decisions.height
    conflict = [True, False, True] + [False] * (n - 3)  # rows 0 and 2: one group, two labels
    dec = decisions.with_columns(pl.Series("label_conflict", conflict))
    page = render(summary, dec, data, {}, None)
    section = page[page.index("Label conflicts (1 groups, 2 samples)") :]
    section = section[: section.index("<h2", 5)] if "<h2" in section[5:] else section
    assert section.count("class='card") == 2
