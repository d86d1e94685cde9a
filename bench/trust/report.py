"""The trust benchmark's tables (markdown, printed and pasteable) from its results mapping.

One section per dataset (leanset beside Datalab on every measure, with the issue's target; then
recall per kind of copy; the guard's verdict, the calibrated thresholds, the evidence that
accepted the drops; the innocent originals dropped), then the cross-set tables.
`python -m bench.trust.report RESULTS.json` prints them again from a results file."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.trust import text, transforms

KINDS: tuple[str, ...] = tuple(dict.fromkeys(transforms.KINDS + text.KINDS))

Result = dict[str, Any]


def _table(header: Sequence[str], rows: list[list[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def set_name(r: Result) -> str:
    return f"{r['set']} (seed {r['seed']})"


def leanset_label(r: Result) -> str:
    """`leanset [tag]`, marked when the guard refused the run."""
    verdict = r["leanset"]["guard"]
    mark = " (guard refused; forced)" if verdict["refused"] and verdict["forced"] else ""
    mark = " (guard refused)" if verdict["refused"] and not verdict["forced"] else mark
    mark = " (run stopped, see below)" if r["leanset"].get("error") else mark
    return f"leanset [{r['leanset']['tag']}]{mark}"


def summary_table(results: list[Result]) -> str:
    """Per set: leanset against Datalab near_duplicate on pairs, leaks and originals dropped."""
    header = ["set", "method", "pair P", "pair R", "F1", "leak R (test kept)",
              "originals dropped", "train dropped", "largest group", "seconds"]  # fmt: skip
    rows = []
    for r in results:
        s = r["leanset"].get("scores")
        if s is None:
            seconds = _f(r["leanset"]["seconds"], ".0f")
            rows.append([set_name(r), leanset_label(r), *["–"] * 7, seconds])
        else:
            rows.append([set_name(r), leanset_label(r), _f(s["pair_precision"]), _f(s["pair_recall"]),
                         _f(s["pair_f1"]), _f(s["leak_recall"]), _pct(s["originals_dropped_frac"]),
                         _pct(s["train_dropped_frac"]), str(s["largest_group"]),
                         _f(r["leanset"]["seconds"], ".0f")])  # fmt: skip
        d = r["datalab"]["near_duplicate"]
        rows.append([set_name(r), "Datalab near_duplicate (default)", _f(d["pair_precision"]),
                     _f(d["pair_recall"]), _f(d["pair_f1"]), "–",
                     _pct(d["originals_flagged_frac"]) + " flagged", "–", "–", _f(d["seconds"], ".1f")])  # fmt: skip
    return _table(header, rows, right_from=2)


def _kinds(results: list[Result]) -> list[str]:
    """The kinds of copy planted in any of these sets, in KINDS order (then any other)."""
    seen = {k for r in results for k in r["datalab"]["near_duplicate"]["by_kind"]}
    return [k for k in KINDS if k in seen] + sorted(seen - set(KINDS))


def kind_table(results: list[Result]) -> str:
    """Recall per kind of copy, leanset / Datalab, one column per set."""
    header = ["kind"] + [f"{set_name(r)}: n, leanset / Datalab" for r in results]
    rows = []
    for kind in _kinds(results):
        row = [kind]
        for r in results:
            d = r["datalab"]["near_duplicate"]["by_kind"].get(kind)
            s = (r["leanset"].get("scores") or {}).get("by_kind", {}).get(kind)
            n = (d or s or {}).get("n", 0)
            row.append(f"{n}: {_f(s and s['recall'], '.2f')} / {_f(d and d['recall'], '.2f')}")
        rows.append(row)
    return _table(header, rows)


def label_table(results: list[Result]) -> str:
    """Label issues on the train split against the planted flips: leanset and Datalab."""
    header = ["set", "flips", "leanset P / R / F1", "leanset probe (OOF acc)", "flips not judged",
              "Datalab label, k-NN P / R / F1", "Datalab label, OOF LR P / R / F1", "LR OOF acc"]  # fmt: skip
    rows = []
    for r in results:
        s = (r["leanset"].get("scores") or {}).get("labels")
        info = (r["leanset"].get("manifest") or {}).get("labeling", {})
        knn, oof = r["datalab"]["label_knn"], r["datalab"]["label_oof"]
        rows.append([set_name(r), str(knn["flips"]), _prf(s),
                     f"{info.get('probe', '–')} ({_f(info.get('probe_accuracy'))})",
                     str(s["flips_not_judged"]) if s else "–", _prf(knn), _prf(oof),
                     _f(oof.get("oof_accuracy"))])  # fmt: skip
    return _table(header, rows)


def _prf(s: dict[str, Any] | None) -> str:
    if not s:
        return "–"
    return f"{s['precision']:.3f} / {s['recall']:.3f} / {s['f1']:.3f} ({s['flagged']} flagged)"


def dropped_table(r: Result, limit: int) -> str:
    """The innocent originals leanset dropped: provenance and what each was matched to."""
    s = r["leanset"].get("scores")
    if not s or not s["originals_dropped"]:
        return f"{set_name(r)}: no innocent original dropped."
    items = s["originals_dropped"]
    rows = [[d["key"], d["path"], str(d["reason"]), _f(d["similarity"], ".4f"),
             str(d["matched_key"]), str(d["matched_path"])] for d in items[:limit]]  # fmt: skip
    more = f"\n\n... and {len(items) - limit} more (all in the JSON)" if len(items) > limit else ""
    head = f"{set_name(r)}: {len(items)} innocent originals dropped"
    header = ["provenance", "file", "reason", "similarity", "matched to", "its file"]
    table = _table(header, rows, right_from=len(header))
    return f"{head}\n\n{table}{more}"


def guard_lines(r: Result) -> list[str]:
    """The guard's verdict and, when it refused, its message; the calibration, when recorded."""
    v = r["leanset"]["guard"]
    out = [f"{set_name(r)}: guard {'REFUSED' if v['refused'] else 'passed'}"
           + (" (scored with --force)" if v["refused"] and v["forced"] else "")]  # fmt: skip
    if v["message"]:
        out.append(f"  {v['message']}")
    if r["leanset"].get("error"):
        out.append(f"  the run stopped: {r['leanset']['error']}")
    calibration = (r["leanset"].get("manifest") or {}).get("calibration")
    if calibration:
        out.append(f"  calibration: {calibration_line(calibration)}")
    evidence = (r["leanset"].get("scores") or {}).get("evidence")
    if evidence:
        said = ", ".join(f"{n} {e}" for e, n in sorted(evidence.items(), key=lambda kv: -kv[1]))
        out.append(f"  evidence that accepted the dropped duplicates: {said}")
    return out


