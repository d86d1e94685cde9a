"""GPU check: `python -m bench.gpu_check` on a machine with a CUDA GPU (sized for one H100).

Rows: the measured fp16/bf16 matmul ceiling (square, and the near-pair kernel's block shape),
then a 1M x 512 exact self-search through leanset's GPU path with its achieved TFLOP/s next
to that ceiling, and the partitioned search on the same data for comparison. ``kernels-agree``
compares the GPU kernels (torch, and faiss-gpu when installed) with the FAISS CPU kernel pair
for pair and similarity for similarity (bit for bit), exact and partitioned, on 100k clustered
rows with pairs a few float32 ulps from the threshold. Without a GPU it
prints why and exits 0. Whole run < 8 min (a deadline skips rows that would not fit).

The ``embed-vit-b-32`` row times open_clip ViT-B-32 (random weights: same FLOPs, no download) from
pre-decoded tensors against its 8.8 GFLOP/image and the measured bf16 ceiling, then end to end
from JPEG files against decode alone. Adding a row: write ``def check_x(args, budget) -> dict``
returning at least ``seconds`` and ``samples_per_s`` and add it to ``CHECKS``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEADLINE_S = 7 * 60  # leave a minute of the 8-minute allowance for start-up and data generation


class Budget:
    """Wall-clock budget for the whole check."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left."""
        return self.end - time.monotonic()


def _sync() -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(m: int, k: int, n: int, dtype: Any, device: str, seconds: float = 2.0) -> float:
    """Measured TFLOP/s of (m x k) @ (k x n) in `dtype`, repeated for about `seconds`."""
    import torch

    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(n, k, device=device, dtype=dtype)
    for _ in range(3):
        a @ b.T
    _sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b.T
        reps += 10
        _sync()
    return 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e12


