"""Compare two data sets of the same items, e.g. prepared features against published ones:
which items they share, and per modality how close the matching feature rows are (cosine) and
how much their item neighbourhoods agree (kNN overlap at k).

Items are matched by original id when both folders carry `i_id_mapping.csv` (written by
`rearm data prepare`), else by index (then both must have the same number of items).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rearm.data.readers import load_dataset
from rearm.errors import DataError

ITEM_MAP = "i_id_mapping.csv"
_BLOCK = 1024


def compare_datasets(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    *,
    k: int = 10,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """{items: {a, b, shared, only_a, only_b, matched_by}, users, interactions,
    modalities: {name: {dim_a, dim_b, cosine: {mean, median, p10, min} | None,
    knn_overlap: mean |N_a(i) & N_b(i)| / k}}, only_a / only_b: modality names}."""
    from rearm.data.prepare.amazon import read_id_mapping

    if k < 1:
        raise DataError(f"--k: must be at least 1, got {k}")
    a, b = load_dataset(path_a), load_dataset(path_b)
    map_a, map_b = Path(path_a) / ITEM_MAP, Path(path_b) / ITEM_MAP
    if map_a.is_file() and map_b.is_file():
        ids_a, ids_b = read_id_mapping(map_a), read_id_mapping(map_b)
        for path, ids, data in ((map_a, ids_a, a), (map_b, ids_b, b)):
            if len(ids) != data.num_items:
                raise DataError(
                    f"{path}: maps {len(ids)} item ids but its data set has {data.num_items} "
                    "items; the mapping belongs to another data set"
                )
        shared, rows_a, rows_b = np.intersect1d(ids_a, ids_b, return_indices=True)
        matched_by = "item id (i_id_mapping.csv)"
    else:
        if a.num_items != b.num_items:
            raise DataError(
                f"{path_b}: {b.num_items} items against {a.num_items} in {path_a}, and no "
                f"{ITEM_MAP} in both folders to match them by id"
            )
        rows_a = rows_b = np.arange(a.num_items)
        shared = rows_a
        matched_by = "index (no i_id_mapping.csv in both folders)"
    if len(shared) <= k:
        raise DataError(f"{path_a} and {path_b} share {len(shared)} items; need more than k={k}")
    result = {
        "a": str(path_a),
        "b": str(path_b),
        "items": {
            "a": a.num_items,
            "b": b.num_items,
            "shared": int(len(shared)),
            "only_a": int(a.num_items - len(shared)),
            "only_b": int(b.num_items - len(shared)),
            "matched_by": matched_by,
        },
        "users": {"a": a.num_users, "b": b.num_users},
        "interactions": {
            "a": int(sum(a.split(s).nnz for s in ("train", "valid", "test"))),
            "b": int(sum(b.split(s).nnz for s in ("train", "valid", "test"))),
        },
        "k": k,
        "modalities": {},
        "only_a": sorted(set(a.features) - set(b.features)),
        "only_b": sorted(set(b.features) - set(a.features)),
    }
    for name in sorted(set(a.features) & set(b.features)):
        if progress is not None:
            progress(f"comparing {name} over {len(shared):,} shared items")
        features_a = np.asarray(a.features[name][rows_a], dtype=np.float32)
        features_b = np.asarray(b.features[name][rows_b], dtype=np.float32)
        result["modalities"][name] = compare_features(features_a, features_b, k)
    return result


def compare_features(features_a: np.ndarray, features_b: np.ndarray, k: int) -> dict:
    """Row-aligned tables [n, dim_a] and [n, dim_b] -> {dim_a, dim_b, cosine, knn_overlap}.

    cosine (only when the dimensions agree): statistics of cos(a_i, b_i) over rows; an all-zero
    row has cosine 0. knn_overlap: mean over rows of |top-k(a, i) & top-k(b, i)| / k, where
    top-k(x, i) are the k rows most cosine-similar to row i, itself excluded, ties to the lower
    index."""
    unit_a, unit_b = _unit_rows(features_a), _unit_rows(features_b)
    cosine = None
    if unit_a.shape[1] == unit_b.shape[1]:
        values = np.einsum("ij,ij->i", unit_a, unit_b)
        cosine = {
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "p10": float(np.quantile(values, 0.1)),
            "min": float(values.min()),
        }
    neighbours_a, neighbours_b = top_k_neighbours(unit_a, k), top_k_neighbours(unit_b, k)
    overlap = np.array(
        [len(np.intersect1d(x, y, assume_unique=True)) for x, y in zip(neighbours_a, neighbours_b)]
    )
    return {
        "dim_a": int(features_a.shape[1]),
        "dim_b": int(features_b.shape[1]),
        "cosine": cosine,
        "knn_overlap": float(overlap.mean() / k),
    }


def top_k_neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    """[n, k] indices of each row's k most similar rows (cosine of unit rows), itself excluded;
    similarities equal to 6 decimals are taken in increasing index. Blocks of rows keep memory at [block, n]."""
    n = len(unit)
    if not 0 < k < n:
        raise DataError(f"k={k}: must be between 1 and the number of items - 1 ({n - 1})")
    result = np.empty((n, k), dtype=np.int64)
    # similarities rounded to 1e-6, minus a sub-1e-6 index term: one float64 key orders rows by
    # (similarity, lower index first), so float noise and ties do not depend on the block size
    index_term = np.arange(n) * (1e-6 / (2 * n))
    for start in range(0, n, _BLOCK):
        block = np.round((unit[start : start + _BLOCK] @ unit.T).astype(np.float64), 6)
        block -= index_term
        rows = np.arange(len(block))
        block[rows, start + rows] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        keys = np.take_along_axis(block, top, axis=1)
        result[start : start + len(block)] = np.take_along_axis(
            top, np.argsort(-keys, axis=1, kind="stable"), axis=1
        )
    return result


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
