"""Full-ranking top-K metrics, computed block by block and vectorised.

Every item is ranked for every evaluated user (a user with at least one held-out item), except
the items in `exclude` (the user's known interactions), which never appear in the ranking. Ties
are broken by the lower item index, exactly: `torch.topk` does not promise an order among equal
scores, so its selection is repaired wherever ties reach the K-th place (see `_top_items`).

Metrics, for a user with held-out set H and ranked list r_1..r_K (rel_j = 1 if r_j in H):
    Recall@K    = hits / |H|
    Precision@K = hits / K
    Hit@K       = 1 if hits > 0
    NDCG@K      = sum_j rel_j / log2(j + 1)  /  sum_{j <= min(|H|, K)} 1 / log2(j + 1)
    MAP@K       = sum_j rel_j * (hits among r_1..r_j) / j  /  min(|H|, K)
each averaged over evaluated users. A held-out item that is also excluded counts in |H| but can
never be hit; the protocols never pass overlapping matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from rearm.errors import ConfigError, DataError

METRIC_NAMES = ("Recall", "NDCG", "Precision", "MAP", "Hit")

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def rank_metrics(
    scores: np.ndarray | torch.Tensor,
    heldout: sp.spmatrix,
    exclude: sp.spmatrix | None = None,
    ks: Sequence[int] = (10, 20),
    per_user: bool = False,
    block_size: int = 1024,
) -> dict:
    """Top-K ranking metrics of a score matrix against held-out interactions.

    Args:
        scores: [num_users, num_items] float scores (numpy array or torch tensor, any device);
            it is read, never modified. NaN scores are rejected.
        heldout: binary CSR [num_users, num_items], the items each user should find.
        exclude: binary CSR [num_users, num_items] of items removed from each user's ranking
            (known interactions), or None.
        ks: cut-offs, positive integers.
        per_user: also return per-user values under "per_user".
        block_size: users scored per block; peak extra memory is about
            block_size x num_items x (score size + 2 bytes).

    Returns:
        {"Recall@K", "NDCG@K", "Precision@K", "MAP@K", "Hit@K" for each K: float mean over
        evaluated users, "num_users": int}, plus with per_user=True
        "per_user": {"users": int64 [n], "<metric>@K": float64 [n], ...}. Users without any
        held-out item are skipped; with none evaluated, every mean is 0.0.
    """
    if not isinstance(scores, torch.Tensor):
        scores = np.asarray(scores)
    if scores.ndim != 2:
        raise DataError(
            f"scores must be 2-D [num_users, num_items], got shape {tuple(scores.shape)}"
        )
    shape = (int(scores.shape[0]), int(scores.shape[1]))
    heldout = _binary_csr(heldout, shape, "heldout")
    exclude = None if exclude is None else _binary_csr(exclude, shape, "exclude")
    ks = _check_ks(ks)
    block_size = _check_block_size(block_size)
    users = _evaluated_users(heldout)

    def blocks() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for start in range(0, len(users), block_size):
            block_users = users[start : start + block_size]
            if isinstance(scores, torch.Tensor):
                index = torch.as_tensor(block_users, device=scores.device)
                block = scores.index_select(0, index)
            else:
                block = torch.from_numpy(np.ascontiguousarray(scores[block_users]))
            yield block_users, block

    return _evaluate_blocks(blocks(), heldout, exclude, ks, per_user, len(users))


def evaluate_model(
    score_fn: ScoreFn,
    heldout: sp.spmatrix,
    exclude: sp.spmatrix | None = None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    per_user: bool = False,
) -> dict:
    """Top-K metrics of a model, scoring only the users with >= 1 held-out item, block by block.

    Args:
        score_fn: maps a LongTensor of user indices [B] (on `device`) to scores [B, num_items];
            ranking runs on the device of the returned scores. Called under torch.no_grad().
        heldout, exclude, ks, per_user: as in `rank_metrics` ([num_users, num_items] CSR).
        batch_size: users per call of score_fn.
        device: where the user index tensor is placed (default CPU).

    Returns:
        The same dictionary as `rank_metrics` on the full score matrix.
    """
    shape = _csr_shape(heldout, "heldout")
    heldout = _binary_csr(heldout, shape, "heldout")
    exclude = None if exclude is None else _binary_csr(exclude, shape, "exclude")
    ks = _check_ks(ks)
    batch_size = _check_block_size(batch_size)
    users = _evaluated_users(heldout)
    index_device = torch.device("cpu") if device is None else torch.device(device)

    def blocks() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for start in range(0, len(users), batch_size):
            block_users = users[start : start + batch_size]
            index = torch.as_tensor(block_users, dtype=torch.long, device=index_device)
            block = score_fn(index)
            if not isinstance(block, torch.Tensor) or tuple(block.shape) != (
                len(block_users),
                shape[1],
            ):
                got = tuple(block.shape) if isinstance(block, torch.Tensor) else type(block)
                raise DataError(
                    f"score_fn must return a tensor of shape [{len(block_users)}, {shape[1]}] "
                    f"for {len(block_users)} users, got {got}"
                )
            yield block_users, (block.detach() if block.requires_grad else block)
            # drop this frame's reference before the next block is scored: otherwise two blocks
            # of scores are alive at once (0.9 GB each at 10x Clothing with 1,024 users a block)
            del block

    with torch.no_grad():
        return _evaluate_blocks(blocks(), heldout, exclude, ks, per_user, len(users))


def _evaluate_blocks(
    blocks: Iterable[tuple[np.ndarray, torch.Tensor]],
    heldout: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: tuple[int, ...],
    per_user: bool,
    num_evaluated: int,
) -> dict:
    """Shared driver of rank_metrics / evaluate_model: rank each block, score hits, average."""
    num_items = heldout.shape[1]
    kmax = min(max(ks), num_items)
    names = [f"{metric}@{k}" for k in ks for metric in METRIC_NAMES]
    # Per-user values are kept (a few floats per user) so the means are summed in one fixed
    # order: the result does not depend on the block size.
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    seen_users: list[np.ndarray] = []
    for block_users, block in blocks:
        if not block.is_floating_point():
            # float64 holds every int32 exactly and is the only way to have a -inf mask value.
            block = block.to(torch.float64)
        elif block.is_inference() or any(
            stride == 0 and size > 1 for stride, size in zip(block.stride(), block.shape)
        ):
            # Masking writes into the block (and restores it); these tensors cannot be written.
            block = block.clone()
        excluded_rows, excluded_cols = _excluded_in_block(exclude, block_users)
        items = _top_items(block, excluded_rows, excluded_cols, kmax)
        hits = _hit_matrix(items, heldout[block_users])
        num_heldout = np.diff(heldout.indptr)[block_users]
        values = _metrics_from_hits(hits, num_heldout, ks)
        for name in names:
            parts[name].append(values[name])
        seen_users.append(np.asarray(block_users, dtype=np.int64))
        del block  # freed before the next block is made (see evaluate_model)

    table = {"users": _concat(seen_users, np.int64)}
    table.update({name: _concat(parts[name], np.float64) for name in names})
    result: dict = {name: float(table[name].mean()) if num_evaluated else 0.0 for name in names}
    result["num_users"] = int(num_evaluated)
    if per_user:
        result["per_user"] = table
    return result


def _top_items(
    scores: torch.Tensor,
    excluded_rows: np.ndarray,
    excluded_cols: np.ndarray,
    kmax: int,
) -> np.ndarray:
    """Top-`kmax` items of each row, best first, ties by lower item index, exclusions removed.

    Args:
        scores: [B, N] float scores. Excluded entries are set to -inf while ranking and restored
            before returning: the caller's tensor (possibly a model's own state) ends unchanged,
            and no copy of the block is made.
        excluded_rows, excluded_cols: int64 [E] block-local (row, item) pairs to remove.
        kmax: list length, <= N.

    Returns:
        int64 [B, kmax] item indices; a slot left empty because the row has fewer than kmax
        allowed items holds N (no item).
    """
    rows_t = torch.as_tensor(excluded_rows, device=scores.device)
    cols_t = torch.as_tensor(excluded_cols, device=scores.device)
    saved = scores[rows_t, cols_t]
    scores[rows_t, cols_t] = float("-inf")
    try:
        return _masked_top_items(scores, rows_t, cols_t, kmax)
    finally:
        scores[rows_t, cols_t] = saved


def _masked_top_items(
    scores: torch.Tensor, rows_t: torch.Tensor, cols_t: torch.Tensor, kmax: int
) -> np.ndarray:
    """`_top_items` once the excluded entries (rows_t, cols_t) [E] of scores [B, N] are -inf."""
    device = scores.device
    num_rows, num_items = scores.shape
    # One extra place shows whether ties cross the cut-off: if the best item left out scores
    # below the kmax-th, topk's set is the exact one (order is fixed below); if it scores the
    # same, more items tie at the threshold than there are slots and the lowest indices must win.
    # A -inf threshold means excluded items may have been picked. Only those rows are repaired,
    # so the common case costs one topk, not a further pass over [B, N].
    width = min(kmax + 1, num_items)
    values, items = torch.topk(scores, width, dim=1, largest=True, sorted=True)
    # topk ranks NaN above every number, so a NaN anywhere in a row shows up in its first place.
    if torch.isnan(values[:, 0]).any():
        raise DataError("scores contain NaN; cannot rank")
    threshold = values[:, kmax - 1 : kmax]
    needs_repair = torch.isneginf(threshold[:, 0])
    if width > kmax:
        needs_repair |= values[:, kmax] == threshold[:, 0]
    values, items = values[:, :kmax], items[:, :kmax].contiguous()
    repair = torch.nonzero(needs_repair).squeeze(1)
    if repair.numel():
        sub_threshold = threshold.index_select(0, repair)
        # topk's list holds every item strictly above the threshold, so these are counted in it.
        above = (values.index_select(0, repair) > sub_threshold).sum(dim=1, keepdim=True)
        tied = scores.index_select(0, repair) == sub_threshold
        # An excluded item ties with the threshold only when it is -inf; it must not fill a slot.
        position = torch.full((num_rows,), -1, dtype=torch.long, device=device)
        position[repair] = torch.arange(len(repair), device=device)
        local = position[rows_t]
        keep = local >= 0
        tied[local[keep], cols_t[keep]] = False
        # The lowest-indexed tied items take the slots after the strictly-greater ones: rank the
        # tied items by N - index (0 for the others) with one more topk over the repaired rows.
        key_type = torch.int32 if num_items < 2**31 - 1 else torch.int64
        reverse_index = num_items - torch.arange(num_items, device=device, dtype=key_type)
        key = torch.where(tied, reverse_index, torch.zeros((), dtype=key_type, device=device))
        key_values, first_tied = torch.topk(key, kmax, dim=1, largest=True, sorted=True)
        slot = torch.arange(kmax, device=device).unsqueeze(0)
        source = (slot - above).clamp(min=0)
        candidate = torch.where(
            key_values.gather(1, source) > 0,
            first_tied.gather(1, source),
            torch.full_like(first_tied, num_items),  # fewer allowed items than slots
        )
        items[repair] = torch.where(slot >= above, candidate, items.index_select(0, repair))

    # Index N means "no item": it gets score -inf and the largest index, so it sorts last.
    item_values = torch.where(
        items < num_items,
        scores.gather(1, items.clamp(max=num_items - 1)),
        torch.full_like(values, float("-inf")),
    )
    # Exact final order: sort by index, then a stable sort by score keeps index order in ties.
    items, by_index = torch.sort(items, dim=1)
    item_values = item_values.gather(1, by_index)
    _, by_score = torch.sort(item_values, dim=1, descending=True, stable=True)
    items = items.gather(1, by_score)
    return items.cpu().numpy()


def _hit_matrix(items: np.ndarray, heldout_block: sp.csr_matrix) -> np.ndarray:
    """bool [B, K]: whether each ranked item is held out for its user (a sorted-key lookup)."""
    num_rows, width = items.shape
    stride = heldout_block.shape[1] + 1  # the "no item" marker N never matches a held-out key
    heldout_rows = np.repeat(np.arange(num_rows, dtype=np.int64), np.diff(heldout_block.indptr))
    # CSR rows are in order and indices sorted within rows, so the keys are already sorted.
    keys = heldout_rows * stride + heldout_block.indices.astype(np.int64)
    query = np.arange(num_rows, dtype=np.int64)[:, None] * stride + items
    if len(keys) == 0:
        return np.zeros((num_rows, width), dtype=bool)
    found = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return keys[found] == query


def _metrics_from_hits(
    hits: np.ndarray, num_heldout: np.ndarray, ks: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Per-user metrics [B] for each K from the ranked hit matrix hits [B, kmax]."""
    hits = hits.astype(np.float64)
    width = hits.shape[1]
    num_heldout = num_heldout.astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, width + 2, dtype=np.float64))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    running_hits = np.cumsum(hits, axis=1)
    precision_at = hits * running_hits / np.arange(1, width + 1, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        cut = min(k, width)  # width < k only when there are fewer than k items in total
        found = running_hits[:, cut - 1]
        normaliser = np.minimum(num_heldout, k)
        out[f"Recall@{k}"] = found / num_heldout
        out[f"Precision@{k}"] = found / k
        out[f"Hit@{k}"] = (found > 0).astype(np.float64)
        dcg = hits[:, :cut] @ discount[:cut]
        out[f"NDCG@{k}"] = dcg / ideal[np.minimum(normaliser, cut).astype(np.int64)]
        out[f"MAP@{k}"] = precision_at[:, :cut].sum(axis=1) / normaliser
    return out


def _excluded_in_block(
    exclude: sp.csr_matrix | None, block_users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Block-local (row, item) int64 pairs [E] of the excluded entries of the block's users."""
    if exclude is None:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    rows = exclude[block_users]
    local_rows = np.repeat(np.arange(len(block_users), dtype=np.int64), np.diff(rows.indptr))
    return local_rows, rows.indices.astype(np.int64)


def _binary_csr(matrix: sp.spmatrix, shape: tuple[int, int], name: str) -> sp.csr_matrix:
    """Canonical binary CSR (sorted indices, no duplicates or explicit zeros) of the given shape."""
    if not sp.issparse(matrix):
        raise DataError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
    if tuple(matrix.shape) != shape:
        raise DataError(f"{name} has shape {tuple(matrix.shape)} but scores have shape {shape}")
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return sp.csr_matrix((np.ones(csr.nnz, dtype=np.float32), csr.indices, csr.indptr), shape=shape)


def _csr_shape(matrix: sp.spmatrix, name: str) -> tuple[int, int]:
    if not sp.issparse(matrix):
        raise DataError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
    return int(matrix.shape[0]), int(matrix.shape[1])


def _evaluated_users(heldout: sp.csr_matrix) -> np.ndarray:
    return np.flatnonzero(np.diff(heldout.indptr) > 0).astype(np.int64)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int | np.integer) for k in ks):
        raise ConfigError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    if any(k < 1 for k in ks):
        raise ConfigError(f"ks must be positive, got {ks!r}")
    return tuple(int(k) for k in ks)


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block size must be a positive integer, got {block_size!r}")
    return block_size


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)