def check_matmul_ceiling(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """fp16 and bf16 matmul TFLOP/s: 8192^3 and the kernel's (block x D) @ (D x block) shape."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = 8192 if device == "cuda" else 1024
    block = args.block_rows if device == "cuda" else 1024
    out: dict[str, Any] = {"seconds": 0.0}
    t0 = time.perf_counter()
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        out[f"{name}_square_tflops"] = matmul_tflops(size, size, size, dtype, device)
        out[f"{name}_block_tflops"] = matmul_tflops(block, args.dim, block, dtype, device)
    out["seconds"] = time.perf_counter() - t0
    out["notes"] = (
        f"square {size}^3; block {block}x{args.dim}x{block} (the shape the exact search runs)"
    )
    return out


def _data(args: argparse.Namespace) -> Any:
    """The synthetic 1M x 512 (default) clustered embeddings with planted pairs, made once."""
    if getattr(args, "_syn", None) is None:
        from bench.synth import clustered_embeddings

        t0 = time.perf_counter()
        args._syn = clustered_embeddings(args.n, args.dim, threshold=args.threshold, seed=0)
        args._gen_s = time.perf_counter() - t0
    return args._syn


def _planted_recall(res: Any, syn: Any) -> float:
    """Share of planted pairs found."""
    import numpy as np

    n = syn.emb.shape[0]
    found = np.unique(res.i * np.int64(n) + res.j)
    planted = np.unique(syn.planted_i * np.int64(n) + syn.planted_j)
    return float(np.isin(planted, found).mean())


def _executed_flops(n: int, dim: int, block: int) -> float:
    """FLOPs the blocked exact self-search runs (diagonal blocks in full, upper blocks once)."""
    bounds = [(s, min(s + block, n)) for s in range(0, n, block)]
    total = 0
    for qi, (qs, qe) in enumerate(bounds):
        for cs, ce in bounds[qi:]:
            total += (qe - qs) * (ce - cs)
    return 2.0 * dim * total


def _search_row(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """Time find_near_pairs on the synthetic data (after a small warm-up on the device)."""
    from leanset.dedup.near import SearchOptions, find_near_pairs

    syn = _data(args)
    find_near_pairs(
        syn.emb[:20000], args.threshold, SearchOptions(method=method, device=args.device)
    )
    _sync()
    t0 = time.perf_counter()
    res = find_near_pairs(
        syn.emb,
        args.threshold,
        SearchOptions(method=method, device=args.device, block_rows=args.block_rows),
    )
    _sync()
    seconds = time.perf_counter() - t0
    n = syn.emb.shape[0]
    return {
        "seconds": seconds,
        "samples_per_s": n / seconds,
        "pairs": len(res),
        "recall_planted": _planted_recall(res, syn),
        "backend": res.params["backend"],
        "params": res.params,
        "data_generation_s": getattr(args, "_gen_s", None),
    }


def check_knn_exact(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """Exact self-search on the GPU path; achieved TFLOP/s (executed and useful)."""
    row = _search_row(args, "exact")
    n = _data(args).emb.shape[0]
    executed = _executed_flops(n, args.dim, args.block_rows)
    useful = 2.0 * args.dim * n * (n - 1) / 2
    row["executed_tflops"] = executed / row["seconds"] / 1e12
    row["useful_tflops"] = useful / row["seconds"] / 1e12
    return row


def check_knn_partitioned(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """Partitioned self-search on the same data and device."""
    return _search_row(args, "partitioned")


def _agree_row(x: Any, threshold: float, method: str, device: str) -> dict[str, Any]:
    """`device`'s pairs and similarities against the FAISS CPU kernel's, bit for bit."""
    import numpy as np

    from leanset.dedup.near import SearchOptions, find_near_pairs

    got = {}
    for dev in ("cpu", device):
        t0 = time.perf_counter()
        res = find_near_pairs(x, threshold, SearchOptions(method=method, device=dev))
        got[dev] = (res, time.perf_counter() - t0)
    (a, a_s), (b, b_s) = got["cpu"], got[device]
    same_pairs = np.array_equal(a.i, b.i) and np.array_equal(a.j, b.j)
    same_sims = same_pairs and np.array_equal(a.sim.view(np.uint32), b.sim.view(np.uint32))
    return {
        "pairs_cpu": len(a),
        f"pairs_{device}": len(b),
        "same_pairs": same_pairs,
        "same_similarities": same_sims,
        "backend": b.params["backend"],
        "cpu_s": round(a_s, 2),
        "device_s": round(b_s, 2),
    }


def check_kernels_agree(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """Every kernel proposes, float64 decides: the device's pairs and similarities equal the FAISS
    CPU kernel's, exact and partitioned, on clustered rows with pairs a few ulps from the
    threshold (faiss-gpu too when it is installed)."""
    from bench.synth import clustered_embeddings, with_threshold_pairs
    from leanset.dedup.near import _faiss_gpus

    t0 = time.perf_counter()
    n = args.agree_n if gpu_name() else min(args.agree_n, 4000)
    syn = clustered_embeddings(n, args.dim, threshold=args.threshold, seed=1)
    x = with_threshold_pairs(syn.emb, 0.02, args.threshold, seed=1)
    devices = [args.device] + (["cuda"] if gpu_name() and _faiss_gpus() > 0 else [])
    out: dict[str, Any] = {"rows": n}
    for dev in devices:
        for method in ("exact", "partitioned"):
            if budget.left() < 90:
                out[f"{dev}-{method}"] = {"skipped": f"deadline: {budget.left():.0f} s left"}
                continue
            out[f"{dev}-{method}"] = _agree_row(x, args.threshold, method, dev)
    out["all_equal"] = all(
        r.get("same_similarities", False) for r in out.values() if isinstance(r, dict)
    )
    out["seconds"] = time.perf_counter() - t0
    out["samples_per_s"] = n / out["seconds"]
    return out


VIT_B_32_GFLOP = 8.8  # forward FLOPs per 224 px image (4.4 GMAC)


def _clip_embedder(device: str) -> Any:
    from leanset.pipelines.embed import OpenClipImageEmbedder

    return OpenClipImageEmbedder("ViT-B-32", None, device=device, precision="auto")


def _embed_tensors(args: argparse.Namespace) -> dict[str, Any]:
    """ViT-B-32 throughput from pre-decoded tensors already on the device."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    emb = _clip_embedder(device)
    batch = args.embed_batch if device == "cuda" else 16
    x = torch.randn(batch, 3, 224, 224, device=device)
    emb._run(emb.model.encode_image, x)  # warm-up (kernels, autocast caches)
    _sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < (20 if device == "cuda" else 3):
        emb._run(emb.model.encode_image, x)
        reps += 1
    _sync()
    seconds = time.perf_counter() - t0
    rate = reps * batch / seconds
    return {
        "tensor_images_per_s": rate,
        "tensor_tflops": rate * VIT_B_32_GFLOP / 1e3,
        "batch": batch,
        "dtype": str(emb.dtype),
    }


def _image_folder(root: Path, n: int) -> Path:
    """`n` 640x480 JPEG photos-like images (smooth gradients + noise) in an imagefolder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        base = (np.sin(xx / (20 + i % 50)) + np.cos(yy / (15 + i % 30))) * 60 + 128
        img = np.clip(base[..., None] + rng.normal(0, 8, (480, 640, 3)), 0, 255).astype(np.uint8)
        path = root / "train" / str(i % 10) / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=90)
    return root


def _embed_files(args: argparse.Namespace) -> dict[str, Any]:
    """End to end from JPEG files (parallel decode workers) vs decode + preprocess alone."""
    import tempfile

    import torch
    from torch.utils.data import DataLoader

    from leanset.pipelines.config import ColumnSettings, SourceSettings
    from leanset.pipelines.embed import embed_dataset
    from leanset.pipelines.embed.stage import _Prepared
    from leanset.pipelines.sources import load_source

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = args.embed_files if device == "cuda" else 64
    workers = args.embed_workers
    emb = _clip_embedder(device)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_source(
            SourceSettings(type="imagefolder", path=str(_image_folder(Path(tmp) / "img", n))),
            ColumnSettings(),
        )
        hashes = data.table["content_hash"].to_list()
        rows = data.table["position"].to_numpy()
        loader = DataLoader(
            _Prepared(data, emb, hashes, rows),
            batch_size=args.embed_batch,
            num_workers=workers,
            collate_fn=list,
        )
        t0 = time.perf_counter()
        for _ in loader:
            pass
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        embed_dataset(
            data,
            emb,
            Path(tmp) / "cache",
            batch_size=args.embed_batch,
            num_workers=workers,
            progress=False,
        )
        _sync()
        e2e_s = time.perf_counter() - t0
    return {
        "files": n,
        "workers": workers,
        "decode_images_per_s": n / decode_s,
        "end_to_end_images_per_s": n / e2e_s,
        "end_to_end_vs_decode": decode_s / e2e_s,
    }


def check_embed_vit_b_32(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """ViT-B-32 at 224 px: tensor throughput vs FLOPs, and end to end from files vs decode."""
    t0 = time.perf_counter()
    row = _embed_tensors(args)
    if budget.left() > 150:
        row |= _embed_files(args)
    row["seconds"] = time.perf_counter() - t0
    row["samples_per_s"] = row["tensor_images_per_s"]
    return row


CHECKS: dict[str, Callable[[argparse.Namespace, Budget], dict[str, Any]] | None] = {
    "matmul-ceiling": check_matmul_ceiling,
    "knn-exact": check_knn_exact,
    "knn-partitioned": check_knn_partitioned,
    "kernels-agree": check_kernels_agree,
    "embed-vit-b-32": check_embed_vit_b_32,
}


def ceiling_summary(checks: dict[str, Any]) -> str | None:
    """One line: the exact search's TFLOP/s against the ceiling of the dtype it ran in."""
    ceiling, exact = checks.get("matmul-ceiling", {}), checks.get("knn-exact", {})
    if "executed_tflops" not in exact or "fp16_block_tflops" not in ceiling:
        return None
    dtype = "fp16" if exact.get("backend", "").endswith("-float16") else "bf16"
    block, square = ceiling[f"{dtype}_block_tflops"], ceiling[f"{dtype}_square_tflops"]
    return (
        f"exact search: {exact['executed_tflops']:.2f} TFLOP/s executed "
        f"({exact['useful_tflops']:.2f} useful) in {dtype}, "
        f"{exact['executed_tflops'] / block:.0%} of the measured {dtype} block-shape ceiling "
        f"({block:.2f}); square {dtype} ceiling {square:.2f}, "
        f"bf16 square {ceiling['bf16_square_tflops']:.2f} TFLOP/s"
    )


def gpu_name() -> str | None:
    """The CUDA device name, or None without torch/CUDA."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--block-rows", type=int, default=32768)
    ap.add_argument(
        "--device",
        default="cuda-torch",
        help="find_near_pairs device: cuda-torch (default), cuda (faiss-gpu if present)",
    )
    ap.add_argument("--agree-n", type=int, default=100_000, help="rows of the kernels-agree check")
    ap.add_argument("--embed-batch", type=int, default=512)
    ap.add_argument(
        "--embed-files", type=int, default=8192, help="JPEG files for the end-to-end row"
    )
    ap.add_argument("--embed-workers", type=int, default=12, help="decode workers")
    ap.add_argument("--checks", default=",".join(k for k, v in CHECKS.items() if v))
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    ap.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run without a GPU (device cpu-torch; use a small --n): tests the script",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the checks that fit the budget; print and write the results."""
    args = parse_args(argv)
    name = gpu_name()
    if name is None and not args.allow_cpu:
        print("gpu_check: no CUDA GPU visible (or torch missing); skipping.")
        return 0
    if name is None:
        args.device = "cpu-torch"
    budget = Budget(DEADLINE_S)
    results: dict[str, Any] = {
        "gpu": name,
        "n": args.n,
        "dim": args.dim,
        "threshold": args.threshold,
        "block_rows": args.block_rows,
        "device": args.device,
        "checks": {},
    }
    for key in [c.strip() for c in args.checks.split(",") if c.strip()]:
        fn = CHECKS.get(key)
        if fn is None:
            row: dict[str, Any] = {"skipped": "not implemented yet" if key in CHECKS else "unknown"}
        elif budget.left() < 60:
            row = {"skipped": f"deadline: {budget.left():.0f} s left"}
        else:
            row = fn(args, budget)
        results["checks"][key] = row
        shown = {
            k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "params"
        }
        print(f"{key}: {json.dumps(shown)}", flush=True)
    summary = ceiling_summary(results["checks"])
    if summary:
        print(summary)
        results["summary"] = summary
    embed, ceiling = (
        results["checks"].get("embed-vit-b-32", {}),
        results["checks"].get("matmul-ceiling", {}),
    )
    if "tensor_tflops" in embed and "bf16_square_tflops" in ceiling:
        line = (
            f"ViT-B-32: {embed['tensor_images_per_s']:.0f} img/s from tensors = "
            f"{embed['tensor_tflops']:.1f} TFLOP/s, {embed['tensor_tflops'] / ceiling['bf16_square_tflops']:.0%} "
            f"of the measured bf16 ceiling"
        )
        if "end_to_end_images_per_s" in embed:
            line += (
                f"; from JPEG files {embed['end_to_end_images_per_s']:.0f} img/s vs decode alone "
                f"{embed['decode_images_per_s']:.0f} img/s ({embed['workers']} workers)"
            )
        print(line)
        results["embed_summary"] = line
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
