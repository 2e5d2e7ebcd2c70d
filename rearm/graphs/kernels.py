"""Parallel sparse kernels for the user interest graph's Gram path (numba; numpy/scipy fallback).

With R the binary train matrix and G = X X^T the item Gram matrix, the similarity of users a and b
before normalisation is (R G R^T)[a, b] = sum over i in N(a), j in N(b) of G[i, j]. For a block of
users this is computed as
  left = R_block G            (each row: sum of the G rows of the user's items), then
  block[r, u] = sum_{j in N(u)} left[r, j]  (a gather-sum within one cached row of `left`),
which writes the [block, U] similarity block directly in the layout top-k needs, on every core.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

try:
    import numba
    from numba import prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @numba.njit(parallel=True, cache=True)
    def _rows_sum(indptr, indices, rows, dense, out):
        width = dense.shape[1]
        for r in prange(len(rows)):
            user = rows[r]
            for c in range(width):
                out[r, c] = 0.0
            for p in range(indptr[user], indptr[user + 1]):
                item = indices[p]
                for c in range(width):
                    out[r, c] += dense[item, c]

    @numba.njit(parallel=True, cache=True)
    def _gather_sum(left, indptr, indices, out):
        # four rows of `left` per pass over the index stream: each index is loaded once for
        # four gathers (measured 3-5x faster than one row at a time on Baby)
        num_rows = left.shape[0]
        num_users = len(indptr) - 1
        for c in prange((num_rows + 3) // 4):
            r0 = 4 * c
            if r0 + 4 <= num_rows:
                for u in range(num_users):
                    a0 = np.float32(0.0)
                    a1 = np.float32(0.0)
                    a2 = np.float32(0.0)
                    a3 = np.float32(0.0)
                    for p in range(indptr[u], indptr[u + 1]):
                        i = indices[p]
                        a0 += left[r0, i]
                        a1 += left[r0 + 1, i]
                        a2 += left[r0 + 2, i]
                        a3 += left[r0 + 3, i]
                    out[r0, u] = a0
                    out[r0 + 1, u] = a1
                    out[r0 + 2, u] = a2
                    out[r0 + 3, u] = a3
            else:
                for r in range(r0, num_rows):
                    for u in range(num_users):
                        total = np.float32(0.0)
                        for p in range(indptr[u], indptr[u + 1]):
                            total += left[r, indices[p]]
                        out[r, u] = total

    @numba.njit(parallel=True, cache=True)
    def _pair_sums(indptr, indices, gram, out):
        for u in prange(len(indptr) - 1):
            total = 0.0
            for p in range(indptr[u], indptr[u + 1]):
                for q in range(indptr[u], indptr[u + 1]):
                    total += gram[indices[p], indices[q]]
            out[u] = total


def item_rows_sum(train: sp.csr_matrix, rows: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """[len(rows), dense.shape[1]]: for each listed user, the sum of `dense` rows of its items."""
    dense = np.ascontiguousarray(dense, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if not HAVE_NUMBA:
        return np.asarray(train[rows] @ dense, dtype=np.float32)
    out = np.empty((len(rows), dense.shape[1]), dtype=np.float32)
    _rows_sum(train.indptr.astype(np.int64), train.indices.astype(np.int64), rows, dense, out)
    return out


def gather_sum(left: np.ndarray, train: sp.csr_matrix) -> np.ndarray:
    """[left.shape[0], num_users]: out[r, u] = sum of left[r, i] over the items i of user u
    (that is left @ R^T for binary R)."""
    left = np.ascontiguousarray(left, dtype=np.float32)
    if not HAVE_NUMBA:
        return np.asarray(train @ left.T, dtype=np.float32).T.copy()
    out = np.empty((left.shape[0], train.shape[0]), dtype=np.float32)
    _gather_sum(left, train.indptr.astype(np.int64), train.indices.astype(np.int32), out)
    return out


def pair_sums(train: sp.csr_matrix, gram: np.ndarray) -> np.ndarray:
    """[num_users] float64: sum of G[i, j] over pairs of the user's items = ||R_u X||^2."""
    if not HAVE_NUMBA:
        sums = []
        for start in range(0, train.shape[0], 4096):
            block = train[start : start + 4096]
            sums.append(np.einsum("ij,ij->i", block @ gram, block.toarray(), dtype=np.float64))
        return np.concatenate(sums) if sums else np.zeros(0)
    out = np.empty(train.shape[0], dtype=np.float64)
    _pair_sums(train.indptr.astype(np.int64), train.indices.astype(np.int64), gram, out)
    return out
