"""`leanset calibrate`: time a short real training loop on this machine's device, so the cost delta
prices an epoch with a measured throughput instead of a guess.

The loop is the user's own training step (`cost.train_step: package.module:function`, a factory
`function(device) -> step` whose `step(contents, labels)` runs one optimisation step on a batch of
raw contents: image bytes, texts or vectors) or a reference model at the dataset's resolution or
sequence length: ResNet-18 for images, a MiniLM-sized transformer encoder (6 layers, width 384)
for text, a two-layer MLP for vectors. Batches are drawn from the training splits. After warm-up
steps, `repeats` rounds of `steps` steps are timed (wall clock, synchronised on CUDA, and process
CPU time); the record holds samples/s (and tokens/s or pixels/s) per round, their mean and spread.
It is written to the store (`StoreLayout.calibration`), where the next run of the flow reads it.
"""

from __future__ import annotations

import importlib
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from leanset.pipelines.config import ConfigError, FlowSettings
from leanset.pipelines.cost import JSON, canonical
from leanset.pipelines.fsutil import atomic_write_json
from leanset.pipelines.sources import LoadedDataset, load_source
from leanset.pipelines.store import StoreError
from leanset.pipelines.store.layout import StoreLayout
from leanset.pipelines.units import DEFAULT_ST_MODEL, split_roles

Step = Callable[[list[Any], list[str | None]], None]


@dataclass(frozen=True)
class CalibrateOptions:
    """How long the loop runs and where."""

    steps: int = 20
    repeats: int = 5
    warmup: int = 3
    batch_size: int = 32
    max_samples: int = 512
    device: str = "auto"
    kept_epochs: int = 6  # epochs of the kept-rows race (the first untimed); 0 skips it
    kept_seeds: int = 3  # the kept-rows race again with fresh models and batch orders per seed

    def __post_init__(self) -> None:
        for name in ("steps", "repeats", "batch_size", "max_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"calibrate: --{name.replace('_', '-')} must be at least 1")
        if self.warmup < 0:
            raise ConfigError("calibrate: --warmup must be at least 0")
        if self.kept_epochs == 1 or self.kept_epochs < 0:
            raise ConfigError("calibrate: --kept-epochs must be 0 (skip) or at least 2")
        if self.kept_seeds < 1:
            raise ConfigError("calibrate: --kept-seeds must be at least 1")


@dataclass
class Workload:
    """Batches of one training loop: a step per batch, and each batch's cost units."""

    model: str
    run: Callable[[int], None]  # run the step on batch i
    units: list[dict[str, int]]  # per batch: samples (and tokens or pixels)
    end_epoch: Callable[[], None] = lambda: None  # the per-epoch work: evaluation, checkpoint


def read_calibration(layout: StoreLayout) -> JSON | None:
    """The stored calibration record, or None when the flow was never calibrated."""
    path = layout.calibration
    if not path.is_file():
        return None
    try:
        data: JSON = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"calibration record {path} is unreadable ({exc}); run `leanset calibrate` again "
            "or remove the file"
        ) from exc
    if not isinstance(data.get("throughput"), dict):
        raise StoreError(f"calibration record {path} holds no throughput; calibrate again")
    return data


def calibrate(settings: FlowSettings, options: CalibrateOptions) -> JSON:
    """Measure the flow's training throughput on this machine and store it for the next run."""
    from leanset.dedup.matrix import resolve_device

    device = resolve_device(options.device, error=ConfigError)
    data = load_source(settings.source, settings.columns)
    rows = _training_rows(data, settings, options.max_samples)
    work = _workload(data, rows, settings, options, device)
    rounds = _time_rounds(work, options, device)
    epoch = _time_epochs(work, options, device)
    record = _record(settings, options, device, work, rounds) | {"epoch": epoch}
    kept = _kept_rows(settings, data, rows) if options.kept_epochs else None
    if kept is not None:
        record["kept"] = _time_kept(data, kept, settings, options, device, epoch)
    record["id"] = canonical({k: v for k, v in record.items() if k != "id"})
    _store_record(settings, record)
    return record


def _store_record(settings: FlowSettings, record: JSON) -> None:
    """Write the record into the flow's store: its folder, or a bucket store through its side
    folder (written locally, then pushed: the bucket holds the old record or the new one)."""
    from leanset.pipelines.store import Store

    store = Store(settings.store, settings.storage_options)
    path = store.side_layout.calibration
    atomic_write_json(path, record)
    store.side.push(store.side_rel(path))


