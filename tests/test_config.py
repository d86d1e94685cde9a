from pathlib import Path

import pytest

from leanset.pipelines.config import ConfigError, load_flow, load_flows
from tests.helpers import flows_yaml

GOOD = """
defaults:
  store: stores/{flow}
flows:
  imgs:
    source: {type: imagefolder, path: images}
    embedder: {type: pixels, size: 16}
    dedup: {threshold: 0.9, keep: largest}
    cost: {gpu_hours_per_epoch: 2.0, price_per_gpu_hour: 3}
"""


def test_loads_flow_with_defaults_and_resolves_paths(tmp_path: Path):
    f = load_flow(flows_yaml(tmp_path, GOOD), "imgs")
    assert f.store == str(tmp_path / "stores" / "imgs")
    assert f.source.path == str(tmp_path / "images")
    assert f.dedup.threshold == 0.9 and f.dedup.keep == "largest"
    assert f.cost.price_per_gpu_hour == 3.0  # int accepted where a float is expected
    assert f.dedup.leakage == "drop_train"  # default keeps the test set intact


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("    dedup: {threshold: 0.9, kep: first}", "flow 'imgs': dedup.kep: unknown key"),
        (
            "    dedup: {threshold: high}",
            "dedup.threshold: expected float or 'auto', got str 'high'",
        ),
        ("    dedup: {threshold: 1.5}", "dedup.threshold: expected a number in (0, 1]"),
        (
            "    dedup: {keep: biggest}",
            "dedup.keep: expected one of ['first', 'last', 'largest', 'centroid']",
        ),
        ("    dedup: {exact: 1}", "dedup.exact: expected bool, got int 1"),
    ],
)
def test_bad_values_name_flow_and_key_path(tmp_path: Path, patch: str, message: str):
    text = GOOD.replace("    dedup: {threshold: 0.9, keep: largest}", patch)
    with pytest.raises(ConfigError) as err:
        load_flows(flows_yaml(tmp_path, text))
    assert message in str(err.value)


