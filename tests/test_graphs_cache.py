"""build_graphs end to end and the data layer's GraphCache (hit / miss / keying)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rearm.data.cache import GraphCache, default_cache_root
from rearm.data.dataset import Dataset
from rearm.errors import ConfigError
from rearm.graphs import (
    GRAPH_FILES,
    Graphs,
    bipartite_graph,
    build_graphs,
    combine_modalities,
    homograph,
    item_cooccurrence_graph,
    knn_graph,
    modality_weights,
    to_scipy,
    user_cooccurrence_graph,
    user_interest,
    user_interest_graph,
)


def small_dataset(seed: int = 0, num_users: int = 40, num_items: int = 25) -> Dataset:
    rng = np.random.default_rng(seed)
    pairs = {}
    for name, size in (("train", 200), ("valid", 30), ("test", 30)):
        pairs[name] = np.stack([rng.integers(0, num_users, size), rng.integers(0, num_items, size)])
    features = {
        "image": rng.random((num_items, 12)).astype(np.float32),
        "text": rng.standard_normal((num_items, 6)).astype(np.float32),
    }
    return Dataset.from_pairs(pairs, features, num_users=num_users, num_items=num_items)


ARGUMENTS = dict(
    user_knn_k=5,
    item_knn_k=3,
    user_modality_weights={"image": 0.2, "text": 0.8},
    item_modality_weights={"image": 0.0, "text": 1.0},
    user_cooccurrence_weight=0.4,
    item_cooccurrence_weight=0.2,
)


def same(a, b) -> bool:
    a, b = to_scipy(a), to_scipy(b)
    return a.shape == b.shape and (a != b).nnz == 0


def test_build_graphs_composes_the_builders():
    data = small_dataset()
    graphs = build_graphs(data, **ARGUMENTS, seed=3)
    train = data.train
    assert isinstance(graphs, Graphs)
    assert same(graphs.bipartite, bipartite_graph(train))
    assert same(graphs.item_cooccurrence, item_cooccurrence_graph(train, 3, seed=3))
    assert same(graphs.user_cooccurrence, user_cooccurrence_graph(train, 5, seed=3))
    item_text = knn_graph(data.features["text"], 3)
    np.testing.assert_allclose(
        to_scipy(graphs.item_semantic).toarray(), to_scipy(item_text).toarray(), atol=1e-6
    )
    users = combine_modalities(
        {name: user_interest_graph(train, data.features[name], 5) for name in ("image", "text")},
        {"image": 0.2, "text": 0.8},
    )
    np.testing.assert_allclose(
        to_scipy(graphs.user_interest_graph).toarray(), to_scipy(users).toarray(), atol=1e-6
    )
    expected_user_homograph = homograph(graphs.user_cooccurrence, users, 0.4)
    np.testing.assert_allclose(
        to_scipy(graphs.user_homograph).toarray(),
        to_scipy(expected_user_homograph).toarray(),
        atol=1e-6,
    )
    for name in ("image", "text"):
        np.testing.assert_allclose(
            graphs.user_interest_features[name], user_interest(train, data.features[name])
        )
    assert graphs.user_homograph.shape == (40, 40) and graphs.item_homograph.shape == (25, 25)
    assert "item_semantic:image" not in graphs.timings  # zero weight: not built


def test_build_graphs_skips_what_is_not_asked_for():
    data = small_dataset()
    full = build_graphs(data, **ARGUMENTS, seed=3)
    users_only = build_graphs(data, **ARGUMENTS, seed=3, homographs=("user",))
    for name in ("item_cooccurrence", "item_semantic", "item_homograph"):
        assert getattr(users_only, name) is None, name
    for name in ("bipartite", "user_cooccurrence", "user_interest_graph", "user_homograph"):
        assert same(getattr(users_only, name), getattr(full, name)), name
    assert not any(step.startswith("item_") for step in users_only.timings)
    assert set(users_only.user_interest_features) == {"image", "text"}

    only_co = build_graphs(
        data, **{**ARGUMENTS, "item_cooccurrence_weight": 1.0}, seed=3, homographs=["item"]
    )
    assert only_co.item_semantic is None and only_co.user_homograph is None
    assert same(only_co.item_homograph, full.item_cooccurrence)
    only_semantic = build_graphs(data, **{**ARGUMENTS, "user_cooccurrence_weight": 0.0}, seed=3)
    assert only_semantic.user_cooccurrence is None
    np.testing.assert_allclose(
        to_scipy(only_semantic.user_homograph).toarray(),
        to_scipy(full.user_interest_graph).toarray(),
        atol=1e-7,
    )
    nothing = build_graphs(data, **ARGUMENTS, homographs=())
    assert set(nothing.timings) == {"bipartite", "combine"} | {
        f"user_interest_features:{name}" for name in ("image", "text")
    }
    with pytest.raises(ConfigError, match="homographs"):
        build_graphs(data, **ARGUMENTS, homographs=("users",))


def test_rearm_ablations_build_only_their_graphs():
    from rearm.models import REARM

    data = small_dataset()
    steps: list[str] = []
    small = {"embedding_dim": 8, "num_layers": 1, "user_knn_k": 4, "item_knn_k": 3}
    model = REARM.from_dataset(data, no_item_graph=True, progress=steps.append, **small)
    assert model.item_homograph is None and model.user_homograph is not None
    assert "user_cooccurrence" in steps
    assert not any(step.startswith(("item_cooccurrence", "item_semantic")) for step in steps)
    assert REARM.graph_arguments(data, {"no_homographs": True})["homographs"] == ()
    assert REARM.graph_arguments(data, {})["homographs"] == ("user", "item")


def test_build_graphs_rejects_bad_weights():
    data = small_dataset()
    with pytest.raises(ConfigError, match="sum to 1"):
        build_graphs(data, **{**ARGUMENTS, "user_modality_weights": {"image": 0.5, "text": 0.6}})
    with pytest.raises(ConfigError, match="missing"):
        build_graphs(data, **{**ARGUMENTS, "item_modality_weights": {"text": 1.0, "x": 0.0}})
    assert modality_weights(data.modalities, 0.1) == {"image": 0.1, "text": 0.9}


def test_cache_hit_miss_and_keying(tmp_path):
    data = small_dataset()
    cache = GraphCache(tmp_path / "cache")
    first = build_graphs(data, **ARGUMENTS, cache=cache)
    misses = cache.misses
    assert cache.hits == 0 and misses > 0
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files and all(name.endswith((".npz", ".npy")) for name in files)

    second = build_graphs(data, **ARGUMENTS, cache=cache)  # same recipe: every lookup hits
    assert cache.misses == misses and cache.hits == misses
    for name in GRAPH_FILES:
        assert same(getattr(first, name), getattr(second, name)), name

    # A changed argument misses for the graphs it affects only.
    hits, misses = cache.hits, cache.misses
    build_graphs(data, **{**ARGUMENTS, "item_knn_k": 4}, cache=cache)
    assert cache.misses == misses + 2  # item co-occurrence and item semantic (text)

    # Changed data misses everywhere.
    hits, misses = cache.hits, cache.misses
    changed = small_dataset(seed=1)
    build_graphs(changed, **ARGUMENTS, cache=cache)
    assert cache.hits == hits

    # Changed option (co-occurrence weighting) misses too.
    misses = cache.misses
    build_graphs(data, **ARGUMENTS, cooccurrence_weighting="normalized", cache=cache)
    assert cache.misses == misses + 2


def test_cache_key_covers_recipe_and_default_location(tmp_path, monkeypatch):
    key = GraphCache.key("f", "item_cooccurrence", 1, {"k": 3, "pad": "none"})
    assert key == GraphCache.key("f", "item_cooccurrence", 1, {"pad": "none", "k": 3})
    assert key != GraphCache.key("g", "item_cooccurrence", 1, {"k": 3, "pad": "none"})
    assert key != GraphCache.key("f", "user_cooccurrence", 1, {"k": 3, "pad": "none"})
    assert key != GraphCache.key("f", "item_cooccurrence", 2, {"k": 3, "pad": "none"})
    assert key != GraphCache.key("f", "item_cooccurrence", 1, {"k": 4, "pad": "none"})
    monkeypatch.setenv("REARM_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_root() == tmp_path / "a"
    monkeypatch.delenv("REARM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert GraphCache().directory == tmp_path / "xdg" / "rearm" / "graphs"


def test_cache_writes_atomically_and_round_trips(tmp_path):
    cache = GraphCache(tmp_path)
    matrix = sp.random(6, 6, density=0.4, format="csr", dtype=np.float32, random_state=0)
    built = cache.graph("fp", "g", 1, {"k": 1}, lambda: matrix)
    again = cache.graph("fp", "g", 1, {"k": 1}, lambda: pytest.fail("should hit"))
    assert (built != again).nnz == 0 and again.dtype == np.float32
    array = cache.array("fp", "a", 1, {}, lambda: np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(cache.array("fp", "a", 1, {}, lambda: None), array)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
