"""Semantic homographs: cosine kNN graphs over item features (item_semantic_graph) and over user
interest features P_m = mean of the user's train items' features (user_interest_graph).

Exact kNN works on row blocks: one dense [block, n] similarity block at a time (or, on the user
interest Gram path, none at all), each row scanned once by a parallel top-k kernel
(rearm.graphs.kernels.row_top_k / gather_top_k). Memory is O(n * k + block * n).

Conventions shared by every kNN graph here:
  * the node itself is always kept, with similarity exactly 1 (the spec's "itself included");
  * a node whose feature row is all zero (cosine undefined; e.g. a user without train items) gets
    only its self entry, value 1/k, and counts as similarity 0 for every other node;
  * values are similarity / k (the reference's D^-1/2 S D^-1/2 with D the binary row counts),
    with k = min(k, n); negative similarities among the top k are kept as they are;
  * ties among exactly equal similarities (other than self) keep the lower index.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import torch

from rearm.errors import ConfigError
from rearm.graphs.kernels import (
    gather_top_k,
    item_rows_sum,
    mirror_upper,
    pair_sums,
    row_top_k,
)
from rearm.graphs.sparse import as_binary_csr, to_torch

KNN_METHODS = ("exact", "faiss")
USER_METHODS = ("auto", "direct", "gram")
DEFAULT_BLOCK_ENTRIES = 1 << 25  # similarity entries per block (128 MB of float32)
DEFAULT_GRAM_MAX_BYTES = 3 << 30


def user_interest(train: sp.spmatrix, features: np.ndarray) -> np.ndarray:
    """P = D_u^-1 R X: mean of each user's train items' features.

    Args:
        train: R, [num_users, num_items] (binarised).
        features: X, [num_items, dim].

    Returns:
        float32 [num_users, dim]; users without train items get zero rows.
    """
    r = as_binary_csr(train, "train")
    features = np.ascontiguousarray(features, dtype=np.float32)
    degree = np.diff(r.indptr).astype(np.float32)
    sums = item_rows_sum(r, np.arange(r.shape[0]), features)
    scale = np.zeros_like(degree)
    np.divide(1.0, degree, out=scale, where=degree > 0)
    sums *= scale[:, None]
    return sums


def knn_graph(features: np.ndarray | torch.Tensor, k: int, **options) -> torch.Tensor:
    """Cosine kNN graph over the rows of `features`: float32 torch sparse CSR [n, n] whose row r
    holds its k neighbours (self included) with value cosine / k. `options` are those of
    `knn_neighbours` (block_size, method "exact" / "faiss", nlist, nprobe, seed)."""
    return to_torch(neighbours_to_csr(*knn_neighbours(features, k, **options)))


def knn_neighbours(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    block_size: int | None = None,
    method: str = "exact",
    nlist: int | None = None,
    nprobe: int = 16,
    seed: int = 2025,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN lists of the rows of `features` (the lists behind `knn_graph`).

    Args:
        features: [n, dim].
        k: neighbours per row, self included.
        block_size: rows per similarity block (exact); default keeps a block near 128 MB.
        method: "exact", or "faiss" (approximate: inverted-file index, inner product on normalised
            vectors; needs the optional `faiss-cpu` package). Use `neighbour_recall` to measure.
        nlist, nprobe: faiss inverted lists (default ~2 sqrt(n)) and lists probed per query.
        seed: faiss k-means seed.

    Returns:
        (indices int64 [n, k'], cosine float32 [n, k']), k' = min(k, n), self first; -1 marks a
        padding slot (zero rows hold only themselves).
    """
    _check_k(k)
    if method not in KNN_METHODS:
        raise ConfigError(f"knn method {method!r} is not one of {', '.join(KNN_METHODS)}")
    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise ConfigError(f"knn features must be 2-D, got shape {tuple(x.shape)}")
    if method == "faiss":
        return _faiss_neighbours(x, k, nlist=nlist, nprobe=nprobe, seed=seed)
    normed, nonzero = _normalise(x)
    normed = normed.numpy()
    n = x.shape[0]
    block = block_size or max(1, DEFAULT_BLOCK_ENTRIES // max(n, 1))

    def candidates(start: int, end: int, own: np.ndarray, slots: int) -> tuple:
        return row_top_k(normed[start:end] @ normed.T, slots, own)

    return _top_k_blocks(candidates, n, k, nonzero, block)


def user_interest_graph(
    train: sp.spmatrix, features: np.ndarray, k: int, **options
) -> torch.Tensor:
    """User interest graph of one modality: cosine kNN over P = user_interest(train, features),
    float32 torch sparse CSR [num_users, num_users]. `options` are those of
    `user_interest_neighbours` (method, knn_method, block_size, gram_max_bytes, seed, ...)."""
    return to_torch(neighbours_to_csr(*user_interest_neighbours(train, features, k, **options)))


def user_interest_neighbours(
    train: sp.spmatrix,
    features: np.ndarray,
    k: int,
    *,
    method: str = "auto",
    knn_method: str = "exact",
    block_size: int | None = None,
    gram_max_bytes: int = DEFAULT_GRAM_MAX_BYTES,
    seed: int = 2025,
    nprobe: int = 16,
    nlist: int | None = None,
    gram: torch.Tensor | None = None,
    interest: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """kNN lists of the user interest graph of one modality: cosine kNN over
    P = user_interest(train, features), in the form of `knn_neighbours`.

    Args:
        train: R, [num_users, num_items].
        features: X_m, [num_items, dim].
        k: neighbours per user (`user_knn_k`), self included.
        method: how exact similarities are computed. "direct": blocks of P P^T (cost U^2 dim).
            "gram": cosine of means does not depend on the 1/deg scale, so blocks of
            R (X X^T) R^T with the item Gram matrix G = X X^T held in memory (cost I^2 dim / 2
            plus sparse products of order nnz(R) (I + U); needs 4 I^2 bytes). "auto" picks gram
            when G fits in `gram_max_bytes` and its estimated cost is lower.
        knn_method: "exact" or "faiss" (approximate, always over P directly).
        block_size, seed, nprobe, nlist: as in `knn_neighbours`.
        gram, interest: X X^T and P, when the caller already computed them.
    """
    _check_k(k)
    if method not in USER_METHODS:
        raise ConfigError(f"user interest method {method!r} is not one of {USER_METHODS}")
    r = as_binary_csr(train, "train")
    if knn_method != "exact" or method == "direct":
        chosen = "direct"
    elif method == "gram" or gram is not None:
        chosen = "gram"
    else:
        chosen = choose_user_method(r, features.shape[1], gram_max_bytes)
    if chosen == "direct":
        if interest is None:
            interest = user_interest(r, features)
        return knn_neighbours(
            interest,
            k,
            block_size=block_size,
            method=knn_method,
            seed=seed,
            nprobe=nprobe,
            nlist=nlist,
        )

    if gram is None:
        gram = gram_matrix(features)
    num_users, num_items = r.shape
    gram_array = np.ascontiguousarray(gram.numpy(), dtype=np.float32)
    # Cosine is scale free: the norms of the sums R_u X (sum of G over pairs of the user's items)
    # serve the means P as well, without forming P.
    norms = torch.from_numpy(np.sqrt(np.maximum(pair_sums(r, gram_array), 0.0)).astype(np.float32))
    nonzero = norms > 0
    inverse = torch.where(nonzero, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms))
    block = block_size or max(1, DEFAULT_BLOCK_ENTRIES // max(num_items, 1))

    def candidates(start: int, end: int, own: np.ndarray, slots: int) -> tuple:
        # rows of (R_b G) R^T scaled by the candidates' inverse norms (the row's own norm does
        # not change its ranking), selected as they are summed (rearm.graphs.kernels)
        left = item_rows_sum(r, np.arange(start, end), gram_array)
        return gather_top_k(left, r, slots, own, inverse.numpy())

    return _top_k_blocks(candidates, num_users, k, nonzero, block, row_scale=inverse)


def choose_user_method(train: sp.csr_matrix, dim: int, gram_max_bytes: int) -> str:
    """'gram' when the item Gram matrix fits in memory and costs less than U^2 dim (the sparse
    products are weighted 10x per operation: measured against dense GEMM on Baby, 2 cores)."""
    num_users, num_items = train.shape
    if 4 * num_items * num_items > gram_max_bytes:
        return "direct"
    direct = num_users * num_users * dim
    gram = num_items * num_items * dim / 2 + 10 * train.nnz * (num_items + num_users)
    return "gram" if gram < direct else "direct"


def gram_matrix(
    features: np.ndarray | torch.Tensor, block_size: int = 2048, *, out: np.ndarray | None = None
) -> torch.Tensor:
    """G = X X^T, float32 [n, n]: only the row blocks on and right of the diagonal are multiplied
    (half the GEMM work), straight into G, then mirrored in place.

    numpy's BLAS does the products (OpenBLAS in the PyPI wheels: measured 150 GFLOP/s on the 2-core
    dev machine against ~100 for torch's MKL on the same shapes).

    Args:
        features: X, [n, dim].
        block_size: rows per product.
        out: optional float32 C-contiguous [n, n] buffer to fill (reusing one buffer across
            modalities saves touching fresh memory, which is slow on some virtual machines).

    Returns:
        float32 torch tensor [n, n] sharing memory with `out` when given.
    """
    x = np.ascontiguousarray(
        features.numpy() if isinstance(features, torch.Tensor) else features, dtype=np.float32
    )
    n = x.shape[0]
    if out is None:
        out = np.empty((n, n), dtype=np.float32)
    elif out.shape != (n, n) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ConfigError(f"gram_matrix: out must be float32 C-contiguous [{n}, {n}]")
    for start in range(0, n, block_size):
        end = min(start + block_size, n)
        np.matmul(x[start:end], x[start:].T, out=out[start:end, start:])
    mirror_upper(out)
    return torch.from_numpy(out)


def cosine_from_gram(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse norms [n], nonzero mask [n]) of the rows whose Gram matrix is `gram`."""
    norms = torch.sqrt(torch.diagonal(gram).clamp_min(0))
    nonzero = norms > 0
    return torch.where(nonzero, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms)), nonzero


def knn_neighbours_from_gram(
    gram: torch.Tensor, k: int, *, block_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Item kNN lists from a precomputed Gram matrix X X^T (shares the GEMM with the gram user
    interest path)."""
    _check_k(k)
    n = gram.shape[0]
    inverse, nonzero = cosine_from_gram(gram)
    block = block_size or max(1, DEFAULT_BLOCK_ENTRIES // max(n, 1))

    rows = gram.numpy()

    def candidates(start: int, end: int, own: np.ndarray, slots: int) -> tuple:
        return row_top_k(rows[start:end], slots, own, inverse.numpy())

    return _top_k_blocks(candidates, n, k, nonzero, block, row_scale=inverse)


def neighbours_to_csr(indices: np.ndarray, sims: np.ndarray) -> sp.csr_matrix:
    """kNN lists (indices [n, k'], -1 = empty slot) -> CSR [n, n] with values sim / k'."""
    n, width = indices.shape
    valid = indices >= 0
    rows = np.repeat(np.arange(n, dtype=np.int64), width)[valid.ravel()]
    cols = indices[valid]
    values = (sims[valid] / max(width, 1)).astype(np.float32)
    return sp.csr_matrix((values, (rows, cols)), shape=(n, n))


def neighbour_recall(
    approximate: np.ndarray, exact: np.ndarray, rows: np.ndarray | None = None
) -> float:
    """Mean fraction of the exact kNN list found in the approximate one (ignoring -1 slots).

    Args:
        approximate, exact: neighbour indices [n or len(rows), k].
        rows: if given, the row ids of `exact` within `approximate`.
    """
    approx = approximate if rows is None else approximate[rows]
    hits = total = 0
    for a, e in zip(approx, exact):
        e = e[e >= 0]
        hits += np.isin(e, a[a >= 0]).sum()
        total += len(e)
    return float(hits / max(total, 1))


def sample_recall(
    features: np.ndarray | torch.Tensor,
    approximate: np.ndarray,
    k: int,
    *,
    sample: int = 1000,
    seed: int = 0,
) -> float:
    """Neighbour recall of `approximate` kNN lists against exact cosine kNN on a random sample
    of rows (exact neighbours of the sampled rows only: O(sample * n) work)."""
    n = features.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    return neighbour_recall(approximate, exact_neighbours_of_rows(features, rows, k), rows)


def exact_neighbours_of_rows(
    features: np.ndarray | torch.Tensor, rows: np.ndarray, k: int
) -> np.ndarray:
    """Exact cosine kNN indices [len(rows), min(k, n)] of the given rows (self first)."""
    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
    normed, nonzero = _normalise(x)
    normed = normed.numpy()
    n = x.shape[0]
    picked = np.asarray(rows, dtype=np.int64)

    def candidates(start: int, end: int, own: np.ndarray, slots: int) -> tuple:
        return row_top_k(normed[picked[start:end]] @ normed.T, slots, own)

    exact, _ = _top_k_blocks(
        candidates, len(rows), k, nonzero[picked], 256, self_index=picked, width=n
    )
    return exact


def _top_k_blocks(
    candidates,
    n: int,
    k: int,
    nonzero: torch.Tensor,
    block_size: int,
    *,
    self_index: np.ndarray | None = None,
    width: int | None = None,
    row_scale: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """kNN lists of n rows, `block_size` rows at a time.

    `candidates(start, end, own, slots) -> (values, columns)` returns, for rows start..end, the
    best `slots` = k - 1 columns other than `own` (the row's self column; `self_index[row]`,
    default the row itself), value descending then column ascending (kernels.row_top_k). Self is
    put in front with similarity 1; zero rows keep only self. `row_scale` [n], if given,
    multiplies the kept values of each row (a per-row factor that cannot change the ranking)."""
    width = n if width is None else width
    kk = min(k, width)
    indices = np.empty((n, kk), dtype=np.int64)
    sims = np.empty((n, kk), dtype=np.float32)
    scale = None if row_scale is None else row_scale.numpy()
    zero_rows = ~nonzero.numpy()
    for start in range(0, n, block_size):
        end = min(start + block_size, n)
        own = np.arange(start, end) if self_index is None else self_index[start:end]
        values, columns = candidates(start, end, own, kk - 1)
        if scale is not None:
            values *= scale[start:end, None]
        indices[start:end, 0] = own
        indices[start:end, 1:] = columns
        sims[start:end, 0] = 1.0
        sims[start:end, 1:] = values
        zero = start + np.flatnonzero(zero_rows[start:end])
        indices[zero, 1:] = -1
        sims[zero, 1:] = 0.0
    return indices, sims


def _normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = torch.linalg.vector_norm(x, dim=1)
    nonzero = norms > 0
    scale = torch.where(nonzero, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms))
    return x * scale[:, None], nonzero


def _faiss_neighbours(
    x: torch.Tensor,
    k: int,
    *,
    nlist: int | None,
    nprobe: int,
    seed: int,
    chunk: int = 1 << 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate cosine kNN lists with a faiss inverted-file index. Rows are normalised chunk
    by chunk as they are added and searched, so no normalised copy of all rows is held (at 2M x
    384 that copy alone is 3 GB beside the index's own)."""
    try:
        import faiss
    except ImportError as error:  # optional dependency
        raise ConfigError(
            "knn method 'faiss' needs the optional faiss-cpu package: pip install 'rearm[faiss]'"
        ) from error
    n, dim = x.shape
    kk = min(k, n)

    def normalised(rows) -> tuple[np.ndarray, np.ndarray]:
        normed, nonzero = _normalise(x[rows])
        return np.ascontiguousarray(normed.numpy(), dtype=np.float32), nonzero.numpy()

    # ~2 sqrt(n) lists trained on 30 points per list: k-means stays a small part of the cost.
    lists = nlist or max(1, min(int(2 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    train_rows = np.random.default_rng(seed).choice(n, size=min(n, 30 * lists), replace=False)
    index.cp.seed = seed
    index.train(normalised(torch.from_numpy(np.sort(train_rows)))[0])
    for start in range(0, n, chunk):
        index.add(normalised(slice(start, min(start + chunk, n)))[0])
    index.nprobe = min(nprobe, lists)
    indices = np.empty((n, kk), dtype=np.int64)
    sims = np.empty((n, kk), dtype=np.float32)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        queries, nonzero = normalised(slice(start, end))
        # One extra slot so self can be forced in without losing a neighbour.
        found_sims, found = index.search(queries, kk + 1 if kk < n else kk)
        rows = np.arange(start, end)[:, None]
        # Keep the first kk - 1 non-self neighbours (stable order), then prepend self.
        order = np.argsort(found == rows, axis=1, kind="stable")
        indices[start:end, 0] = rows[:, 0]
        indices[start:end, 1:] = np.take_along_axis(found, order, 1)[:, : kk - 1]
        sims[start:end, 0] = 1.0
        sims[start:end, 1:] = np.take_along_axis(found_sims, order, 1)[:, : kk - 1]
        zero = np.flatnonzero(~nonzero)
        indices[start + zero, 1:] = -1
        sims[start + zero, 1:] = 0.0
    return indices, sims


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"kNN k must be a positive integer, got {k!r}")


def cold_item_graph(
    new: Mapping[str, np.ndarray],
    known: Mapping[str, np.ndarray],
    k: int,
    weights: Mapping[str, float],
    *,
    binary: bool = False,
    block_size: int = 1024,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """The rows that `knn_graph` (or, with binary=True, FREEDOM's binarised kNN graph) would give
    new items whose features are `new` ({modality: [n, D_m]}) among the `known` items
    ({modality: [I, D_m]}), combined over modalities with `weights` (sum_m w_m S_m).

    Each new item keeps itself (cosine 1) and its k - 1 most similar known items (cosine
    descending, then index ascending), value cosine / k (1 / k when binary), exactly like a row
    of the graph built over known and new items together, except that new items are not
    neighbours of each other or of known items (the known items' graph stays as trained).
    An all-zero feature row keeps only itself.

    Returns (CSR [n, I] over the known items, self values float32 [n])."""
    _check_k(k)
    modalities = [name for name, weight in weights.items() if weight > 0]
    n = next(iter(new.values())).shape[0]
    num_known = next(iter(known.values())).shape[0]
    slots = min(k - 1, num_known)
    total = sp.csr_matrix((n, num_known), dtype=np.float32)
    self_values = np.zeros(n, dtype=np.float32)
    for name in modalities:
        queries, query_nonzero = _normalise(torch.as_tensor(np.asarray(new[name], np.float32)))
        table, _ = _normalise(torch.as_tensor(np.asarray(known[name], np.float32)))
        queries, table = queries.numpy(), table.numpy()
        rows, cols, values = [], [], []
        for start in range(0, n, block_size):
            sims = queries[start : start + block_size] @ table.T
            order = np.argsort(-sims, axis=1, kind="stable")[:, :slots]
            kept = np.take_along_axis(sims, order, axis=1)
            rows.append(np.repeat(np.arange(start, start + len(sims)), slots))
            cols.append(order.ravel())
            values.append(np.ones_like(kept).ravel() if binary else kept.ravel())
        rows, cols, values = (np.concatenate(x) for x in (rows, cols, values))
        keep = query_nonzero.numpy()[rows]
        graph = sp.csr_matrix(
            ((values[keep] / k).astype(np.float32), (rows[keep], cols[keep])),
            shape=(n, num_known),
        )
        total = total + weights[name] * graph
        self_values += np.float32(weights[name] / k)
    return sp.csr_matrix(total, dtype=np.float32), self_values