def test_missing_file_and_unknown_flow(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_flows(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no flow named 'other'; flows here: imgs"):
        load_flow(flows_yaml(tmp_path, GOOD), "other")


def test_required_keys(tmp_path: Path):
    text = "flows:\n  x:\n    store: s\n    embedder: {type: pixels}\n"
    with pytest.raises(ConfigError, match="flow 'x': source: required key is missing"):
        load_flows(flows_yaml(tmp_path, text))
    text = "flows:\n  x:\n    store: s\n    source: {type: imagefolder, path: i}\n"
    with pytest.raises(ConfigError, match="embedder: required when dedup.near is true"):
        load_flows(flows_yaml(tmp_path, text))


def test_yaml_tags_cannot_build_objects(tmp_path: Path):
    text = GOOD + "  evil: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_flows(flows_yaml(tmp_path, text))


def test_fingerprint_ignores_schedule_but_not_threshold(tmp_path: Path):
    a = load_flow(flows_yaml(tmp_path, GOOD), "imgs")
    b = load_flow(
        flows_yaml(
            tmp_path, GOOD.replace("dedup: {", "schedule: {cron: '0 2 * * *'}\n    dedup: {")
        ),
        "imgs",
    )
    c = load_flow(flows_yaml(tmp_path, GOOD.replace("0.9", "0.8")), "imgs")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_a_torch_embedder_needs_its_factory(tmp_path: Path):
    text = GOOD.replace("embedder: {type: pixels, size: 16}", "embedder: {type: torch}")
    with pytest.raises(ConfigError, match="embedder.factory: required for type 'torch'"):
        load_flows(flows_yaml(tmp_path, text))


def test_brackets_in_quotes_and_comments_do_not_count_as_nesting(tmp_path: Path):
    from leanset.pipelines.config import MAX_NESTING, ConfigError, _check_nesting

    deep = "[" * (MAX_NESTING + 1)
    _check_nesting(
        tmp_path, f"a: '{deep}'\nb: \"{deep}\\\" {deep}\"  # {deep}\nc: it's {'[]' * 200}\n"
    )
    with pytest.raises(ConfigError, match="line 2: brackets nested more than"):
        _check_nesting(tmp_path, f"a: 1\nb: {deep}{']' * (MAX_NESTING + 1)}\n")


def test_engine_defaults_to_local_and_takes_ray_settings(tmp_path: Path):
    assert load_flow(flows_yaml(tmp_path, GOOD), "imgs").engine.type == "local"
    text = GOOD + "    engine: {type: ray, address: '10.0.0.5:6379', gpus_per_worker: 1}\n"
    f = load_flow(flows_yaml(tmp_path, text), "imgs")
    assert (f.engine.type, f.engine.address, f.engine.gpus_per_worker) == (
        "ray",
        "10.0.0.5:6379",
        1.0,
    )
    short = load_flow(flows_yaml(tmp_path, GOOD + "    engine: ray\n"), "imgs")
    assert short.engine.type == "ray" and short.engine.address == "auto"
    # both engines decide alike, so switching engines is not a new configuration
    assert (
        f.fingerprint()
        == short.fingerprint()
        == load_flow(flows_yaml(tmp_path, GOOD), "imgs").fingerprint()
    )


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("{type: spark}", "engine.type: expected one of ['local', 'ray']"),
        ("{type: ray, address: head-node}", "engine.address: expected auto, HOST:PORT or ray://"),
        ("{type: ray, workers: 0}", "engine.workers: expected a number >= 1, got 0"),
        ("{type: ray, gpus: 1}", "engine.gpus: unknown key"),
    ],
)
def test_bad_engine_settings_name_the_key(tmp_path: Path, engine: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_flows(flows_yaml(tmp_path, GOOD + f"    engine: {engine}\n"))
    assert message in str(err.value)


def _outside(bound, hint) -> list:
    """Values just outside a declared range (as YAML would give them)."""
    whole = "int" in str(hint) and "float" not in str(hint)
    step = 1 if whole else 0.5
    out: list = []
    if bound.low is None and bound.high is None:
        return out
    if bound.low is not None:
        out.append(bound.low if bound.low_open else bound.low - step)
    if bound.high is not None:
        out.append(bound.high if bound.high_open else bound.high + step)
    if not whole:
        out.append(float("nan"))
    return [int(v) if whole and v == v else v for v in out]


def _bounded_keys() -> list[tuple[str, str, object]]:
    """(section, key, bad value) for every bounded field of every settings section."""
    import dataclasses
    import typing

    from leanset.dedup.bounds import bound_of
    from leanset.pipelines.config import FlowSettings, _dataclass_of

    cases = []
    for section, hint in typing.get_type_hints(FlowSettings).items():
        cls = _dataclass_of(hint)
        if cls is None:
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            bound = bound_of(f)
            if bound is None:
                continue
            listed = "list" in str(hints[f.name])
            for bad in _outside(bound, hints[f.name]):
                cases.append((section, f.name, [bad] if listed else bad))
            if bound.min_items:
                cases.append((section, f.name, []))
    return cases


@pytest.mark.parametrize(("section", "key", "bad"), _bounded_keys())
def test_every_value_outside_its_declared_range_is_refused_with_its_key_path(
    tmp_path: Path, section: str, key: str, bad: object
):
    import yaml

    body = {
        "source": {"type": "imagefolder", "path": "images"},
        "embedder": {"type": "pixels", "size": 16},
        "store": "s",
    }
    body[section] = {**body.get(section, {}), key: bad}  # type: ignore[dict-item]
    if section == "embedder":
        body[section]["type"] = "pixels"  # type: ignore[index]
    text = yaml.safe_dump({"flows": {"f": body}})
    with pytest.raises(ConfigError) as err:
        load_flows(flows_yaml(tmp_path, text))
    assert f"flow 'f': {section}.{key}: " in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("label_noise: {c: []}", "label_noise.c: needs at least one value"),
        ("label_noise: {c: [1, 0]}", "label_noise.c: every value must be a number > 0, got 0"),
        ("dedup: {exact_max_rows: -5}", "dedup.exact_max_rows: expected a number >= 1, got -5"),
        ("dedup: {guard_min_rows: -1}", "dedup.guard_min_rows: expected a number >= 0, got -1"),
        ("embedder: {type: pixels, batch_size: 0}", "embedder.batch_size: expected a number >= 1"),
        ("embedder: {type: pixels, batch_size: -1}", "embedder.batch_size: expected a number >= 1"),
        ("embedder: {type: pixels, shard_rows: 0}", "embedder.shard_rows: expected a number >= 1"),
        ("schedule: {interval_minutes: .inf}", "schedule.interval_minutes: expected a number > 0"),
        ("dedup: {max_drop_fraction: 0}", "expected a number in (0, 1] or null, got 0"),
    ],
)
def test_values_that_used_to_die_late_are_refused_by_the_loader(
    tmp_path: Path, section: str, message: str
):
    text = GOOD.replace("    dedup: {threshold: 0.9, keep: largest}", f"    {section}")
    text = (
        text.replace("    embedder: {type: pixels, size: 16}\n", "")
        if "embedder" in section
        else text
    )
    with pytest.raises(ConfigError) as err:
        load_flows(flows_yaml(tmp_path, text))
    assert message in str(err.value), str(err.value)


