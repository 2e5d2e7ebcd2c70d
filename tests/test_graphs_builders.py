"""Parity tests: every graph builder against a naive dense version written from REARM_SPEC.md
section 2 (Python loops allowed here), on a few dozen users and items."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from rearm.errors import ConfigError
from rearm.graphs import (
    bipartite_graph,
    combine_modalities,
    cooccurrence_graph,
    gram_matrix,
    homograph,
    item_cooccurrence_graph,
    kernels,
    knn_graph,
    knn_neighbours,
    modality_weights,
    sample_recall,
    to_scipy,
    user_cooccurrence_graph,
    user_interest,
    user_interest_graph,
)


def dense(graph: torch.Tensor) -> np.ndarray:
    assert graph.layout == torch.sparse_csr and graph.dtype == torch.float32
    return to_scipy(graph).toarray().astype(np.float64)


def random_train(num_users: int, num_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    matrix = (rng.random((num_users, num_items)) < density).astype(np.float32)
    return sp.csr_matrix(matrix)


@pytest.fixture(params=["numba", "numpy"])
def kernel_mode(request, monkeypatch):
    """Run a test with the parallel numba kernels and again with their numpy fallbacks."""
    if request.param == "numba" and not kernels.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(kernels, "HAVE_NUMBA", request.param == "numba")
    return request.param


# ---------------------------------------------------------------- naive reference versions


def naive_bipartite(r: np.ndarray) -> np.ndarray:
    u, i = r.shape
    a = np.zeros((u + i, u + i))
    a[:u, u:] = r
    a[u:, :u] = r.T
    degree = a.sum(1)
    out = np.zeros_like(a)
    for x in range(u + i):
        for y in range(u + i):
            if a[x, y]:
                out[x, y] = a[x, y] / math.sqrt(degree[x] * degree[y])
    return out


def naive_cooccurrence(x: np.ndarray, k: int, weighting: str = "softmax") -> tuple:
    """Top-k lists (ties: lower index first) and weights without padding / fallback, plus the
    list of each row's kept neighbours (for padding checks)."""
    n = x.shape[0]
    counts = x @ x.T
    kept = {}
    for a in range(n):
        neighbours = [(counts[a, b], b) for b in range(n) if b != a and counts[a, b] > 0]
        neighbours.sort(key=lambda pair: (-pair[0], pair[1]))
        kept[a] = neighbours[:k]
    return counts, kept


def softmax(values: np.ndarray) -> np.ndarray:
    e = np.exp(values - values.max())
    return e / e.sum()


def naive_knn(features: np.ndarray, k: int) -> np.ndarray:
    n = features.shape[0]
    kk = min(k, n)
    out = np.zeros((n, n))
    norms = np.linalg.norm(features, axis=1)
    for a in range(n):
        if norms[a] == 0:
            out[a, a] = 1.0 / kk
            continue
        sims = []
        for b in range(n):
            sim = 1.0 if a == b else features[a] @ features[b] / (norms[a] * norms[b] or np.inf)
            sims.append((sim, b))
        sims.sort(key=lambda pair: (-(pair[1] == a), -pair[0]))
        for sim, b in sims[:kk]:
            out[a, b] = sim / kk
    return out


# ---------------------------------------------------------------- bipartite


def test_bipartite_matches_naive_and_handles_zero_degree():
    r = random_train(12, 9, 0.3, 0).toarray()
    r[3] = 0  # a user without train items
    r[:, 5] = 0  # an item without train users
    graph = bipartite_graph(sp.csr_matrix(r))
    assert graph.shape == (21, 21)
    got = dense(graph)
    np.testing.assert_allclose(got, naive_bipartite(r), rtol=1e-6, atol=1e-7)
    assert np.all(got[3] == 0) and np.all(got[12 + 5] == 0)
    assert np.isfinite(got).all()


# ---------------------------------------------------------------- co-occurrence


def distinct_count_interactions(seed: int = 0) -> np.ndarray:
    """Rows whose co-occurrence counts with different partners are distinct (no ties)."""
    rng = np.random.default_rng(seed)
    n, m = 14, 120
    x = np.zeros((n, m))
    column = 0
    for a in range(n):
        for b in range(a + 1, n):
            # Pair (a, b) shares a distinct number of private columns.
            shared = int(rng.integers(0, 2)) * (1 + (a * n + b) % 37)
            x[[a, b], column : column + shared] = 1
            column += shared
            if column > m - 40:
                x = np.concatenate([x, np.zeros((n, 200))], axis=1)
                m += 200
    return x


