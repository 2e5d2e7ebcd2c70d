"""Cold items through each model's feature path: the representation of an item with features
but no interactions and no ID embedding equals what the model's own full forward gives such an
item (parity on the tiny data set, whose item 5 has no train pair)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rearm.data.dataset import Dataset
from rearm.errors import ColdStartError
from rearm.graphs import cold_item_graph, knn_neighbours
from rearm.graphs.similarity import neighbours_to_csr
from rearm.models import get_model

COLD = 5  # the tiny data set's item without train interactions


@pytest.fixture
def tiny(tiny_pairs, tiny_features) -> Dataset:
    return Dataset.from_pairs(tiny_pairs, tiny_features)


def known_without(features: dict, item: int) -> dict:
    """The data's features with `item` made the least similar row (its negation), so that no
    new-item search picks it: the cold item must be found among the others only."""
    out = {}
    for name, table in features.items():
        table = np.array(table, dtype=np.float32)
        table[item] = -table[item] if np.any(table[item]) else table[item]
        out[name] = table
    return out


def build(name: str, dataset: Dataset, **hyperparameters):
    from rearm.experiments.config import resolve_config

    config = resolve_config(model=name, overrides=[f"{k}={v}" for k, v in hyperparameters.items()])
    torch.manual_seed(0)
    model = get_model(name).from_dataset(dataset, seed=0, **config.hyperparameters)
    return model.eval(), config.hyperparameters


def test_cold_item_graph_matches_the_knn_graph_rows():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((40, 6)).astype(np.float32)
    new = rng.standard_normal((3, 6)).astype(np.float32)
    both = np.concatenate([table, new])
    indices, sims = knn_neighbours(both, 4)
    full = neighbours_to_csr(indices, sims).toarray()
    for k, binary in ((4, False), (4, True)):
        rows, own = cold_item_graph({"x": new}, {"x": table}, k, {"x": 1.0}, binary=binary)
        expected = full[40:, :40]
        if binary:
            expected = (expected != 0) / 4
        # the searches may differ only where a new item's neighbour is another new item
        others = (full[40:, 40:] != 0).sum(axis=1) > 1
        np.testing.assert_allclose(rows.toarray()[~others], expected[~others], rtol=1e-5)
        np.testing.assert_allclose(own, np.full(3, 0.25))
    zero = np.zeros((1, 6), dtype=np.float32)
    rows, own = cold_item_graph({"x": zero}, {"x": table}, 4, {"x": 1.0})
    assert rows.nnz == 0 and own[0] == pytest.approx(0.25)
    rows, own = cold_item_graph(
        {"a": new, "b": new}, {"a": table, "b": table}, 4, {"a": 0.0, "b": 1.0}
    )
    assert rows.nnz == 3 * 3


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("rearm", {"item_cooccurrence_weight": 0.0, "embedding_dim": 8, "item_knn_k": 3}),
        (
            "rearm",
            {
                "item_cooccurrence_weight": 0.0,
                "embedding_dim": 8,
                "item_knn_k": 3,
                "item_homograph_layers": 2,
                "no_meta": "true",
            },
        ),
        ("rearm", {"embedding_dim": 8, "no_homographs": "true"}),
        ("freedom", {"embedding_dim": 8, "knn_k": 3}),
        ("freedom", {"embedding_dim": 8, "knn_k": 3, "item_graph_layers": 2}),
        ("vbpr", {"embedding_dim": 8, "content_dim": 4}),
    ],
)
def test_cold_path_equals_the_full_forward_of_an_item_without_id(tiny, name, settings):
    model, hyperparameters = build(name, tiny, **settings)
    ids = {"rearm": "item_id", "freedom": "item_embedding", "vbpr": "item_factors"}[name]
    with torch.no_grad():
        getattr(model, ids).weight[COLD] = 0.0
        if name == "vbpr":
            model.item_bias.weight[COLD] = 0.0
        expected = model.embed()[1][COLD]
    features = {m: tiny.features[m][COLD : COLD + 1] for m in tiny.modalities}
    if name == "rearm":  # the trained (here initial) table row is the one the forward used
        features = {
            m: t[COLD : COLD + 1].detach().numpy()
            for m, t in zip(model.modalities, model.item_tables)
        }
    cold = model.cold_item_representation(
        features, known_without(tiny.features, COLD), hyperparameters
    )
    assert cold.shape == (1, expected.shape[0])
    torch.testing.assert_close(cold[0], expected, rtol=1e-5, atol=1e-6)


def test_two_layer_rearm_uses_the_known_items_propagation(tiny):
    """With two homograph layers the cold row reaches neighbours of neighbours."""
    one, hyper_one = build("rearm", tiny, embedding_dim=8, item_knn_k=3)
    features = {m: tiny.features[m][:2] for m in tiny.modalities}
    first = one.cold_item_representation(features, tiny.features, hyper_one)
    two, hyper_two = build("rearm", tiny, embedding_dim=8, item_knn_k=3, item_homograph_layers=2)
    second = two.cold_item_representation(features, tiny.features, hyper_two)
    assert first.shape == second.shape == (2, 24)
    assert torch.isfinite(second).all() and not torch.allclose(first, second)


@pytest.mark.parametrize("name", ["mf", "lightgcn"])
def test_models_without_features_refuse(tiny, name):
    model, hyperparameters = build(name, tiny, embedding_dim=8)
    with pytest.raises(ColdStartError, match=f"{name} has no item features"):
        model.cold_item_representation({}, tiny.features, hyperparameters)


def test_unsupported_feature_models_refuse_clearly(tiny):
    model, hyperparameters = build("bm3", tiny, embedding_dim=8)
    with pytest.raises(ColdStartError, match="not implemented for bm3"):
        model.cold_item_representation(tiny.features, tiny.features, hyperparameters)


def test_feature_neighbours_are_the_top_k_by_mean_cosine():
    from rearm.experiments.coldstart import feature_neighbours

    rng = np.random.default_rng(3)
    known = {"a": rng.standard_normal((30, 5)), "b": rng.standard_normal((30, 3))}
    new = {"a": rng.standard_normal((4, 5)), "b": rng.standard_normal((4, 3))}
    mix = feature_neighbours(new, known, 6).toarray()
    unit = {m: t / np.linalg.norm(t, axis=1, keepdims=True) for m, t in known.items()}
    sims = sum((new[m] / np.linalg.norm(new[m], axis=1, keepdims=True)) @ unit[m].T for m in unit)
    sims = sims / 2
    for row in range(4):
        top = np.argsort(-sims[row])[:6]
        assert set(np.flatnonzero(mix[row])) <= set(top)
        positive = np.clip(sims[row, top], 0, None)
        np.testing.assert_allclose(mix[row, top], positive / positive.sum(), rtol=1e-5)
    np.testing.assert_allclose(mix.sum(axis=1), 1.0, rtol=1e-6)
    # no positive similarity: equal weights; k above the catalogue: every known item
    flat = feature_neighbours({"a": -known["a"][:1]}, {"a": known["a"][:1]}, 5).toarray()
    np.testing.assert_allclose(flat, [[1.0]])
    with pytest.raises(ColdStartError, match="--neighbours must be a positive integer"):
        feature_neighbours(new, known, 0)


def test_neighbour_rows_keep_the_trained_scale():
    """One neighbour: a copy of a known item's features gets exactly its trained row; several:
    the direction of the weighted mean, with the weighted mean length (not the shorter length
    of the mean), so a new item scores on the trained items' scale."""
    from rearm.experiments.coldstart import feature_neighbours, neighbour_rows

    rng = np.random.default_rng(4)
    known = {"a": rng.standard_normal((25, 6)), "b": rng.standard_normal((25, 4))}
    table = rng.standard_normal((25, 8)).astype(np.float32) * rng.uniform(0.5, 3, (25, 1))
    rows = [2, 17]
    copies = {m: t[rows] for m, t in known.items()}
    np.testing.assert_allclose(neighbour_rows(copies, known, table, 1), table[rows], rtol=1e-6)
    new = {m: rng.standard_normal((5, t.shape[1])) for m, t in known.items()}
    found = neighbour_rows(new, known, table, 4)
    mix = feature_neighbours(new, known, 4).toarray()
    mean = mix @ table
    cosine = (found * mean).sum(1) / np.linalg.norm(found, axis=1) / np.linalg.norm(mean, axis=1)
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)
    lengths = np.linalg.norm(found, axis=1)
    np.testing.assert_allclose(lengths, mix @ np.linalg.norm(table, axis=1), rtol=1e-5)
    assert (lengths > np.linalg.norm(mean, axis=1) + 1e-6).all()


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("rearm", {"embedding_dim": 8, "item_knn_k": 3}),
        ("freedom", {"embedding_dim": 8, "knn_k": 3}),
        ("vbpr", {"embedding_dim": 8, "content_dim": 4}),
        ("lightgcn", {"embedding_dim": 8}),
    ],
)
def test_cold_item_table_methods(tiny, name, settings):
    """`neighbours` serves every model, from its trained table; `features` is the model's own
    feature path, and models without one refuse it."""
    from rearm.experiments.coldstart import cold_item_table, feature_path_table, neighbour_rows

    model, hyperparameters = build(name, tiny, **settings)
    config = {"hyperparameters": hyperparameters}
    with torch.no_grad():
        table = model.embed()[1].numpy()
    features = {m: np.asarray(tiny.features[m])[[0, 3]] for m in tiny.modalities}
    np.testing.assert_array_equal(
        cold_item_table(model, features, tiny, config, table, "neighbours", 2),
        neighbour_rows(features, tiny.features, table, 2),
    )
    if model.feature_free:
        with pytest.raises(ColdStartError, match=f"{name} has no item features"):
            cold_item_table(model, features, tiny, config, table, "features")
    else:
        np.testing.assert_array_equal(
            cold_item_table(model, features, tiny, config, table, "features"),
            feature_path_table(model, features, tiny, config),
        )
    with pytest.raises(ColdStartError, match="unknown cold-item method 'ids'"):
        cold_item_table(model, features, tiny, config, table, "ids")
