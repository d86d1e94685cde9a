"""Near-duplicate search: exact vs brute force, partitioned vs exact, between, kernels, validation."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from leanset.dedup import near
from leanset.dedup.near import NearPairs, SearchOptions, find_near_pairs, find_near_pairs_between

T = 0.9


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int, dim: int, seed: int, n_centres: int = 6, n_pairs: int = 40) -> np.ndarray:
    """Clustered unit rows with planted pairs at cosine in [T + 0.002, 1], none within 1e-4 of T."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_centres, dim)))
    base = n - n_pairs
    x = _unit(
        centres[rng.integers(0, n_centres, base)]
        + 0.9 * rng.standard_normal((base, dim)) / np.sqrt(dim)
    )
    src = rng.choice(base, n_pairs, replace=False)
    cos = rng.uniform(T + 0.002, 1.0, n_pairs)[:, None]
    u = rng.standard_normal((n_pairs, dim))
    u -= (u * x[src]).sum(1, keepdims=True) * x[src]
    dup = _unit(cos * x[src] + np.sqrt(1 - cos**2) * _unit(u))
    emb = np.ascontiguousarray(np.concatenate([x, dup])[rng.permutation(n)])
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    assert not (np.abs(sims - T) < 1e-4).any(), "test data too close to the threshold"
    return emb


def brute(q: np.ndarray, c: np.ndarray, threshold: float, self_search: bool) -> set:
    """Pairs by a float64 full matrix."""
    s = q.astype(np.float64) @ c.T.astype(np.float64)
    i, j = np.nonzero(s >= threshold)
    return {(a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True) if not self_search or a < b}


def as_set(p: NearPairs) -> set:
    """The pairs as a set of (i, j)."""
    return set(zip(p.i.tolist(), p.j.tolist(), strict=True))


@pytest.fixture(scope="module")
def emb() -> np.ndarray:
    """600 x 32 clustered rows with 40 planted pairs."""
    return planted(600, 32, seed=1)


def check_shape(p: NearPairs, self_search: bool = True) -> None:
    """Types, order and i < j."""
    assert p.i.dtype == np.int64 and p.j.dtype == np.int64 and p.sim.dtype == np.float32
    assert len(p) == p.i.shape[0] == p.j.shape[0] == p.sim.shape[0]
    if len(p):
        key = p.i * (int(p.j.max()) + 1) + p.j
        assert (np.diff(key) > 0).all(), "sorted by (i, j), each once"
        assert (p.sim >= T).all()
    if self_search:
        assert (p.i < p.j).all()


@pytest.mark.parametrize("device", ["cpu", "cpu-torch"])
def test_exact_matches_brute_force(emb: np.ndarray, device: str) -> None:
    p = find_near_pairs(emb, T, SearchOptions(method="exact", device=device, block_rows=128))
    check_shape(p)
    truth = brute(emb, emb, T, True)
    assert len(truth) >= 40 and as_set(p) == truth
    ref = (emb[p.i].astype(np.float64) * emb[p.j]).sum(1)
    np.testing.assert_allclose(p.sim, ref, atol=1e-5)
    assert p.method == "exact" and p.params["method"] == "exact"


@pytest.mark.parametrize("device", ["cpu", "cpu-torch"])
def test_partitioned_with_one_cluster_is_exact(emb: np.ndarray, device: str) -> None:
    """One cluster: members in blocks (triangle on the diagonal), nothing approximate left."""
    p = find_near_pairs(
        emb, T, SearchOptions(method="partitioned", n_clusters=1, block_rows=64, device=device)
    )
    check_shape(p)
    assert p.params["n_clusters"] == 1 and p.params["work_fraction"] == 1.0
    assert as_set(p) == brute(emb, emb, T, True)


