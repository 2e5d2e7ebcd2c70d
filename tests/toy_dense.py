"""Helpers for the model tests (tests/test_models_*.py): a toy data set and the textbook formulas
written with dense NumPy arrays and loops, straight from the papers; and a synthetic-default run
against popularity."""

from __future__ import annotations

import numpy as np

from rearm.data.dataset import Dataset


def toy_dataset(seed: int = 0, num_users: int = 7, num_items: int = 10) -> Dataset:
    """A few users and items, 2-4 train items per user (item 9 never interacted with), one
    valid and one test item each; modalities "image" [I, 5] and "text" [I, 4]."""
    rng = np.random.default_rng(seed)
    pairs: dict[str, list[tuple[int, int]]] = {"train": [], "valid": [], "test": []}
    for user in range(num_users):
        items = rng.choice(num_items - 1, 6, replace=False)
        count = 2 + user % 3
        pairs["train"].extend((user, int(item)) for item in items[:count])
        pairs["valid"].append((user, int(items[count])))
        pairs["test"].append((user, int(items[count + 1])))
    features = {
        "image": rng.standard_normal((num_items, 5)).astype(np.float32),
        "text": rng.standard_normal((num_items, 4)).astype(np.float32),
    }
    return Dataset.from_pairs(
        {name: np.array(values, dtype=np.int64).T for name, values in pairs.items()},
        features,
        num_users=num_users,
        num_items=num_items,
        source="toy",
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def normalised_adjacency(r: np.ndarray) -> np.ndarray:
    """D^-1/2 [[0, R], [R^T, 0]] D^-1/2 with empty rows left at zero, entry by entry."""
    num_users, num_items = r.shape
    n = num_users + num_items
    a = np.zeros((n, n))
    a[:num_users, num_users:] = r
    a[num_users:, :num_users] = r.T
    degree = a.sum(1)
    out = np.zeros_like(a)
    for i in range(n):
        for j in range(n):
            if a[i, j]:
                out[i, j] = a[i, j] / np.sqrt(degree[i] * degree[j])
    return out


def layer_mean(graph: np.ndarray, x: np.ndarray, layers: int) -> np.ndarray:
    outputs = [x]
    for _ in range(layers):
        outputs.append(graph @ outputs[-1])
    return np.mean(outputs, axis=0)


def binary_knn(features: np.ndarray, k: int) -> np.ndarray:
    """Cosine top-k per row (itself included), binarised, D^-1/2 S D^-1/2 (row degrees)."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = x @ x.T
    s = np.zeros_like(similarity)
    for row in range(len(s)):
        s[row, np.argsort(-similarity[row])[:k]] = 1.0
    degree = s.sum(1)
    return s / np.sqrt(degree[:, None] * degree[None, :])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; a zero vector has similarity 0 with everything (norms clamped at
    1e-12, as L2 normalisation does)."""
    return float(a @ b / (max(np.linalg.norm(a), 1e-12) * max(np.linalg.norm(b), 1e-12)))


def info_nce_loop(
    anchors: np.ndarray, candidates: np.ndarray, positives: list[int], temperature: float
) -> list[float]:
    """-log exp(s(a_n, c_pos(n)) / t) / sum_j exp(s(a_n, c_j) / t) for every anchor n."""
    losses = []
    for n, anchor in enumerate(anchors):
        logits = [cosine(anchor, candidate) / temperature for candidate in candidates]
        losses.append(-(logits[positives[n]] - np.log(np.sum(np.exp(logits)))))
    return losses


def bpr_and_l2(
    final: np.ndarray,
    ego: np.ndarray,
    num_users: int,
    users: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
) -> tuple[float, float]:
    """BPR (mean of -log sigmoid) on `final` and 0.5 * sum of squared ego rows / B."""
    bpr, l2 = 0.0, 0.0
    for u, i, j in zip(users, pos, neg):
        eu, ei, ej = final[u], final[num_users + i], final[num_users + j]
        bpr += -np.log(sigmoid(eu @ ei - eu @ ej))
        l2 += 0.5 * (
            np.sum(ego[u] ** 2) + np.sum(ego[num_users + i] ** 2) + np.sum(ego[num_users + j] ** 2)
        )
    return bpr / len(users), l2 / len(users)


def synthetic_run_against_popularity(model: str, folder) -> tuple[dict, float]:
    """Train `model` as `rearm train --model NAME` does without --data (the embedded synthetic
    default, the model's "synthetic" preset, seed 2025); return (its test metrics, the test
    Recall@20 of ranking unseen items by train popularity under the same mask)."""
    from rearm.evaluation import rank_metrics
    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.config import resolve_config
    from rearm.experiments.run import load_run_data, train_run
    from rearm.training.trainer import Progress

    dataset = load_run_data(None)
    config = resolve_config(model=model)
    assert config.preset == "synthetic"
    results = train_run(config, folder, dataset=dataset, progress=Progress(enabled=False))
    popularity = np.asarray(dataset.train.sum(0)).ravel().astype(np.float32)
    scores = np.broadcast_to(popularity, (dataset.num_users, dataset.num_items))
    protocol = get_protocol("standard")
    popular = rank_metrics(scores, dataset.test, protocol.mask_matrix(dataset, "test"), ks=(20,))
    return results["test"], popular["Recall@20"]
