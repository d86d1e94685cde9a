"""flows.yaml: one loader, typed settings per stage, and errors that name the flow and key path."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import glob
import hashlib
import json
import reprlib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from leanset.dedup.bounds import bounded, deciding, field_problems, fraction, runtime
from leanset.dedup.config import (
    ROUTES,
    DedupSettings,
    DriftSettings,
    ImageQualitySettings,
    OutlierSettings,
)
from leanset.labeling.config import ActiveLearningSettings, LabelNoiseSettings
from leanset.pipelines.store.storage import is_url, storage_problem


class ConfigError(ValueError):
    """A flows.yaml problem; the message names the file, the flow and the key path."""


@dataclass(frozen=True)
class SourceSettings:
    """Where the samples come from (loaded through Hugging Face `datasets`)."""

    type: Literal["imagefolder", "files", "disk", "hub"]
    path: str | None = None
    format: Literal["parquet", "csv", "json"] | None = None
    data_files: list[str] | None = None
    name: str | None = None
    config: str | None = None
    revision: str | None = None
    splits: list[str] | None = None
    # credentials and endpoint of s3://, gs://, az:// paths (else the usual environment variables)
    storage_options: dict[str, str] | None = runtime(None)


@dataclass(frozen=True)
class ColumnSettings:
    """Which source columns hold the id, content, label, split and precomputed embeddings."""

    id: str | None = None
    image: str | None = None
    text: str | None = None
    label: str | None = "label"
    split: str | None = None
    embedding: str | None = None
    unlabeled_splits: list[str] = field(default_factory=lambda: ["unlabeled"])

    def content(self) -> str:
        """The content column (embedding, else image, else text) once the loader has set it."""
        name = self.embedding or self.image or self.text
        if not name:
            raise ConfigError("columns: no content column (image, text or embedding) is set")
        return name


@dataclass(frozen=True)
class EmbedderSettings:
    """Which embedder turns samples into vectors, and how it runs."""

    type: Literal[
        "open_clip", "open_clip_text", "sentence_transformers", "pixels", "precomputed", "torch"
    ]
    model: str | None = None
    factory: str | None = None  # type torch: "package.module:function" -> (model, preprocess)
    pretrained: str | None = None
    device: str = runtime("auto")
    batch_size: int = bounded(64, low=1, decides=False)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    num_workers: int = bounded(0, low=0, decides=False)
    size: int = bounded(16, low=1)
    shard_rows: int = bounded(4096, low=1, decides=False)


CostUnit = Literal["samples", "tokens", "pixels"]


@dataclass(frozen=True)
class CostSettings:
    """What one training epoch costs, to state what the cleaning saves and what it costs in quality.

    The epoch cost is counted over the training splits only (`train_splits`, default: every split
    that is neither an eval split nor an unlabeled pool), in `unit`s: samples, tokens (counted
    with `tokenizer`, else the text embedder's) or pixels. Its price comes from
    `gpu_hours_per_epoch` (one epoch over the raw training splits), else a throughput per GPU, else
    the store's `leanset calibrate` measurement.
    """

    gpu_hours_per_epoch: float | None = bounded(None, low=0, low_open=True)
    samples_per_second_per_gpu: float | None = bounded(None, low=0, low_open=True)
    tokens_per_second_per_gpu: float | None = bounded(None, low=0, low_open=True)
    pixels_per_second_per_gpu: float | None = bounded(None, low=0, low_open=True)
    num_gpus: int = bounded(1, low=1, decides=False)
    price_per_gpu_hour: float | None = bounded(None, low=0, decides=False)
    price_per_cpu_hour: float | None = bounded(None, low=0, decides=False)
    epochs: int | None = bounded(None, low=1, decides=False)
    train_splits: list[str] | None = None
    unit: CostUnit = "samples"
    tokenizer: str | None = None
    max_tokens: int | None = bounded(None, low=1)
    eval_gpu_hours_per_epoch: float | None = bounded(None, low=0)
    train_step: str | None = None
    quality: bool = True
    max_accuracy_drop: float = fraction(0.01)
    promote: bool = False

    def throughput(self) -> tuple[float, CostUnit] | None:
        """The training throughput per GPU the user gave and its unit (None when none is given).

        A throughput in tokens or pixels goes with that `unit`; samples/s goes with any unit (the
        raw epoch's time is its samples over it; the cleaned epoch scales with `unit`)."""
        given: tuple[tuple[float | None, CostUnit], ...] = (
            (self.tokens_per_second_per_gpu, "tokens"),
            (self.pixels_per_second_per_gpu, "pixels"),
            (self.samples_per_second_per_gpu, "samples"),
        )
        for value, unit in given:
            if value is not None:
                return value, unit
        return None


@dataclass(frozen=True)
class ScheduleSettings:
    """When `leanset serve` runs the flow."""

    cron: str | None = None
    interval_minutes: float | None = bounded(None, low=0, low_open=True)
    timezone: str = "UTC"


@dataclass(frozen=True)
class EngineSettings:
    """Where the heavy stages run: `local` (this process, the default) or a Ray cluster.

    `address`: auto (RAY_ADDRESS, else a head on this machine), HOST:PORT of a head's GCS, or
    ray://HOST:PORT (Ray Client). `workers`: embedding actors (default: as many as fit, one per
    `gpus_per_worker` GPUs or `cpus_per_worker` CPUs); `batch_size` and `shard_rows` override the
    embedder's on the cluster (one task writes one cache shard); `task_cpus`: CPUs per search
    task; `task_rows`: rows one search task holds at most (bounds a worker's memory: about
    task_rows x D x 4 bytes, more only when one cluster alone has more rows); `max_task_retries`: how often a slice whose worker died is run again."""

    type: Literal["local", "ray"] = "local"
    address: str = "auto"
    workers: int | None = bounded(None, low=1)
    cpus_per_worker: float = bounded(1.0, low=0, low_open=True)
    gpus_per_worker: float = bounded(0.0, low=0)
    batch_size: int | None = bounded(None, low=1)
    shard_rows: int | None = bounded(None, low=1)
    task_cpus: float = bounded(1.0, low=0, low_open=True)
    task_rows: int = bounded(262_144, low=1)
    max_task_retries: int = bounded(3, low=0)
    connect_timeout_s: float = bounded(5.0, low=0, low_open=True)
    check_timeout_s: float = bounded(60.0, low=0, low_open=True)


@dataclass(frozen=True)
class LeakReference:
    """An outside set (flows.yaml's `leaks.against:` items): another leanset store (its latest
    version; its cached embeddings are reused), or a source read like this flow's own."""

    store: str | None = None
    source: SourceSettings | None = None
    columns: ColumnSettings = field(default_factory=ColumnSettings)
    splits: list[str] | None = None  # only these splits of the reference (None: all)
    name: str | None = None  # how `contaminated_by` names it (default: the store or source path)
    # credentials and endpoint of a reference store on s3://, gs://, az:// (else the flow's
    # storage_options when its store uses the same scheme, else the environment)
    storage_options: dict[str, str] | None = runtime(None)


@dataclass(frozen=True)
class LeaksSettings:
    """Near copies of outside sets in the training splits (flows.yaml's `leaks:`)."""

    against: list[LeakReference] = field(default_factory=list)
    policy: Literal["drop", "flag"] = "drop"
    threshold: float | None = None  # None: the dedup threshold (as calibrated)


@dataclass(frozen=True)
class FlowSettings:
    """One named flow of flows.yaml, with every path resolved against the file's folder."""

    name: str = field(metadata={"decides": False})
    source: SourceSettings
    store: str
    embedder: EmbedderSettings | None = None
    columns: ColumnSettings = field(default_factory=ColumnSettings)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    label_noise: LabelNoiseSettings | None = None
    active_learning: ActiveLearningSettings | None = None
    outliers: OutlierSettings = field(default_factory=OutlierSettings)
    image_quality: ImageQualitySettings = field(default_factory=ImageQualitySettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    leaks: LeaksSettings = field(default_factory=LeaksSettings)
    # when and where a run happens, not what it decides (both engines decide identically)
    schedule: ScheduleSettings | None = runtime(None)
    engine: EngineSettings = field(default_factory=EngineSettings, metadata={"decides": False})
    description: str = runtime("")
    # credentials and endpoint of an s3://, gs://, az:// store (else the usual environment variables)
    storage_options: dict[str, str] | None = runtime(None)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for manifests and Prefect parameters)."""
        return dataclasses.asdict(self)

    def to_record(self) -> dict[str, Any]:
        """What a manifest records: `to_dict()` without `storage_options` (they may hold
        credentials; a reader of the store brings its own)."""
        data = self.to_dict()
        data.pop("storage_options")
        data["source"].pop("storage_options")
        for ref in data["leaks"]["against"]:
            ref.pop("storage_options", None)
            if ref.get("source"):
                ref["source"].pop("storage_options", None)
        return data

    def fingerprint(self) -> str:
        """Hash of every setting that changes the decisions: not those declared `decides=False`
        (how a run is computed, priced or scheduled, and where it runs)."""
        data = json.dumps(deciding(self), sort_keys=True).encode()
        return hashlib.blake2b(data, digest_size=8).hexdigest()


def load_flows(path: str | Path) -> dict[str, FlowSettings]:
    """Read and validate every flow in a flows.yaml file."""
    path = Path(path)
    return {
        name: _load_flow(path, name, body, f"{path}: flow {name!r}")
        for name, body in _read_bodies(path).items()
    }


def load_flow(path: str | Path, name: str, overrides: Sequence[str] = ()) -> FlowSettings:
    """Read one named flow from a flows.yaml file (every flow in it is validated).

    `overrides`: `key.path=value` strings (`leanset run --set`); the value is read as YAML and
    checked exactly like the same key in the file."""
    path = Path(path)
    bodies = _read_bodies(path)
    if name not in bodies:
        raise ConfigError(
            f"{path}: no flow named {name!r}{did_you_mean(name, bodies)}; "
            f"flows here: {', '.join(sorted(bodies))}"
        )
    flows = {n: _load_flow(path, n, b, f"{path}: flow {n!r}") for n, b in bodies.items()}
    if not overrides:
        return flows[name]
    body = apply_overrides(bodies[name], overrides)
    return _load_flow(path, name, body, f"{path}: flow {name!r} with --set {' '.join(overrides)}")


def _read_bodies(path: Path) -> dict[str, Any]:
    """Each flow's body with `defaults:` merged in, as plain data."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (expected a flows.yaml)")
    text = path.read_text(encoding="utf-8")
    _check_nesting(path, text)
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("flows"), dict) or not raw["flows"]:
        raise ConfigError(
            f"{path}: expected a mapping with a non-empty 'flows:' mapping at the top"
        )
    unknown = set(raw) - {"flows", "defaults"}
    if unknown:
        first = sorted(unknown)[0]
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}"
            f"{did_you_mean(first, ['flows', 'defaults'])}; expected 'flows', 'defaults'"
        )
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a mapping")
    return {str(name): _merge(defaults, body or {}) for name, body in raw["flows"].items()}


