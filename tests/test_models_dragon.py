"""DRAGON against a naive dense implementation written from the paper on a toy data set: the
graphs built entry by entry (bipartite, binarised kNN item-item, top-k co-occurrence user-user),
the modality channels, attentive concatenation, homogeneous-graph sums, BPR and the regulariser.
Also: DRAGON beats popularity on the synthetic default under its synthetic preset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rearm.data.dataset import Dataset
from rearm.models.dragon import DRAGON

U, I = 6, 7
KNN_K, USER_K = 3, 2
IMAGE_WEIGHT = 0.3

# users 0-4 each share items with at least two other users (no padding needed); user 5's only
# item is nobody else's, so its user-user row stays empty
TRAIN = [
    (0, 0), (0, 1), (0, 2),
    (1, 0), (1, 1), (1, 3),
    (2, 1), (2, 2), (2, 3),
    (3, 0), (3, 2), (3, 4),
    (4, 0), (4, 3), (4, 4), (4, 1),
    (5, 5),
]  # fmt: skip


def toy_dataset(with_features: bool = True) -> Dataset:
    rng = np.random.default_rng(5)
    held = np.array([[u, 6] for u in range(U)]).T
    features = (
        {
            "image": rng.standard_normal((I, 9)).astype(np.float32),
            "text": rng.standard_normal((I, 5)).astype(np.float32),
        }
        if with_features
        else {}
    )
    return Dataset.from_pairs(
        {"train": np.array(TRAIN).T, "valid": held, "test": held},
        features,
        num_users=U,
        num_items=I,
    )


def dense_bipartite(r: np.ndarray) -> torch.Tensor:
    n = U + I
    out = torch.zeros(n, n)
    user_degree, item_degree = r.sum(1), r.sum(0)
    for u in range(U):
        for i in range(I):
            if r[u, i]:
                value = 1.0 / math.sqrt(user_degree[u] * item_degree[i])
                out[u, U + i] = out[U + i, u] = value
    return out


def dense_knn(features: np.ndarray, k: int) -> torch.Tensor:
    """Binarised cosine kNN (self included), normalised D^-1/2 S D^-1/2 with D the row sums."""
    x = torch.from_numpy(features).double()
    x = x / x.norm(dim=1, keepdim=True)
    s = torch.zeros(I, I)
    for i in range(I):
        order = sorted(range(I), key=lambda j: (-float(x[i] @ x[j]) if j != i else -2.0, j))
        for j in order[:k]:
            s[i, j] = 1.0
    degree = s.sum(1)
    return s / torch.sqrt(degree[:, None] * degree[None, :])


def dense_user_graph(r: np.ndarray, k: int) -> torch.Tensor:
    """Top-k users by number of shared items (ties: lower index), softmax of the counts."""
    g = torch.zeros(U, U)
    for u in range(U):
        counts = [(int((r[u] * r[v]).sum()), v) for v in range(U) if v != u]
        kept = sorted([c for c in counts if c[0] > 0], key=lambda c: (-c[0], c[1]))[:k]
        if not kept:
            continue
        weights = torch.softmax(torch.tensor([float(c) for c, _ in kept]), dim=0)
        for (_, v), w in zip(kept, weights):
            g[u, v] = w
    return g


def naive(model: DRAGON, dataset: Dataset, users, positives, negatives):
    r = dataset.train.toarray()
    a = dense_bipartite(r)
    s = IMAGE_WEIGHT * dense_knn(dataset.features["image"], KNN_K) + (1 - IMAGE_WEIGHT) * dense_knn(
        dataset.features["text"], KNN_K
    )
    g = dense_user_graph(r, USER_K)
    user_parts, item_parts = [], []
    for m, name in enumerate(dataset.modalities):
        mlp = model.feature_mlps[m]
        hidden = F.leaky_relu(
            torch.from_numpy(dataset.features[name]) @ mlp[0].weight.T + mlp[0].bias
        )
        items = hidden @ mlp[2].weight.T + mlp[2].bias
        x = torch.cat([model.user_preferences[m], items])
        x = torch.stack([row / row.norm() for row in x])
        total, current = x, x
        for _ in range(model.num_layers):
            current = a @ current
            total = total + current
        user_parts.append(model.user_modality_weights[:, m : m + 1] * total[:U])
        item_parts.append(total[U:])
    h_u, h_i = torch.cat(user_parts, 1), torch.cat(item_parts, 1)
    h_i = h_i + s @ h_i
    h_u = h_u + g @ h_u
    losses = []
    for u, p, n in zip(users, positives, negatives):
        losses.append(-torch.log(torch.sigmoid(h_u[u] @ h_i[p] - h_u[u] @ h_i[n])))
    reg = sum((preference[users] ** 2).mean() for preference in model.user_preferences)
    reg = reg + (model.user_modality_weights**2).mean()
    return (h_u, h_i), {"bpr": torch.stack(losses).mean(), "reg": model.reg_weight * reg}


def build(**kwargs) -> tuple[DRAGON, Dataset]:
    torch.manual_seed(0)
    dataset = toy_dataset()
    settings = {
        "embedding_dim": 4,
        "knn_k": KNN_K,
        "user_graph_k": USER_K,
        "image_weight": IMAGE_WEIGHT,
        "reg_weight": 0.05,
        **kwargs,
    }
    return DRAGON.from_dataset(dataset, **settings), dataset


def test_embed_loss_and_gradients_match_the_naive_implementation():
    model, dataset = build()
    with torch.no_grad():  # per-user weights away from their near-uniform start
        model.user_modality_weights.uniform_(0.1, 2.0)
    train = dataset.train.tocoo()
    users = torch.from_numpy(train.row.astype(np.int64))
    positives = torch.from_numpy(train.col.astype(np.int64))
    negatives = (positives + 3) % I
    terms = model.loss(users, positives, negatives)
    (want_users, want_items), want = naive(model, dataset, users, positives, negatives)
    got_users, got_items = model.embed()
    assert got_users.shape == (U, 2 * 4) and got_items.shape == (I, 2 * 4)
    torch.testing.assert_close(got_users, want_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_items, want_items, rtol=1e-5, atol=1e-6)
    assert set(terms) == set(want)
    for name in terms:
        torch.testing.assert_close(terms[name], want[name], rtol=1e-5, atol=1e-6)
    parameters = list(model.parameters())
    got = torch.autograd.grad(sum(terms.values()), parameters)
    expected = torch.autograd.grad(sum(want.values()), parameters)
    for (name, _), g, w in zip(model.named_parameters(), got, expected):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=name)


def test_homogeneous_graphs_can_be_switched_off():
    model, dataset = build(item_graph_layers=0, user_graph_layers=0)
    views = model.modality_views()
    users, items = model.embed()
    torch.testing.assert_close(items, torch.cat([view[U:] for view in views], 1))
    weights = model.user_modality_weights
    torch.testing.assert_close(
        users, torch.cat([weights[:, m : m + 1] * view[:U] for m, view in enumerate(views)], 1)
    )


def test_user_graph_rows_and_single_modality():
    model, dataset = build()
    dense = model.user_graph.to_dense()
    torch.testing.assert_close(dense, dense_user_graph(dataset.train.toarray(), USER_K))
    assert float(dense[5].abs().sum()) == 0.0  # no co-occurring user: empty row
    single = Dataset.from_pairs(
        {name: np.array(dataset.split(name).nonzero()) for name in ("train", "valid", "test")},
        {"text": dataset.features["text"]},
        num_users=U,
        num_items=I,
    )
    users, items = DRAGON.from_dataset(single, embedding_dim=4, knn_k=KNN_K).embed()
    assert users.shape == (U, 4) and items.shape == (I, 4)


def test_embedding_blocks_split_the_score_by_modality():
    model, _ = build()
    with torch.no_grad():
        users, items = model.embed()
    assert model.embedding_blocks() == [("image", 4), ("text", 4)]
    per_block = sum(users[:, s : s + 4] @ items[:, s : s + 4].T for s in (0, 4))
    torch.testing.assert_close(per_block, users @ items.T)


def test_needs_a_modality():
    from rearm.errors import ConfigError

    with pytest.raises(ConfigError, match="DRAGON needs at least one item modality"):
        DRAGON.from_dataset(toy_dataset(with_features=False))


def test_beats_popularity_on_the_synthetic_default(tmp_path):
    from rearm.evaluation import rank_metrics
    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.config import resolve_config
    from rearm.experiments.run import load_run_data, train_run
    from rearm.training.trainer import Progress

    data = load_run_data(None)
    popularity = np.asarray(data.train.sum(0)).ravel().astype(np.float32)
    popular = rank_metrics(
        np.broadcast_to(popularity, (data.num_users, data.num_items)),
        data.test,
        get_protocol("standard").mask_matrix(data, "test"),
        ks=(20,),
    )["Recall@20"]
    # the synthetic preset (lr 1e-2, seed 2025), 3 of its 25 epochs to keep the test short
    config = resolve_config(model="dragon", epochs=3)
    assert config.preset == "synthetic"
    results = train_run(config, tmp_path / "dragon", dataset=data, progress=Progress(enabled=False))
    # observed at 3 epochs: popularity 0.084; DRAGON 0.296 (seed 2025), 0.305 / 0.307 (seeds 1, 2)
    assert results["test"]["Recall@20"] > popular + 0.15
