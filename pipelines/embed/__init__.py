"""Embedding: the `Embedder` protocol, its adapters, the content-addressed cache and the stage."""

from leanset.pipelines.embed.adapters import (
    OpenClipImageEmbedder,
    OpenClipTextEmbedder,
    PixelEmbedder,
    PrecomputedEmbedder,
    SentenceTransformerEmbedder,
    ThumbnailEmbedder,
    TorchEmbedder,
    make_embedder,
)
from leanset.pipelines.embed.cache import EmbeddingCache
from leanset.pipelines.embed.protocol import Embedder, EmbedError, SampleError, l2_normalise
from leanset.pipelines.embed.stage import EmbedResult, embed_dataset

__all__ = [
    "EmbedError",
    "EmbedResult",
    "Embedder",
    "EmbeddingCache",
    "OpenClipImageEmbedder",
    "OpenClipTextEmbedder",
    "PixelEmbedder",
    "PrecomputedEmbedder",
    "SampleError",
    "SentenceTransformerEmbedder",
    "ThumbnailEmbedder",
    "TorchEmbedder",
    "embed_dataset",
    "l2_normalise",
    "make_embedder",
]
