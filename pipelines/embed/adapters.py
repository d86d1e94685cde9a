"""Embedder adapters: raw pixels, open_clip image and text towers, sentence-transformers, precomputed."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from leanset.dedup.matrix import resolve_device
from leanset.pipelines.config import EmbedderSettings
from leanset.pipelines.embed.offline import hub_offline_unless_reachable, load_open_clip
from leanset.pipelines.embed.protocol import Embedder, EmbedError, l2_normalise, open_image

log = logging.getLogger("leanset.embed")


def _fingerprint(*parts: Any) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


class PixelEmbedder:
    """Raw-pixel features for small images: grayscale, resized, mean-centred, L2-normalised."""

    def __init__(self, size: int = 16):
        self.size = size
        self.fingerprint = f"pixels-{size}-" + _fingerprint("pixels", size, 1)

    def prepare(self, content: bytes) -> np.ndarray:
        return self.from_image(open_image(content, "L"))

    def from_image(self, img: Any) -> np.ndarray:
        """Features of a decoded PIL image (before normalisation, which `encode` does)."""
        from PIL import Image

        small = img.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        x = np.asarray(small, dtype=np.float32).ravel()
        centred: np.ndarray = x - x.mean()
        return centred

    def encode(self, items: list[np.ndarray]) -> np.ndarray:
        return l2_normalise(np.stack(items))


class ThumbnailEmbedder:
    """The second image signal: 32 x 32 grey thumbnails, area-averaged, mean-centred, unit length
    (a dot product is the normalised correlation; see dedup.imagesig)."""

    side = 32

    def __init__(self) -> None:
        self.fingerprint = f"thumb{self.side}-" + _fingerprint("thumb", self.side, "box", 1)

    def prepare(self, content: bytes) -> np.ndarray:
        from PIL import Image

        grey = open_image(content, "L")
        big = grey.resize((self.side * 4, self.side * 4), Image.Resampling.BOX)
        small = big.resize((self.side, self.side), Image.Resampling.BOX)
        x = np.asarray(small, dtype=np.float32).ravel()
        centred: np.ndarray = x - x.mean()
        return centred

    def encode(self, items: list[np.ndarray]) -> np.ndarray:
        return l2_normalise(np.stack(items))


class _TorchModel:
    """Device, precision and batching shared by the torch-based embedders."""

    def __init__(self, device: str, precision: str):
        import torch

        self.device = resolve_device(device, error=EmbedError)
        self.dtype = {
            "auto": torch.bfloat16 if self.device.startswith("cuda") else None,
            "fp32": None,
            "fp16": torch.float16,
            "bf16": torch.bfloat16,
        }[precision]

    def _run(self, fn: Callable[[Any], Any], batch: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.dtype is not None:
                with torch.autocast(self.device.split(":")[0], dtype=self.dtype):
                    out = fn(batch)
            else:
                out = fn(batch)
        out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy()


def _arch_name(model: str) -> str:
    """A model given as an architecture JSON file is registered with open_clip under its stem."""
    open_clip = load_open_clip()

    if model.endswith(".json"):
        if not Path(model).is_file():
            raise EmbedError(f"embedder.model: architecture file {model} does not exist")
        open_clip.add_model_config(model)
        return Path(model).stem
    return model


def _load_open_clip(model: str, pretrained: str | None, device: str) -> tuple[Any, Any]:
    """open_clip model (eval mode) and its eval transform; weights from a tag or local file."""
    open_clip = load_open_clip()
    from safetensors import SafetensorError

    model = _arch_name(model)
    suffixes = (".pt", ".bin", ".safetensors", ".pth")
    if pretrained and Path(pretrained).suffix in suffixes and not Path(pretrained).is_file():
        raise EmbedError(f"embedder.pretrained: checkpoint {pretrained} does not exist")
    remote = pretrained and not Path(pretrained).exists()
    fetch = (
        hub_offline_unless_reachable(f"open_clip {model!r} (pretrained {pretrained!r})")
        if remote
        else contextlib.nullcontext()
    )
    try:
        with fetch:
            model_obj, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=device
            )
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused an object
        raise EmbedError(
            f"embedder.pretrained: checkpoint {pretrained} holds pickled Python objects, not only "
            f"weights; leanset loads weights only and does not run what a pickle carries (save "
            f"the weights with torch.save(model.state_dict(), path) or as .safetensors)"
        ) from exc
    except (RuntimeError, ValueError, OSError, SafetensorError) as exc:
        raise EmbedError(
            f"embedder: cannot load open_clip {model!r} / {pretrained!r}: {exc}"
        ) from exc
    model_obj.eval()
    return model_obj, preprocess


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model).stem)


def _weights_id(pretrained: str | None) -> str:
    """A checkpoint file is identified by its content, a tag by its name."""
    if pretrained and Path(pretrained).is_file():
        h = hashlib.blake2b(digest_size=8)
        with open(pretrained, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    return str(pretrained)


class OpenClipImageEmbedder(_TorchModel):
    """open_clip image tower (ViT-B-32 etc.), batched, mixed precision on GPU."""

    def __init__(
        self, model: str, pretrained: str | None, device: str = "auto", precision: str = "auto"
    ):
        super().__init__(device, precision)
        self.model, self.preprocess = _load_open_clip(model, pretrained, self.device)
        self.fingerprint = f"openclip-img-{_slug(model)}-" + _fingerprint(
            _weights_id(model), _weights_id(pretrained)
        )

    def prepare(self, content: bytes) -> Any:
        return self.preprocess(open_image(content, "RGB"))

    def encode(self, items: list[Any]) -> np.ndarray:
        import torch

        batch = torch.stack(items)
        if self.device.startswith("cuda"):
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return self._run(self.model.encode_image, batch)


class OpenClipTextEmbedder(_TorchModel):
    """open_clip text tower."""

    def __init__(
        self, model: str, pretrained: str | None, device: str = "auto", precision: str = "auto"
    ):
        open_clip = load_open_clip()

        super().__init__(device, precision)
        self.model, _ = _load_open_clip(model, pretrained, self.device)
        self.tokenizer = open_clip.get_tokenizer(_arch_name(model))
        self.fingerprint = f"openclip-txt-{_slug(model)}-" + _fingerprint(
            _weights_id(model), _weights_id(pretrained)
        )

    def prepare(self, content: str) -> str:
        return content

    def encode(self, items: list[str]) -> np.ndarray:
        tokens = self.tokenizer(items).to(self.device)
        return self._run(self.model.encode_text, tokens)


class SentenceTransformerEmbedder:
    """A sentence-transformers text model (a local folder or a model name)."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 64):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedError(
                "embedder type 'sentence_transformers' needs: pip install 'leanset[text]'"
            ) from exc
        self.device = resolve_device(device, error=EmbedError)
        fetch = (
            contextlib.nullcontext()
            if Path(model).exists()
            else hub_offline_unless_reachable(f"sentence_transformers model {model!r}")
        )
        try:
            with fetch:
                self.model = SentenceTransformer(model, device=self.device)
        except pickle.UnpicklingError as exc:  # a weights-only load refused a pickled object
            raise EmbedError(
                f"embedder.model: the weights in {model} hold pickled Python objects, not only "
                f"weights; leanset loads weights only and does not run what a pickle carries"
            ) from exc
        self.batch_size = batch_size
        self.fingerprint = "st-" + _fingerprint(Path(model).name, _weights_id(_st_weights(model)))

    def prepare(self, content: str) -> str:
        return content

    def encode(self, items: list[str]) -> np.ndarray:
        out = self.model.encode(items, batch_size=self.batch_size, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)


