"""What the geometric check costs a whole run: `leanset run` with and without `geometry`.

    python -m bench.geometry_cost --sizes 10k,100k [--embedder pixels|efficientnet]

For each size, an image folder of N files is built from photos that ship in packages
(scikit-image, scikit-learn, mvtb-data): 96 px tiles cut on grids at 12 scales and 9
offsets, JPEG at quality 90, with 10% of them given a planted copy (crop, rotation, quarter
turn, mirror, overlay, JPEG, resize: `bench/trust/transforms.py`). The real flow runs through
the CLI four times on fresh stores that share one cache (embeddings, local features):

1. without the check (`dedup.confirm: [embedding, pixels, hashes]`), embeddings computed;
2. with it (`confirm: auto`), embeddings cached, local features computed;
3. without it again, embeddings cached;
4. with it again, embeddings and features cached (what a scheduled rerun pays: the word
   search and the matching of the pairs, which a fresh store has not verified yet).

Reported: the wall seconds of each run (and its CPU seconds: the machine is shared), the
check's seconds by stage (features, visual words, matching), images/s of feature extraction and
pairs/s of the verification (the manifest's `search.verified`), the pairs verified and confirmed, the
ratio of run 2 to run 3 (embeddings cached, features not: the check's worst share), of run 4 to
run 3 (both cached), and of a first run with the check to one without (run 1 plus the check's
extra seconds, over run 1), and
the load average around each run (the machine is shared: compare ratios within one run).
Sets and stores go under `bench/results/geometry_cost/` (git-ignored); the numbers to
`bench/results/geometry_cost.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.trust import sources, transforms
from bench.trust.flow import run_cli, share_caches, write_flows

ROOT = Path("bench/results/geometry_cost")
TILE = 96
SCALES = tuple(round(0.9**k, 3) for k in range(12))  # of the photo at 1,280 px, before tiling
OFFSETS = tuple((x * TILE // 3, y * TILE // 3) for y in range(3) for x in range(3))
COPY_FRACTION = 0.1
KINDS = ("crop", "rotate", "turn", "mirror", "overlay", "jpeg", "resize", "crop+jpeg")
WITHOUT = ["embedding", "pixels", "hashes"]
EMBEDDERS: dict[str, dict[str, Any]] = {
    "pixels": {"type": "pixels", "size": 16},
    "efficientnet": {
        "type": "torch",
        "factory": "leanset.pipelines.embed.models:efficientnet_lite0",
    },
}


def _photos() -> list[Image.Image]:
    """Every packaged photo of the trust benchmark's diverse set, RGB, at most 1,280 px."""
    return [sources.shrink(sources.load_rgb(s.path)) for s in sources.photo_sources()]


def _tiles(photos: list[Image.Image]) -> Any:
    """96 px tiles: each photo at each scale, on grids offset by thirds of a tile (a tile
    overlaps others of its photo in part, and lies within none)."""
    for offset in OFFSETS:
        for scale in SCALES:
            for photo in photos:
                img = sources.shrink(photo, round(max(photo.size) * scale))
                ox, oy = offset
                for y in range(oy, img.height - TILE + 1, TILE):
                    for x in range(ox, img.width - TILE + 1, TILE):
                        tile = img.crop((x, y, x + TILE, y + TILE))
                        if sources.grey_std(tile) >= sources.MIN_TILE_STD:
                            yield tile


def build(n: int, seed: int = 0) -> Path:
    """An image folder of `n` files (originals and planted copies); reused when complete."""
    folder = ROOT / f"set-{n}" / "images"
    done = folder.parent / "built.json"
    if done.is_file() and json.loads(done.read_text()).get("files") == n:
        return folder
    shutil.rmtree(folder.parent, ignore_errors=True)
    rng = np.random.default_rng(seed)
    written, copies = 0, 0
    for i, tile in enumerate(_tiles(_photos())):
        if written >= n:
            break
        cls = folder / "train" / f"c{i % 20:02d}"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / f"o{i:06d}.jpg").write_bytes(transforms.encode_jpeg(tile, 90))
        written += 1
        if written < n and rng.random() < COPY_FRACTION / (1 - COPY_FRACTION):
            kind = str(rng.choice(KINDS))
            image, params = transforms.apply(kind, tile, rng)
            data = transforms.encode_jpeg(image, int(params.get("jpeg_quality", 90)))
            (cls / f"k{i:06d}.jpg").write_bytes(data)
            written, copies = written + 1, copies + 1
    if written < n:
        raise ValueError(f"only {written} tiles in the packaged photos, {n} wanted")
    done.write_text(json.dumps({"files": n, "copies": copies}))
    return folder


