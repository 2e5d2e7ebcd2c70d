"""Fold-in of new users from a saved item table: Bundle.fold_in / recommend_from_items and the
methods of rearm.experiments.fold_in, on planted tables (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rearm.errors import RunError, UnknownItemError
from rearm.experiments.bundle import Bundle
from rearm.experiments.fold_in import (
    FOLD_IN_METHODS,
    FOLD_IN_VARIANTS,
    choose_fold_in,
    fold_in_users,
    variant_name,
)


def planted_bundle(
    num_users=60, num_items=300, dim=16, history=25, seed=0, item_ids=True, item_zero=False
):
    """Users whose train items are their own top-`history` items under the planted vectors."""
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((num_users, dim)).astype(np.float32)
    items = rng.standard_normal((num_items, dim)).astype(np.float32)
    top = np.argsort(-(users @ items.T), axis=1)[:, :history]
    train = sp.csr_matrix(
        (np.ones(top.size, dtype=np.float32), top.ravel(), np.arange(0, top.size + 1, history)),
        shape=(num_users, num_items),
    )
    empty = sp.csr_matrix((num_users, num_items), dtype=np.float32)
    if item_zero:
        items[:] = 0.0
    return Bundle(
        meta={"model": "planted", "protocol": "standard", "num_users": num_users},
        user_repr=users,
        item_repr=items,
        interactions={"train": train, "valid": empty, "test": empty},
        user_ids=[f"u{i}" for i in range(num_users)] if item_ids else None,
        item_ids=[f"i{i}" for i in range(num_items)] if item_ids else None,
    )


def top_overlap(bundle, vectors, k=20):
    train = bundle.split("train")
    ranked = [
        [int(x[1:]) for x in entry["items"]] for entry in bundle.top_k(vectors, k, seen=train)
    ]
    trained = [
        [int(x[1:]) for x in entry["items"]]
        for entry in bundle.top_k(bundle.user_repr, k, seen=train)
    ]
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(ranked, trained)])


@pytest.mark.parametrize("method", FOLD_IN_METHODS)
def test_fold_in_recovers_the_trained_ranking(method):
    bundle = planted_bundle()
    folded = fold_in_users(bundle.item_repr, bundle.split("train"), method)
    assert folded.shape == bundle.user_repr.shape and folded.dtype == np.float32
    cosine = np.sum(folded * bundle.user_repr, axis=1) / (
        np.linalg.norm(folded, axis=1) * np.linalg.norm(bundle.user_repr, axis=1)
    )
    assert cosine.mean() > 0.8
    # a random direction overlaps about k / I = 0.07 at k 20; the folded ones 0.55 (mean) and 0.64
    assert top_overlap(bundle, folded) > 0.4


def test_least_squares_matches_a_direct_solve():
    bundle = planted_bundle(num_users=5, num_items=40, dim=6, history=4)
    table = bundle.item_repr.astype(np.float64)
    history = bundle.split("train")
    folded = fold_in_users(table, history, "least_squares", confidence=2.0, ridge=0.1)
    gram = table.T @ table
    for user in range(5):
        chosen = table[history[user].indices]
        alpha = 2.0 * 40 / len(chosen)
        system = gram + alpha * chosen.T @ chosen + 0.1 * np.trace(gram) / 6 * np.eye(6)
        expected = np.linalg.solve(system, (1 + alpha) * chosen.sum(axis=0))
        np.testing.assert_allclose(folded[user], expected, rtol=1e-4, atol=1e-6)


def test_rows_without_items_fold_to_zero():
    bundle = planted_bundle(num_users=3, num_items=30, dim=4, history=3)
    history = bundle.split("train").tolil()
    history[1, :] = 0
    for method in FOLD_IN_METHODS:
        folded = fold_in_users(bundle.item_repr, history.tocsr(), method)
        assert np.all(folded[1] == 0) and np.any(folded[0] != 0)


def test_fold_in_of_a_known_users_items():
    bundle = planted_bundle()
    items = [f"i{i}" for i in bundle.split("train")[3].indices]
    vector = bundle.fold_in(items)
    assert vector.shape == (bundle.item_repr.shape[1],)
    # repeats count once
    np.testing.assert_allclose(bundle.fold_in(items + items[:3]), vector, rtol=1e-6)


def test_recommend_from_items_excludes_the_items_and_exclusions():
    bundle = planted_bundle()
    items = [f"i{i}" for i in bundle.split("train")[3].indices]
    result = bundle.recommend_from_items(items, k=30, exclude=["i7", "i8"])
    assert set(result) == {"items", "scores"}
    assert len(result["items"]) == 30 == len(result["scores"])
    assert not set(result["items"]) & (set(items) | {"i7", "i8"})
    assert result["scores"] == sorted(result["scores"], reverse=True)
    trained = bundle.recommend(["u3"], k=30)[0]["items"]
    assert len(set(result["items"]) & set(trained)) >= 15


def test_recommend_from_items_without_id_maps():
    bundle = planted_bundle(item_ids=False)
    result = bundle.recommend_from_items(["1", "2", "3"], k=5)
    assert len(result["items"]) == 5 and not {1, 2, 3} & set(result["items"])


def test_fold_in_errors():
    bundle = planted_bundle()
    with pytest.raises(RunError, match="at least one item"):
        bundle.fold_in([])
    with pytest.raises(RunError, match="at least one item"):
        bundle.recommend_from_items([], k=5)
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        bundle.recommend_from_items(["i1", "nope"])
    with pytest.raises(UnknownItemError, match="unknown item id 'gone'"):
        bundle.recommend_from_items(["i1"], exclude=["gone"])
    with pytest.raises(RunError, match="-k must be >= 1"):
        bundle.recommend_from_items(["i1"], k=0)


def with_valid(bundle, start=25, count=5):
    """Valid items: each planted user's next `count` items after its train items."""
    top = np.argsort(-(bundle.user_repr @ bundle.item_repr.T), axis=1)[:, start : start + count]
    bundle.interactions["valid"] = sp.csr_matrix(
        (np.ones(top.size, dtype=np.float32), top.ravel(), np.arange(0, top.size + 1, count)),
        shape=bundle.split("train").shape,
    )
    return bundle