MAX_NESTING = 100  # flow collections ([...], {...}) inside each other; a real flows.yaml uses 3


def _check_nesting(path: Path, text: str) -> None:
    """Refuse `[[[[...` nested past MAX_NESTING before YAML reads it: the parser takes seconds
    to reach its recursion limit on such a file. Brackets in quotes and comments do not count."""
    depth, quote, escaped, comment, prev = 0, "", False, False, "\n"
    for line, row in enumerate(text.splitlines(), 1):
        comment, prev = False, "\n"
        for c in row:
            if quote:
                if escaped:
                    escaped = False
                elif quote == '"' and c == "\\":
                    escaped = True
                elif c == quote:
                    quote = ""
            elif comment or (c == "#" and prev in " \t\n"):
                comment = True
            elif c in "\"'" and prev in " \t\n[{,:-":
                quote = c
            elif c in "[{":
                depth += 1
                if depth > MAX_NESTING:
                    raise ConfigError(
                        f"{path}: not valid YAML (line {line}: brackets nested more than "
                        f"{MAX_NESTING} deep)"
                    )
            elif c in "]}":
                depth = max(depth - 1, 0)
            prev = c


def did_you_mean(word: str, choices: Any, keypath: str = "") -> str:
    """` (did you mean 'x'?)` for the closest of `choices` (under `keypath`), or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {_join(keypath, close[0])!r}?)" if close else ""


def apply_overrides(body: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`body` with each `key.path=value` set (keys checked against the settings, with hints)."""
    out = copy.deepcopy(body)
    for item in overrides:
        keypath, sep, text = item.partition("=")
        keys = keypath.strip().split(".")
        if not sep or not all(keys):
            raise ConfigError(f"--set {item}: expected key.path=value, e.g. dedup.threshold=0.97")
        _check_keypath(keys, item)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({exc})") from exc
        node = out
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return out