def _training_rows(data: LoadedDataset, settings: FlowSettings, limit: int) -> list[int]:
    """Up to `limit` readable rows of the training splits, evenly spaced."""
    t = data.table
    train, _, _ = split_roles(
        t["split"].unique().to_list(),
        settings.cost.train_splits,
        settings.dedup.eval_splits,
        settings.columns.unlabeled_splits,
    )
    ok = np.flatnonzero((t["split"].is_in(train) & t["error"].is_null()).to_numpy())
    if ok.size == 0:
        raise ConfigError(f"calibrate: no readable samples in the training splits {train}")
    pick = np.linspace(0, ok.size - 1, num=min(limit, ok.size)).round().astype(int)
    return [int(ok[i]) for i in np.unique(pick)]


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _workload(
    data: LoadedDataset,
    rows: list[int],
    settings: FlowSettings,
    options: CalibrateOptions,
    device: str,
) -> Workload:
    """The user's training step, else the reference model for the data's modality."""
    labels = data.table["label"].gather(rows).to_list()
    contents: list[Any] = data.read(rows)  # a few hundred samples: read one by one
    if data.modality == "embedding":
        contents = [None if v is None else np.asarray(v, dtype=np.float32) for v in contents]
    usable = [i for i, c in enumerate(contents) if _usable(c, data.modality)]
    if not usable:
        raise ConfigError("calibrate: none of the sampled training samples can be decoded")
    contents, labels = [contents[i] for i in usable], [labels[i] for i in usable]
    if settings.cost.train_step:
        return _user_workload(data, contents, labels, settings, options, device)
    if data.modality == "image":
        return _image_workload(contents, labels, options, device, settings.cost.unit)
    if data.modality == "text":
        return _text_workload(contents, labels, settings, options, device)
    return _vector_workload(contents, labels, options, device)


def _usable(content: Any, modality: str) -> bool:
    """A sample the loop can train on (the run marks the others unreadable)."""
    if modality == "image":
        try:
            _image_size(content)
        except (OSError, ValueError):
            return False
        return True
    if modality == "text":
        return isinstance(content, str)
    return bool(np.isfinite(np.asarray(content, dtype=np.float64)).all())


def _load_entry_point(spec: str) -> Callable[[str], Step]:
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cost.train_step: cannot import {spec!r} ({exc})") from exc
    if not callable(factory):
        raise ConfigError(f"cost.train_step: {spec!r} is not a function")
    return factory  # type: ignore[no-any-return]


def _user_workload(
    data: LoadedDataset,
    contents: list[Any],
    labels: list[str | None],
    settings: FlowSettings,
    options: CalibrateOptions,
    device: str,
) -> Workload:
    """Batches of raw contents through the user's own step."""
    spec = settings.cost.train_step or ""
    step = _load_entry_point(spec)(device)
    batches = _batches(len(contents), options.batch_size)
    extra = _content_units(data, contents, settings)
    units = [{"samples": len(b)} | {k: int(v[b].sum()) for k, v in extra.items()} for b in batches]

    def run(i: int) -> None:
        b = batches[i % len(batches)]
        step([contents[j] for j in b], [labels[j] for j in b])

    end = getattr(step, "end_epoch", None)  # optional: the loop's evaluation and checkpoint
    return Workload(f"cost.train_step {spec}", run, units, end if callable(end) else lambda: None)


def _content_units(
    data: LoadedDataset, contents: list[Any], settings: FlowSettings
) -> dict[str, np.ndarray]:
    """Tokens (text) or pixels (images) of each sampled row, for the per-unit throughput."""
    if data.modality == "image":
        return {"pixels": np.array([_image_size(c)[0] * _image_size(c)[1] for c in contents])}
    if data.modality == "text":
        try:
            from leanset.pipelines.units import token_counter

            count, _ = token_counter(settings.cost, settings.embedder)
        except ConfigError:
            return {}
        return {"tokens": count([str(c) for c in contents])}
    return {}


def _image_size(content: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(content)) as img:
        return img.width, img.height


def _class_index(labels: Sequence[str | None]) -> tuple[np.ndarray, int]:
    names = sorted({v for v in labels if v is not None})
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup.get(v, 0) if v else 0 for v in labels]), max(2, len(names))


