"""Random one-bit flips in the store's rewritable files (labeling answers and queue, Label Studio
sync state, the file-hash cache, after-commit records, reports): every flip is caught by the file's
checksum before anything parses it and named with the file and what to do, or the file reads back
identical; `leanset verify` lists each one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from leanset.pipelines import finish
from leanset.pipelines.cli import main
from leanset.pipelines.sources import FileHashCache
from leanset.pipelines.store import IntegrityError, Store
from leanset.pipelines.store import queue as Q
from leanset.pipelines.store.sealed import sum_path
from leanset.pipelines.store.verify import verify_store
from tests.reliability._child import do_commit
from tests.reliability.conftest import TALLY
from tests.reliability.test_labelstudio import CLASSES, ask, task

FLIPS = 150
FIXES = ("restore", "rebuilt", "delete", "redone")  # each message says what to do


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with a version, a queue of three samples and one imported answer."""
    root = tmp_path / "store"
    do_commit(str(root), "v1", None)
    ask(root)
    export = tmp_path / "export.json"
    export.write_text(json.dumps([task("s1"), task("s2", choice="cat", ann_id=2)]))
    Q.import_label_studio(root, export, classes=CLASSES)
    Q.write_sync_state(root, "http://ls#1", {"project_id": 1, "pulled_through": "2026-01-01"})
    return root


def _flips(path: Path, read: Callable[[], Any], damaged: type[BaseException], what: str) -> int:
    """Flip FLIPS random bits of `path` one at a time; each read either raises `damaged` naming
    the file or returns what it returned before. Returns how many were detected."""
    original, expected = path.read_bytes(), read()
    rng = np.random.default_rng(len(original))
    detected = 0
    for bit in rng.integers(0, len(original) * 8, size=FLIPS):
        raw = bytearray(original)
        raw[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(raw))
        try:
            got = read()
        except damaged as exc:
            assert path.name in str(exc) and any(w in str(exc) for w in FIXES), exc
            detected += 1
        else:
            assert _same(got, expected), f"bit {bit} of {path.name} changed what was read"
        TALLY[f"faults injected: one-bit flip in {what}"] += 1
        TALLY["faults survived"] += 1
    path.write_bytes(original)
    return detected


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, pl.DataFrame):
        return a.equals(b)
    return bool(a == b)


def test_flipped_bits_in_the_answers_are_caught_before_polars_reads_them(store: Path):
    path = Store(store).layout.answers
    read = lambda: Q.read_answers(store, latest=False)  # noqa: E731
    assert _flips(path, read, IntegrityError, "labeling/answers.parquet") == FLIPS


def test_flipped_bits_in_the_queue_are_caught(store: Path):
    path = Store(store).layout.queue
    assert _flips(path, lambda: Q.read_queue(store), IntegrityError, "labeling/queue.parquet")


def test_flipped_bits_in_the_label_studio_sync_state_are_caught(store: Path):
    path = Store(store).layout.label_studio_sync
    read = lambda: Q.read_sync_state(store)  # noqa: E731
    assert _flips(path, read, IntegrityError, "labeling/label-studio.json") == FLIPS


def test_a_damaged_answers_file_is_one_message_from_the_cli(store: Path, capsys):
    path = Store(store).layout.answers
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x04
    path.write_bytes(bytes(raw))
    TALLY["hostile inputs tried: answers.parquet with one flipped bit (queue show)"] += 1
    assert main(["queue", "show", str(store)]) == 2
    out = capsys.readouterr().out
    assert "answers.parquet is damaged" in out and "restore" in out and "Traceback" not in out
    TALLY["hostile inputs refused"] += 1


def test_an_unsealed_labeling_file_from_an_older_leanset_is_still_read(store: Path):
    layout = Store(store).layout
    before = Q.read_answers(store)
    sum_path(layout.answers).unlink()  # as written before files were sealed
    assert Q.read_answers(store).equals(before)
    TALLY["hostile inputs tried: labeling file without a checksum (older store)"] += 1


def _hash_cache(tmp_path: Path) -> tuple[Path, dict[str, tuple[os.stat_result, str]]]:
    files = {}
    cache = FileHashCache(tmp_path / "cache" / "file-hashes.parquet")
    for k in range(20):
        f = tmp_path / "img" / f"{k}.png"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(bytes([k]) * 10)
        files[str(f)] = (f.stat(), f"hash-{k:02d}")
        cache.put(str(f), f.stat(), f"hash-{k:02d}")
    cache.save()
    return cache.path, files


