"""Leaks that multiply: one eval sample that removed several train rows, shown so a person can judge.

Templated text (sibling docstrings, form letters) puts many train rows close to one test row;
whether they are copies is a judgement call. Each such eval sample is shown with every train row
dropped as its leak, and for text the differences marked word by word (`<del>`: only in the eval
sample, `<ins>`: only in the train row), with the count beside it.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Callable
from typing import Any

import polars as pl

_WORDS = re.compile(r"\S+|\s+")


def word_diff(eval_text: str, train_text: str) -> str:
    """HTML of `train_text` against `eval_text`: removed words struck, added words marked."""
    a, b = _WORDS.findall(eval_text), _WORDS.findall(train_text)
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{html.escape(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{html.escape(''.join(b[j1:j2]))}</ins>")
    return "".join(out)


def fanout_rows(decisions: pl.DataFrame, fanout: dict[str, int]) -> list[tuple[str, list[str]]]:
    """(eval sample id, the train sample ids dropped as its leak), in `fanout`'s order."""
    leaks = decisions.filter(
        (pl.col("drop_reason") == "test_leak") & pl.col("leak_of").is_in(list(fanout))
    ).sort("position")
    by_eval: dict[str, list[str]] = {sid: [] for sid in fanout}
    for r in leaks.select("sample_id", "leak_of").iter_rows():
        by_eval[r[1]].append(r[0])
    return list(by_eval.items())


def fanout_section(
    decisions: pl.DataFrame,
    fanout: dict[str, int],
    text_of: Callable[[str], str | None],
    card: Callable[[dict[str, Any]], str],
) -> str:
    """The report section: each eval sample beside the train rows it removed (text: a diff)."""
    if not fanout:
        return ""
    by_id = {r["sample_id"]: r for r in decisions.iter_rows(named=True)}
    blocks = []
    for sid, train_ids in fanout_rows(decisions, fanout):
        head = f"<p><b>{html.escape(sid)}</b> removed {len(train_ids):,} train rows</p>"
        own = text_of(sid)
        if own is None:  # images: the cards side by side
            cards = "".join(card(by_id[t]) for t in [sid, *train_ids] if t in by_id)
            blocks.append(f"<div class=fan>{head}<div class=group>{cards}</div></div>")
            continue
        rows = "".join(
            f"<tr><td>{html.escape(t)}</td><td class=diff>{word_diff(own, text_of(t) or '')}</td></tr>"
            for t in train_ids
        )
        blocks.append(
            f"<div class=fan>{head}<p class=text>{html.escape(own)}</p>"
            f"<table class=diff><tr><th>train row</th><th>its text: <del>only in the eval "
            f"sample</del> <ins>only in the train row</ins></th></tr>{rows}</table></div>"
        )
    return (
        f"<h2>Leaks that multiply ({len(fanout):,} eval samples removed "
        f"{sum(fanout.values()):,} train rows)</h2><p class=sub>Each eval sample that removed "
        "more than one train row, beside those rows with the differences marked. Whether they "
        "are copies is your call: if they are not, raise <code>dedup.threshold</code> (or leave "
        "<code>shingles</code> out of <code>dedup.confirm</code>) and run again.</p>"
        + "".join(blocks)
    )
