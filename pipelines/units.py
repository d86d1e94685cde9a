"""What a training epoch reads, split by split: samples, tokens or pixels per row, before and after.

The cost delta counts the training splits only (`cost.train_splits`, default: every split that is
neither an eval split nor an unlabeled pool); eval splits are counted apart, and pool splits not at
all. A row's cost is 1 (samples), its token count under the configured tokenizer (tokens: the
`cost.tokenizer`, else the text embedder's, special tokens included, clipped at `cost.max_tokens`),
or its width x height (pixels: variable-size image pipelines). Unreadable rows count as one sample
but as 0 tokens or pixels (their size is unknown).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from leanset.pipelines.config import ConfigError, CostSettings, EmbedderSettings
from leanset.pipelines.sources import LoadedDataset

log = logging.getLogger("leanset.cost")

TokenCounter = Callable[[Sequence[str]], np.ndarray]
DEFAULT_ST_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class SplitUnits:
    """One split's samples and cost units, in the raw input and in the cleaned version."""

    split: str
    samples_before: int
    samples_after: int
    units_before: int
    units_after: int


@dataclass(frozen=True)
class Accounting:
    """The splits an epoch trains on, the eval splits beside them, and the unit they are counted in."""

    unit: str
    counted_with: str  # how units were counted ("1 per sample", "tokenizer X", "width x height")
    train: tuple[SplitUnits, ...]
    eval: tuple[SplitUnits, ...]
    ignored: tuple[str, ...]  # splits in neither (unlabeled pools)

    def total(self, which: str, field: str) -> int:
        """Sum of `field` over the `train` or `eval` splits."""
        rows: tuple[SplitUnits, ...] = getattr(self, which)
        return sum(int(getattr(r, field)) for r in rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "counted_with": self.counted_with,
            "train": [asdict(r) for r in self.train],
            "eval": [asdict(r) for r in self.eval],
            "ignored": list(self.ignored),
        }


def split_roles(
    present: Sequence[str],
    train_splits: Sequence[str] | None,
    eval_splits: Sequence[str],
    pool_splits: Sequence[str],
) -> tuple[list[str], list[str], list[str]]:
    """(train, eval, ignored) splits among those `present`; a named train split must exist."""
    present = sorted(set(present))
    if train_splits is not None:
        missing = [s for s in train_splits if s not in present]
        if missing:
            raise ConfigError(
                f"cost.train_splits: split(s) {missing} are not in the dataset; its splits: "
                f"{present}"
            )
        train = [s for s in present if s in train_splits]
    else:
        train = [s for s in present if s not in eval_splits and s not in pool_splits]
    evals = [s for s in present if s in eval_splits and s not in train]
    ignored = [s for s in present if s not in train and s not in evals]
    return train, evals, ignored


def account(
    decided: pl.DataFrame,
    units: np.ndarray,
    roles: tuple[list[str], list[str], list[str]],
    unit: str,
    counted_with: str,
) -> Accounting:
    """Samples and units per split before (every input row) and after (kept rows)."""
    frame = decided.select("split", "kept").with_columns(pl.Series("_u", units, dtype=pl.Int64))
    grouped = frame.group_by("split").agg(
        pl.len().alias("sb"),
        pl.col("kept").sum().alias("sa"),
        pl.col("_u").sum().alias("ub"),
        pl.col("_u").filter(pl.col("kept")).sum().alias("ua"),
    )
    by = {r["split"]: r for r in grouped.iter_rows(named=True)}

    def rows(names: list[str]) -> tuple[SplitUnits, ...]:
        return tuple(
            SplitUnits(s, int(by[s]["sb"]), int(by[s]["sa"]), int(by[s]["ub"]), int(by[s]["ua"]))
            for s in names
        )

    train, evals, ignored = roles
    return Accounting(unit, counted_with, rows(train), rows(evals), tuple(ignored))


