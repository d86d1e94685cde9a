"""A user's own training step for `cost.train_step` (tests: a tiny real torch model on pixels)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np


def tiny_pixel_step(device: str) -> Callable[[list[Any], list[str | None]], None]:
    """One SGD step of a linear classifier on 16x16 grayscale pixels per batch of image bytes."""
    import torch
    from PIL import Image

    model = torch.nn.Linear(256, 2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(contents: list[Any], labels: list[str | None]) -> None:
        pixels = [
            np.asarray(Image.open(io.BytesIO(c)).convert("L").resize((16, 16)), dtype=np.float32)
            for c in contents
        ]
        x = torch.as_tensor(np.stack(pixels).reshape(len(pixels), -1) / 255.0, device=device)
        y = torch.as_tensor([1 if label == "b" else 0 for label in labels], device=device)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


class _StepWithEpochEnd:
    """A training step whose loop also evaluates a fixed set once per epoch."""

    def __init__(self, device: str) -> None:
        import torch

        self.step = tiny_pixel_step(device)
        self.eval_x = torch.randn(20_000, 256)
        self.eval_w = torch.randn(256, 256)

    def __call__(self, contents: list[Any], labels: list[str | None]) -> None:
        self.step(contents, labels)

    def end_epoch(self) -> None:
        """A per-epoch evaluation pass: the same work whatever the epoch's size."""
        for _ in range(8):
            (self.eval_x @ self.eval_w).relu_().sum()


def pixel_step_with_eval(device: str) -> _StepWithEpochEnd:
    """`tiny_pixel_step` plus an evaluation pass at the end of each epoch (fixed per epoch)."""
    return _StepWithEpochEnd(device)


def pixel_priced_step(device: str) -> Callable[[list[Any], list[str | None]], None]:
    """A step whose CPU cost follows each image's pixels (2 µs each), whatever `cost.unit` says:
    a set whose small images are the duplicates saves less time than samples when cleaned."""
    import time

    from PIL import Image

    def step(contents: list[Any], labels: list[str | None]) -> None:
        pixels = 0
        for c in contents:
            with Image.open(io.BytesIO(c)) as img:
                pixels += img.width * img.height
        end = time.process_time() + 2e-6 * pixels
        while time.process_time() < end:
            pass

    return step


SIMULATED_SECONDS = [0.0]
"""The clock `_TrajectoryStep` advances by what its step costs (a test makes it calibrate's
clock): its spread between training runs is then the trajectory's, never the machine's load."""


class _TrajectoryStep:
    """A small MLP whose step cost follows how dense its hidden activations are (as a CPU's max
    pooling does): two models trained on different rows end up at different speeds, by a ratio
    that depends on the training run (initial weights, batch order). The cost is added to
    `SIMULATED_SECONDS`, not spent."""

    def __init__(self, device: str) -> None:
        import torch

        self.model = torch.nn.Sequential(
            torch.nn.Linear(256, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
        ).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.2)
        self.device = device

    def __call__(self, contents: list[Any], labels: list[str | None]) -> None:
        import torch
        from PIL import Image

        pixels = [
            np.asarray(Image.open(io.BytesIO(c)).convert("L").resize((16, 16)), dtype=np.float32)
            for c in contents
        ]
        x = torch.as_tensor(np.stack(pixels).reshape(len(pixels), -1) / 255.0, device=self.device)
        y = torch.as_tensor([1 if label == "b" else 0 for label in labels], device=self.device)
        self.opt.zero_grad()
        hidden = self.model[1](self.model[0](x))
        torch.nn.functional.cross_entropy(self.model[2](hidden), y).backward()
        self.opt.step()
        dense = float((hidden > 0).float().mean())
        SIMULATED_SECONDS[0] += 1e-4 * len(contents) * (1 + 4 * dense)


def trajectory_step(device: str) -> _TrajectoryStep:
    """`cost.train_step` of `_TrajectoryStep`."""
    return _TrajectoryStep(device)