def _check_keypath(keys: list[str], item: str) -> None:
    """Each key of a `--set` path names a setting (the last may be any; the others sections)."""
    cls: Any = FlowSettings
    for depth, key in enumerate(keys):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        done = ".".join(keys[:depth])
        if key not in fields or key == "name":
            known = sorted(set(fields) - {"name"})
            hint = did_you_mean(key, known, done)
            raise ConfigError(
                f"--set {item}: {_join(done, key)}: unknown key{hint}; expected one of {known}"
            )
        inner = _dataclass_of(typing.get_type_hints(cls)[key])
        if depth < len(keys) - 1 and inner is None:
            raise ConfigError(f"--set {item}: {_join(done, key)} is a value, not a section")
        cls = inner


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a type hint holds (`X` or `X | None`), else None."""
    for h in (hint, *typing.get_args(hint)):
        if isinstance(h, type) and dataclasses.is_dataclass(h):
            return h
    return None


def check_source_exists(settings: FlowSettings, config: str | Path) -> None:
    """The source the flow reads is there (called before a run starts, not at every load: the
    demo writes its data after reading the config, and `serve` reads flows that run later)."""
    src, where = settings.source, f"{config}: flow {settings.name!r}"
    if is_url(src.path or "") or any(is_url(f) for f in src.data_files or []):
        return  # on object storage: listed when the run loads it
    if src.type == "imagefolder" and not Path(src.path or "").is_dir():
        raise ConfigError(
            f"{where}: source.path: {src.path} is not a folder (expected images in "
            f"split/class/file folders)"
        )
    if src.type == "disk" and not Path(src.path or "").exists():
        raise ConfigError(
            f"{where}: source.path: {src.path} does not exist (expected a save_to_disk folder)"
        )
    for pattern in src.data_files or []:
        if not glob.glob(pattern):
            raise ConfigError(f"{where}: source.data_files: no file matches {pattern}")


def flow_from_dict(data: dict[str, Any], where: str = "manifest config") -> FlowSettings:
    """A flow's settings from their `to_dict()` form (a manifest's `config`), checked as flows.yaml
    is; paths are taken as they were stored (already absolute)."""
    return _build(FlowSettings, data, where, "")  # type: ignore[no-any-return]


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge two mappings, `over` winning."""
    if not isinstance(over, dict):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def load_body(body: Any, name: str, base: Path, where: str) -> FlowSettings:
    """One flow from its body as plain data (what flows.yaml holds under the flow's name), checked
    exactly like the file's flows, relative paths against `base`; errors start with `where`."""
    return _load_flow(base / "flows.yaml", name, body, where)