def test_the_bundle_chooses_its_fold_in_on_its_valid_items():
    bundle = with_valid(planted_bundle())
    choice = bundle.fold_in_choice
    assert choice["users"] == 60
    assert list(choice["valid_recall_at_20"]) == [variant_name(m, c) for m, c in FOLD_IN_VARIANTS]
    best = max(choice["valid_recall_at_20"].values())
    assert choice["valid_recall_at_20"][choice["name"]] == best
    # planted users' next items are found far better than at random (20 / 275 ~ 0.07)
    assert best > 0.5
    items = [f"i{i}" for i in bundle.split("train")[3].indices]
    options = {} if choice["confidence"] is None else {"confidence": choice["confidence"]}
    expected = fold_in_users(
        bundle.item_repr, bundle.split("train")[3], choice["method"], **options
    )[0]
    np.testing.assert_allclose(bundle.fold_in(items), expected, rtol=1e-5, atol=1e-7)


def test_choice_samples_users_and_falls_back_to_the_mean():
    bundle = with_valid(planted_bundle())
    sampled = choose_fold_in(
        bundle.item_repr, bundle.split("train"), bundle.split("valid"), sample=10
    )
    assert sampled["users"] == 10
    empty = planted_bundle()  # no valid items at all
    assert empty.fold_in_choice == {
        "method": "mean",
        "confidence": None,
        "name": "mean",
        "valid_recall_at_20": {},
        "users": 0,
    }


def test_an_empty_item_table_is_a_run_error_and_the_service_still_starts():
    from rearm.experiments.fold_in import shared_inverse
    from rearm.serve.service import _warm_fold_in

    # e.g. a collapsed model: V^T V is singular, np.linalg.inv would raise LinAlgError
    with pytest.raises(RunError, match="the saved item table is all zeros"):
        shared_inverse(np.zeros((4, 4)))
    with pytest.raises(RunError, match="the saved item table is not finite"):
        shared_inverse(np.full((4, 4), np.nan))
    bundle = planted_bundle(item_zero=True)
    bundle.__dict__["fold_in_choice"] = {"method": "least_squares", "confidence": 0.1}
    # a server answers /recommend/items with the message instead of failing to start
    assert "all zeros" in _warm_fold_in(bundle)
