"""Fold-in: a vector for a user the model never saw, from the items that user interacted with,
computed from a saved item table alone (no weights, no graphs, no retraining).

Every model here scores with an inner product, score(u, i) = <u, v_i> with v_i a row of the
bundle's item table V [I, D]. A new user with item set S therefore needs only a vector u [D].

Methods (`FOLD_IN_METHODS`):

- ``mean``: u = mean of v_i over i in S. Graph models (LightGCN and REARM's heterography step)
  build a user's representation largely from the propagated representations of its items, so the
  mean of those items points where a trained user with that history points.
- ``least_squares``: the implicit-feedback least-squares fit of Hu, Koren & Volinsky (ICDM 2008)
  with every item a zero-preference observation at confidence 1 and the items of S preference 1
  at confidence 1 + alpha:
      u = (V^T V + alpha V_S^T V_S + lambda I)^-1 (1 + alpha) V_S^T 1,
  V^T V computed once per bundle ([D, D]). ``alpha`` and ``lambda`` are given relative to the
  table (see `least_squares`), so one setting serves bundles of any size and scale.

Which one is better depends on the model (README "Cold start": least squares for LightGCN and
MF, the mean for REARM on the synthetic data), so a bundle chooses for itself
(`choose_fold_in`): it folds in a sample of its own trained users from their train items with
every variant of `FOLD_IN_VARIANTS` and keeps the one with the best Recall@20 on their **valid**
items. On the cold-users protocol this ranking of the variants matched the ranking on held-out
users.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import scipy.sparse as sp

from rearm.errors import RunError
from rearm.models.base import Range

FoldInMethod = Literal["mean", "least_squares"]
FOLD_IN_METHODS: tuple[str, ...] = ("mean", "least_squares")
DEFAULT_FOLD_IN: FoldInMethod = "mean"

# least_squares settings (relative to the table; see `least_squares`)
Confidence = Annotated[float, Range(gt=0), "alpha as a multiple of I / |S|"]
Ridge = Annotated[float, Range(ge=0), "lambda as a multiple of trace(V^T V) / D"]
DEFAULT_CONFIDENCE: Confidence = 0.1
DEFAULT_RIDGE: Ridge = 0.01

# the variants a bundle chooses among and the cold-users protocol compares:
# (method, least_squares confidence)
FOLD_IN_VARIANTS: tuple[tuple[str, float | None], ...] = (
    ("mean", None),
    ("least_squares", 0.01),
    ("least_squares", 0.1),
    ("least_squares", 1.0),
    ("least_squares", 10.0),
)
ChoiceSample = Annotated[int, Range(ge=1), "trained users folded in to choose the variant"]
DEFAULT_CHOICE_SAMPLE: ChoiceSample = 1000


def variant_name(method: str, confidence: float | None) -> str:
    return method if confidence is None else f"{method}(confidence={confidence:g})"


def choose_fold_in(
    item_repr: np.ndarray,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    *,
    sample: ChoiceSample = DEFAULT_CHOICE_SAMPLE,
    seed: int = 0,
    gram: np.ndarray | None = None,
) -> dict:
    """Choose the fold-in variant for an item table from the trained users' own data: fold in
    up to `sample` users that have train and valid items (a seeded draw) from their train
    items with each of `FOLD_IN_VARIANTS` and keep the best valid Recall@20 (train items
    masked; on a tie the earlier variant). Without such users: "mean".

    Returns {"method", "confidence", "name", "valid_recall_at_20": {name: value}, "users"}."""
    from rearm.evaluation import rank_metrics

    users = np.flatnonzero((train.getnnz(axis=1) > 0) & (valid.getnnz(axis=1) > 0))
    if len(users) > sample:
        users = np.sort(np.random.default_rng(seed).choice(users, size=sample, replace=False))
    measured: dict[str, float] = {}
    best = ("mean", None)
    if len(users):
        inverse = shared_inverse(item_gram(item_repr) if gram is None else gram)
        history, heldout = train[users], valid[users]
        for method, confidence in FOLD_IN_VARIANTS:
            options = {} if confidence is None else {"confidence": confidence, "inverse": inverse}
            vectors = fold_in_users(item_repr, history, method, **options)
            recall = rank_metrics(vectors @ item_repr.T, heldout, exclude=history, ks=(20,))
            measured[variant_name(method, confidence)] = recall["Recall@20"]
            if recall["Recall@20"] > measured.get(variant_name(*best), -1.0):
                best = (method, confidence)
    return {
        "method": best[0],
        "confidence": best[1],
        "name": variant_name(*best),
        "valid_recall_at_20": measured,
        "users": int(len(users)),
    }


def item_gram(item_repr: np.ndarray) -> np.ndarray:
    """V^T V in float64, [D, D]."""
    table = np.asarray(item_repr, dtype=np.float64)
    return table.T @ table


def shared_inverse(gram: np.ndarray, ridge: float = 0.01) -> np.ndarray:
    """M^-1 = (V^T V + lambda I)^-1, lambda = ridge * trace(V^T V) / D: the part of the
    least-squares fold-in shared by every user ([D, D], float64)."""
    dim = gram.shape[0]
    trace = float(np.trace(gram))
    if not np.isfinite(trace) or trace <= 0:
        raise RunError(
            "fold-in needs item representations: the saved item table is "
            + ("all zeros" if np.isfinite(trace) else "not finite")
        )
    return np.linalg.inv(gram + ridge * trace / dim * np.eye(dim))


def fold_in_users(
    item_repr: np.ndarray,
    history: sp.csr_matrix,
    method: FoldInMethod = DEFAULT_FOLD_IN,
    *,
    gram: np.ndarray | None = None,
    inverse: np.ndarray | None = None,
    confidence: Confidence = DEFAULT_CONFIDENCE,
    ridge: Ridge = DEFAULT_RIDGE,
    block: int = 128,
) -> np.ndarray:
    """Fold in every row of `history` (binary CSR [n, I]: each new user's items) against the item
    table `item_repr` [I, D]; returns float32 [n, D]. Rows without items get zero vectors."""
    history = sp.csr_matrix(history)
    if history.shape[1] != item_repr.shape[0]:
        raise ValueError(
            f"history has {history.shape[1]} item columns, the table {item_repr.shape[0]} rows"
        )
    if method == "mean":
        return mean(item_repr, history)
    if method == "least_squares":
        return least_squares(
            item_repr,
            history,
            gram=gram,
            inverse=inverse,
            confidence=confidence,
            ridge=ridge,
            block=block,
        )
    raise ValueError(f"unknown fold-in method {method!r}; expected one of {FOLD_IN_METHODS}")


def mean(item_repr: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
    counts = np.maximum(history.getnnz(axis=1), 1).astype(np.float64)
    binary = sp.csr_matrix(
        (np.ones(history.nnz), history.indices, history.indptr), shape=history.shape
    )
    sums = binary @ np.asarray(item_repr, dtype=np.float64)
    return (sums / counts[:, None]).astype(np.float32)


def least_squares(
    item_repr: np.ndarray,
    history: sp.csr_matrix,
    *,
    gram: np.ndarray | None = None,
    inverse: np.ndarray | None = None,
    confidence: Confidence = DEFAULT_CONFIDENCE,
    ridge: Ridge = DEFAULT_RIDGE,
    block: int = 128,
) -> np.ndarray:
    """The Hu-Koren-Volinsky user step for each row of `history`.

    alpha = confidence * I / |S| weighs the user's |S| positives as much, in total, as
    `confidence` times the I implicit zeros (so a user with few items is not drowned by the
    rest of the catalogue); lambda = ridge * trace(V^T V) / D scales the ridge with the table.

    With M = V^T V + lambda I shared by every user, the Woodbury identity turns each user's
    [D, D] system into an [|S|, |S|] one: with W = V_S M^-1 and y = (1 + alpha) W^T 1,
    u = y - W^T (I / alpha + W V_S^T)^-1 V_S y. Users are solved in blocks as stacked systems
    padded to the block's longest history (padding rows decouple: zero rows, unit diagonal)."""
    table = np.asarray(item_repr, dtype=np.float64)
    num_items, dim = table.shape
    if inverse is None:  # `shared_inverse`, computed by the caller for many calls
        gram = item_gram(table) if gram is None else np.asarray(gram, dtype=np.float64)
        inverse = shared_inverse(gram, ridge)
    shared = np.asarray(inverse, dtype=np.float64)
    counts = history.getnnz(axis=1)
    out = np.zeros((history.shape[0], dim), dtype=np.float32)
    # users in order of history length, so each block pads its item lists to similar lengths
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    for start in range(0, len(order), block):
        users = order[start : start + block]
        rows = history[users]
        size = rows.getnnz(axis=1)
        alpha = confidence * num_items / size
        longest = int(size.max())
        # padded item tables [b, longest, D]
        padded = np.zeros((len(users), longest, dim))
        owner = np.repeat(np.arange(len(users)), size)
        slot = np.arange(rows.nnz) - np.repeat(rows.indptr[:-1], size)
        padded[owner, slot] = table[rows.indices]
        # W = V_S M^-1 as one [b s, D] x [D, D] product (stacked products are slow to thread)
        weighted = (padded.reshape(-1, dim) @ shared).reshape(padded.shape)
        y = (1.0 + alpha)[:, None] * weighted.sum(axis=1)
        small = np.einsum("bsd,btd->bst", weighted, padded)  # W V_S^T [b, s, s]
        diagonal = np.where(np.arange(longest)[None, :] < size[:, None], 1.0 / alpha[:, None], 1.0)
        small[:, np.arange(longest), np.arange(longest)] += diagonal
        rhs = np.einsum("bsd,bd->bs", padded, y)
        z = np.linalg.solve(small, rhs[:, :, None])[:, :, 0]
        out[users] = y - np.einsum("bsd,bs->bd", weighted, z)
    return out
