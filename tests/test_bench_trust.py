"""The trust benchmark: scoring and flow settings on tiny truths with known answers, the text
edits, and the whole benchmark once in quick mode on the small text set (the real CLI, MiniLM,
Datalab)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest

from bench.trust import build, flow, run, score, text


def _sample(path: str, role: str, key: str) -> dict[str, Any]:
    return {"path": path, "split": path.split("/")[0], "label": "x", "role": role, "key": key}


def tiny_truth() -> dict[str, Any]:
    """o1 has a train copy c1 and a test leak t1; n1 ~ n2 are natural near copies; i1, i2 are
    innocent originals, i2 with a flipped label."""
    samples = [
        _sample("train/x/o1.jpg", "original", "a"),
        _sample("train/x/c1.jpg", "copy", "a"),
        _sample("test/x/t1.jpg", "copy", "a"),
        _sample("train/x/n1.jpg", "original", "mvtb/calibration/f1#r0c0"),
        _sample("test/x/n2.jpg", "original", "mvtb/calibration/f2#r0c0"),
        _sample("train/x/i1.jpg", "original", "b"),
        _sample("train/x/i2.jpg", "original", "c"),
    ]
    pairs = [
        {"a": "train/x/o1.jpg", "b": "train/x/c1.jpg", "kind": "jpeg", "leak": False},
        {"a": "train/x/o1.jpg", "b": "test/x/t1.jpg", "kind": "crop", "leak": True},
    ]
    return {
        "samples": samples,
        "pairs": pairs,
        "groups": [["train/x/o1.jpg", "train/x/c1.jpg", "test/x/t1.jpg"]],
        "natural_groups": [["train/x/n1.jpg", "test/x/n2.jpg"]],
        "label_flips": [{"path": "train/x/i2.jpg", "label": "x", "true_label": "y", "key": "c"}],
    }


def decisions(rows: dict[str, dict[str, Any]]) -> pl.DataFrame:
    """A decisions table over the tiny truth; `rows` gives the non-default columns by source."""
    base = {"kept": True, "drop_reason": None, "leak_of": None, "near_dup_of": None,
            "exact_dup_of": None, "dup_group": None, "dup_similarity": None, "label_issue": False}  # fmt: skip
    out = []
    for s in tiny_truth()["samples"]:
        sid = "id-" + s["path"].split("/")[-1]
        out.append({"sample_id": sid, "source": s["path"], **base, **rows.get(sid, {})})
    return pl.DataFrame(out, schema_overrides={"dup_similarity": pl.Float64})


def test_a_perfect_run_scores_one_and_natural_pairs_count_neither_way() -> None:
    truth = score.load_truth(tiny_truth())
    table = decisions(
        {
            "id-t1.jpg": {"dup_group": "id-t1.jpg"},
            "id-o1.jpg": {
                "kept": False,
                "drop_reason": "test_leak",
                "leak_of": "id-t1.jpg",
                "dup_group": "id-t1.jpg",
                "dup_similarity": 0.97,
            },  # fmt: skip
            "id-c1.jpg": {
                "kept": False,
                "drop_reason": "test_leak",
                "leak_of": "id-t1.jpg",
                "dup_group": "id-t1.jpg",
            },  # fmt: skip
            "id-n2.jpg": {"dup_group": "id-n2.jpg"},
            "id-n1.jpg": {
                "kept": False,
                "drop_reason": "test_leak",
                "leak_of": "id-n2.jpg",
                "dup_group": "id-n2.jpg",
            },  # fmt: skip
            "id-i2.jpg": {"label_issue": True},
        }
    )
    s = score.score_leanset(score.decisions_from_table(table, truth), truth)
    assert (s["pair_precision"], s["pair_recall"], s["natural_pairs"]) == (1.0, 1.0, 1)
    assert s["pair_precision_strict"] == pytest.approx(3 / 4)
    assert (s["leak_recall"], s["leak_precision"], s["natural_leaks"]) == (1.0, 1.0, 1)
    assert s["originals_dropped"] == [] and s["natural_originals_dropped"] == 1
    assert s["by_kind"] == {"jpeg": {"n": 1, "recall": 1.0}, "crop": {"n": 1, "recall": 1.0}}
    assert (s["labels"]["precision"], s["labels"]["recall"]) == (1.0, 1.0)


def test_a_leak_dropped_as_a_leak_of_a_natural_sibling_is_closed_but_not_found() -> None:
    """The original o1 has a natural near copy s1 in test: dropped as its leak (with the test copy
    t1 kept) it is out of training, but not linked to t1; with t1 dropped it is neither."""
    raw = tiny_truth()
    raw["samples"].append(_sample("test/x/s1.jpg", "original", "mvtb/calibration/f3#r0c0"))
    raw["natural_groups"].append(["train/x/o1.jpg", "test/x/s1.jpg"])
    truth = score.load_truth(raw)
    base = {"sample_id": "id-s1.jpg", "source": "test/x/s1.jpg", "kept": True, "drop_reason": None,
            "leak_of": None, "near_dup_of": None, "exact_dup_of": None, "dup_group": "id-s1.jpg",
            "dup_similarity": None, "label_issue": False}  # fmt: skip
    leak = {
        "kept": False,
        "drop_reason": "test_leak",
        "leak_of": "id-s1.jpg",
        "dup_group": "id-s1.jpg",
    }
    for t1_kept, closed in ((True, 1.0), (False, 0.0)):
        t1 = {"dup_group": "id-s1.jpg"} if t1_kept else {**leak, "drop_reason": "near_duplicate"}
        table = pl.concat(
            [decisions({"id-o1.jpg": leak, "id-t1.jpg": t1}), pl.DataFrame([base])],
            how="vertical_relaxed",
        )
        s = score.score_leanset(score.decisions_from_table(table, truth), truth)
        assert (s["leak_recall"], s["leak_recall_closed"]) == (0.0, closed)


def test_a_leak_whose_test_copy_is_dropped_is_not_found_and_innocent_drops_are_listed() -> None:
    truth = score.load_truth(tiny_truth())
    table = decisions(
        {
            "id-o1.jpg": {"dup_group": "id-o1.jpg"},
            "id-t1.jpg": {
                "kept": False,
                "drop_reason": "test_leak",
                "leak_of": "id-o1.jpg",
                "dup_group": "id-o1.jpg",
            },  # fmt: skip
            "id-i2.jpg": {
                "kept": False,
                "drop_reason": "near_duplicate",
                "near_dup_of": "id-i1.jpg",
                "dup_group": "id-i1.jpg",
                "dup_similarity": 0.96,
            },  # fmt: skip
            "id-i1.jpg": {"dup_group": "id-i1.jpg"},
        }
    )
    s = score.score_leanset(score.decisions_from_table(table, truth), truth)
    assert s["leak_recall"] == 0.0
    assert s["originals_dropped_frac"] == 0.5
    assert s["originals_dropped"][0]["matched_key"] == "b"
    assert s["originals_dropped"][0]["similarity"] == 0.96
    # pairs: (o1, t1) right, (i1, i2) wrong; 3 truth pairs
    assert (s["pair_precision"], s["pair_recall"]) == (0.5, pytest.approx(1 / 3))
    # the flipped sample was dropped by dedup, so label noise never judged it
    assert s["labels"]["recall"] == 0.0 and s["labels"]["flips_not_judged"] == 1


def test_a_pair_set_is_scored_per_pair() -> None:
    truth = score.load_truth(tiny_truth())
    row = truth.row_of
    found = {(row["train/x/o1.jpg"], row["train/x/c1.jpg"]), (row["train/x/n1.jpg"], row["test/x/n2.jpg"]),
             (row["train/x/i1.jpg"], row["train/x/i2.jpg"])}  # fmt: skip
    s = score.score_pair_set(found, truth)
    assert (s["pair_precision"], s["pair_recall"]) == (0.5, pytest.approx(1 / 3))
    assert s["by_kind"]["jpeg"]["recall"] == 1.0 and s["by_kind"]["crop"]["recall"] == 0.0
    assert s["originals_flagged_frac"] == 1.0


def test_decisions_of_another_set_are_refused() -> None:
    truth = score.load_truth(tiny_truth())
    table = decisions({}).with_columns(pl.col("source").str.replace("o1", "zz"))
    with pytest.raises(ValueError, match="do not describe this set"):
        score.decisions_from_table(table, truth)


def test_overrides_are_yaml_values_in_their_section(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    overrides = [flow.parse_override("dedup.threshold=auto"), flow.parse_override("dedup.keep=last"),
                 flow.parse_override("label_noise.filter_by=both")]  # fmt: skip
    body = flow.flow_body(tmp_path / "images", tmp_path / "store", overrides)
    assert body["dedup"] == {"threshold": "auto", "keep": "last"}
    assert body["label_noise"] == {"policy": "flag", "filter_by": "both"}
    assert flow.parse_override("dedup.threshold=0.95").value == 0.95
    assert flow.run_tag(overrides[:1]) == "dedup.threshold=auto"
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        flow.parse_override("threshold=0.9")


@pytest.mark.parametrize("kind", list(text.EDITS))
def test_every_text_edit_changes_the_passage_and_keeps_most_of_it(kind: str) -> None:
    passage = (
        "Return the absolute path of a file. The path is normalised first.\n\n"
        "On Windows, the drive letter is kept. Symbolic links are not resolved, "
        "so the result may name a link. Use the strict form to resolve them."
    )
    rng = np.random.default_rng(3)
    for _ in range(5):
        copy, params = text.edited(kind, passage, rng)
        assert copy != passage and "edit_seed" in params
        shared = set(copy.lower().split()) & set(passage.lower().split())
        assert len(shared) >= 0.4 * len(set(passage.lower().split())), (kind, copy)


def test_quick_mode_keeps_a_few_whole_classes_in_order() -> None:
    items = [SimpleNamespace(label=c, i=i) for i, c in enumerate("abcd" * 30 + "e" * 3)]
    got = build.few_per_class(items, np.random.default_rng(0))
    labels = {o.label for o in got}
    assert len(labels) == build.QUICK_CLASSES and "e" not in labels
    assert all(sum(o.label == c for o in got) == build.QUICK_PER_CLASS for c in labels)
    assert [o.i for o in got] == sorted(o.i for o in got)


@pytest.mark.slow  # a real Prefect server in a child process: about a minute on a quiet machine
def test_the_quick_benchmark_runs_the_cli_and_scores_what_it_committed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    assert run.main(["--quick", "--sets", "text", "--root", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (r,) = json.loads(out.read_text())["results"]
    truth = json.loads((tmp_path / "text-quick-s0" / "truth.json").read_text())
    assert r["counts"] == truth["counts"] and truth["quick"] is True
    lean = r["leanset"]
    assert lean["version"] == 1 and lean["error"] is None and lean["guard"]["refused"] is False
    s = lean["scores"]
    for key in ("pair_precision", "pair_recall", "leak_recall", "originals_dropped_frac"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["truth_pairs"] > 0 and s["found_pairs"] > 0  # the decisions were mapped to the set
    assert "dup_evidence" in lean["extra_columns"]
    assert lean["manifest"]["calibration"]["setting"] == "auto"
    planted = sum(v["n"] for v in s["by_kind"].values())
    assert planted == truth["counts"]["copies_in_train"] + truth["counts"]["leaks"]
    assert r["datalab"]["label_oof"]["flips"] == truth["counts"]["label_flips"]
    assert "## text (seed 0)" in printed and "duplicate pairs: precision" in printed


def test_a_shared_file_hash_cache_keeps_its_seal(tmp_path: Path) -> None:
    from leanset.pipelines.sources.hashes import FileHashCache
    from leanset.pipelines.store.layout import StoreLayout

    src, dst = tmp_path / "src", tmp_path / "dst"
    photo = tmp_path / "a.png"
    photo.write_bytes(b"not really a png")
    for store, digest in ((dst, "old"), (src, "new")):  # dst holds an older sealed cache
        cache = FileHashCache(StoreLayout.of(store).file_hashes)
        cache.put(str(photo), photo.stat(), digest)
        cache.save()
    flow.share_caches(src, dst)
    shared = FileHashCache(StoreLayout.of(dst).file_hashes)  # stale seal: read as damaged, empty
    assert shared.get(str(photo), photo.stat()) == ("new", photo.stat().st_size)