def test_partitioned_finds_pairs_across_cluster_borders() -> None:
    """Many small clusters: planted pairs split by a border are still found through probing."""
    x = planted(2000, 24, seed=4, n_centres=3, n_pairs=120)
    truth = brute(x, x, T, True)
    one = as_set(
        find_near_pairs(
            x, T, SearchOptions(method="partitioned", n_clusters=40, n_probe_clusters=1)
        )
    )
    p = find_near_pairs(x, T, SearchOptions(method="partitioned", n_clusters=40))
    assert p.params["n_clusters"] >= 40 and p.params["mean_probes"] > 1.0
    found = as_set(p)
    assert one <= found <= truth  # never a false pair; probing only adds
    assert len(found) / len(truth) >= 0.97 > len(one) / len(truth)


@pytest.mark.parametrize("device", ["cpu", "cpu-torch"])
def test_partitioned_defaults_match_exact_on_clustered_data(device: str) -> None:
    x = planted(3000, 48, seed=2, n_centres=12, n_pairs=150)
    p = find_near_pairs(x, T, SearchOptions(method="partitioned", device=device))
    check_shape(p)
    assert as_set(p) == brute(x, x, T, True)
    assert p.method == "partitioned"
    for key in ("n_clusters", "n_probe_clusters", "work_fraction", "kmeans_s", "backend"):
        assert key in p.params
    assert p.params["work_fraction"] < 0.6


@pytest.mark.parametrize("method", ["exact", "partitioned"])
@pytest.mark.parametrize("device", ["cpu", "cpu-torch"])
def test_between_matches_brute_force(emb: np.ndarray, method: str, device: str) -> None:
    q, c = emb[:150], emb[150:]
    p = find_near_pairs_between(
        q,
        c,
        T,
        SearchOptions(
            method=method, device=device, block_rows=100, n_clusters=4, n_probe_clusters=4
        ),
    )
    check_shape(p, self_search=False)
    truth = brute(q, c, T, False)
    assert truth and as_set(p) == truth
    assert p.params["self_search"] is False


def test_torch_path_equals_faiss_path(emb: np.ndarray) -> None:
    a = find_near_pairs(emb, T, SearchOptions(method="exact", device="cpu"))
    b = find_near_pairs(emb, T, SearchOptions(method="exact", device="cpu-torch", block_rows=200))
    assert _bitwise(a, b)
    assert a.params["backend"] == "faiss-cpu" and b.params["backend"].startswith("torch-cpu")


@pytest.mark.parametrize("device", ["cpu", "cpu-torch"])
def test_threshold_is_inclusive(device: str) -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    x[0, 0] = 1.0
    x[1, 0], x[1, 1] = 0.75, np.sqrt(np.float32(1 - 0.75**2))
    x[2] = x[0]
    p = find_near_pairs(x, 0.75, SearchOptions(method="exact", device=device))
    assert as_set(p) == {(0, 1), (0, 2), (1, 2)}
    assert as_set(find_near_pairs(x, 1.0, SearchOptions(method="exact", device=device))) == {(0, 2)}


def test_knn_range_emulation_grows_k_then_falls_back() -> None:
    """The faiss-gpu range search emulation, run with a CPU index."""
    rng = np.random.default_rng(3)
    base = _unit(rng.standard_normal((1, 16)))
    group = _unit(base + 0.05 * rng.standard_normal((30, 16)))  # 30 rows all above T
    x = np.ascontiguousarray(np.concatenate([group, _unit(rng.standard_normal((70, 16)))]))
    index = faiss.IndexFlatIP(16)
    index.add(x)
    want = brute(x, x, T, False)
    for k_start, k_max in ((2, 8), (4, 2048)):
        got = near._knn_range(
            index.search,
            x,
            x.shape[0],
            T,
            k_start,
            k_max,
            lambda rest: near._CPU.propose(rest, x, T, False),
        )
        hx = near.HostRows(x)
        qi, cj, _ = near.decide(hx, got[0], hx, got[1], T)
        assert set(zip(qi.tolist(), cj.tolist(), strict=True)) == want


