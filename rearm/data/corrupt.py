"""Misaligned modalities on purpose: a derived data set whose named modality is altered for a
fraction of the items, with a manifest saying exactly which items and how.

Modes (for the `count` chosen items, count = floor(fraction * num_items + 0.5), i.e. P * n
rounded half up):
  * shuffle: the chosen rows are permuted among themselves along one random cycle, so every
    chosen item gets another chosen item's features (a derangement; needs count >= 2);
  * noise: the chosen rows become Gaussian noise with the table's per-dimension mean and std
    (computed over all items before the change);
  * zero: the chosen rows become zeros;
  * swap: the chosen rows become the same items' rows of another modality times a fixed random
    projection [other_dim, dim] (entries N(0, 1 / other_dim), drawn from the seed).

Interactions and the other modalities are unchanged. Everything is deterministic in the seed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from rearm.data.dataset import Dataset
from rearm.data.synth import check_seed, share_count, write_rearm_layout
from rearm.errors import DataError
from rearm.io import staged_folder, write_json

MODES = ("shuffle", "noise", "zero", "swap")
MANIFEST = "corruption.json"
_VERSION = 1


def chosen_count(fraction: float, num_items: int) -> int:
    """How many items a fraction alters: P * n rounded half up (0.5 -> 1, 2.5 -> 3)."""
    return share_count(fraction, num_items)


def corrupt_features(
    dataset: Dataset,
    modality: str,
    fraction: float,
    mode: str,
    seed: int = 0,
    *,
    swap_with: str | None = None,
) -> tuple[Dataset, dict]:
    """Alter `modality` for a fraction of the items, in memory.

    Args:
        dataset: the source data set (not modified).
        modality: the modality to alter.
        fraction: P in [0, 1]; count = P * num_items rounded half up.
        mode: "shuffle", "noise", "zero" or "swap".
        seed: chooses the items, the permutation, the noise and the projection.
        swap_with: swap only: the modality whose rows replace the altered ones (default: the
            first other modality in the data set's order).

    Returns:
        (derived Dataset with the same interactions, manifest dict: mode, fraction, seed, count,
        items (sorted indices), item_ids, and per mode the shuffle sources or the swap source).
    """
    _check_request(dataset, modality, fraction, mode, swap_with)
    check_seed(seed)
    table = dataset.features[modality]
    num_items, dim = table.shape
    count = chosen_count(fraction, num_items)
    if mode == "shuffle" and count == 1:
        raise DataError(
            f"--fraction {fraction:g}: shuffle needs at least 2 items to permute, but "
            f"{fraction:g} x {num_items} items rounds to 1"
        )
    rng = np.random.default_rng(seed)
    items = np.sort(rng.choice(num_items, size=count, replace=False)).astype(np.int64)
    altered = np.array(table, dtype=np.float32, copy=True)
    manifest: dict = {
        "modality": modality,
        "mode": mode,
        "fraction": float(fraction),
        "seed": int(seed),
        "count": count,
        "rounding": "count = floor(fraction * num_items + 0.5) (half up)",
        "items": items.tolist(),
        "item_ids": _item_ids(dataset, items),
    }
    if mode == "shuffle" and count:
        # one random cycle through the chosen rows: a derangement for count >= 2
        cycle = items[rng.permutation(count)]
        sources = np.empty(count, dtype=np.int64)
        sources[np.searchsorted(items, cycle)] = np.roll(cycle, -1)
        altered[items] = table[sources]
        manifest["sources"] = sources.tolist()
    elif mode == "noise" and count:
        mean, std = _column_stats(table)
        noise = rng.standard_normal((count, dim))
        altered[items] = (mean + std * noise).astype(np.float32)
        manifest["noise"] = "N(mean_d, std_d) per dimension d, over all items before the change"
    elif mode == "zero":
        altered[items] = 0.0
    elif mode == "swap":
        other = swap_with or next(name for name in dataset.features if name != modality)
        source = np.asarray(dataset.features[other], dtype=np.float64)
        projection = rng.standard_normal((source.shape[1], dim)) / np.sqrt(source.shape[1])
        altered[items] = (source[items] @ projection).astype(np.float32)
        manifest["swap_with"] = other
        manifest["projection"] = f"N(0, 1/{source.shape[1]}) [{source.shape[1]}, {dim}] from seed"
    features = {name: array for name, array in dataset.features.items()}
    features[modality] = altered
    derived = dataclasses.replace(dataset, features=features, files={}, format="memory")
    return derived, manifest


def corrupt_dataset(
    source: Dataset | str | os.PathLike,
    out: str | os.PathLike,
    modality: str,
    fraction: float,
    mode: str,
    seed: int = 0,
    *,
    swap_with: str | None = None,
) -> dict:
    """Write the derived data set of `corrupt_features` to `out` (REARM layout) with
    `corruption.json`; `source` is a Dataset or a path any reader of `load_dataset` accepts.

    `out` must be missing or an empty folder; it is built aside and renamed into place, so a
    failure leaves no half-written data set. Returns the manifest.
    """
    out = Path(out)
    check_seed(seed)  # before the data set is read
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"--out {out}: folder is not empty; give a new or empty folder")
    if isinstance(source, Dataset):
        dataset = source
    else:
        from rearm.data.readers import load_dataset

        dataset = load_dataset(source)
    derived, manifest = corrupt_features(
        dataset, modality, fraction, mode, seed, swap_with=swap_with
    )
    return write_corrupted(dataset, derived, manifest, out)


def write_corrupted(dataset: Dataset, derived: Dataset, manifest: dict, out: Path) -> dict:
    """Write `derived` and `manifest` (as `corrupt_features` returned them for `dataset`) to the
    missing or empty folder `out`, built aside and renamed into place; returns the full
    manifest (with source and output fingerprints)."""
    manifest = {
        "version": _VERSION,
        "source": {
            "path": dataset.source,
            "format": dataset.format,
            "fingerprint": dataset.fingerprint(),
        },
        **manifest,
        "output": {
            "layout": "rearm",
            "fingerprint": derived.fingerprint(),
            "num_users": derived.num_users,
            "num_items": derived.num_items,
        },
    }
    with staged_folder(out) as stage:
        write_rearm_layout(derived, stage)
        write_json(stage / MANIFEST, manifest)
    return manifest


def _check_request(
    dataset: Dataset, modality: str, fraction: float, mode: str, swap_with: str | None
) -> None:
    if mode not in MODES:
        raise DataError(f"--mode: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise DataError(f"--fraction: expected a number in [0, 1], got {fraction!r}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise DataError(f"--fraction: must be in [0, 1], got {fraction:g}")
    where = dataset.source or "data set"
    if modality not in dataset.features:
        known = ", ".join(dataset.features) or "none"
        raise DataError(f"--modality: {where} has no modality {modality!r} (modalities: {known})")
    if mode == "swap":
        others = [name for name in dataset.features if name != modality]
        if not others:
            raise DataError(
                f"--mode swap: {where} has only the modality {modality!r}; swap needs another"
            )
        if swap_with is not None and swap_with not in others:
            raise DataError(
                f"--swap-with: {swap_with!r} is not another modality of {where} "
                f"(others: {', '.join(others)})"
            )
    elif swap_with is not None:
        raise DataError(f"--swap-with: only used by --mode swap, not {mode}")


def _column_stats(table: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and (population) std in float64, by row blocks (memory-mapped input)."""
    total = np.zeros(table.shape[1])
    squares = np.zeros(table.shape[1])
    for start in range(0, table.shape[0], block):
        rows = np.asarray(table[start : start + block], dtype=np.float64)
        total += rows.sum(axis=0)
        squares += (rows * rows).sum(axis=0)
    mean = total / table.shape[0]
    return mean, np.sqrt(np.maximum(squares / table.shape[0] - mean * mean, 0.0))


def _item_ids(dataset: Dataset, items: np.ndarray) -> list:
    """External ids of `items` where the source had them (tabular), else the indices."""
    if dataset.item_ids is None:
        return items.tolist()
    return [str(value) for value in np.asarray(dataset.item_ids)[items]]