def _image_workload(
    contents: list[bytes],
    labels: list[str | None],
    options: CalibrateOptions,
    device: str,
    unit: str,
) -> Workload:
    """ResNet-18 (random weights) at the images' median size; at native sizes for pixels."""
    import torch
    from PIL import Image

    try:
        import torchvision
    except (ImportError, RuntimeError) as exc:  # a CPU-only install leaves torchvision out
        raise ConfigError(
            f"calibrate: the reference image model (ResNet-18) needs torchvision ({exc}); name "
            "your own step in cost.train_step, or install leanset with its default torch"
        ) from exc

    sizes = [_image_size(c) for c in contents]
    w, h = (int(np.median([s[i] for s in sizes])) for i in (0, 1))
    scale = min(1.0, 224 / max(w, h))
    median = (max(8, round(w * scale)), max(8, round(h * scale)))
    y, k = _class_index(labels)

    def tensor(c: bytes, size: tuple[int, int] | None) -> torch.Tensor:
        import io

        img = Image.open(io.BytesIO(c)).convert("RGB")
        img = img.resize(size) if size else img
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255

    order = sorted(range(len(contents)), key=lambda i: sizes[i]) if unit == "pixels" else None
    groups = _same_size_batches(order, sizes, options.batch_size) if order else None
    batches = groups or _batches(len(contents), options.batch_size)
    size = None if groups else median
    xs = [torch.stack([tensor(contents[i], size) for i in b]).to(device) for b in batches]
    ys = [torch.as_tensor(y[b]).to(device) for b in batches]
    model = torchvision.models.resnet18(weights=None, num_classes=k).to(device)
    units = [
        {"samples": len(b), "pixels": int(sum(sizes[i][0] * sizes[i][1] for i in b))}
        for b in batches
    ]
    where = "native sizes" if groups else f"{median[0]}x{median[1]} px"
    return Workload(
        f"reference ResNet-18 at {where}", _sgd_steps(model, xs, ys), units, _end(model, xs)
    )


def _same_size_batches(
    order: list[int], sizes: list[tuple[int, int]], limit: int
) -> list[list[int]]:
    """Batches of images that share one size (in `order`), at most `limit` each."""
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < limit and sizes[out[-1][0]] == sizes[i]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _sgd_steps(model: Any, xs: list[Any], ys: list[Any]) -> Callable[[int], None]:
    """One forward, backward and SGD step per call, on batch i (cycled)."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def run(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        out = model(*xs[i % len(xs)]) if isinstance(xs[0], tuple) else model(xs[i % len(xs)])
        torch.nn.functional.cross_entropy(out, ys[i % len(ys)]).backward()
        opt.step()

    return run


def _end(model: Any, xs: list[Any]) -> Callable[[], None]:
    """A reference loop's per-epoch work: an evaluation pass over a quarter of the sampled
    batches and a checkpoint of the weights (written to memory)."""
    import io

    import torch

    held_out = xs[: max(1, len(xs) // 4)]

    def end() -> None:
        model.eval()
        with torch.no_grad():
            for x in held_out:
                model(*x) if isinstance(x, tuple) else model(x)
        torch.save(model.state_dict(), io.BytesIO())
        model.train()

    return end


def _text_workload(
    texts: list[str],
    labels: list[str | None],
    settings: FlowSettings,
    options: CalibrateOptions,
    device: str,
) -> Workload:
    """A MiniLM-sized encoder at the texts' own token lengths, truncated where the run's count is
    (`cost.max_tokens`, else 512)."""
    import torch

    cap = settings.cost.max_tokens or 512
    ids, vocab, name = _token_ids(texts, settings, cap)
    y, k = _class_index(labels)
    batches = _batches(len(texts), options.batch_size)
    xs, ys, units = [], [], []
    for b in batches:
        seqs = [ids[i][:cap] for i in b]
        width = max(len(s) for s in seqs)
        pad = torch.zeros(len(b), width, dtype=torch.long)
        mask = torch.ones(len(b), width, dtype=torch.bool)
        for r, s in enumerate(seqs):
            pad[r, : len(s)], mask[r, : len(s)] = torch.as_tensor(s), False
        xs.append((pad.to(device), mask.to(device)))
        ys.append(torch.as_tensor(y[b]).to(device))
        units.append({"samples": len(b)})
        if name != "UTF-8 bytes":  # tokens/s only where the run counts the same tokens
            units[-1]["tokens"] = int(sum(len(s) for s in seqs))
    model = _encoder(vocab, k, cap).to(device)
    what = f"reference 6-layer encoder (width 384, {name}) up to {cap} tokens"
    return Workload(what, _sgd_steps(model, xs, ys), units, _end(model, xs))


def _token_ids(
    texts: list[str], settings: FlowSettings, cap: int
) -> tuple[list[list[int]], int, str]:
    """Token ids under the flow's tokenizer (the cost's, else the text embedder's), else bytes."""
    name = settings.cost.tokenizer
    emb = settings.embedder
    if name is None and emb is not None and emb.type == "sentence_transformers":
        name = emb.model or DEFAULT_ST_MODEL
        name = name if "/" in name else f"sentence-transformers/{name}"
    if name is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cost.tokenizer: cannot load tokenizer {name!r} ({exc})") from exc
        ids = tok(texts, add_special_tokens=True, truncation=True, max_length=cap)["input_ids"]
        return [list(i) for i in ids], int(len(tok)), f"tokenizer {name}"
    if emb is not None and emb.type == "open_clip_text":
        import open_clip

        arch = emb.model or "ViT-B-32"
        tokens = open_clip.get_tokenizer(arch)(texts)
        ids = [[int(t) for t in row if t != 0] or [0] for row in tokens]
        return ids, int(tokens.max()) + 1, f"open_clip {arch}"
    return [list(t.encode("utf-8")) or [0] for t in texts], 256, "UTF-8 bytes"