RUNTIME_CHANGES = [
    "embedder.batch_size=7",
    "embedder.num_workers=2",
    "embedder.shard_rows=100",
    "embedder.device=cpu",
    "cost.price_per_gpu_hour=9.5",
    "cost.price_per_cpu_hour=0.1",
    "cost.epochs=90",
    "cost.num_gpus=8",
    "engine.workers=3",
    "engine.batch_size=512",
    "schedule.cron='0 3 * * *'",
    "description=nightly",
]
DECIDING_CHANGES = [
    "dedup.threshold=0.8",
    "dedup.keep=last",
    "embedder.size=8",
    "embedder.precision=fp32",
    "cost.max_accuracy_drop=0.05",
    "label_noise.c=[3]",
]


@pytest.mark.parametrize("change", RUNTIME_CHANGES)
def test_how_a_run_is_computed_priced_or_scheduled_is_not_in_the_fingerprint(
    tmp_path: Path, change: str
):
    config = flows_yaml(tmp_path, GOOD)
    assert (
        load_flow(config, "imgs").fingerprint() == load_flow(config, "imgs", [change]).fingerprint()
    )


@pytest.mark.parametrize("change", DECIDING_CHANGES)
def test_what_changes_decisions_is_in_the_fingerprint(tmp_path: Path, change: str):
    config = flows_yaml(tmp_path, GOOD)
    assert (
        load_flow(config, "imgs").fingerprint() != load_flow(config, "imgs", [change]).fingerprint()
    )


def _readme_keys() -> set[str]:
    """Key paths in the first column of README's flows.yaml table (`a.b`, `c`: `a.c`)."""
    import re

    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index("### flows.yaml")
    found: set[str] = set()
    for line in text[start : text.index("\n### ", start + 5)].splitlines():
        if not line.startswith("| `"):
            continue
        section = ""
        for token in re.findall(r"`([^`]+)`", line.split("|")[1]):
            section = token.split(".")[0] if "." in token else section
            found.add(token if "." in token or not section else f"{section}.{token}")
    return found


def test_every_settings_key_is_in_the_readme_table():
    import dataclasses
    import typing

    from leanset.pipelines.config import FlowSettings, _dataclass_of

    keys = []
    for name, hint in typing.get_type_hints(FlowSettings).items():
        cls = _dataclass_of(hint)
        fields = [f"{name}.{f.name}" for f in dataclasses.fields(cls)] if cls else [name]
        keys += fields if name != "name" else []
    assert sorted(set(keys) - _readme_keys()) == []
