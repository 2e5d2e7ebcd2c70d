"""MGCN against a naive dense implementation written from the paper (Yu et al., ACM MM 2023), on
a toy graph; and MGCN beating popularity on the synthetic default under its synthetic preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_dense import (
    binary_knn,
    bpr_and_l2,
    info_nce_loop,
    layer_mean,
    normalised_adjacency,
    sigmoid,
    synthetic_run_against_popularity,
    toy_dataset,
)

from rearm.errors import ConfigError
from rearm.models import get_model

SETTINGS = {
    "embedding_dim": 6,
    "num_layers": 2,
    "item_graph_layers": 2,
    "knn_k": 3,
    "reg_weight": 0.01,
    "contrastive_weight": 0.5,
    "contrastive_temperature": 0.3,
}


def numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def naive_mgcn(model, dataset) -> dict[str, np.ndarray]:
    """Paper equations with dense matrices; the parameters are read from `model`."""
    r = dataset.train.toarray().astype(np.float64)
    num_users, num_items = r.shape
    adjacency = normalised_adjacency(r)
    ego = np.concatenate([numpy(model.user_embedding.weight), numpy(model.item_embedding.weight)])
    behaviour = layer_mean(adjacency, ego, SETTINGS["num_layers"])
    item_ids = numpy(model.item_embedding.weight)
    user_degree, item_degree = r.sum(1), r.sum(0)
    views = []
    for index, name in enumerate(model.modalities):
        table = numpy(model.feature_tables[index])
        projection, gate = model.projections[index], model.gates[index]
        projected = table @ numpy(projection.weight).T + numpy(projection.bias)
        purified = item_ids * sigmoid(projected @ numpy(gate.weight).T + numpy(gate.bias))
        graph = binary_knn(dataset.features[name].astype(np.float64), SETTINGS["knn_k"])
        items = purified
        for _ in range(SETTINGS["item_graph_layers"]):
            items = graph @ items
        users = np.zeros((num_users, items.shape[1]))
        for u in range(num_users):
            for i in range(num_items):
                if r[u, i]:
                    users[u] += items[i] / np.sqrt(user_degree[u] * item_degree[i])
        views.append(np.concatenate([users, items]))
    first, _, second = model.attention
    w3, b3, q = numpy(first.weight), numpy(first.bias), numpy(second.weight)[0]
    shared = np.zeros_like(behaviour)
    for node in range(len(shared)):
        scores = np.array([q @ np.tanh(w3 @ view[node] + b3) for view in views])
        alpha = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        shared[node] = sum(a * view[node] for a, view in zip(alpha, views))
    multimodal = shared.copy()
    for view, preference in zip(views, model.preferences):
        prefer = sigmoid(behaviour @ numpy(preference.weight).T + numpy(preference.bias))
        multimodal += (view - shared) * prefer
    multimodal /= len(views) + 1
    return {
        "behaviour": behaviour,
        "multimodal": multimodal,
        "final": behaviour + multimodal,
        "ego": ego,
    }


def build(seed: int = 0):
    torch.manual_seed(seed)
    dataset = toy_dataset(seed)
    model = get_model("mgcn").from_dataset(dataset, graph_cache=None, **SETTINGS)
    return model, dataset


def test_forward_and_embed_match_the_dense_paper_equations():
    model, dataset = build()
    expected = naive_mgcn(model, dataset)
    with torch.no_grad():
        parts = model.representations()
        users, items = model.embed()
    for name in ("behaviour", "multimodal", "final"):
        np.testing.assert_allclose(numpy(parts[name]), expected[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        numpy(torch.cat([users, items])), expected["final"], rtol=1e-4, atol=1e-6
    )


def test_loss_terms_match_the_dense_paper_equations():
    model, dataset = build(seed=1)
    expected = naive_mgcn(model, dataset)
    users = np.array([0, 1, 1, 3, 6])
    pos = np.array([dataset.train[u].indices[0] for u in users])
    neg = np.array([9, 9, 8, 0, 2])
    terms = model.loss(*(torch.from_numpy(x) for x in (users, pos, neg)))
    assert set(terms) == {"bpr", "reg", "contrastive"}
    num_users = dataset.num_users
    bpr, l2 = bpr_and_l2(expected["final"], expected["ego"], num_users, users, pos, neg)
    tau = SETTINGS["contrastive_temperature"]
    # InfoNCE over the batch rows: the positive of anchor n is candidate n
    rows = list(range(len(users)))
    item_rows, user_rows = pos + num_users, users
    contrastive = np.mean(
        info_nce_loop(
            expected["multimodal"][item_rows], expected["behaviour"][item_rows], rows, tau
        )
    ) + np.mean(
        info_nce_loop(
            expected["multimodal"][user_rows], expected["behaviour"][user_rows], rows, tau
        )
    )
    assert terms["bpr"].item() == pytest.approx(bpr, rel=1e-4)
    assert terms["reg"].item() == pytest.approx(SETTINGS["reg_weight"] * l2, rel=1e-4)
    assert terms["contrastive"].item() == pytest.approx(
        SETTINGS["contrastive_weight"] * contrastive, rel=1e-4
    )


def test_zero_weights_drop_terms_and_one_modality_works():
    dataset = toy_dataset()
    single = type(dataset)(
        num_users=dataset.num_users,
        num_items=dataset.num_items,
        train=dataset.train,
        valid=dataset.valid,
        test=dataset.test,
        features={"text": dataset.features["text"]},
    )
    model = get_model("mgcn").from_dataset(
        single, embedding_dim=4, knn_k=2, reg_weight=0.0, contrastive_weight=0.0
    )
    batch = (torch.tensor([0]), torch.tensor([dataset.train[0].indices[0]]), torch.tensor([9]))
    assert set(model.loss(*batch)) == {"bpr"}
    with torch.no_grad():
        parts = model.representations()
    # one modality: the attention weight is 1, so E_mul = E^-_m / 2
    view = torch.cat(model.modality_views())
    torch.testing.assert_close(parts["multimodal"], view.detach() / 2)
    with pytest.raises(ConfigError, match="contrastive_temperature"):
        get_model("mgcn").validate_hyperparameters({"contrastive_temperature": 0})


def test_beats_popularity_on_the_synthetic_default(tmp_path):
    test, popularity = synthetic_run_against_popularity("mgcn", tmp_path / "run")
    # observed with seed 2025: popularity 0.084, MGCN 0.320 (test Recall@20, best epoch 6 of 6)
    print(f"mgcn test Recall@20 {test['Recall@20']:.4f} vs popularity {popularity:.4f}")
    assert test["Recall@20"] > popularity + 0.15
