"""Co-occurrence homographs: item_cooccurrence_graph (R^T R) and user_cooccurrence_graph (R R^T).

Built by sparse products over row blocks plus a vectorised per-row top-k, so memory is
O(nnz(output) + one block of the product), never O(n^2). Block sizes adapt to the data: a block
is cut so that the number of partial products it generates (sum over its rows of the degrees of
their columns, an upper bound on the block's nnz) stays under `max_block_entries`; this keeps the
user co-occurrence product bounded when popular items make R R^T dense.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from rearm.errors import ConfigError
from rearm.graphs.sparse import as_binary_csr, to_torch

WEIGHTINGS = ("softmax", "normalized")
PADS = ("resample", "none")
EMPTIES = ("popular", "none")
DEFAULT_MAX_BLOCK_ENTRIES = 1 << 23


def cooccurrence_graph(
    interactions: sp.spmatrix,
    k: int,
    *,
    weighting: str = "softmax",
    pad: str = "resample",
    empty: str = "popular",
    seed: int = 2025,
    block_size: int = 4096,
    max_block_entries: int = DEFAULT_MAX_BLOCK_ENTRIES,
) -> torch.Tensor:
    """Top-k co-occurrence graph over the ROWS of `interactions`.

    C[a, b] = number of columns shared by rows a and b (a != b): the off-diagonal of X X^T with X
    binarised. Each row keeps its k largest counts. Tie rule at the cut: equal counts are ordered
    by increasing column index (lower index kept first). This matches the reference's "top 200,
    then first k" up to its arbitrary tie order.

    Args:
        interactions: X, [n, m]; pass ``train.T`` for items, ``train`` for users.
        k: neighbours per row (>= 1).
        weighting: "softmax" (reference quirk: softmax of the raw integer counts over the kept k,
            nearly one-hot) or "normalized" (counts / row sum, a proper average of neighbours).
        pad: "resample" (reference: a row with 0 < n < k neighbours is padded to k entries by
            seeded sampling with replacement among its own neighbours; duplicates add up, which
            biases weight toward randomly drawn neighbours) or "none" (keep the n real neighbours).
        empty: "popular" (reference: a row with no co-occurring node gets the k most popular nodes,
            popularity = row degree in X, ties to the lower index, weights softmax(c_j / sum c) or,
            with weighting="normalized", c_j / sum c) or "none" (leave the row empty).
        seed: seeds the padding draws (drawn once over all rows in row order, so the result does
            not depend on the block size).
        block_size: most rows per product block.
        max_block_entries: most partial products per block (memory bound; a single row above it
            is still processed alone).

    Returns:
        float32 torch sparse CSR [n, n], rows sum to 1 except empty rows.
    """
    rows, cols, counts = _cooccurrence_csr_parts(
        interactions,
        k,
        weighting=weighting,
        pad=pad,
        empty=empty,
        seed=seed,
        block_size=block_size,
        max_block_entries=max_block_entries,
    )
    n = interactions.shape[0]
    return to_torch(sp.csr_matrix((counts, (rows, cols)), shape=(n, n)))


def item_cooccurrence_graph(train: sp.spmatrix, k: int, **options) -> torch.Tensor:
    """item_cooccurrence_graph: top-k of R^T R per item, [num_items, num_items] (see
    `cooccurrence_graph` for the options)."""
    return cooccurrence_graph(sp.csr_matrix(train).T.tocsr(), k, **options)


def user_cooccurrence_graph(train: sp.spmatrix, k: int, **options) -> torch.Tensor:
    """user_cooccurrence_graph: top-k of R R^T per user, [num_users, num_users] (see
    `cooccurrence_graph` for the options)."""
    return cooccurrence_graph(train, k, **options)


def _check_options(
    k: int, weighting: str, pad: str, empty: str, k_label: str = "co-occurrence k"
) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"{k_label} must be a positive integer, got {k!r}")
    for label, value, allowed in (
        ("weighting", weighting, WEIGHTINGS),
        ("pad", pad, PADS),
        ("empty", empty, EMPTIES),
    ):
        if value not in allowed:
            raise ConfigError(
                f"co-occurrence {label}={value!r} is not one of {', '.join(map(repr, allowed))}"
            )


def row_blocks(work: np.ndarray, block_size: int, max_entries: int) -> Iterator[tuple[int, int]]:
    """Consecutive [start, end) row ranges with at most `block_size` rows and, where possible, a
    total `work` of at most `max_entries` (a row whose own work exceeds it forms its own block)."""
    n = len(work)
    cumulative = np.concatenate([[0], np.cumsum(work, dtype=np.int64)])
    start = 0
    while start < n:
        limit = np.searchsorted(cumulative, cumulative[start] + max_entries, side="right") - 1
        end = min(start + block_size, max(int(limit), start + 1), n)
        yield start, end
        start = end


def _top_k_block(
    product: sp.csr_matrix, offset: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row top-k (count desc, column asc) of one block of X X^T, diagonal removed.

    Returns (local rows, columns, counts) sorted by row, then count desc, then column asc.
    """
    b = product.shape[0]
    local_rows = np.repeat(np.arange(b, dtype=np.int64), np.diff(product.indptr))
    cols = product.indices.astype(np.int64)
    off_diagonal = cols != local_rows + offset
    local_rows, cols = local_rows[off_diagonal], cols[off_diagonal]
    counts = np.rint(product.data[off_diagonal]).astype(np.int64)
    if len(counts) == 0:
        return local_rows, cols, counts
    n = product.shape[1]
    top = int(counts.max()) + 1
    if b * top * n < (1 << 62):
        # One int64 key (row, -count, column) sorts faster than a three-key lexsort.
        order = np.argsort((local_rows * top + (top - 1 - counts)) * n + cols)
    else:
        order = np.lexsort((cols, -counts, local_rows))
    local_rows, cols, counts = local_rows[order], cols[order], counts[order]
    per_row = np.bincount(local_rows, minlength=b)
    starts = np.cumsum(per_row) - per_row
    rank = np.arange(len(local_rows)) - np.repeat(starts, per_row)
    keep = rank < k
    return local_rows[keep], cols[keep], counts[keep]


