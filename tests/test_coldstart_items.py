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
