"""The trust benchmark's tables (markdown, printed and pasteable) from its results mapping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.trust.transforms import KINDS

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


def kind_table(results: list[Result]) -> str:
    """Recall per kind of copy, leanset / Datalab, one column per set."""
    header = ["kind"] + [f"{set_name(r)}: n, leanset / Datalab" for r in results]
    rows = []
    for kind in KINDS:
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
        out.append(f"  calibration: {calibration}")
    return out


def render(results: list[Result], dropped_limit: int = 20) -> str:
    """Every table of the benchmark, in reading order."""
    parts = ["## Near duplicates and leaks", summary_table(results), "## Recall per kind of copy",
             kind_table(results), "## Label issues (train split, planted flips)",
             label_table(results), "## The dedup guard"]  # fmt: skip
    parts.append("\n".join(line for r in results for line in guard_lines(r)))
    parts.append("## Innocent originals dropped (look at them)")
    parts += [dropped_table(r, dropped_limit) for r in results]
    return "\n\n".join(parts)