def _cooccurrence_csr_parts(
    interactions: sp.spmatrix,
    k: int,
    *,
    weighting: str,
    pad: str,
    empty: str,
    seed: int,
    block_size: int,
    max_block_entries: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, float32 weights) of the co-occurrence graph; duplicates still to be summed."""
    _check_options(k, weighting, pad, empty)
    x = as_binary_csr(interactions)
    n = x.shape[0]
    x_t = x.T.tocsr()
    column_degree = np.diff(x_t.indptr).astype(np.float64)
    work = np.rint(x @ column_degree).astype(np.int64)

    parts_rows, parts_cols, parts_counts = [], [], []
    for start, end in row_blocks(work, block_size, max_block_entries):
        product = x[start:end] @ x_t
        local_rows, cols, counts = _top_k_block(product, start, k)
        parts_rows.append(local_rows + start)
        parts_cols.append(cols)
        parts_counts.append(counts)
        del product
    rows = np.concatenate(parts_rows) if parts_rows else np.empty(0, np.int64)
    cols = np.concatenate(parts_cols) if parts_cols else np.empty(0, np.int64)
    counts = np.concatenate(parts_counts) if parts_counts else np.empty(0, np.int64)
    kept = np.bincount(rows, minlength=n)
    starts = np.cumsum(kept) - kept

    if pad == "resample":
        # Reference quirk: pad to k entries by sampling the row's own neighbours with replacement.
        short = np.flatnonzero((kept > 0) & (kept < k))
        need = k - kept[short]
        pad_rows = np.repeat(short, need)
        draws = np.random.default_rng(seed).random(len(pad_rows))
        picks = starts[pad_rows] + np.floor(draws * kept[pad_rows]).astype(np.int64)
        rows = np.concatenate([rows, pad_rows])
        cols = np.concatenate([cols, cols[picks]])
        counts = np.concatenate([counts, counts[picks]])
        order = np.argsort(rows, kind="stable")
        rows, cols, counts = rows[order], cols[order], counts[order]

    weights = _row_weights(rows, counts.astype(np.float64), n, weighting)

    if empty == "popular":
        empty_rows = np.flatnonzero(kept == 0)
        if len(empty_rows):
            degree = np.diff(x.indptr)
            popular = np.lexsort((np.arange(n), -degree))[:k]
            popular_counts = degree[popular].astype(np.float64)
            total = popular_counts.sum()
            scaled = popular_counts / total if total > 0 else popular_counts
            if weighting == "softmax":
                # Reference: softmax of the popularity shares, not of the raw counts.
                exp = np.exp(scaled - scaled.max())
                popular_weights = exp / exp.sum()
            else:
                popular_weights = (
                    scaled if total > 0 else np.full(len(popular), 1.0 / max(len(popular), 1))
                )
            rows = np.concatenate([rows, np.repeat(empty_rows, len(popular))])
            cols = np.concatenate([cols, np.tile(popular, len(empty_rows))])
            weights = np.concatenate([weights, np.tile(popular_weights, len(empty_rows))])
    return rows, cols, weights.astype(np.float32)


def _row_weights(rows: np.ndarray, counts: np.ndarray, n: int, weighting: str) -> np.ndarray:
    """Per-entry weights normalised within each row; `rows` must be sorted."""
    if len(rows) == 0:
        return counts
    per_row = np.bincount(rows, minlength=n)
    nonempty = per_row > 0
    starts = (np.cumsum(per_row) - per_row)[nonempty]
    if weighting == "softmax":
        # Reference quirk: softmax of raw integer counts, so the top count takes nearly all weight.
        row_max = np.maximum.reduceat(counts, starts)
        exp = np.exp(counts - np.repeat(row_max, per_row[nonempty]))
        return exp / np.repeat(np.add.reduceat(exp, starts), per_row[nonempty])
    return counts / np.repeat(np.add.reduceat(counts, starts), per_row[nonempty])