def calibration_line(c: dict[str, Any]) -> str:
    """The thresholds the run used and the rule that chose the embedding's, in one line."""
    parts = [f"dedup.threshold {c.get('setting')} -> {_f(c.get('threshold'), '.4f')}"]
    for route in ("pixels", "hashes"):
        sub = c.get(route)
        if isinstance(sub, dict) and "threshold" in sub:
            parts.append(f"{route} {_f(sub['threshold'], '.4g')}")
    rule = f" ({c['rule']})" if c.get("rule") else ""
    return ", ".join(parts) + rule


def _leak_wrong(s: dict[str, Any]) -> int:
    """Train samples flagged as leaks of a test sample they are not a copy of."""
    judged = int(s["leaks_flagged"]) - int(s["natural_leaks"])
    return judged - round(float(s["leak_precision"]) * judged)


def _label_cells(s: dict[str, Any] | None, key: str) -> str:
    return _f(s[key]) if s else "–"


def dataset_table(r: Result) -> str:
    """One dataset: every measure, leanset beside Datalab, with the issue's target."""
    s = r["leanset"].get("scores") or {}
    d, oof = r["datalab"]["near_duplicate"], r["datalab"]["label_oof"]
    lab = s.get("labels")
    probe = (r["leanset"].get("manifest") or {}).get("labeling", {})
    dropped = s.get("originals_dropped")
    rows = [
        ["duplicate pairs: precision", _f(s.get("pair_precision")), _f(d["pair_precision"]), "≥ 0.95"],
        ["duplicate pairs: recall", _f(s.get("pair_recall")), _f(d["pair_recall"]), "≥ 0.9"],
        ["duplicate pairs: F1", _f(s.get("pair_f1")), _f(d["pair_f1"]), "above Datalab"],
        ["innocent originals dropped (Datalab: flagged)",
         f"{_pct(s.get('originals_dropped_frac'))} ({len(dropped)})" if dropped is not None else "–",
         _pct(d["originals_flagged_frac"]), "≤ 2%"],
        ["leaks found, test copy kept", _f(s.get("leak_recall")), "–", "≥ 0.95"],
        ["leaks closed: the original dropped as a leak of its copy or a natural sibling",
         _f(s.get("leak_recall_closed")), "–", ""],
        ["train samples wrongly flagged as leaks", str(_leak_wrong(s)) if s else "–", "–", "0"],
        ["train split dropped", _pct(s.get("train_dropped_frac")), "–", ""],
        ["largest duplicate group", str(s.get("largest_group", "–")), "–", ""],
        ["label issues: precision", _label_cells(lab, "precision"), _f(oof["precision"]), "≥ 0.9 *"],
        ["label issues: recall", _label_cells(lab, "recall"), _f(oof["recall"]), "≥ 0.9 *"],
        ["label issues: F1", _label_cells(lab, "f1"), _f(oof["f1"]), "above Datalab"],
        ["label issues flagged / flips planted",
         f"{lab['flagged']} / {lab['flips']}" if lab else "–", f"{oof['flagged']} / {oof['flips']}", ""],
        ["probe out-of-fold accuracy",
         f"{_f(probe.get('probe_accuracy'))} ({probe.get('probe', '–')})", _f(oof.get("oof_accuracy")), ""],
        ["seconds", _f(r["leanset"]["seconds"], ".0f"), _f(d["seconds"] + oof["seconds"], ".1f"), ""],
    ]  # fmt: skip
    header = ["measure", f"leanset [{r['leanset']['tag']}]", "Datalab", "target"]
    return _table(header, rows)


