"""The pure steps between parsed reviews and a data set: deduplicate -> k-core -> map ids ->
split by time. Arrays in, arrays out; no file I/O."""

from __future__ import annotations

import numpy as np

from rearm.arrays import sorted_unique
from rearm.errors import DataError


def deduplicate(
    users: np.ndarray, items: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep one record per (user, item) pair, at its earliest time. Returns the kept
    (users, items, times) in input order."""
    _, user_codes = np.unique(users, return_inverse=True)
    item_ids, item_codes = np.unique(items, return_inverse=True)
    keys = user_codes.astype(np.int64) * len(item_ids) + item_codes
    order = np.lexsort((np.arange(len(keys)), times, keys))  # per key: earliest, then first
    first = np.ones(len(order), dtype=bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    kept = np.sort(order[first])
    return users[kept], items[kept], times[kept]


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, list[dict]]:
    """Boolean mask of the interactions in the k-core: users and items with at least `k`
    interactions, filtered alternately (users, then items) until neither filter removes anything.

    The fixed point is the largest sub-graph where every user and item has >= k interactions, so
    it does not depend on the filter order. Returns (mask, steps): one entry per filter pass with
    the users, items and interactions left after it.
    """
    if k < 1:
        raise DataError(f"--k-core: must be at least 1, got {k}")
    _, user_codes = np.unique(users, return_inverse=True)
    _, item_codes = np.unique(items, return_inverse=True)
    keep = np.ones(len(users), dtype=bool)
    steps = []
    for round_ in range(1, len(users) + 2):
        changed = False
        for side, codes in (("users", user_codes), ("items", item_codes)):
            counts = np.bincount(codes[keep], minlength=codes.max(initial=-1) + 1)
            drop = keep & (counts[codes] < k)
            changed |= bool(drop.any())
            keep &= ~drop
            steps.append(
                {
                    "round": round_,
                    "filter": f"{side} with >= {k} interactions",
                    "users": int(len(sorted_unique(user_codes[keep]))),
                    "items": int(len(sorted_unique(item_codes[keep]))),
                    "interactions": int(keep.sum()),
                }
            )
        if not changed:
            break
    return keep, steps


def map_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, index): ids sorted (code-point order) become 0..n-1; index[r] is the id of row r."""
    ids, index = np.unique(values, return_inverse=True)
    return ids, index.astype(np.int64)


def parse_ratios(text: str) -> tuple[int, int, int]:
    """ "8:1:1" -> (8, 1, 1): positive integer train:valid:test weights."""
    parts = text.split(":")
    try:
        ratios = tuple(int(part) for part in parts)
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] < 1:
        raise DataError(
            f"--split: expected TRAIN:VALID:TEST integer weights like 8:1:1, got {text!r}"
        )
    return ratios


def split_counts(n: np.ndarray, ratios: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(valid, test) counts for users with `n` interactions.

    test = round(n * test / total) with halves rounded up, valid = floor(n * valid / total), each
    at least 1 when its weight is positive; then train keeps at least one: where
    n - valid - test < 1 valid shrinks first, then test. With 8:1:1: n = 1 -> all train; n = 2 ->
    1 train, 1 test; n = 3..14 -> 1 valid, 1 test; n = 15..19 -> 1 valid, 2 test; n = 20..24 ->
    2 and 2; n = 25..29 -> 2 and 3. These are the per-user sizes of the published Amazon Baby
    split (every one of its 19,445 users; benchmarks/prepare_baby.py).
    """
    n = np.asarray(n, dtype=np.int64)
    total = sum(ratios)
    valid = np.where(ratios[1] > 0, np.maximum(1, (n * ratios[1]) // total), 0)
    test = np.where(ratios[2] > 0, np.maximum(1, (2 * n * ratios[2] + total) // (2 * total)), 0)
    valid = np.minimum(valid, np.maximum(n - test - 1, 0))
    test = np.minimum(test, np.maximum(n - 1, 0))
    return valid, test


def time_split(
    users: np.ndarray, items: np.ndarray, times: np.ndarray, ratios: tuple[int, int, int]
) -> np.ndarray:
    """Split label per interaction (0 train, 1 valid, 2 test), per user by time: the user's
    interactions ordered by (time, item index), the last `test` go to test, the `valid` before
    them to valid (counts from `split_counts`). Equal times are ordered by item index."""
    order = np.lexsort((items, times, users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    valid, test = split_counts(sizes, ratios)
    position = np.arange(len(order)) - np.repeat(starts, sizes)
    remaining = np.repeat(sizes, sizes) - position  # 1 for a user's last interaction
    labels_sorted = np.where(
        remaining <= np.repeat(test, sizes),
        2,
        np.where(remaining <= np.repeat(test + valid, sizes), 1, 0),
    )
    labels = np.empty(len(order), dtype=np.int64)
    labels[order] = labels_sorted
    return labels