def _load_flow(path: Path, name: str, body: Any, where: str) -> FlowSettings:
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(body).__name__}")
    body = {"name": name, **body}
    if "store" in body and isinstance(body["store"], str):
        body["store"] = body["store"].replace("{flow}", name)
    if isinstance(body.get("engine"), str):  # `engine: ray` is `engine: {type: ray}`
        body["engine"] = {"type": body["engine"]}
    settings = _build(FlowSettings, body, where, "")
    return _resolve_paths(settings, path.parent, where)


def _build(cls: type, data: Any, where: str, keypath: str) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    label = keypath or "flow"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {label}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hint = did_you_mean(unknown[0], fields, keypath)
        raise ConfigError(
            f"{where}: {_join(keypath, unknown[0])}: unknown key{hint}; "
            f"expected one of {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, where, _join(keypath, key))
    missing = [
        f.name
        for f in fields.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: {_join(keypath, missing[0])}: required key is missing")
    for key, problem in field_problems(cls, kwargs):
        raise ConfigError(f"{where}: {_join(keypath, key)}: {problem}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, keypath: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce_any(inner, value, where, keypath)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {keypath}: expected one of {list(args)}, got {_show(value)}"
            )
        return value
    if origin is dict:
        return _mapping(value, where, keypath)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {keypath}: expected a list, got {_show(value)}")
        return [_coerce(args[0], v, where, f"{keypath}[{i}]") for i, v in enumerate(value)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where, keypath)
    return _scalar(hint, value, where, keypath)


def _coerce_any(hints: list[Any], value: Any, where: str, keypath: str) -> Any:
    """The first of several accepted types that takes the value (e.g. a number or "auto")."""
    if len(hints) == 1:
        return _coerce(hints[0], value, where, keypath)
    for hint in hints:
        try:
            return _coerce(hint, value, where, keypath)
        except ConfigError:
            continue
    expected = " or ".join(_describe(h) for h in hints)
    raise ConfigError(f"{where}: {keypath}: expected {expected}, got {_show(value)}")


def _mapping(value: Any, where: str, keypath: str) -> dict[str, str]:
    """`storage_options`: names to scalar values, kept as strings (what obstore and deltalake take)."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: {keypath}: expected a mapping of option: value, got {_show(value)}"
        )
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, (dict, list)) or item is None:
            raise ConfigError(
                f"{where}: {keypath}.{key}: expected a string, number or boolean value, "
                f"got {_show(item)}"
            )
        out[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return out


def _describe(hint: Any) -> str:
    """A type as a message names it."""
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return "a list"
    return getattr(hint, "__name__", str(hint))


def _scalar(hint: type, value: Any, where: str, keypath: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{where}: {keypath}: expected {hint.__name__}, got {_show(value)}")
    return value


def _resolve_paths(s: FlowSettings, base: Path, where: str) -> FlowSettings:
    """Make relative paths absolute against the flows.yaml folder and check the ranges."""
    src = s.source
    if src.type in ("imagefolder", "disk") and not src.path:
        raise ConfigError(f"{where}: source.path: required for source type {src.type!r}")
    if src.type == "files" and not (src.data_files and src.format):
        raise ConfigError(f"{where}: source: type 'files' needs 'format' and 'data_files'")
    if src.type == "hub" and not src.name:
        raise ConfigError(f"{where}: source.name: required for source type 'hub' (a dataset id)")
    _check_dedup(s.dedup, where)
    if s.embedder and s.embedder.type == "torch" and not s.embedder.factory:
        raise ConfigError(
            f"{where}: embedder.factory: required for type 'torch' "
            f"('package.module:function' returning (model, preprocess))"
        )
    c = s.columns
    probabilities_only = not (c.image or c.text or c.embedding) and bool(
        s.label_noise and s.label_noise.pred_probs_column
    )  # ids, labels and given probabilities: the run skips dedup and says so
    if s.dedup.near and s.embedder is None and not probabilities_only:
        raise ConfigError(f"{where}: embedder: required when dedup.near is true")
    _check_labeling(s, where)
    _check_cost(s, where)
    _check_engine(s.engine, where)
    _check_storage_options(s.store, s.storage_options, where, "storage_options")
    for f in src.data_files or [src.path or ""]:
        _check_storage_options(f, src.storage_options, where, "source.storage_options")
    s = dataclasses.replace(s, leaks=_resolve_leaks(s, base, where))
    source = dataclasses.replace(
        src,
        path=_abs(base, src.path) if src.path and src.type != "hub" else src.path,
        data_files=[_abs(base, f) for f in src.data_files] if src.data_files else None,
    )
    emb = s.embedder
    if emb and emb.pretrained and _looks_like_path(emb.pretrained):
        emb = dataclasses.replace(emb, pretrained=_abs(base, emb.pretrained))
    if emb and emb.model and _looks_like_path(emb.model):
        emb = dataclasses.replace(emb, model=_abs(base, emb.model))
    cost = s.cost
    if cost.tokenizer and _looks_like_path(cost.tokenizer):
        cost = dataclasses.replace(cost, tokenizer=_abs(base, cost.tokenizer))
    return dataclasses.replace(s, source=source, store=_abs(base, s.store), embedder=emb, cost=cost)


def _check_dedup(d: DedupSettings, where: str) -> None:
    """The dedup section's routes (its ranges are declared on its fields)."""
    if isinstance(d.confirm, list):
        unknown = [r for r in d.confirm if r not in ROUTES]
        if unknown or not d.confirm:
            raise ConfigError(
                f"{where}: dedup.confirm: expected auto, embedding or a list of routes from "
                f"{list(ROUTES)}, got {_show(d.confirm)}"
            )


def _check_labeling(s: FlowSettings, where: str) -> None:
    """Dependencies of the label_noise and active_learning sections."""
    noise, al = s.label_noise, s.active_learning
    if noise and s.embedder is None and not noise.pred_probs_column:
        raise ConfigError(
            f"{where}: label_noise: needs an embedder (for the probe) or pred_probs_column"
        )
    if al and s.embedder is None and al.diversity != "none":
        raise ConfigError(
            f"{where}: active_learning: needs an embedder (diversity is measured on "
            f"embeddings), or diversity: none to pick by the probabilities alone"
        )


TEXT_EMBEDDERS = ("sentence_transformers", "open_clip_text")


def _check_cost(s: FlowSettings, where: str) -> None:
    """The cost section: one source of the epoch cost, units that fit the data."""
    c = s.cost
    sources = [
        k
        for k in ("gpu_hours_per_epoch", "samples_per_second_per_gpu")
        + ("tokens_per_second_per_gpu", "pixels_per_second_per_gpu")
        if getattr(c, k) is not None
    ]
    if len(sources) > 1:
        raise ConfigError(
            f"{where}: cost: give one of {', '.join(sources)} (each alone prices an epoch)"
        )
    for unit in ("tokens", "pixels"):
        if getattr(c, f"{unit}_per_second_per_gpu") is not None and c.unit != unit:
            raise ConfigError(
                f"{where}: cost.{unit}_per_second_per_gpu: needs cost.unit: {unit} (got {c.unit})"
            )
    text_embedder = s.embedder is not None and s.embedder.type in TEXT_EMBEDDERS
    if c.unit == "tokens" and not c.tokenizer and not text_embedder:
        raise ConfigError(
            f"{where}: cost.unit tokens: needs cost.tokenizer (a Hugging Face tokenizer name "
            f"or folder) or a text embedder ({', '.join(TEXT_EMBEDDERS)})"
        )
    if c.train_step and not _is_entry_point(c.train_step):
        raise ConfigError(
            f"{where}: cost.train_step: expected 'package.module:function', got {c.train_step!r}"
        )


def _is_entry_point(value: str) -> bool:
    module, _, func = value.partition(":")
    parts = module.split(".") + [func]
    return all(p.isidentifier() for p in parts)


def _check_engine(e: EngineSettings, where: str) -> None:
    """The engine's address form."""
    address = e.address.removeprefix("ray://")
    host, sep, port = address.rpartition(":")
    if e.address != "auto" and not (sep and host and port.isdigit()):
        raise ConfigError(
            f"{where}: engine.address: expected auto, HOST:PORT or ray://HOST:PORT, "
            f"got {_show(e.address)}"
        )


def _check_storage_options(
    where_to: str, options: dict[str, str] | None, where: str, keypath: str
) -> None:
    """`storage_options` belong to an object-storage URL, and the object store must take them."""
    if not options:
        return
    if not is_url(where_to):
        a_store = not keypath.endswith("source.storage_options")
        if a_store or not where_to:
            raise ConfigError(
                f"{where}: {keypath}: applies to s3://, gs://, az:// URLs only, and "
                f"{'the store' if a_store else 'the source'} is "
                f"{where_to or 'not on object storage'}"
            )
        return
    problem = storage_problem(where_to, options)
    if problem:
        raise ConfigError(f"{where}: {keypath}: {problem}")


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith((".pt", ".bin", ".safetensors"))


def _abs(base: Path, value: str) -> str:
    if "://" in value:  # an object-storage URL (s3://...) is not a path under `base`
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _join(keypath: str, key: str) -> str:
    return f"{keypath}.{key}" if keypath else key


_SHOW = reprlib.Repr()  # bounded: a YAML alias bomb must not be expanded into an error message
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 4, 4, 80, 80


def _show(value: Any) -> str:
    return f"{type(value).__name__} {_SHOW.repr(value)}"[:120]


def _resolve_leaks(s: FlowSettings, base: Path, where: str) -> LeaksSettings:
    """`leaks.against`: each item one store or one source, paths made absolute, each named."""
    refs = []
    for n, ref in enumerate(s.leaks.against):
        key = f"{where}: leaks.against[{n}]"
        if (ref.store is None) == (ref.source is None):
            raise ConfigError(f"{key}: expected exactly one of store or source")
        if ref.source is None:
            store = _abs(base, ref.store or "")
            opts = f"leaks.against[{n}].storage_options"
            _check_storage_options(store, ref.storage_options, where, opts)
            refs.append(dataclasses.replace(ref, store=store, name=ref.name or Path(store).name))
            continue
        if ref.storage_options:
            raise ConfigError(
                f"{key}.storage_options: belongs to a reference store; a source reference takes "
                "source.storage_options"
            )
        src = ref.source
        for f in src.data_files or [src.path or ""]:
            opts = f"leaks.against[{n}].source.storage_options"
            _check_storage_options(f, src.storage_options, where, opts)
        path = _abs(base, src.path) if src.path and src.type != "hub" else src.path
        files = [_abs(base, f) for f in src.data_files] if src.data_files else None
        source = dataclasses.replace(src, path=path, data_files=files)
        name = ref.name or Path(str(path or src.name or (files or ["source"])[0])).name
        refs.append(dataclasses.replace(ref, source=source, name=name))
    if not s.embedder and refs:
        raise ConfigError(f"{where}: leaks.against: needs an embedder (copies are found by it)")
    return dataclasses.replace(s.leaks, against=refs)
