"""Helpers every test module shares: data makers, the flows.yaml writers, brute-force search."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def write_png(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 grayscale array as a PNG (creating folders)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)
    return path


def flows_yaml(tmp_path: Path, body: str) -> Path:
    """Write a flows.yaml next to the test data and return its path."""
    path = tmp_path / "flows.yaml"
    path.write_text(body)
    return path


def tree_digest(root: Path) -> dict[str, tuple[int, int, str]]:
    """{relative path: (mode, mtime_ns, blake2b of bytes)} for every file under `root`."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return out


def make_imagefolder(root: Path, n: int = 24, seed: int = 0) -> Path:
    """An imagefolder of `n` distinct 16x16 images plus exact copies, near copies, leaks, junk."""
    rng = np.random.default_rng(seed)
    bases = [rng.integers(0, 256, size=(16, 16)) for _ in range(n)]
    for k, img in enumerate(bases):
        write_png(root / f"train/{'ab'[k % 2]}/img{k:03d}.png", img)
    for k in range(0, n, 6):
        write_png(root / f"train/{'ab'[k % 2]}/copy{k:03d}.png", bases[k])
        noisy = np.clip(bases[k + 1] + rng.normal(0, 3, (16, 16)), 0, 255)
        write_png(root / f"train/{'ab'[(k + 1) % 2]}/near{k:03d}.png", noisy)
        leak = np.clip(bases[k + 2] + rng.normal(0, 3, (16, 16)), 0, 255)
        write_png(root / f"test/{'ab'[k % 2]}/leak{k:03d}.png", leak)
    write_png(root / "test/a/only_test.png", rng.integers(0, 256, size=(16, 16)))
    (root / "train/a/broken.png").write_bytes(b"not an image")
    return root


class BrutePairs:
    """What `dedup.near.find_near_pairs` returns, computed by brute force (for stage tests)."""

    def __init__(self, i: np.ndarray, j: np.ndarray, sim: np.ndarray):
        self.i, self.j, self.sim = i, j, sim
        self.method, self.params = "brute", {}

    def __len__(self) -> int:
        return len(self.i)


def brute_search(emb: np.ndarray, threshold: float, options: object = None) -> BrutePairs:
    """Every pair (i < j) with cosine similarity >= threshold."""
    sims = emb @ emb.T
    i, j = np.nonzero(np.triu(sims >= np.float32(threshold), k=1))
    return BrutePairs(i.astype(np.int64), j.astype(np.int64), sims[i, j])


def write_flows(folder: Path, **flows: dict[str, Any]) -> Path:
    """`folder/flows.yaml` holding the given flows (each a mapping as a flow body in flows.yaml)."""
    return flows_yaml(folder, yaml.safe_dump({"flows": flows}, sort_keys=False))


def pixel_flow_body(**overrides: Any) -> dict[str, Any]:
    """A flow over `images/` with the pixel embedder into `store/`; keys in `overrides` replace."""
    body: dict[str, Any] = {
        "source": {"type": "imagefolder", "path": "images"},
        "embedder": {"type": "pixels", "size": 16},
        "store": "store",
    }
    return body | overrides


def pixel_flow(folder: Path, name: str, **overrides: Any) -> Path:
    """A flows.yaml in `folder` with one pixel flow `name` (see `pixel_flow_body`)."""
    return write_flows(folder, **{name: pixel_flow_body(**overrides)})


def tiny_cnn(seed: int = 0) -> tuple[Any, Any]:
    """A small random-weight CNN and its preprocess (a factory for `embedder.type: torch`)."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
    )

    def preprocess(image: Any) -> Any:
        arr = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    return model, preprocess


def tiny_cnn_other_weights() -> tuple[Any, Any]:
    """The same architecture with other weights."""
    return tiny_cnn(seed=1)


def photo_tiles(n: int, side: int = 128, min_std: float = 0.0) -> list[np.ndarray]:
    """`n` distinct grey tiles (side x side, uint8), cut without overlap from scikit-image's
    sample photos, row by row (skipping tiles whose grey levels vary less than `min_std`)."""
    from skimage import data
    from skimage.color import rgb2gray

    out: list[np.ndarray] = []
    for name in ("camera", "astronaut", "coffee", "rocket", "chelsea", "coins", "moon"):
        img = getattr(data, name)()
        grey = (rgb2gray(img) * 255).astype(np.uint8) if img.ndim == 3 else img.astype(np.uint8)
        for y in range(0, grey.shape[0] - side + 1, side):
            for x in range(0, grey.shape[1] - side + 1, side):
                tile = np.ascontiguousarray(grey[y : y + side, x : x + side])
                if tile.std() >= min_std:
                    out.append(tile)
                if len(out) == n:
                    return out
    raise ValueError(f"only {len(out)} tiles of {side} px in the sample photos, {n} wanted")