@pytest.mark.parametrize("weighting", ["softmax", "normalized"])
def test_cooccurrence_matches_naive_without_ties(weighting):
    x = distinct_count_interactions()
    k = 4
    counts, kept = naive_cooccurrence(x, k)
    got = dense(cooccurrence_graph(sp.csr_matrix(x), k, weighting=weighting, pad="none"))
    for a, neighbours in kept.items():
        assert set(np.flatnonzero(got[a])) == {b for _, b in neighbours}
        values = np.array([c for c, _ in neighbours], dtype=np.float64)
        expected = softmax(values) if weighting == "softmax" else values / values.sum()
        np.testing.assert_allclose(got[a, [b for _, b in neighbours]], expected, rtol=1e-5)


def test_cooccurrence_tie_rule_lower_index_first():
    # Row 0 shares exactly one column with each of rows 1..5: all counts tie at 1.
    x = np.zeros((6, 5))
    for b in range(1, 6):
        x[0, b - 1] = x[b, b - 1] = 1
    got = dense(cooccurrence_graph(sp.csr_matrix(x), 3, pad="none", weighting="normalized"))
    assert list(np.flatnonzero(got[0])) == [1, 2, 3]
    np.testing.assert_allclose(got[0, [1, 2, 3]], 1 / 3, rtol=1e-6)


def test_cooccurrence_padding_resamples_own_neighbours_deterministically():
    x = distinct_count_interactions(1)
    k = 30  # larger than any row's neighbour count: every nonempty row is padded
    counts, kept = naive_cooccurrence(x, k)
    graph = cooccurrence_graph(sp.csr_matrix(x), k, pad="resample", seed=7)
    again = cooccurrence_graph(sp.csr_matrix(x), k, pad="resample", seed=7)
    other = cooccurrence_graph(sp.csr_matrix(x), k, pad="resample", seed=8)
    got = dense(graph)
    np.testing.assert_array_equal(got, dense(again))
    assert not np.array_equal(got, dense(other))
    for a, neighbours in kept.items():
        if not neighbours:
            continue
        own = {b for _, b in neighbours}
        assert set(np.flatnonzero(got[a])) == own  # padding only duplicates own neighbours
        np.testing.assert_allclose(got[a].sum(), 1.0, rtol=1e-5)
    # Normalized weighting with padding: each neighbour's weight is (multiplicity * count) /
    # sum over the k padded entries, so multiplicities are recoverable and total k.
    normalized = dense(
        cooccurrence_graph(sp.csr_matrix(x), k, pad="resample", seed=7, weighting="normalized")
    )
    for a, neighbours in kept.items():
        if not neighbours:
            continue
        c = np.array([counts[a, b] for _, b in neighbours])
        w = normalized[a, [b for _, b in neighbours]]
        multiplicity = w / c
        multiplicity = multiplicity / multiplicity.min()
        assert np.all(multiplicity >= 1 - 1e-4)


def test_cooccurrence_popular_fallback_and_none():
    x = np.zeros((7, 6))
    x[0, [0, 1, 2]] = 1
    x[1, [0, 1]] = 1
    x[2, [0]] = 1
    x[3, [1, 2]] = 1
    x[4, [5]] = 1  # column 5 shared with nobody: row 4 has no co-occurring row
    # row 5, 6: no interactions at all
    k = 2
    got = dense(cooccurrence_graph(sp.csr_matrix(x), k, empty="popular", pad="none"))
    degree = x.sum(1)  # popularity: 3, 2, 1, 2, 1, 0, 0 -> top-2 rows 0 and then 1 (tie 1/3)
    popular = [0, 1]
    shares = degree[popular] / degree[popular].sum()
    for row in (4, 5, 6):
        assert list(np.flatnonzero(got[row])) == popular
        np.testing.assert_allclose(got[row, popular], softmax(shares), rtol=1e-6)
    normalized = dense(
        cooccurrence_graph(sp.csr_matrix(x), k, empty="popular", weighting="normalized")
    )
    np.testing.assert_allclose(normalized[5, popular], shares, rtol=1e-6)
    none = dense(cooccurrence_graph(sp.csr_matrix(x), k, empty="none"))
    assert np.all(none[[4, 5, 6]] == 0)


