"""The Ray driver's memory: freed large arrays go back to the system; the alignment tasks get
row positions and a check sum, not the table's hash strings."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.embed.protocol import l2_normalise
from leanset.pipelines.engine.rows import (
    _compact,
    _expand,
    _index,
    _keys,
    gather_block,
    gather_plan,
)

# 40 arrays of 8 MiB, each followed by a small live array, then the large ones freed
_PROGRAM = """
import sys
import numpy as np

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024

if sys.argv[1] == "mapped":
    from leanset.pipelines.engine.cluster import map_large_allocations

    assert map_large_allocations()
base = anon()
x = np.ones(1 << 20)
del x  # glibc's default raises its mapping bound to this size here
large, small = [], []
for _ in range(40):
    large.append(np.ones(1 << 20))
    small.append(np.ones(100))
del large
print(anon() - base)
"""


def _retained_mib(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip())


def test_freed_large_arrays_leave_the_driver_once_mapped_on_their_own() -> None:
    assert _retained_mib("default") > 200  # glibc keeps them in the heap behind the small ones
    assert _retained_mib("mapped") < 40


def test_an_alignment_task_gets_positions_and_a_check_sum_not_the_hash_strings() -> None:
    """What the driver sends a task is written into the object store's shared pages, which stay
    resident in the driver: about 8 bytes a row now (the hash strings took ~45)."""
    n = 50_000
    hashes = pl.Series([f"{k:032x}" for k in range(n)])
    vectors = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    shard = (np.asarray(hashes.to_list()), vectors)
    index = _index([_keys(hashes)])
    table = hashes.gather(np.arange(n)[::-1])  # the table holds them in another order
    at = np.searchsorted(index.keys, _keys(table))
    ok = np.ones(n, dtype=bool)
    ok[5] = False  # a row without a vector: zeros
    plan, shards, check = gather_plan(table, ok, at, index)
    assert shards == [0]
    assert len(pickle.dumps((check, plan))) / n < 10
    block = gather_block(n, 8, check, plan, shard)
    want = l2_normalise(vectors[::-1].copy())
    want[5] = 0
    assert np.array_equal(block.view(np.uint32), want.view(np.uint32))
    pos, rows = plan[0]
    wrong = rows.copy()
    wrong[0] = wrong[1]  # what a 64-bit key collision does: two contents take one vector
    with pytest.raises(RuntimeError, match="key collision"):
        gather_block(n, 8, check, [(pos, wrong)], shard)


def test_a_cache_written_in_table_order_is_planned_as_a_few_runs() -> None:
    """The embed stage writes shards in table order: the plan sends runs (a few bytes a block,
    was 8 a row), and the block gathered is the same as from positions one by one."""
    n = 50_000
    hashes = pl.Series([f"{k:032x}" for k in range(n)])
    vectors = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)
    shard = (np.asarray(hashes.to_list()), vectors)
    index = _index([_keys(hashes)])
    order = np.arange(n)
    order[[100, 30_000]] = order[[30_000, 100]]  # two rows swapped: runs around them
    table = hashes.gather(order)
    at = np.searchsorted(index.keys, _keys(table))
    ok = np.ones(n, dtype=bool)
    ok[7:12] = False  # rows without a vector break a run too
    plan, shards, check = gather_plan(table, ok, at, index)
    assert len(plan[0]) == 3 and len(pickle.dumps((check, plan))) < 1000
    raw = [tuple(np.asarray(a) for a in _expand(plan[0]))]
    assert [len(e) for e in raw] == [2] and raw[0][0].size == n - 5
    want = l2_normalise(vectors[order].copy())
    want[7:12] = 0
    for p in (plan, raw):
        block = gather_block(n, 8, check, p, shard)
        assert np.array_equal(block.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("seed", range(20))
def test_runs_give_back_the_positions_and_rows_they_were_made_of(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    pos = np.flatnonzero(rng.random(n * 2) < 0.5)[:n].astype(np.int32)
    row = (np.arange(pos.size) + np.cumsum(rng.random(pos.size) < 0.05)).astype(np.int32)
    if seed % 4 == 0:
        row = rng.permutation(row).astype(np.int32)  # no runs: sent as they are
    pos_back, row_back = _expand(_compact(pos, row))
    assert pos_back.dtype == row_back.dtype == np.int32
    assert np.array_equal(pos_back, pos) and np.array_equal(row_back, row)


def test_asking_for_a_gpu_on_a_machine_without_one_does_not_import_torch() -> None:
    """The dedup stage asks whether this process has a GPU (the exact search's row limit); on a
    Ray driver without one, importing torch to answer held ~470 MiB for the rest of the run."""
    program = (
        "import sys\n"
        "from leanset.dedup.stage import default_exact_max_rows\n"
        "print(default_exact_max_rows(), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", program], check=True, capture_output=True)
    limit, imported = out.stdout.decode().split()
    from leanset.dedup.matrix import GPU_DEVICE_NODES

    if any(Path(p).exists() for p in GPU_DEVICE_NODES):
        pytest.skip("this machine has a GPU device node: torch is asked")
    assert (limit, imported) == ("200000", "False")


@pytest.mark.parametrize("n", [0, 1, 6, 7, 20])
def test_the_input_fingerprint_hashes_slices_as_the_one_join_it_replaced(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's fingerprints stay valid: slices of 3 rows give the digest of one join of every
    row (nulls as empty strings, labels of any type as str)."""
    import hashlib

    from leanset.pipelines.store import tables

    monkeypatch.setattr(tables, "FINGERPRINT_ROWS", 3)
    frame = pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "content_hash": [None if i % 4 == 0 else f"{i:032x}" for i in range(n)],
            "label": pl.Series([None if i % 5 == 0 else i % 3 for i in range(n)], dtype=pl.Int64),
            "split": ["train"] * n,
        }
    )
    h = hashlib.blake2b(digest_size=16)
    for col in ("sample_id", "content_hash", "label", "split"):
        h.update(col.encode())
        h.update("\x1f".join("" if v is None else str(v) for v in frame[col].to_list()).encode())
    assert tables.input_fingerprint(frame) == h.hexdigest()