def _st_weights(model: str) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (Path(model) / name).is_file():
            return str(Path(model) / name)
    return model


class PrecomputedEmbedder:
    """Vectors already in a column of the dataset: validated and normalised, nothing computed."""

    def __init__(self, column: str):
        self.column = column
        self.dim: int | None = None
        self.fingerprint = "precomputed-" + _fingerprint("precomputed", column)

    def prepare(self, content: Any) -> np.ndarray:
        return np.asarray(content, dtype=np.float32)

    def encode(self, items: list[np.ndarray]) -> np.ndarray:
        return l2_normalise(np.stack(items))


class TorchEmbedder(_TorchModel):
    """The user's own torch model: `factory` ("package.module:function") returns (model,
    preprocess); preprocess turns a decoded RGB PIL image (or a text) into the model's input
    tensor, and the model's output, flattened, is the embedding. Fingerprinted by the factory's
    name, the preprocessing and a hash of every weight, so new weights re-embed."""

    def __init__(self, factory: str, device: str = "auto", precision: str = "auto"):
        super().__init__(device, precision)
        model, self.preprocess = _call_factory(factory)
        self.model = model.eval().to(self.device)
        weights = _state_digest(self.model)
        self.fingerprint = f"torch-{_slug(factory.split(':')[-1])}-" + _fingerprint(
            factory, _describe(self.preprocess), weights
        )

    def prepare(self, content: bytes | str) -> Any:
        if isinstance(content, str):
            return self.preprocess(content)
        return self.preprocess(open_image(content, "RGB"))

    def encode(self, items: list[Any]) -> np.ndarray:
        import torch

        batch = torch.stack(items)
        if self.device.startswith("cuda"):
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return self._run(lambda x: self.model(x).flatten(1), batch)