@pytest.mark.parametrize("options", [{}, {"weighting": "normalized", "pad": "none"}])
def test_cooccurrence_independent_of_block_sizes(options):
    train = random_train(60, 40, 0.08, 3)
    reference = dense(user_cooccurrence_graph(train, 5, seed=1, **options))
    for block_size, max_entries in [(1, 1 << 20), (7, 1 << 20), (4096, 50), (13, 1)]:
        got = dense(
            user_cooccurrence_graph(
                train, 5, seed=1, block_size=block_size, max_block_entries=max_entries, **options
            )
        )
        np.testing.assert_array_equal(got, reference)


def test_item_and_user_wrappers_use_transpose():
    train = random_train(30, 20, 0.15, 4)
    np.testing.assert_array_equal(
        dense(item_cooccurrence_graph(train, 3, seed=2)),
        dense(cooccurrence_graph(train.T.tocsr(), 3, seed=2)),
    )
    assert user_cooccurrence_graph(train, 3).shape == (30, 30)


def test_cooccurrence_rejects_bad_options():
    train = random_train(5, 5, 0.5, 0)
    with pytest.raises(ConfigError):
        cooccurrence_graph(train, 2, weighting="mean")
    with pytest.raises(ConfigError):
        cooccurrence_graph(train, 0)


# ---------------------------------------------------------------- kNN / user interest


def test_knn_matches_naive_with_zero_rows(kernel_mode):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((40, 6)).astype(np.float32)
    features[7] = 0
    k = 5
    got = dense(knn_graph(features, k, block_size=9))
    expected = naive_knn(features.astype(np.float64), k)
    for a in range(40):
        assert set(np.flatnonzero(got[a])) == set(np.flatnonzero(expected[a])), a
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert list(np.flatnonzero(got[7])) == [7]


def test_knn_self_kept_with_duplicate_rows_and_block_sizes(kernel_mode):
    rng = np.random.default_rng(1)
    features = rng.standard_normal((25, 4)).astype(np.float32)
    features[10] = features[3]  # duplicates: cosine 1 with each other
    indices, sims = knn_neighbours(features, 3, block_size=4)
    assert indices[3, 0] == 3 and indices[10, 0] == 10
    assert 10 in indices[3] and 3 in indices[10]
    reference = dense(knn_graph(features, 3))
    for block_size in (1, 6, 100):
        # Same neighbours; values may differ in the last float32 bit (GEMM blocking).
        got = dense(knn_graph(features, 3, block_size=block_size))
        np.testing.assert_array_equal(got != 0, reference != 0)
        np.testing.assert_allclose(got, reference, rtol=1e-6)
    # k larger than n: every node, values sim / n
    assert knn_graph(features[:3], 10).values().shape[0] == 9


def test_user_interest_means_and_zero_users(kernel_mode):
    train = random_train(15, 10, 0.3, 5).toarray()
    train[4] = 0
    features = np.random.default_rng(2).standard_normal((10, 3)).astype(np.float32)
    got = user_interest(sp.csr_matrix(train), features)
    assert got.dtype == np.float32 and got.shape == (15, 3)
    for u in range(15):
        items = np.flatnonzero(train[u])
        expected = features[items].mean(0) if len(items) else np.zeros(3)
        np.testing.assert_allclose(got[u], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["direct", "gram", "auto"])
def test_user_interest_graph_methods_match_naive(method, kernel_mode):
    train = random_train(45, 30, 0.12, 6).toarray()
    train[9] = 0
    features = np.random.default_rng(3).standard_normal((30, 8)).astype(np.float32)
    means = np.zeros((45, 8))
    for u in range(45):
        items = np.flatnonzero(train[u])
        if len(items):
            means[u] = features[items].astype(np.float64).mean(0)
    expected = naive_knn(means, 6)
    got = dense(user_interest_graph(sp.csr_matrix(train), features, 6, method=method, block_size=7))
    for u in range(45):
        assert set(np.flatnonzero(got[u])) == set(np.flatnonzero(expected[u])), u
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_gram_matrix_blocks_and_mirror(kernel_mode):
    features = np.random.default_rng(8).standard_normal((150, 7)).astype(np.float32)
    expected = features.astype(np.float64) @ features.T.astype(np.float64)
    got = gram_matrix(features, block_size=64).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert np.array_equal(got, got.T)
    buffer = np.full((150, 150), np.nan, dtype=np.float32)
    shared = gram_matrix(features, block_size=33, out=buffer)
    assert np.shares_memory(shared.numpy(), buffer)
    np.testing.assert_array_equal(buffer, buffer.T)
    np.testing.assert_allclose(buffer, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ConfigError, match="out must be"):
        gram_matrix(features, out=np.empty((150, 149), dtype=np.float32))