def units_per_row(
    data: LoadedDataset, cost: CostSettings, embedder: EmbedderSettings | None
) -> tuple[np.ndarray, str]:
    """Cost units of every row of `data.table` and how they were counted."""
    table = data.table
    readable = table["error"].is_null().to_numpy()
    if cost.unit == "samples":
        return np.ones(table.height, dtype=np.int64), "1 per sample"
    if cost.unit == "tokens":
        if data.modality != "text" or not data.columns.text:
            raise ConfigError(
                f"cost.unit tokens: needs text data; this source holds {data.modality}"
            )
        count, name = token_counter(cost, embedder)
        texts = [v if isinstance(v, str) else "" for v in data.column(data.columns.text)]
        n = count(texts)
        if cost.max_tokens:
            n = np.minimum(n, cost.max_tokens)
        return np.where(readable, n, 0).astype(np.int64), f"tokenizer {name}"
    if data.modality != "image":
        raise ConfigError(f"cost.unit pixels: needs image data; this source holds {data.modality}")
    return _pixels(data, readable), "width x height of each image"


def _pixels(data: LoadedDataset, readable: np.ndarray) -> np.ndarray:
    """Width x height per row from the image header (unreadable rows: 0)."""
    from PIL import Image, UnidentifiedImageError

    out = np.zeros(data.table.height, dtype=np.int64)
    rows = np.flatnonzero(readable)
    for start in range(0, len(rows), 512):
        chunk = rows[start : start + 512].tolist()
        for row, content in zip(chunk, data.read(chunk), strict=True):
            try:
                with Image.open(io.BytesIO(content)) as img:
                    out[row] = img.width * img.height
            except (OSError, UnidentifiedImageError, ValueError):
                out[row] = 0  # the embed step already marked it, or it cannot be opened
    return out


def token_counter(
    cost: CostSettings, embedder: EmbedderSettings | None
) -> tuple[TokenCounter, str]:
    """A function from texts to token counts, and the tokenizer's name."""
    name = cost.tokenizer
    if name is None and embedder is not None and embedder.type == "sentence_transformers":
        name = embedder.model or DEFAULT_ST_MODEL
        if "/" not in name:
            name = f"sentence-transformers/{name}"
    if name is not None:
        return _hf_counter(name), name
    if embedder is not None and embedder.type == "open_clip_text":
        arch = embedder.model or "ViT-B-32"
        return _open_clip_counter(arch), f"open_clip {arch}"
    raise ConfigError(
        "cost.unit tokens: needs cost.tokenizer (a Hugging Face tokenizer name or folder) or a "
        "text embedder"
    )


def _hf_counter(name: str) -> TokenCounter:
    """Token counts (special tokens included) from a Hugging Face tokenizer."""
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ConfigError(
            "cost.unit tokens: needs transformers (pip install 'leanset[text]')"
        ) from exc
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cost.tokenizer: cannot load tokenizer {name!r} ({exc})") from exc

    def count(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(texts), dtype=np.int64)
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "longer than the model's maximum": we only count
        try:
            for start in range(0, len(texts), 1024):
                batch = list(texts[start : start + 1024])
                ids = tok(batch, add_special_tokens=True, truncation=False)["input_ids"]
                out[start : start + len(batch)] = [len(i) for i in ids]
        finally:
            hf_logging.set_verbosity(before)
        return out

    return count


def _open_clip_counter(model: str) -> TokenCounter:
    """Token counts under open_clip's tokenizer for `model` (start and end tokens included)."""
    import open_clip

    tok: Any = open_clip.get_tokenizer(model)
    inner = getattr(tok, "tokenizer", None)
    if inner is not None:  # a Hugging Face tokenizer inside open_clip's wrapper
        return lambda texts: np.array([len(inner(t)["input_ids"]) for t in texts], dtype=np.int64)
    return lambda texts: np.array([len(tok.encode(t)) + 2 for t in texts], dtype=np.int64)


def accounting_from_dict(data: dict[str, Any]) -> Accounting:
    """An `Accounting` as a manifest's cost delta stored it."""
    return Accounting(
        unit=str(data["unit"]),
        counted_with=str(data.get("counted_with", "")),
        train=tuple(SplitUnits(**r) for r in data.get("train", [])),
        eval=tuple(SplitUnits(**r) for r in data.get("eval", [])),
        ignored=tuple(data.get("ignored", [])),
    )
