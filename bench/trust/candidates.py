"""Where planted copies are lost: never proposed as a candidate, or refused by the check.

For each planted (original, copy) pair of a built set, at leanset's dedup defaults:

* `proposed`: the pair is among the candidates and a route accepts it or the geometric check
  would verify it (it is not cut by the per-image cap);
* `accepted`: a route other than geometry accepts it (embedding, pixels);
* `oracle`: `dedup.geometry.verify` confirms it when handed the pair directly.

The vectors come from the benchmark's cache-only store (`bench/results/trust/cache-store`, run
`python -m bench.trust` first); features missing there are computed and cached there.

    python -m bench.trust.candidates --sets dense,diverse --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.trust import flow
from bench.trust.score import load_truth, rows_of_sources
from leanset.dedup.geometry import verify
from leanset.dedup.imagesig import ImageSignal
from leanset.dedup.stage import Signals, candidate_pairs
from leanset.pipelines import steps
from leanset.pipelines.config import load_flow

ROOT = Path("bench/results/trust")


@dataclass(frozen=True)
class KindRow:
    """One kind's planted pairs: how many, and the share proposed / accepted / confirmed."""

    kind: str
    n: int
    proposed: float
    accepted: float
    oracle: float
    found_either: float  # accepted, or proposed for the check and confirmed by it


def diagnose(set_dir: Path, cache: Path, overrides: list[str]) -> dict[str, Any]:
    """Per kind: candidates versus the check's own verdict, on one built set."""
    body = flow.flow_body(set_dir / "images", cache, [])
    path = flow.write_flows(cache.parent / "diagnose" / "flows.yaml", "diagnose", body)
    settings = load_flow(path, "diagnose", overrides)
    start = time.perf_counter()
    data = steps.load_dataset(settings)
    emb = steps.embed(data, settings)
    thumbs = steps.image_signal(data, settings)
    features = steps.image_features(data, settings)
    signals = Signals(image=ImageSignal.of(thumbs.matrix), features=features)
    dedup = settings.dedup
    cand = candidate_pairs(data.table, emb.matrix, dedup, signals)
    seconds = time.perf_counter() - start
    truth = load_truth(json.loads((set_dir / "truth.json").read_text()))
    row = rows_of_sources(data.table["source"].to_list(), truth)
    table_row = np.empty_like(row)
    table_row[row] = np.arange(len(row))
    return _score(truth, table_row, cand, features) | {
        "candidates": len(cand.a),
        "to_verify": int(cand.to_verify.sum()),
        "images": data.table.height,
        "seconds": round(seconds, 1),
    }


def _score(truth: Any, table_row: np.ndarray, cand: Any, features: Any) -> dict[str, Any]:
    n = len(table_row)
    key = {int(a) * n + int(b): k for k, (a, b) in enumerate(zip(cand.a, cand.b, strict=True))}
    rows: dict[str, list[tuple[bool, bool, bool]]] = defaultdict(list)
    feats = dict(enumerate(features(np.arange(n))))
    for p in truth.pairs:
        x, y = sorted((int(table_row[p.original]), int(table_row[p.copy])))
        k = key.get(x * n + y)
        accepted = k is not None and bool(cand.accepted[k])
        proposed = k is not None and (accepted or bool(cand.to_verify[k]))
        fa, fb = feats[x], feats[y]
        oracle = fa is not None and fb is not None and verify(fa, fb).copy
        rows[p.kind].append((proposed, accepted, oracle))
    kinds = [
        KindRow(
            kind,
            len(v),
            float(np.mean([p for p, _, _ in v])),
            float(np.mean([a for _, a, _ in v])),
            float(np.mean([o for _, _, o in v])),
            float(np.mean([a or (p and o) for p, a, o in v])),
        )
        for kind, v in rows.items()
    ]
    return {"kinds": [k.__dict__ for k in kinds]}


def table(name: str, result: dict[str, Any]) -> str:
    """A markdown table of one set's diagnosis."""
    lines = [
        f"### {name}: {result['images']} images, {result['candidates']} candidate pairs, "
        f"{result['to_verify']} to verify ({result['seconds']} s)",
        "",
        "| kind | n | proposed | accepted (no geometry) | geometry oracle | proposed and found |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in result["kinds"]:
        lines.append(
            f"| {k['kind']} | {k['n']} | {k['proposed']:.2f} | {k['accepted']:.2f} | "
            f"{k['oracle']:.2f} | {k['found_either']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="dense,diverse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--set-key", action="append", default=[], help="flow override, e.g. x.y=z")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    out = {}
    for name in args.sets.split(","):
        res = diagnose(
            args.root / f"{name}-s{args.seed}", args.root / flow.CACHE_STORE, args.set_key
        )
        out[name] = res
        print(table(f"{name}-s{args.seed}", res), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
