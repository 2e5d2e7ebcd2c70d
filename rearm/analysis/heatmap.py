"""The interaction-probability heatmap (REARM paper, Fig. 5), made checkable.

For a few sampled users the heatmap shows sigmoid(score) for their held-out items and for as many
sampled items they never interacted with, and the summary says how far the model separates the
two: mean probability on each kind of pair and the AUC between them. Everything here is a pure
function of saved bundles (rearm.experiments.bundle); the picture is drawn by
rearm.analysis.plot.

The matrix is a real user x item matrix: its columns are the held-out items of the sampled
users, then their sampled non-interacted items (an item sampled for one user may be another
user's held-out item; it is then one column of the first part). Only two kinds of cell enter the
summary: held-out pairs (the item is in the user's held-out split) and sampled non-interacted
pairs (the item was sampled for that user among the items in none of its train / valid / test
splits). Every other cell is shown but not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from rearm.analysis.auc import auc
from rearm.data.dataset import SPLITS
from rearm.data.synth import check_seed
from rearm.errors import ConfigError, RunError

HELDOUT_SPLITS = ("valid", "test")


@dataclass(frozen=True)
class HeatmapSample:
    """Users and items of a heatmap, sampled from one bundle's interactions.

    Attributes:
        users: int64 [n] sampled user indices, ascending.
        items: int64 [m] column items: the sampled users' held-out items (users in order, items
            ascending within a user, each item once), then the sampled non-interacted items not
            already among them.
        heldout_columns: how many leading columns are held-out items of some sampled user.
        heldout: bool [n, m], True where (user, item) is a held-out pair of `split`.
        noninteracted: bool [n, m], True where the item was sampled for that user among the
            items in none of its splits; per user as many as it has held-out items (fewer only
            if the user has interacted with nearly every item).
        split: the held-out split ("test" or "valid").
        seed: the sampling seed.
    """

    users: np.ndarray
    items: np.ndarray
    heldout_columns: int
    heldout: np.ndarray
    noninteracted: np.ndarray
    split: str
    seed: int


def sample_heatmap(bundle, users: int = 20, seed: int = 2025, split: str = "test") -> HeatmapSample:
    """Sample `users` users with at least one `split` item (all of them if fewer), their held-out
    items and, per user, as many items from outside all of that user's splits. Deterministic in
    `seed` and the bundle's interactions."""
    if split not in HELDOUT_SPLITS:
        raise ConfigError(f"--split: expected one of {', '.join(HELDOUT_SPLITS)}, got {split!r}")
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ConfigError(f"--users: expected a positive integer, got {users!r}")
    heldout = bundle.split(split)
    eligible = np.flatnonzero(heldout.getnnz(axis=1) > 0)
    if eligible.size == 0:
        raise RunError(f"no user has a {split} item in this bundle: nothing to show")
    rng = np.random.default_rng(check_seed(seed, error=ConfigError))
    chosen = np.sort(rng.choice(eligible, size=min(users, eligible.size), replace=False))
    known = _union(bundle, chosen)
    all_items = np.arange(bundle.num_items)
    positives, negatives = [], []
    for row, user in enumerate(chosen):  # a few users: no hot path
        own = np.sort(heldout.indices[heldout.indptr[user] : heldout.indptr[user + 1]])
        candidates = np.setdiff1d(
            all_items, known.indices[known.indptr[row] : known.indptr[row + 1]]
        )
        count = min(own.size, candidates.size)
        positives.append(own)
        negatives.append(np.sort(rng.choice(candidates, size=count, replace=False)))
    heldout_items = _first_occurrences(np.concatenate(positives))
    extra = _first_occurrences(np.concatenate(negatives))
    extra = extra[~np.isin(extra, heldout_items)]
    items = np.concatenate([heldout_items, extra]).astype(np.int64)
    column = {int(item): index for index, item in enumerate(items)}
    heldout_mask = np.zeros((chosen.size, items.size), dtype=bool)
    negative_mask = np.zeros_like(heldout_mask)
    for row, (own, sampled) in enumerate(zip(positives, negatives)):
        heldout_mask[row, [column[int(i)] for i in own]] = True
        negative_mask[row, [column[int(i)] for i in sampled]] = True
    return HeatmapSample(
        users=chosen.astype(np.int64),
        items=items,
        heldout_columns=int(heldout_items.size),
        heldout=heldout_mask,
        noninteracted=negative_mask,
        split=split,
        seed=seed,
    )


def score_matrix(bundle, sample: HeatmapSample) -> np.ndarray:
    """float64 [n, m] raw scores user_repr[users] @ item_repr[items].T."""
    users = bundle.user_repr[sample.users].astype(np.float64)
    items = bundle.item_repr[sample.items].astype(np.float64)
    return users @ items.T


def probability_matrix(bundle, sample: HeatmapSample) -> np.ndarray:
    """float64 [n, m] sigmoid(score): the heatmap's values."""
    return expit(score_matrix(bundle, sample))


def heatmap_summary(bundle, sample: HeatmapSample) -> dict:
    """Mean sigmoid(score) on held-out and on sampled non-interacted pairs, and their AUC.

    The AUC is computed on the raw scores (sigmoid is monotone, so it is the AUC of the
    probabilities, without the ties that float saturation of sigmoid would create); None when
    there is no non-interacted pair."""
    scores = score_matrix(bundle, sample)
    positive, negative = scores[sample.heldout], scores[sample.noninteracted]
    return {
        "mean_heldout_probability": float(expit(positive).mean()),
        "mean_noninteracted_probability": (
            float(expit(negative).mean()) if negative.size else None
        ),
        "auc": auc(positive, negative) if negative.size else None,
        "heldout_pairs": int(positive.size),
        "noninteracted_pairs": int(negative.size),
    }


def check_same_data(first, second, names: tuple[str, str] = ("RUN", "RUN2")) -> None:
    """RunError unless two bundles hold the same data: sizes, id maps and the interactions of
    every split. (Feature tables are not in a bundle and cannot be compared.)"""
    label = f"{names[1]} and {names[0]} were trained on different data"
    for attribute in ("num_users", "num_items"):
        a, b = getattr(first, attribute), getattr(second, attribute)
        if a != b:
            raise RunError(f"{label}: {attribute} {b} vs {a}")
    for attribute in ("user_ids", "item_ids"):
        if getattr(first, attribute) != getattr(second, attribute):
            raise RunError(f"{label}: their {attribute.replace('_', ' ')} differ")
    for split in SPLITS:
        a, b = first.split(split), second.split(split)
        if not (
            np.array_equal(a.indptr, b.indptr)
            and np.array_equal(_sorted_rows(a).indices, _sorted_rows(b).indices)
        ):
            raise RunError(f"{label}: their {split} interactions differ")


def _union(bundle, users: np.ndarray) -> sp.csr_matrix:
    """Binary CSR [len(users), num_items]: every split's items of each of `users`."""
    total = sum(bundle.split(split)[users] for split in SPLITS)
    total = sp.csr_matrix(total)
    total.sum_duplicates()
    return total


def _sorted_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = matrix.copy()
    matrix.sort_indices()
    return matrix


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    """Distinct values in the order of their first occurrence."""
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]