# leanset's packages before they moved under `leanset`: their old module paths still resolve
_PRE_PACKAGE_NAMES = frozenset({"pipelines", "dedup", "labeling"})


def _call_factory(factory: str) -> tuple[Any, Callable[[Any], Any]]:
    """Import `package.module:function` and call it; it must return (model, preprocess)."""
    import importlib

    module_name, _, name = factory.partition(":")
    if not module_name or not name:
        raise EmbedError(
            f"embedder.factory: {factory!r}; expected 'package.module:function' returning "
            f"(model, preprocess)"
        )
    if module_name.split(".")[0] in _PRE_PACKAGE_NAMES:
        # flows.yaml files written before leanset was one package name `pipelines.embed...`
        module_name = f"leanset.{module_name}"
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise EmbedError(f"embedder.factory: cannot import {factory!r} ({exc})") from exc
    out = fn()
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
        raise EmbedError(
            f"embedder.factory: {factory!r} returned {type(out).__name__}; expected a tuple "
            f"(model, preprocess)"
        )
    return out[0], out[1]


def _describe(preprocess: Any) -> str:
    """A stable description of the preprocessing (its repr, without memory addresses)."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def _state_digest(model: Any) -> str:
    """A hash of every parameter and buffer of a torch module (its weights)."""
    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_embedder(settings: EmbedderSettings, embedding_column: str | None = None) -> Embedder:
    """Build the configured embedder."""
    factories: dict[str, Callable[[], Embedder]] = {
        "pixels": lambda: PixelEmbedder(settings.size),
        "open_clip": lambda: OpenClipImageEmbedder(
            settings.model or "ViT-B-32", settings.pretrained, settings.device, settings.precision
        ),
        "open_clip_text": lambda: OpenClipTextEmbedder(
            settings.model or "ViT-B-32", settings.pretrained, settings.device, settings.precision
        ),
        "sentence_transformers": lambda: SentenceTransformerEmbedder(
            settings.model or "all-MiniLM-L6-v2", settings.device, settings.batch_size
        ),
        "precomputed": lambda: PrecomputedEmbedder(embedding_column or "embedding"),
        "torch": lambda: TorchEmbedder(settings.factory or "", settings.device, settings.precision),
    }
    return factories[settings.type]()


# ---------------------------------------------------------------- cache


# ---------------------------------------------------------------- the stage
