"""Negative sampling: never a known item, uniform over the rest, reproducible, one epoch exact."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rearm.data.sampling import NegativeSampler, epoch_triples
from rearm.errors import DataError


def random_known(seed: int = 0, num_users: int = 50, num_items: int = 40) -> sp.csr_matrix:
    return sp.random(num_users, num_items, density=0.3, format="csr", random_state=seed)


def test_never_returns_a_known_item():
    known = random_known().tolil()
    known[7, :-1] = 1  # one allowed item left: the rejection loop falls back to exact sampling
    known[7, -1] = 0
    known = known.tocsr()
    sampler = NegativeSampler(known, seed=1)
    users = np.repeat(np.arange(known.shape[0]), 2000)
    items = sampler.sample(users)
    assert items.dtype == np.int64 and items.shape == users.shape
    assert not np.asarray(known[users, items]).any()
    assert (items[users == 7] == known.shape[1] - 1).all()


def test_uniform_over_allowed_items():
    known = random_known(seed=3, num_users=4, num_items=30)
    sampler = NegativeSampler(known, seed=2025)
    draws = 30_000
    for user in range(4):
        items = sampler.sample(np.full(draws, user))
        allowed = np.flatnonzero(known[user].toarray()[0] == 0)
        counts = np.bincount(items, minlength=30)[allowed]
        expected = draws / len(allowed)
        chi_square = float(((counts - expected) ** 2 / expected).sum())
        # df = len(allowed) - 1 <= 29; the 99.9% quantile for df = 29 is about 58.3.
        assert chi_square < 58.3, (user, chi_square)


def test_exact_fallback_is_uniform_and_allowed():
    known = random_known(seed=4, num_users=3, num_items=25)
    sampler = NegativeSampler(known, seed=0)
    rng = np.random.default_rng(0)
    for user in range(3):
        items = sampler._exact(np.full(20_000, user), rng)
        allowed = np.flatnonzero(known[user].toarray()[0] == 0)
        assert np.isin(items, allowed).all()
        counts = np.bincount(items, minlength=25)[allowed]
        expected = 20_000 / len(allowed)
        assert float(((counts - expected) ** 2 / expected).sum()) < 58.3


def test_deterministic_under_a_seed():
    known = random_known()
    users = np.arange(50).repeat(30)
    first = NegativeSampler(known, seed=5).sample(users)
    np.testing.assert_array_equal(first, NegativeSampler(known, seed=5).sample(users))
    assert not np.array_equal(first, NegativeSampler(known, seed=6).sample(users))
    sampler = NegativeSampler(known, seed=99)
    np.testing.assert_array_equal(first, sampler.sample(users, rng=np.random.default_rng(5)))


def test_user_who_knows_every_item_is_an_error():
    known = random_known().tolil()
    known[12, :] = 1
    sampler = NegativeSampler(known.tocsr(), seed=0)
    with pytest.raises(DataError, match="user 12 knows all 40 items"):
        sampler.sample(np.array([0, 12, 3]))
    sampler.sample(np.array([0, 3]))  # other users are fine
    with pytest.raises(DataError, match="out of range"):
        sampler.sample(np.array([50]))


def test_epoch_triples_cover_every_train_pair_once():
    train = random_known(seed=8)
    known = (train + random_known(seed=9)).tocsr()  # e.g. the reference protocol's train+valid+test
    sampler = NegativeSampler(known, seed=0)
    users, positives, negatives = epoch_triples(train, sampler, rng=3)
    assert users.dtype == positives.dtype == negatives.dtype == np.int64
    assert len(users) == train.nnz
    keys = users * train.shape[1] + positives
    rows, cols = train.nonzero()
    np.testing.assert_array_equal(np.sort(keys), np.sort(rows * train.shape[1] + cols))
    assert not np.asarray(known[users, negatives]).any()
    assert not (np.diff(keys) > 0).all()  # shuffled
    again = epoch_triples(train, NegativeSampler(known, seed=0), rng=3)
    for first, second in zip((users, positives, negatives), again):
        np.testing.assert_array_equal(first, second)
    ordered_users, ordered_items, _ = epoch_triples(train, sampler, rng=3, shuffle=False)
    np.testing.assert_array_equal(ordered_users * train.shape[1] + ordered_items, np.sort(keys))
    with pytest.raises(DataError, match="shape"):
        epoch_triples(train[:10], sampler, rng=0)