def naive_top_k(scaled: np.ndarray, slots: int, skip: np.ndarray) -> tuple:
    vals = np.zeros((len(scaled), slots), dtype=np.float32)
    cols = np.full((len(scaled), slots), -1)
    for r, row in enumerate(scaled):
        ranked = sorted((-v, c) for c, v in enumerate(row) if c != skip[r])[:slots]
        vals[r, : len(ranked)] = [-v for v, _ in ranked]
        cols[r, : len(ranked)] = [c for _, c in ranked]
    return vals, cols


def test_row_top_k_order_ties_skip_and_short_rows(kernel_mode):
    rng = np.random.default_rng(9)
    block = rng.integers(-3, 4, size=(9, 12)).astype(np.float32)  # many exact ties
    scale = rng.choice([0.5, 1.0, 2.0], size=12).astype(np.float32)
    skip = np.array([0, 3, -1, 11, 5, 5, 2, -1, 7])
    for slots in (0, 1, 4, 11, 13):
        vals, cols = kernels.row_top_k(block, slots, skip, scale)
        want_vals, want_cols = naive_top_k(block * scale, slots, skip)
        np.testing.assert_array_equal(cols, want_cols, err_msg=f"slots={slots}")
        np.testing.assert_array_equal(vals, want_vals)
    vals, cols = kernels.row_top_k(block, 5, skip)
    np.testing.assert_array_equal(cols, naive_top_k(block, 5, skip)[1])


def test_gather_top_k_matches_the_dense_product(kernel_mode):
    rng = np.random.default_rng(10)
    train = random_train(23, 17, 0.2, 11).toarray()
    train[4] = 0  # a user without items: every sum 0
    train = sp.csr_matrix(train)
    left = rng.integers(-2, 3, size=(7, 17)).astype(np.float32)  # 7 rows: a 4-row pass + 3
    scale = rng.choice([0.0, 0.5, 1.0], size=23).astype(np.float32)
    skip = np.array([0, 1, 2, 30, -1, 5, 22])
    dense_sums = left @ train.toarray().T
    for slots in (0, 3, 8, 22, 25):
        vals, cols = kernels.gather_top_k(left, train, slots, skip, scale)
        want_vals, want_cols = naive_top_k(dense_sums * scale, slots, skip)
        np.testing.assert_array_equal(cols, want_cols, err_msg=f"slots={slots}")
        np.testing.assert_allclose(vals, want_vals, rtol=1e-6)


def test_faiss_knn_recall_when_available():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    features = rng.standard_normal((400, 16)).astype(np.float32)
    indices, _ = knn_neighbours(features, 5, method="faiss", nlist=4, nprobe=4)
    assert (indices[:, 0] == np.arange(400)).all()
    assert sample_recall(features, indices, 5, sample=100) == pytest.approx(1.0)


# ---------------------------------------------------------------- combining


def test_combine_modalities_and_homograph():
    rng = np.random.default_rng(5)
    a = knn_graph(rng.standard_normal((20, 4)), 3)
    b = knn_graph(rng.standard_normal((20, 5)), 4)
    combined = combine_modalities({"image": a, "text": b}, {"image": 0.3, "text": 0.7})
    np.testing.assert_allclose(dense(combined), 0.3 * dense(a) + 0.7 * dense(b), atol=1e-7)
    h = homograph(a, b, 0.2)
    np.testing.assert_allclose(dense(h), 0.2 * dense(a) + 0.8 * dense(b), atol=1e-7)
    with pytest.raises(ConfigError, match="sum to 1"):
        combine_modalities({"image": a, "text": b}, {"image": 0.3, "text": 0.6})
    with pytest.raises(ConfigError, match="missing"):
        combine_modalities({"image": a, "text": b}, {"image": 1.0})
    with pytest.raises(ConfigError, match="unknown"):
        combine_modalities({"image": a}, {"image": 0.5, "audio": 0.5})


def test_modality_weights_convention():
    assert modality_weights(["image", "text"], 0.2) == {"image": 0.2, "text": 0.8}
    assert modality_weights(["text"], 0.2) == {"text": 1.0}
    weights = modality_weights(["image", "text", "audio"], 0.4)
    assert weights["image"] == 0.4 and weights["text"] == pytest.approx(0.3)
    with pytest.raises(ConfigError):
        modality_weights([], 0.5)