def _encoder(vocab: int, n_classes: int, max_len: int) -> Any:
    """Embedding + positions + 6 transformer layers (384 wide, 12 heads) + mean pool + head."""
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, 384)
            self.pos = nn.Embedding(max_len, 384)
            layer = nn.TransformerEncoderLayer(384, 12, 1536, batch_first=True)
            self.body = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
            self.head = nn.Linear(384, n_classes)

        def forward(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(ids.shape[1], device=ids.device)
            h = self.body(self.tok(ids) + self.pos(pos), src_key_padding_mask=pad)
            keep = (~pad).unsqueeze(-1).float()
            out: torch.Tensor = self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1))
            return out

    return Encoder()


def _vector_workload(
    vectors: list[np.ndarray], labels: list[str | None], options: CalibrateOptions, device: str
) -> Workload:
    """A two-layer MLP (width 1024) on the precomputed vectors."""
    import torch
    from torch import nn

    x = torch.as_tensor(np.stack(vectors).astype(np.float32))
    y, k = _class_index(labels)
    batches = _batches(len(vectors), options.batch_size)
    xs = [x[b].to(device) for b in batches]
    ys = [torch.as_tensor(y[b]).to(device) for b in batches]
    model = nn.Sequential(nn.Linear(x.shape[1], 1024), nn.ReLU(), nn.Linear(1024, k)).to(device)
    units = [{"samples": len(b)} for b in batches]
    what = f"reference MLP on {x.shape[1]}-d vectors"
    return Workload(what, _sgd_steps(model, xs, ys), units, _end(model, xs))


def _time_rounds(work: Workload, options: CalibrateOptions, device: str) -> list[JSON]:
    """Warm up, then time `repeats` rounds of `steps` steps: units, wall and CPU seconds each."""
    sync = _synchroniser(device)
    for i in range(options.warmup):
        work.run(i)
    sync()
    rounds, i = [], options.warmup
    for _ in range(options.repeats):
        done: dict[str, int] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(options.steps):
            work.run(i)
            for key, n in work.units[i % len(work.units)].items():
                done[key] = done.get(key, 0) + n
            i += 1
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rounds.append({"units": done, "wall_seconds": wall, "cpu_seconds": cpu})
    return rounds


