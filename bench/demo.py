"""Per-stage throughput on the bundled demo: read + hash, embed, near-duplicate search, whole flow.

    python -m bench.demo [--demo data/demo] [--clip-images 256] [--device auto]

The embedding rows use a cold cache. `embed-openclip-vit-b-32` runs ViT-B-32 at 224 px with random
weights (same FLOPs as the pretrained model; no download) on the first --clip-images images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import peak_rss_mib, reset_peak_rss
from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.demo.data import make_demo
from leanset.pipelines.embed import OpenClipImageEmbedder, PixelEmbedder, embed_dataset
from leanset.pipelines.sources import LoadedDataset, load_source


def _row(stage: str, n: int, seconds: float, device: str, rss: float, notes: str = "") -> dict:
    return {
        "stage": stage,
        "n": n,
        "seconds": round(seconds, 3),
        "samples_per_s": round(n / seconds, 1) if seconds else None,
        "peak_rss_mib": round(rss),
        "device": device,
        "notes": notes,
    }


def _timed(fn: Any) -> tuple[Any, float, float]:
    ok = reset_peak_rss()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, peak_rss_mib(ok)


def _subset(data: LoadedDataset, n: int) -> LoadedDataset:
    return LoadedDataset(data.table.head(n), data.modality, data.splits, data.columns)


def run(demo: Path, clip_images: int, device: str) -> list[dict]:
    """Time each stage on the demo images."""
    from leanset.dedup.near import SearchOptions, find_near_pairs

    truth = make_demo(demo)
    src = SourceSettings(type="imagefolder", path=str(truth.images_dir))
    rows = []
    data, s, rss = _timed(lambda: load_source(src, ColumnSettings()))
    n = data.table.height
    rows.append(
        _row(
            "read+hash files", n, s, "cpu", rss, f"{data.table['size_bytes'].sum() / 2**20:.1f} MiB"
        )
    )
    with tempfile.TemporaryDirectory() as cache:
        res, s, rss = _timed(lambda: embed_dataset(data, PixelEmbedder(16), cache, progress=False))
        rows.append(_row("embed pixels-16", res.computed, s, res.device, rss, "decode + resize"))
        clip = OpenClipImageEmbedder("ViT-B-32", None, device=device)
        sub = _subset(data, clip_images)
        res_c, s, rss = _timed(
            lambda: embed_dataset(sub, clip, cache, batch_size=64, progress=False)
        )
        rows.append(
            _row(
                "embed open_clip ViT-B-32",
                res_c.computed,
                s,
                res_c.device,
                rss,
                "224 px, random weights, batch 64",
            )
        )
    ok = data.table["error"].is_null().to_numpy()
    emb = res.matrix[ok]
    pairs, s, rss = _timed(lambda: find_near_pairs(emb, 0.99, SearchOptions(method="exact")))
    rows.append(
        _row("knn exact (t=0.99)", len(emb), s, pairs.params["backend"], rss, f"{len(pairs)} pairs")
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="data/demo")
    p.add_argument("--clip-images", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench/results/demo.json")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = run(Path(args.demo), args.clip_images, args.device)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
