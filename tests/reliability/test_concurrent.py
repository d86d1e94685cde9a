"""Concurrent writers: runs that commit on the same parent at once, as processes and as flows."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from leanset.pipelines.store import Store, StoreConflict
from tests.helpers import pixel_flow
from tests.reliability._child import payload
from tests.reliability.conftest import TALLY, finish, spawn

WRITERS = 3
FRESH_STORES = 4  # creation races: every writer finds the tables missing and creates them
ROUNDS = 3  # then races on an existing parent, on the first store


def race_round(stores: list[Path], tag: str, go: Path) -> dict[Path, list[dict]]:
    """Start WRITERS writers per store; release them together once all have read their parent."""
    kids = []
    for s, store in enumerate(stores):
        for w in range(WRITERS):
            ready = go.with_name(f"ready-{tag}-{s}-{w}")
            kids.append((store, spawn("race", store, f"{tag}s{s}w{w}", ready, go), ready))
    for _, kid, ready in kids:
        while not ready.exists():
            assert kid.poll() is None, kid.communicate()[1]
            time.sleep(0.01)
    go.write_text("go")
    results: dict[Path, list[dict]] = {store: [] for store in stores}
    for store, kid, _ in kids:
        results[store].append(json.loads(finish(kid)))
    TALLY["concurrent writers started"] += len(kids)
    return results


def check_round(store_root: Path, results: list[dict], parent: int | None) -> None:
    assert all(r["parent"] == parent for r in results)
    winners = [r for r in results if "version" in r]
    losers = [r for r in results if "conflict" in r]
    assert len(winners) == 1 and len(losers) == WRITERS - 1, results
    assert winners[0]["version"] == (parent or 0) + 1
    for r in losers:  # a clear message: which store, that another run won, what to do
        assert str(store_root) in r["conflict"] and "another run" in r["conflict"]
        assert "Rerun" in r["conflict"]
        if "at the same time" in r["conflict"]:
            TALLY["concurrent writers that lost at the Delta write"] += 1
            if "(Delta:" not in r["conflict"]:  # Delta turned its overwrite into an append
                TALLY["concurrent writers caught writing into another's table version"] += 1
    TALLY["concurrent writers that lost cleanly"] += len(losers)

    store = Store(store_root)
    manifests = store.manifests()
    assert [m["version"] for m in manifests] == list(range(1, (parent or 0) + 2))
    winner_tag = winners[0]["tag"]
    assert manifests[-1]["tag"] == winner_tag
    dataset, decisions = payload(winner_tag, 500)  # the winner's rows, only the winner's
    assert store.read("dataset").equals(dataset)
    assert store.read("decisions").equals(decisions)


@pytest.mark.slow  # races child processes
def test_writer_processes_racing_on_one_parent_make_exactly_one_version(tmp_path: Path):
    stores = [tmp_path / f"store{k}" for k in range(FRESH_STORES)]
    for store, results in race_round(stores, "new", tmp_path / "go-new").items():
        check_round(store, results, None)
    for round_ in range(1, ROUNDS):
        results = race_round(stores[:1], f"r{round_}", tmp_path / f"go-{round_}")
        check_round(stores[0], results[stores[0]], round_)


def test_two_flow_runs_at_once_commit_one_version_and_the_loser_says_why(
    prefect_harness, imagefolder: Path, tmp_path: Path, monkeypatch
):
    """Two runs of the same flow on the same store: both get to the commit on the empty store."""
    from leanset.pipelines.flows import clean_flow

    config = pixel_flow(tmp_path, "same")
    barrier = threading.Barrier(2, timeout=240)
    first_call = threading.local()
    real_commit = Store.commit

    def commit(self, *args, **kwargs):
        if not getattr(first_call, "done", False):  # a retry of the same run does not wait
            first_call.done = True
            barrier.wait()
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(Store, "commit", commit)
    results: dict[int, object] = {}

    def run(k: int) -> None:
        try:
            results[k] = clean_flow(config_path=str(config), flow_name="same")
        except Exception as exc:  # noqa: BLE001 - the loser's failure is what we check
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    TALLY["concurrent writers started"] += 2

    won = [r for r in results.values() if isinstance(r, dict)]
    lost = [r for r in results.values() if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 1, results
    assert won[0]["version"] == 1 and won[0]["parent"] is None
    assert isinstance(lost[0], StoreConflict), repr(lost[0])
    assert "another run" in str(lost[0]) and str(tmp_path / "store") in str(lost[0])
    store = Store(tmp_path / "store")
    assert [m["version"] for m in store.manifests()] == [1]
    decisions = store.read("decisions")
    assert decisions.height == won[0]["counts"]["input"]
    assert set(store.read("dataset")["sample_id"]) == set(
        decisions.filter(decisions["kept"])["sample_id"]
    )
    TALLY["concurrent writers that lost cleanly"] += 1


def test_a_writer_that_started_before_a_commit_cannot_overwrite_it(tmp_path: Path):
    store = Store(tmp_path / "store")
    d, dec = payload("a", 10)
    store.commit(d, dec, {"counts": {}}, None)
    d2, dec2 = payload("b", 10)
    with pytest.raises(StoreConflict, match="version 1 was committed by another run"):
        store.commit(d2, dec2, {"counts": {}}, None)
    assert store.read("dataset").equals(d)