def test_auto_picks_by_size(emb: np.ndarray) -> None:
    assert find_near_pairs(emb, T).method == "exact"
    p = find_near_pairs(emb, T, SearchOptions(exact_max_rows=100))
    assert p.method == "partitioned" and p.params["requested_method"] == "auto"
    small_q = find_near_pairs_between(emb[:2], emb, T, SearchOptions(exact_max_rows=100))
    assert small_q.method == "exact"  # 2 x 600 comparisons are fewer than 100 choose 2


def test_empty_and_single_row_give_no_pairs() -> None:
    one = _unit(np.ones((1, 8)))
    for x in (np.empty((0, 8), np.float32), one):
        p = find_near_pairs(x, T)
        assert len(p) == 0 and p.i.dtype == np.int64 and p.sim.dtype == np.float32
    assert len(find_near_pairs_between(np.empty((0, 8), np.float32), one, T)) == 0
    assert len(find_near_pairs_between(one, one, T)) == 1


def test_progress_bar_runs(emb: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    find_near_pairs(emb, T, SearchOptions(method="partitioned", progress=True, n_clusters=4))
    assert "clusters" in capsys.readouterr().err


def test_float64_input_is_accepted(emb: np.ndarray) -> None:
    assert as_set(find_near_pairs(emb.astype(np.float64), T)) == as_set(find_near_pairs(emb, T))


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ([[1.0, 0.0]], TypeError, "must be a numpy array, got list"),
        (np.ones(4, np.float32), ValueError, "must be 2-D"),
        (np.ones((2, 2), np.int64), TypeError, "must be a float array, got dtype int64"),
        (np.empty((3, 0), np.float32), ValueError, "at least one column"),
    ],
)
def test_rejects_bad_arrays(bad: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        find_near_pairs(bad, T)  # type: ignore[arg-type]


def test_names_the_bad_row(emb: np.ndarray) -> None:
    x = emb.copy()
    x[7] *= 2
    with pytest.raises(ValueError, match=r"embeddings row 7 has L2 norm 2, expected 1"):
        find_near_pairs(x, T)
    x = emb.copy()
    x[11, 3] = np.nan
    with pytest.raises(ValueError, match=r"embeddings row 11 has a non-finite value"):
        find_near_pairs(x, T)
    with pytest.raises(ValueError, match=r"corpus row 0 has L2 norm 0"):
        find_near_pairs_between(emb, np.zeros((2, 32), np.float32), T)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"threshold": 0.0}, ValueError, r"threshold must be in \(0, 1\], got 0.0"),
        ({"threshold": 1.5}, ValueError, r"threshold must be in \(0, 1\], got 1.5"),
        ({"threshold": True}, TypeError, "threshold must be a number"),
        ({"method": "hnsw"}, ValueError, "method must be 'auto' or one of"),
        ({"device": "tpu"}, ValueError, "device must be one of"),
        ({"block_rows": 0}, ValueError, "block_rows must be a positive integer, got 0"),
        ({"n_clusters": -3}, ValueError, "n_clusters must be a positive integer, got -3"),
    ],
)
def test_rejects_bad_options(emb: np.ndarray, kwargs: dict, error: type, message: str) -> None:
    args = {"threshold": T, **kwargs}
    with pytest.raises(error, match=message):
        find_near_pairs(emb, args.pop("threshold"), SearchOptions(**args))


def test_between_dimension_mismatch(emb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="query has 16 columns, expected 32"):
        find_near_pairs_between(_unit(np.ones((2, 16))), emb, T)


def test_cuda_device_without_gpu_says_so(emb: np.ndarray) -> None:
    if near.cuda_available() or near._faiss_gpus() > 0:
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        find_near_pairs(emb, T, SearchOptions(device="cuda"))


