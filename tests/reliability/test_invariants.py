"""The dedup invariants, property-tested on random small datasets (hypothesis).

Tables and embeddings are drawn with planted structure (identical contents, clusters of near copies
at several noise levels, several splits, labels, unreadable samples) and run through the real
stage functions: `dedup.stage.find_duplicates` (with a brute-force search, so that these tests do
not depend on FAISS) and `pipelines.decide.decide`, then `leanset.pipelines.store.tables.dataset_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanset.dedup.config import EVAL_SPLITS, DedupSettings
from leanset.dedup.stage import PriorIndex, find_duplicates
from leanset.pipelines.config import ColumnSettings
from leanset.pipelines.decide import decide
from leanset.pipelines.sources import LoadedDataset
from leanset.pipelines.store.tables import dataset_table, decisions_table
from tests.helpers import BrutePairs, brute_search
from tests.reliability.conftest import TALLY

DIM = 8
DUPLICATE = ("exact_duplicate", "near_duplicate", "test_leak")


@dataclass
class Case:
    table: pl.DataFrame
    emb: np.ndarray
    texts: list[str | None]


@st.composite
def cases(draw) -> Case:
    n = draw(st.integers(1, 24))
    n_contents = draw(st.integers(1, n))
    n_clusters = draw(st.integers(1, n_contents))
    cluster = draw(
        st.lists(st.integers(0, n_clusters - 1), min_size=n_contents, max_size=n_contents)
    )
    noise = draw(
        st.lists(
            st.sampled_from([0.0, 0.005, 0.02, 0.1, 1.0]), min_size=n_contents, max_size=n_contents
        )
    )
    content = draw(st.lists(st.integers(0, n_contents - 1), min_size=n, max_size=n))
    split = draw(
        st.lists(
            st.sampled_from(["train", "train", "test", "validation", "extra"]),
            min_size=n,
            max_size=n,
        )
    )
    label = draw(st.lists(st.sampled_from([None, "a", "b"]), min_size=n, max_size=n))
    broken = draw(st.lists(st.sampled_from([False] * 6 + [True]), min_size=n, max_size=n))
    size = draw(st.lists(st.integers(0, 500), min_size=n, max_size=n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    centers = rng.normal(size=(n_clusters, DIM))
    vec = centers[cluster] + np.asarray(noise)[:, None] * rng.normal(size=(n_contents, DIM))
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
    emb = np.where(np.asarray(broken)[:, None], 0.0, vec[content]).astype(np.float32)
    row_in_split: dict[str, int] = {}
    rows = []
    for i in range(n):
        k = row_in_split.get(split[i], 0)
        row_in_split[split[i]] = k + 1
        rows.append(k)
    table = pl.DataFrame(
        {
            "sample_id": [f"s{i:02d}" for i in range(n)],
            "position": np.arange(n, dtype=np.int64),
            "source": [f"data.parquet:{split[i]}:{rows[i]}" for i in range(n)],
            "split": split,
            "label": label,
            "content_hash": [
                f"unreadable-{i}" if broken[i] else f"{content[i]:032x}" for i in range(n)
            ],
            "size_bytes": np.asarray(size, dtype=np.int64),
            "error": ["unreadable: test" if b else None for b in broken],
            "_part": split,
            "_row": np.asarray(rows, dtype=np.int64),
        },
        schema_overrides={"label": pl.Utf8, "error": pl.Utf8},
    )
    texts = [None if broken[i] else f"text {content[i]}" for i in range(n)]
    return Case(table, emb, texts)


dedup_settings = st.builds(
    DedupSettings,
    exact=st.booleans(),
    near=st.booleans(),
    threshold=st.floats(0.5, 0.999),
    keep=st.sampled_from(["first", "last", "largest", "centroid"]),
    leakage=st.sampled_from(["drop_train", "drop_eval", "report"]),
    dedup_eval=st.booleans(),
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(case: Case, s: DedupSettings, prior: PriorIndex | None = None) -> pl.DataFrame:
    out = find_duplicates(
        case.table, case.emb, s, search=brute_search, search_between=brute_between, prior=prior
    )
    return decisions_table(decide(out.table))


def brute_between(
    q: np.ndarray, c: np.ndarray, threshold: float, options: object = None
) -> BrutePairs:
    sims = q @ c.T
    i, j = np.nonzero(sims >= np.float32(threshold))
    return BrutePairs(i.astype(np.int64), j.astype(np.int64), sims[i, j])


def loaded(case: Case, table: pl.DataFrame) -> LoadedDataset:
    import datasets

    parts = {}
    for split in table["_part"].unique().to_list():
        idx = [i for i, p in enumerate(case.table["_part"].to_list()) if p == split]
        parts[split] = datasets.Dataset.from_dict({"text": [case.texts[i] or "" for i in idx]})
    return LoadedDataset(table, "text", parts, ColumnSettings(text="text", label="label"))


@PROPERTY
@given(cases(), dedup_settings)
def test_dedup_invariants_hold_on_random_datasets(case: Case, s: DedupSettings):
    TALLY["invariant examples generated"] += 1
    d = run(case, s)
    n = case.table.height
    rows = {r["sample_id"]: r for r in d.iter_rows(named=True)}

    # every input sample has exactly one decision row
    assert d["sample_id"].to_list() == case.table["sample_id"].to_list()
    # kept + dropped = input, and a row is dropped exactly when it has a reason
    assert int(d["kept"].sum()) + int((~d["kept"]).sum()) == n
    assert (d["kept"] == d["drop_reason"].is_null()).all()
    # unreadable samples, and only they, are dropped as unreadable
    assert ((d["drop_reason"] == "unreadable").fill_null(False) == d["error"].is_not_null()).all()

    for r in rows.values():
        if r["drop_reason"] not in DUPLICATE:
            continue
        # every dropped duplicate points to a kept sample of its own group
        ref = r["exact_dup_of"] or r["near_dup_of"]
        assert ref is not None and rows[ref]["kept"], r
        assert r["dup_group"] is not None and rows[ref]["dup_group"] == r["dup_group"]
        if r["drop_reason"] == "exact_duplicate":
            assert r["exact_dup_of"] and rows[ref]["content_hash"] == r["content_hash"]
        if r["drop_reason"] == "near_duplicate":
            assert r["near_dup_of"] and rows[ref]["content_hash"] != r["content_hash"]
        if r["drop_reason"] == "test_leak":
            assert r["leak_of"] is not None
            assert (r["split"] in s.eval_splits) != (rows[ref]["split"] in s.eval_splits)

    is_eval = d["split"].is_in(s.eval_splits)
    if s.leakage == "drop_train":  # by default no eval sample is dropped for leaking
        assert d.filter(is_eval & (pl.col("drop_reason") == "test_leak")).height == 0
        if not s.dedup_eval:
            assert d.filter(is_eval & ~pl.col("kept") & pl.col("error").is_null()).height == 0

    _no_duplicates_left(case, d, s)


def _no_duplicates_left(case: Case, d: pl.DataFrame, s: DedupSettings) -> None:
    """What dedup promises to remove is gone from the kept rows."""
    if not (s.exact or s.near):
        return
    kept = d["kept"].to_numpy()
    is_eval = d["split"].is_in(s.eval_splits).to_numpy()
    hashes = d["content_hash"].to_numpy()
    sims = case.emb @ case.emb.T
    dup = hashes[:, None] == hashes[None, :]
    if s.near:
        dup |= sims >= np.float32(s.threshold)
    readable = d["error"].is_null().to_numpy()
    np.fill_diagonal(dup, False)
    dup &= readable[:, None] & readable[None, :]
    train_kept = kept & ~is_eval
    assert not (dup & train_kept[:, None] & train_kept[None, :]).any()
    if s.dedup_eval:
        ev_kept = kept & is_eval
        assert not (dup & ev_kept[:, None] & ev_kept[None, :]).any()
    if s.leakage == "drop_train":  # the cleaned splits share no direct match
        assert not (dup & train_kept[:, None] & (kept & is_eval)[None, :]).any()
    if s.leakage == "drop_eval":
        assert not (dup & (kept & is_eval)[:, None] & train_kept[None, :]).any()


@PROPERTY
@given(cases(), dedup_settings)
def test_every_decision_rests_on_a_direct_match(case: Case, s: DedupSettings):
    """No chains: a dropped row matches the row it names itself; a leak is a direct match."""
    TALLY["invariant examples generated"] += 1
    d = run(case, s)
    sims = case.emb @ case.emb.T
    hashes = d["content_hash"].to_list()
    index = {sid: i for i, sid in enumerate(d["sample_id"].to_list())}

    def direct(i: int, j: int) -> bool:
        same = s.exact and hashes[i] == hashes[j]
        return same or (s.near and bool(sims[i, j] >= np.float32(s.threshold) - 1e-6))

    for i, r in enumerate(d.iter_rows(named=True)):
        if r["near_dup_of"] is not None:
            assert r["dup_similarity"] >= np.float32(s.threshold), r
            assert direct(i, index[r["near_dup_of"]]), r
        if r["exact_dup_of"] is not None:
            assert hashes[index[r["exact_dup_of"]]] == hashes[i]
        if r["leak_of"] is not None:
            j = index[r["leak_of"]]
            assert direct(i, j) and (r["split"] in s.eval_splits) != (
                d["split"][j] in s.eval_splits
            )


@PROPERTY
@given(cases(), dedup_settings)
def test_an_unrelated_far_away_sample_changes_no_other_decision(case: Case, s: DedupSettings):
    TALLY["invariant examples generated"] += 1
    before = run(case, s)
    far = -case.emb.sum(axis=0, keepdims=True)  # opposite to the data's mean direction
    if not np.linalg.norm(far) > 1e-3:
        return  # the data has no mean direction to stand away from
    far = (far / np.linalg.norm(far)).astype(np.float32)
    if (case.emb @ far.T).max() >= min(s.threshold, 0.999) - 0.05:
        return  # the drawn data leaves no room for a sample far from all others
    extra = case.table.head(1).with_columns(
        pl.lit("zz-far").alias("sample_id"),
        pl.lit(case.table.height, dtype=pl.Int64).alias("position"),
        pl.lit("far.png").alias("source"),
        pl.lit(f"{'f' * 32}").alias("content_hash"),
        pl.lit(None, dtype=pl.Utf8).alias("error"),
    )
    grown = Case(pl.concat([case.table, extra]), np.concatenate([case.emb, far]), case.texts)
    after = run(grown, s)
    assert after.head(case.table.height).equals(before)
    assert after["kept"][-1] and after["dup_group"][-1] is None


@PROPERTY
@given(cases(), dedup_settings)
def test_cleaned_version_is_the_input_minus_the_dropped_rows(case: Case, s: DedupSettings):
    TALLY["invariant examples generated"] += 1
    decided = decide(find_duplicates(case.table, case.emb, s, search=brute_search).table)
    decisions = decisions_table(decided)
    cleaned = dataset_table(loaded(case, decided), decisions)
    kept = decisions.filter(pl.col("kept"))
    assert cleaned["sample_id"].to_list() == kept["sample_id"].to_list()
    want = [case.texts[i] for i in range(case.table.height) if decisions["kept"][i]]
    assert cleaned["text"].to_list() == want
    assert cleaned.select("split", "label", "content_hash").equals(
        kept.select("split", "label", "content_hash")
    )


@PROPERTY
@given(cases(), st.floats(0.5, 0.999))
def test_default_settings_never_drop_an_eval_sample_for_leakage(case: Case, threshold: float):
    """With the defaults (leakage: drop_train, dedup_eval: false) the eval split stays whole."""
    TALLY["invariant examples generated"] += 1
    d = run(case, DedupSettings(threshold=threshold))
    dropped_eval = d.filter(pl.col("split").is_in(EVAL_SPLITS) & ~pl.col("kept"))
    assert (dropped_eval["drop_reason"] == "unreadable").all()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), dedup_settings, st.integers(0, 24))
def test_incremental_search_with_a_prior_index_decides_like_a_full_search(
    case: Case, s: DedupSettings, cut: int
):
    """Reusing the pairs of an earlier version (its first `cut` rows) changes no decision."""
    TALLY["invariant examples generated"] += 1
    cut = min(cut, case.table.height)
    old = Case(case.table.head(cut), case.emb[:cut], case.texts[:cut])
    earlier = find_duplicates(old.table, old.emb, s, search=brute_search)
    covered = old.table.filter(pl.col("error").is_null())["content_hash"].to_list()
    prior = PriorIndex(earlier.pairs, frozenset(covered), earlier.index_key, earlier.calibration)
    assert run(case, s, prior).equals(run(case, s))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), dedup_settings)
def test_committed_version_holds_exactly_the_kept_rows(tmp_path_factory, case: Case, s):
    from leanset.pipelines.store import Store

    TALLY["invariant examples generated"] += 1
    decided = decide(find_duplicates(case.table, case.emb, s, search=brute_search).table)
    decisions = decisions_table(decided)
    cleaned = dataset_table(loaded(case, decided), decisions)
    store = Store(tmp_path_factory.mktemp("v"))
    store.commit(cleaned, decisions, {"counts": {}}, None)
    assert store.read("decisions").equals(decisions)
    got = store.read("dataset")
    assert got["sample_id"].to_list() == decisions.filter(pl.col("kept"))["sample_id"].to_list()