def dataset_kind_table(r: Result) -> str:
    """One dataset: recall per kind of copy, leanset and Datalab."""
    s = (r["leanset"].get("scores") or {}).get("by_kind", {})
    d = r["datalab"]["near_duplicate"]["by_kind"]
    rows = [[k, str(d[k]["n"]), _f(s.get(k, {}).get("recall"), ".2f"), _f(d[k]["recall"], ".2f")]
            for k in _kinds([r])]  # fmt: skip
    return _table(["kind of copy", "pairs", "leanset recall", "Datalab recall"], rows)


def dataset_section(r: Result, dropped_limit: int) -> str:
    """Everything about one dataset, in reading order."""
    counts = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in r["counts"].items())
    parts = [f"## {set_name(r)}", counts, dataset_table(r), LABEL_NOTE, dataset_kind_table(r),
             "\n".join(guard_lines(r)), dropped_table(r, dropped_limit)]  # fmt: skip
    return "\n\n".join(parts)


LABEL_NOTE = (
    "Datalab: near_duplicate at its defaults on the same vectors; label on out-of-fold "
    "probabilities of a logistic regression on them. * where the probe's out-of-fold accuracy "
    "is at least 0.9."
)


def render(results: list[Result], dropped_limit: int = 20) -> str:
    """Every table of the benchmark, in reading order."""
    parts = [dataset_section(r, dropped_limit) for r in results]
    parts += ["## All sets: near duplicates and leaks", summary_table(results),
              "## All sets: recall per kind of copy", kind_table(results),
              "## All sets: label issues (train split, planted flips)", label_table(results)]  # fmt: skip
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.trust.report RESULTS.json`: the tables of a results file."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.trust.report RESULTS.json", file=sys.stderr)
        return 2
    print(render(json.loads(Path(args[0]).read_text())["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