def test_a_flipped_bit_in_the_file_hash_cache_is_never_trusted(tmp_path: Path):
    path, files = _hash_cache(tmp_path)

    def read() -> dict[str, str | None]:
        cache = FileHashCache(path)
        got = {f: (h.hash if (h := cache.get(f, st)) else None) for f, (st, _) in files.items()}
        if all(v is None for v in got.values()):
            raise IntegrityError(f"{path.name} rebuilt")  # the whole cache was dropped
        return got

    expected = {f: h for f, (_, h) in files.items()}
    assert read() == expected
    detected = _flips(path, read, IntegrityError, "cache/file-hashes.parquet")
    assert detected == FLIPS


def test_a_damaged_file_hash_cache_is_rebuilt(tmp_path: Path, leanset_warnings):
    path, files = _hash_cache(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert FileHashCache(path).get(next(iter(files)), next(iter(files.values()))[0]) is None
    assert "file-hashes.parquet is damaged" in leanset_warnings.text
    TALLY["faults injected: one-bit flip in cache/file-hashes.parquet (rebuilt)"] += 1


def test_flipped_bits_in_an_after_commit_record_redo_the_steps(store: Path):
    s = Store(store)
    finish.mark_done(s, 1, finish.QUEUE, {"added": 124})
    path = s.layout.completion(1)

    def read() -> dict:
        steps = finish.done_steps(s, 1)
        if not steps:
            raise IntegrityError(f"{path.name}: steps are redone (restore not needed)")
        return steps

    assert read() == {"queue": {"added": 124}}
    assert _flips(path, read, IntegrityError, "after-commit/v000001.done.json") == FLIPS


def test_verify_names_every_damaged_sealed_file(store: Path):
    s = Store(store)
    finish.mark_done(s, 1, finish.QUEUE, {"added": 3})
    s.layout.reports.mkdir(exist_ok=True)
    from leanset.pipelines.store.sealed import write_sealed

    write_sealed(s.layout.report(1), b"<html>report</html>\n")
    assert verify_store(store).findings == []
    targets = [s.layout.answers, s.layout.queue, s.layout.label_studio_sync]
    targets += [s.layout.completion(1), s.layout.report(1)]
    for path in targets:
        raw = bytearray(path.read_bytes())
        raw[-2] ^= 0x10
        path.write_bytes(bytes(raw))
    found = {Path(f.path).name: f for f in verify_store(store).findings}
    assert set(found) == {p.name for p in targets}
    assert not verify_store(store).ok  # labeling damage is damage, not a note
    assert found["v000001.html"].severity == "note"
    TALLY["faults injected: damaged files found by leanset verify"] += len(targets)
    TALLY["faults survived"] += len(targets)


def _swap(path: Path) -> None:
    """Another sealed file's bytes in its place: a valid Parquet (or JSON) file, but not this one."""
    other = "answers.parquet" if path.name == "queue.parquet" else "queue.parquet"
    path.write_bytes(path.with_name(other).read_bytes())


def _edit_seal(path: Path) -> None:
    seal = sum_path(path)
    record = json.loads(seal.read_text())
    record["blake2b"] = ["0" * 32]
    record["previous"] = []
    seal.write_text(json.dumps(record))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated to half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied": lambda p: p.write_bytes(b""),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(p.stat().st_size)),
    "last byte dropped": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "a byte appended": lambda p: p.write_bytes(p.read_bytes() + b"\0"),
    "swapped with another labeling file": _swap,
    "checksum file not JSON": lambda p: sum_path(p).write_bytes(b"\xff\xfe"),
    "checksum file names other bytes": _edit_seal,
}
READERS: dict[str, Callable[[Path], Any]] = {
    "answers": lambda s: Q.read_answers(s),
    "queue": lambda s: Q.read_queue(s),
    "label_studio_sync": lambda s: Q.read_sync_state(s),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("name", list(READERS))
def test_a_damaged_labeling_file_is_named_by_its_reader_and_verify(
    store: Path, name: str, damage: str
):
    path = getattr(Store(store).layout, name)
    DAMAGE[damage](path)
    TALLY[f"hostile inputs tried: {path.name} {damage}"] += 1
    with pytest.raises(IntegrityError, match=rf"{path.name} is damaged: .*(restore|delete)"):
        READERS[name](store)
    found = [f for f in verify_store(store).findings if f.path == str(path)]
    assert len(found) == 1 and found[0].severity == "damaged"
    TALLY["hostile inputs refused"] += 1


@pytest.mark.parametrize("damage", [d for d in DAMAGE if "swapped" not in d])
def test_a_damaged_file_hash_cache_is_never_trusted(tmp_path: Path, damage: str, leanset_warnings):
    path, files = _hash_cache(tmp_path)
    DAMAGE[damage](path)
    TALLY[f"hostile inputs tried: file-hashes.parquet {damage}"] += 1
    cache = FileHashCache(path)
    assert all(cache.get(f, st) is None for f, (st, _) in files.items())  # rebuilt, not trusted
    assert "file-hashes.parquet" in leanset_warnings.text
    TALLY["hostile inputs refused"] += 1
