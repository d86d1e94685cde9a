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
        ("{type: ray, workers: 0}", "engine.workers: expected a positive number, got 0"),
        ("{type: ray, gpus: 1}", "engine.gpus: unknown key"),
    ],
)
def test_bad_engine_settings_name_the_key(tmp_path: Path, engine: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_flows(flows_yaml(tmp_path, GOOD + f"    engine: {engine}\n"))
    assert message in str(err.value)