def at_threshold(n: int, dim: int, threshold: float, seed: int = 0) -> np.ndarray:
    """Pairs whose cosine is the threshold within a few float32 ulps (where float32 sums differ),
    shuffled among clustered rows."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, dim)))
    u = rng.standard_normal((n, dim)).astype(np.float32)
    u -= np.einsum("ij,ij->i", u, x)[:, None] * x
    u = _unit(u)
    c = (threshold + rng.choice([-3, -2, -1, 0, 1, 2, 3], size=n) * 6e-8)[:, None]
    y = _unit(c * x + np.sqrt(1 - c**2) * u)
    out = np.concatenate([planted(2 * n, dim, seed), x, y])
    return np.ascontiguousarray(out[rng.permutation(out.shape[0])])


def _bitwise(a: NearPairs, b: NearPairs) -> bool:
    return (
        np.array_equal(a.i, b.i)
        and np.array_equal(a.j, b.j)
        and np.array_equal(a.sim.view(np.uint32), b.sim.view(np.uint32))
    )


@pytest.mark.parametrize("method", ["exact", "partitioned"])
def test_decisions_do_not_depend_on_threads_or_block_size(method: str) -> None:
    # FAISS's float32 sums change in the last bits with its thread count and with the rows one
    # call holds; at the threshold that flips pairs unless float64 decides (what lets a
    # distributed search, whose tasks hold other rows on other thread counts, decide alike)
    x = at_threshold(1500, 256, T)
    before = faiss.omp_get_max_threads()
    runs = []
    try:
        for threads, rows in ((1, 256), (2, 6000), (2, 1000)):
            faiss.omp_set_num_threads(threads)
            opts = SearchOptions(method=method, device="cpu", block_rows=rows, n_clusters=8)
            runs.append(find_near_pairs(x, T, opts))
    finally:
        faiss.omp_set_num_threads(before)
    assert len(runs[0]) > 500
    assert all(_bitwise(runs[0], r) for r in runs[1:])
    exact = x.astype(np.float64)[runs[0].i] * x.astype(np.float64)[runs[0].j]
    assert np.array_equal(runs[0].sim, exact.sum(axis=1).astype(np.float32))


@pytest.mark.parametrize("method", ["exact", "partitioned"])
def test_every_kernel_returns_the_same_pairs_and_similarities(method: str) -> None:
    # the bf16 torch kernel is off by ~1e-2 and FAISS by ~1e-6; both only propose, float64
    # decides, so pairs a few float32 ulps from the threshold and every similarity agree bit
    # for bit (self-search and between, exact and partitioned)
    x = at_threshold(600, 256, T, seed=4)
    runs = {}
    for device in ("cpu", "cpu-torch"):
        opts = SearchOptions(method=method, device=device, block_rows=700, n_clusters=12)
        runs[device] = (
            find_near_pairs(x, T, opts),
            find_near_pairs_between(x[:900], x[900:], T, opts),
        )
    (a, a_between), (b, b_between) = runs["cpu"], runs["cpu-torch"]
    assert b.params["backend"].startswith("torch-cpu") and a.params["backend"] == "faiss-cpu"
    assert len(a) > 400 and len(a_between) > 50
    assert _bitwise(a, b) and _bitwise(a_between, b_between)
    exact = (x.astype(np.float64)[a.i] * x.astype(np.float64)[a.j]).sum(axis=1)
    assert np.array_equal(a.sim, exact.astype(np.float32))


def test_centroid_assignment_is_the_same_on_every_kernel() -> None:
    # duplicated and nearly duplicated centroids make float32 top-k order ties: each kernel
    # breaks them its own way, so risky rows are ranked again in float64 (ties by centroid id)
    rng = np.random.default_rng(5)
    base = _unit(rng.standard_normal((20, 64)))
    cent = np.ascontiguousarray(
        np.concatenate([base, base[:5], _unit(base[5:10] + 1e-7 * rng.standard_normal((5, 64)))])
    )
    rows = _unit(cent[rng.integers(0, 30, 3000)] + 0.3 * rng.standard_normal((3000, 64)) / 8)
    out = []
    for kernel in (near._CPU, near._TorchKernel("cpu")):
        out.append(near.assign_rows(kernel, kernel.load(rows), kernel.load(cent), 4, T))
    assert np.array_equal(out[0], out[1])
    first = out[0][:, 0]
    assert not np.isin(first, np.arange(20, 25)).any(), "an exact tie goes to the lower id"
