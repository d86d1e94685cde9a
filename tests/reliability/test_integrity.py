"""Damaged data is detected: one-bit flips in Delta data files, manifests edited to name another
Delta version, flipped bytes in a manifest — each named with its file and what to do, never read
as if it were intact; `leanset verify STORE` lists every damaged file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leanset.pipelines.cli import main
from leanset.pipelines.store import IntegrityError, Store, StoreError, integrity
from leanset.pipelines.store.integrity import manifest_checksum
from tests.reliability._child import do_commit, payload
from tests.reliability.conftest import TALLY


@pytest.fixture
def two_versions(tmp_path: Path) -> Store:
    store = Store(tmp_path / "s")
    do_commit(str(store.root), "v1", None)
    do_commit(str(store.root), "v2", 1)
    integrity.forget()
    return store


def _data_file(store: Store, table: str, version: int) -> Path:
    from deltalake import DeltaTable

    dv = store.manifest(version)["tables"][table]
    return Path(DeltaTable(str(store.root / table), version=dv).file_uris()[0])


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


# Offsets spread over the file, as fractions of its size: page headers, values, the footer.
OFFSETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


@pytest.mark.parametrize("where", OFFSETS)
def test_one_bit_flip_in_a_decisions_data_file_is_named(two_versions: Store, where: float):
    store = two_versions
    victim = _data_file(store, "decisions", 2)
    flip_bit(victim, int(victim.stat().st_size * where), bit=3)
    TALLY["faults injected: one-bit flip in a Delta data file"] += 1
    Store(store.root)  # a fresh reader in the same process still checks the changed file
    with pytest.raises(IntegrityError, match=f"data file {victim} does not match the checksum"):
        store.read("decisions", 2)
    assert store.read("decisions", 1).equals(payload("v1")[1])  # other versions still read
    TALLY["faults survived"] += 1


def test_manifest_edited_to_another_delta_version_is_refused(two_versions: Store, tmp_path):
    store = two_versions
    path = store.layout.manifest(2)
    m = json.loads(path.read_text())
    m["tables"]["decisions"] = store.manifest(1)["tables"]["decisions"]
    path.write_text(json.dumps(m, indent=2, sort_keys=True))
    TALLY["faults injected: manifest edited to another Delta version"] += 1
    with pytest.raises(IntegrityError, match="v000002.json is damaged"):
        store.read("decisions", 2)

    m["checksum"] = manifest_checksum(m)  # an edit that also recomputes the checksum
    path.write_text(json.dumps(m, indent=2, sort_keys=True))
    TALLY["faults injected: manifest edited to another Delta version (checksum redone)"] += 1
    with pytest.raises(IntegrityError, match="written by another leanset commit"):
        store.read("decisions", 2)
    out = tmp_path / "out.parquet"
    rc = main(
        [
            "export",
            str(store.root),
            "--version",
            "2",
            "--decisions",
            "--format",
            "parquet",
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and not out.exists()
    TALLY["faults survived"] += 2


@pytest.mark.parametrize("offset", [0, 1, 40, 200, -3, -2])
def test_flipped_byte_in_a_manifest_is_a_named_error(two_versions: Store, offset: int, capsys):
    store = two_versions
    path = store.layout.manifest(2)
    raw = bytearray(path.read_bytes())
    raw[offset] = 0xFF  # never valid UTF-8
    path.write_bytes(bytes(raw))
    TALLY["faults injected: flipped byte in a manifest"] += 1
    with pytest.raises(StoreError, match=f"manifest {path} is unreadable"):
        Store(store.root).latest()
    assert main(["versions", str(store.root)]) == 2
    err = capsys.readouterr().out
    assert "v000002.json" in err and "restore" in err and "Traceback" not in err
    TALLY["faults survived"] += 1


def test_a_changed_digit_in_a_manifest_is_caught_by_its_checksum(two_versions: Store):
    store = two_versions
    path = store.layout.manifest(2)
    text = path.read_text()
    path.write_text(text.replace('"version": 2', '"version": 3', 1))
    TALLY["faults injected: edited manifest field"] += 1
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        store.manifest(2)
    TALLY["faults survived"] += 1


def test_files_are_hashed_once_per_process(two_versions: Store, monkeypatch):
    calls: list[str] = []
    real = integrity.digest_file
    monkeypatch.setattr(integrity, "digest_file", lambda p: calls.append(str(p)) or real(p))
    store = two_versions
    for _ in range(3):
        store.read("decisions", 2)
        Store(store.root).read("dataset", 2)
    assert len(calls) == 2  # one data file per table, each hashed once


def test_verify_names_each_damaged_file_and_passes_a_sound_store(two_versions: Store, capsys):
    store = two_versions
    assert main(["verify", str(store.root)]) == 0
    assert "ok: 2 version(s)" in capsys.readouterr().out
    victim = _data_file(store, "dataset", 1)
    flip_bit(victim, victim.stat().st_size // 2)
    log = (
        store.root
        / "decisions"
        / "_delta_log"
        / f"{store.manifest(2)['tables']['decisions']:020d}.json"
    )
    log.write_text(log.read_text().replace('"num_added_rows":3000', '"num_added_rows":3001'))
    TALLY["faults injected: damaged files found by leanset verify"] += 2
    assert main(["verify", str(store.root)]) == 1
    out = capsys.readouterr().out
    assert str(victim) in out and str(log) in out and "DAMAGED" in out
    assert "restore" in out
    TALLY["faults survived"] += 2