def _time_epochs(work: Workload, options: CalibrateOptions, device: str) -> JSON:
    """Whole epochs (the steps, then the per-epoch work) of two sizes, `repeats` times each,
    after one untimed epoch: seconds = fixed + per_sample * samples, fitted by least squares
    (wall and CPU seconds)."""
    sync = _synchroniser(device)
    n = len(work.units)
    sizes = sorted({max(1, n // 4), n})
    for i in range(n):  # what a loop does once (decode caches, allocator, lazy init) is no epoch's
        work.run(i)
    work.end_epoch()
    sync()
    samples, wall, cpu = [], [], []
    for _ in range(options.repeats):
        for k in sizes:
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(k):
                work.run(i)
            work.end_epoch()
            sync()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            samples.append(sum(u["samples"] for u in work.units[:k]))
    return {"samples": samples, "wall_seconds": wall, "cpu_seconds": cpu} | {
        f"{part}_{clock}_seconds": value
        for clock, secs in (("wall", wall), ("cpu", cpu))
        for part, value in zip(("fixed", "per_sample"), fit_epoch(samples, secs), strict=True)
    }


def _kept_rows(
    settings: FlowSettings, data: LoadedDataset, rows: list[int]
) -> tuple[int, list[int], list[int]] | None:
    """(the latest version, the sampled rows it decided on, those it kept); None before the first
    version, or when it keeps all or none of the sampled rows."""
    import polars as pl

    from leanset.pipelines.store import Store

    store = Store(settings.store, settings.storage_options)
    if not store.storage.remote and not StoreLayout.of(settings.store).manifests.is_dir():
        return None
    latest = store.latest()
    if latest is None:
        return None
    decided = store.read("decisions", latest["version"]).select("sample_id", "kept")
    kept_ids = set(decided.filter(pl.col("kept"))["sample_id"].to_list())
    known = set(decided["sample_id"].to_list())
    ids = data.table["sample_id"].gather(rows).to_list()
    sampled = [r for r, i in zip(rows, ids, strict=True) if i in known]
    kept = [r for r, i in zip(rows, ids, strict=True) if i in kept_ids]
    if not kept or len(kept) == len(sampled):
        return None
    return int(latest["version"]), sampled, kept


def _time_kept(
    data: LoadedDataset,
    version_rows: tuple[int, list[int], list[int]],
    settings: FlowSettings,
    options: CalibrateOptions,
    device: str,
    epoch: JSON,
) -> JSON:
    """Race one fresh model on the sampled rows against one on those the latest version keeps,
    once per seed (`kept_seeds`): what a kept sample costs against an average one, with
    everything that makes that differ (cheaper or dearer removed samples, partial batches, a
    model whose trained weights compute faster or slower, which varies between training runs).
    The weight used is 1 unless the 95% interval of its mean leaves 1 out; the range is where
    one training run's weight falls (95%), over the seeds."""
    version, rows, kept = version_rows
    races = [_race_kept(data, rows, set(kept), settings, options, device, s) for s in
             range(options.kept_seeds)]  # fmt: skip
    samples = races[0][1]
    out: JSON = {
        "version": version,
        "samples": samples,
        "epochs": options.kept_epochs - 1,
        "seeds": options.kept_seeds,
    }
    for clock in ("wall", "cpu"):
        fixed = float(epoch[f"fixed_{clock}_seconds"])
        per_seed = [secs for secs, _ in races]
        out[f"{clock}_seconds"] = {k: [v for s in per_seed for v in s[k][clock]] for k in samples}
        measured = seeds_weight([(s["all"][clock], s["kept"][clock]) for s in per_seed],
                                samples, fixed)  # fmt: skip
        out[f"measured_weight_{clock}"] = measured
        # a weight its own epochs cannot tell from 1 would only add their noise to the statement
        out[f"weight_{clock}"] = (
            1.0 if measured["ci_low"] <= 1.0 <= measured["ci_high"] else measured["weight"]
        )
    return out


def _race_kept(
    data: LoadedDataset,
    rows: list[int],
    keep: set[int],
    settings: FlowSettings,
    options: CalibrateOptions,
    device: str,
    seed: int,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """One seed's race: both models start from the same weights (drawn with `seed`), whole
    epochs in turn (the first untimed), the batches in a new order each epoch as a loader's."""
    import torch

    order = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    works = {}
    for name, part in (("all", order), ("kept", [r for r in order if r in keep])):
        torch.manual_seed(seed)  # the same initial weights for both models
        works[name] = _workload(
            data, _no_single_batch(part, options.batch_size), settings, options, device
        )
    sync = _synchroniser(device)
    secs: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in works}
    for e in range(options.kept_epochs):
        for name in list(works) if e % 2 == 0 else list(works)[::-1]:
            work = works[name]
            batches = np.random.default_rng([seed, e]).permutation(len(work.units))
            t0, c0 = time.perf_counter(), time.process_time()
            for i in batches:
                work.run(int(i))
            work.end_epoch()
            sync()
            if e:  # the first epoch fills caches and is no epoch's cost
                secs[name]["wall"].append(time.perf_counter() - t0)
                secs[name]["cpu"].append(time.process_time() - c0)
    return secs, {k: sum(u["samples"] for u in w.units) for k, w in works.items()}


def seeds_weight(
    races: list[tuple[list[float], list[float]]], samples: dict[str, int], fixed: float
) -> JSON:
    """The kept weight over several seeds' races (each: all rows' and kept rows' epoch seconds):
    the mean of the seeds' weights with its 95% interval, and the range (95%) one more training
    run's weight falls in. With one seed, both are its per-epoch interval."""
    each = [measured_weight(a, k, samples, fixed) for a, k in races]
    weights = [m["weight"] for m in each]
    if len(each) == 1:
        one = each[0]
        return one | {"range_low": one["ci_low"], "range_high": one["ci_high"], "seeds": weights}
    low, high = _interval(weights)
    r_low, r_high = _interval(weights, predict=True)
    return {
        "weight": statistics.fmean(weights),
        "ci_low": low,
        "ci_high": high,
        "range_low": r_low,
        "range_high": r_high,
        "seeds": weights,
    }


def measured_weight(
    all_seconds: list[float], kept_seconds: list[float], samples: dict[str, int], fixed: float
) -> JSON:
    """The kept weight of the mean epochs, with the 95% interval of the per-epoch weights."""
    mean = {"all": statistics.fmean(all_seconds), "kept": statistics.fmean(kept_seconds)}
    pairs = [
        kept_weight({"all": a, "kept": k}, samples, fixed)
        for a, k in zip(all_seconds, kept_seconds, strict=True)
    ]
    low, high = _interval(pairs)
    return {"weight": kept_weight(mean, samples, fixed), "ci_low": low, "ci_high": high}


def _interval(values: list[float], predict: bool = False) -> tuple[float, float]:
    """95% t-interval of the mean of `values`, or with `predict` of one more value drawn like
    them (unbounded with fewer than two)."""
    if len(values) < 2:
        return float("-inf"), float("inf")
    from scipy import stats

    n = len(values)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf(0.975, n - 1)) * sd * ((1 + 1 / n) if predict else 1 / n) ** 0.5
    return mean - half, mean + half


def _no_single_batch(rows: list[int], batch_size: int) -> list[int]:
    """`rows` less a last one that would train alone (a batch of one breaks batch norm; loaders
    drop it)."""
    return rows[:-1] if len(rows) > 1 and len(rows) % batch_size == 1 else rows


def kept_weight(seconds: dict[str, float], samples: dict[str, int], fixed: float) -> float:
    """What a kept sample costs per epoch against an average sample: the per-sample part of the
    kept rows' epoch over that of all rows' (1.0 when the epochs are too short to say)."""
    per = {k: (seconds[k] - fixed) / samples[k] for k in ("all", "kept") if samples[k]}
    if len(per) < 2 or per["all"] <= 0 or per["kept"] <= 0:
        return 1.0
    return per["kept"] / per["all"]


def fit_epoch(samples: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """(fixed seconds per epoch, seconds per sample) of `seconds = fixed + per_sample * samples`
    by least squares; the fixed part is never negative."""
    x, y = np.asarray(samples, dtype=float), np.asarray(seconds, dtype=float)
    if np.ptp(x) == 0:
        return 0.0, float(y.mean() / max(x.mean(), 1.0))
    slope, intercept = np.polyfit(x, y, 1)
    if intercept < 0:
        return 0.0, float((x * y).sum() / (x * x).sum())
    return float(intercept), float(slope)


def _synchroniser(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _stats(values: list[float]) -> JSON:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "runs": values}


def _record(
    settings: FlowSettings,
    options: CalibrateOptions,
    device: str,
    work: Workload,
    rounds: list[JSON],
) -> JSON:
    """The stored calibration: throughput per unit, per second and per CPU-second, with spread."""
    throughput = {
        unit: {
            "per_s": _stats([r["units"][unit] / r["wall_seconds"] for r in rounds]),
            "per_cpu_s": _stats([r["units"][unit] / max(r["cpu_seconds"], 1e-9) for r in rounds]),
        }
        for unit in rounds[0]["units"]
    }
    record: JSON = {
        "flow": settings.name,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": device,
        "device_name": _device_name(device),
        "resource": "GPU" if device.startswith("cuda") else "CPU",
        "model": work.model,
        "batch_size": options.batch_size,
        "steps": options.steps,
        "warmup": options.warmup,
        "repeats": options.repeats,
        "rounds": rounds,
        "throughput": throughput,
    }
    return record | {"id": canonical(record)}


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