def _run(name: str, images: Path, embedder: str, confirm: Any, cache: Path) -> dict[str, Any]:
    """One `leanset run` on a fresh store sharing `cache`'s caches; seconds, load, verified."""
    work = images.parent / "runs" / name
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    share_caches(cache, store)
    body = {
        "source": {"type": "imagefolder", "path": str(images.resolve())},
        "embedder": dict(EMBEDDERS[embedder]),
        "dedup": {"confirm": confirm},
        "store": str(store.resolve()),
    }
    flows = write_flows(work / "flows.yaml", "cost", body)
    load = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), _child_cpu()
    run_cli(flows, "cost", force=True, threads=2)
    seconds, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    share_caches(store, cache)
    manifest = json.loads(next((store / "manifests").glob("v*.json")).read_text())
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "load": [round(load, 1), round(os.getloadavg()[0], 1)],
        "dropped": manifest["counts"]["dropped"],
        "verified": manifest["search"].get("verified"),
    }


def _child_cpu() -> float:
    """CPU seconds (user and system) of this process's finished children: the CLI runs."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def measure(n: int, embedder: str) -> dict[str, Any]:
    """The three runs on an N-file set and the rates and ratios they give."""
    images = build(n)
    cache = images.parent / f"cache-{embedder}"
    shutil.rmtree(cache, ignore_errors=True)
    first = _run(f"{embedder}-without-cold", images, embedder, WITHOUT, cache)
    with_ = _run(f"{embedder}-with", images, embedder, "auto", cache)
    warm = _run(f"{embedder}-without-warm", images, embedder, WITHOUT, cache)
    rerun = _run(f"{embedder}-with-warm", images, embedder, "auto", cache)
    v = with_["verified"] or {}
    extra = with_["seconds"] - warm["seconds"]
    return {
        "n": n,
        "embedder": embedder,
        "runs": {"without_cold": first, "with": with_, "without_warm": warm, "with_warm": rerun},
        "features_per_s": round(v.get("images", 0) / max(v.get("feature_seconds", 0), 1e-9), 1),
        "pairs_per_s": round(v.get("pairs", 0) / max(v.get("match_seconds", 0), 1e-9), 1),
        "ratio_cached_embeddings": round(with_["seconds"] / warm["seconds"], 2),
        "ratio_cached_features": round(rerun["seconds"] / warm["seconds"], 2),
        "ratio_first_run": round((first["seconds"] + extra) / first["seconds"], 2),
    }


def _row(r: dict[str, Any]) -> str:
    v = r["runs"]["with"]["verified"] or {}
    runs = r["runs"]
    loads = [x for run in runs.values() for x in run["load"]]
    return (
        f"| {r['n']:,} | {r['embedder']} | {_secs(runs['without_cold'])} | "
        f"{_secs(runs['without_warm'])} | {_secs(runs['with'])} | "
        f"{_secs(runs['with_warm']) if 'with_warm' in runs else '-'} | "
        f"{v.get('feature_seconds', 0):.0f} / {v.get('word_seconds', 0):.0f} / "
        f"{v.get('match_seconds', 0):.0f} | "
        f"{v.get('pairs', 0):,} of {v.get('images', 0):,} images, {v.get('confirmed', 0):,} "
        f"confirmed | {r['features_per_s']} | {r['pairs_per_s']} | "
        f"{r['ratio_cached_embeddings']}x | {r.get('ratio_cached_features', '-')}x | "
        f"{r['ratio_first_run']}x | "
        f"{min(loads)}-{max(loads)} |"
    )


def _secs(run: dict[str, Any]) -> str:
    """Wall seconds (CPU seconds) of one run; CPU is missing from runs measured before it was."""
    return f"{run['seconds']} ({run.get('cpu_seconds', '-')})"


HEADER = (
    "| N | embedder | s without (embedding) | s without (cached) | s with (cached) "
    "| s with (features cached too) | features / words / matching s | verified "
    "| features img/s | pairs/s | ratio, cached embeddings | ratio, features cached too "
    "| ratio, first run | load |\n"
    "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: "
    "| --- |"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10k", help="comma-separated sizes, e.g. 10k,100k")
    p.add_argument("--embedder", default="pixels", choices=sorted(EMBEDDERS))
    p.add_argument("--out", type=Path, default=ROOT.parent / "geometry_cost.json")
    args = p.parse_args(argv)
    sizes = [int(float(s.lower().rstrip("k")) * (1000 if s.lower().endswith("k") else 1))
             for s in args.sizes.split(",")]  # fmt: skip
    old = json.loads(args.out.read_text()) if args.out.is_file() else []
    results = [r for r in old if (r["n"], r["embedder"]) not in {(n, args.embedder) for n in sizes}]
    for n in sizes:
        results.append(measure(n, args.embedder))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(HEADER + "\n" + "\n".join(_row(r) for r in results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
