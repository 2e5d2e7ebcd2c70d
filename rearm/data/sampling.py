"""Uniform negative sampling, vectorised: one negative item per (user, positive) pair, never among
the user's known items.

Which items are "known" is the protocol's choice (`Protocol.negative_exclusion_matrix`): train only
for the standard protocol, train + valid + test for the reference one.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rearm.errors import DataError

# Rejection rounds before the remaining draws switch to exact inverse sampling; only users who
# know nearly every item need that many rounds.
MAX_REJECTION_ROUNDS = 32


class NegativeSampler:
    """Draws items uniformly from each user's unknown items.

    Args:
        known: CSR [num_users, num_items]; a nonzero (u, i) means item i is never a negative for u.
        seed: seed (or Generator) of the sampler's own random generator, used when `sample` is
            not given one.
    """

    def __init__(self, known: sp.spmatrix, seed: int | np.random.Generator | None = None) -> None:
        if not sp.issparse(known) or len(known.shape) != 2:
            raise DataError(f"known must be a 2-D scipy sparse matrix, got {type(known).__name__}")
        csr = sp.csr_matrix(known, copy=True)
        csr.sum_duplicates()
        csr.eliminate_zeros()
        csr.sort_indices()
        self.num_users, self.num_items = int(csr.shape[0]), int(csr.shape[1])
        if self.num_items < 1:
            raise DataError("cannot sample negatives from a matrix with no items")
        self.indptr = csr.indptr.astype(np.int64)
        self.known_count = np.diff(self.indptr)
        rows = np.repeat(np.arange(self.num_users, dtype=np.int64), self.known_count)
        cols = csr.indices.astype(np.int64)
        # Row-major CSR order makes these keys sorted, so membership is one searchsorted.
        self.keys = rows * self.num_items + cols
        # For exact inverse sampling: known[j] - (its rank in the row) counts the allowed items
        # before known[j]; it never decreases along a row, so offset keys are sorted too.
        rank_in_row = np.arange(len(cols), dtype=np.int64) - self.indptr[rows]
        self._gap_keys = rows * (self.num_items + 1) + (cols - rank_in_row)
        self.rng = np.random.default_rng(seed)

    def sample(self, users: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One uniform negative item per entry of `users`.

        Args:
            users: int [n] user indices (repeats allowed).
            rng: random generator to draw from; default the sampler's own.

        Returns:
            int64 [n] item indices, each outside its user's known items.
        """
        rng = self.rng if rng is None else rng
        users = np.asarray(users)
        if users.ndim != 1 or (users.size and users.dtype.kind not in "iu"):
            raise DataError(f"users must be a 1-D integer array, got {users.dtype} {users.shape}")
        users = users.astype(np.int64, copy=False)
        if users.size and (users.min() < 0 or users.max() >= self.num_users):
            bad = users[(users < 0) | (users >= self.num_users)][0]
            raise DataError(f"user {int(bad)} out of range (num_users={self.num_users})")
        full = self.known_count[users] >= self.num_items
        if full.any():
            raise DataError(
                f"user {int(users[full][0])} knows all {self.num_items} items; "
                "no negative item can be sampled"
            )

        items = rng.integers(0, self.num_items, size=len(users), dtype=np.int64)
        pending = np.flatnonzero(self._is_known(users, items))
        rounds = 0
        while len(pending) and rounds < MAX_REJECTION_ROUNDS:
            items[pending] = rng.integers(0, self.num_items, size=len(pending), dtype=np.int64)
            pending = pending[self._is_known(users[pending], items[pending])]
            rounds += 1
        if len(pending):
            items[pending] = self._exact(users[pending], rng)
        return items

    def _is_known(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            return np.zeros(len(users), dtype=bool)
        query = users * self.num_items + items
        where = np.searchsorted(self.keys, query).clip(max=len(self.keys) - 1)
        return self.keys[where] == query

    def _exact(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Inverse sampling: draw the r-th allowed item, r uniform in [0, allowed count)."""
        allowed = self.num_items - self.known_count[users]
        r = np.floor(rng.random(len(users)) * allowed).astype(np.int64)
        r = np.minimum(r, allowed - 1)  # guards the float edge r == allowed
        # The r-th allowed item is r plus the number of known items with fewer than r+1 allowed
        # items before them.
        stride = self.num_items + 1
        skipped = (
            np.searchsorted(self._gap_keys, users * stride + r, side="right") - self.indptr[users]
        )
        return r + skipped


def epoch_triples(
    train: sp.spmatrix,
    sampler: NegativeSampler,
    rng: np.random.Generator | int | None = None,
    shuffle: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of BPR triples: every train (user, item) pair once, with one sampled negative.

    Args:
        train: CSR [num_users, num_items] of positive interactions.
        sampler: the negative sampler (its known matrix must have the same shape).
        rng: Generator or seed for the shuffle and the negatives.
        shuffle: shuffle the pair order (else CSR row-major order).

    Returns:
        (users, positive items, negative items), int64 arrays of length nnz(train).
    """
    if not sp.issparse(train):
        raise DataError(f"train must be a scipy sparse matrix, got {type(train).__name__}")
    if tuple(train.shape) != (sampler.num_users, sampler.num_items):
        raise DataError(
            f"train has shape {tuple(train.shape)} but the sampler was built for "
            f"{(sampler.num_users, sampler.num_items)}"
        )
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    csr = sp.csr_matrix(train, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    users = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    items = csr.indices.astype(np.int64)
    if shuffle:
        order = rng.permutation(len(users))
        users, items = users[order], items[order]
    return users, items, sampler.sample(users, rng=rng)
