"""The one interaction representation used everywhere in rearm.

Train / valid / test interactions are binary scipy CSR matrices of shape [num_users, num_items] with
item ids from 0 (no users-then-items node offset; that exists only inside the bipartite-graph
builder). Item modality features are an open-ended named mapping `{name: float32 [num_items, dim]}`.
Everything is validated once, here, at the boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from rearm.arrays import sorted_union, sorted_unique
from rearm.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions and item modality features of one data set.

    Attributes:
        num_users, num_items: sizes; user and item indices are 0..n-1.
        train, valid, test: binary float32 CSR [num_users, num_items], sorted indices, no duplicates.
        features: {modality name: float32 array [num_items, dim]}; any number of modalities.
        user_ids, item_ids: external ids (index -> id) where the source had them, else None.
        format: which reader produced it ("rearm", "mmrec", "tabular", "synthetic", "memory").
        source: the path it was read from, if any.
        notes: what validation found and how it was handled (duplicates, cross-split repeats, ...).
        files: {logical name: path} of the files read, for provenance hashes.
    """

    num_users: int
    num_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: dict[str, np.ndarray] = field(default_factory=dict)
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    format: str = "memory"
    source: str | None = None
    notes: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> sp.csr_matrix:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def select_modalities(self, names: list[str] | tuple[str, ...]) -> Dataset:
        """The same data set with only the modalities `names`, in that order (files keep only
        theirs). DataError naming the data set on an unknown or repeated name, or none."""
        label = self.source or "data set"
        names = list(names)
        if not names:
            raise DataError(f"{label}: modalities: give at least one modality name")
        repeated = next((name for name in names if names.count(name) > 1), None)
        if repeated:
            raise DataError(f"{label}: modalities: {repeated!r} given twice")
        unknown = next((name for name in names if name not in self.features), None)
        if unknown:
            raise DataError(
                f"{label}: modalities: no modality {unknown!r} "
                f"(the data set has: {', '.join(self.features) or 'none'})"
            )
        dropped = {f"{name}_feat" for name in self.features if name not in names}
        files = {key: path for key, path in self.files.items() if key not in dropped}
        return replace(self, features={name: self.features[name] for name in names}, files=files)

    def fingerprint(self) -> str:
        """A content hash of interactions and features (for graph caches and run records)."""
        digest = hashlib.sha256()
        digest.update(f"{self.num_users},{self.num_items}".encode())
        for name in SPLITS:
            matrix = self.split(name)
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(matrix.indptr, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(matrix.indices, dtype=np.int64).tobytes())
        for name in sorted(self.features):
            array = self.features[name]
            digest.update(f"{name}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    @classmethod
    def from_pairs(
        cls,
        pairs: Mapping[str, np.ndarray],
        features: Mapping[str, np.ndarray] | None = None,
        *,
        num_users: int | None = None,
        num_items: int | None = None,
        source: str | None = None,
        format: str = "memory",
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
        files: Mapping[str, str] | None = None,
        feature_files: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Dataset:
        """Build a validated Dataset from (2, N) int arrays of (user, item) pairs per split.

        Rules (documented in the README):
          * a (user, item) pair repeated inside one split is kept once; the count is reported;
          * a pair that occurs in several splits is kept in the earliest of train, valid, test
            and dropped from the later ones (a train pair is masked at evaluation anyway; a
            valid pair repeated in test would be a leaked answer); the counts are reported;
          * users or items that occur only in valid / test are allowed and reported.

        `labels` ({split: text}) overrides how a split is named in error messages, for readers
        whose splits share one file (e.g. "data.inter (x_label 1)"); it defaults to `files`.
        """
        where = source or "<memory>"
        files = dict(files or {})
        labels = {**files, **(labels or {})}
        arrays = {}
        for name in SPLITS:
            if name not in pairs:
                raise DataError(f"{where}: split {name!r} is missing")
            arrays[name] = _check_pairs(pairs[name], labels.get(name, where), name)
        if arrays["train"].shape[1] == 0:
            raise DataError(f"{labels.get('train', where)}: train split is empty")

        max_user = max(int(a[0].max(initial=-1)) for a in arrays.values())
        max_item = max(int(a[1].max(initial=-1)) for a in arrays.values())
        pairs_total = sum(a.shape[1] for a in arrays.values())
        for which, largest, given in (("user", max_user, num_users), ("item", max_item, num_items)):
            # ids are indices from 0: a huge one would size every table by it
            if largest >= MAX_ID or (given is None and largest >= 2**20 + 64 * pairs_total):
                raise DataError(
                    f"{where}: {which} id {largest} is far larger than the data "
                    f"({pairs_total} interactions); ids must be indices from 0 "
                    "(the tabular layout maps arbitrary ids)"
                )
            # a declared size sizes the tables too: 10**15 would ask for petabytes
            limit = max(largest + 1, 2**24 + 64 * pairs_total)
            if given is not None and int(given) > limit:
                raise DataError(
                    f"{where}: num_{which}s={int(given)} (--num-{which}s) is far larger than the "
                    f"data ({pairs_total} interactions, largest {which} id {largest}); the limit "
                    f"is {limit} (2^24 + 64 x interactions)"
                )
        num_users = max_user + 1 if num_users is None else int(num_users)
        num_items = max_item + 1 if num_items is None else int(num_items)
        for name, array in arrays.items():
            label = labels.get(name, where)
            if array.shape[1] and int(array[0].max()) >= num_users:
                raise DataError(
                    f"{label}: user id {int(array[0].max())} out of range (num_users={num_users})"
                )
            if array.shape[1] and int(array[1].max()) >= num_items:
                raise DataError(
                    f"{label}: item id {int(array[1].max())} out of range (num_items={num_items})"
                )

        notes: dict = {"duplicates_within_split": {}, "repeated_across_splits": {}}
        matrices: dict[str, sp.csr_matrix] = {}
        seen_keys = np.empty(0, dtype=np.int64)
        for name in SPLITS:
            users, items = arrays[name]
            keys = users.astype(np.int64) * num_items + items.astype(np.int64)
            unique = sorted_unique(keys)
            notes["duplicates_within_split"][name] = int(len(keys) - len(unique))
            repeated = np.isin(unique, seen_keys, assume_unique=True)
            notes["repeated_across_splits"][name] = int(repeated.sum())
            unique = unique[~repeated]
            seen_keys = sorted_union(seen_keys, unique)
            matrices[name] = _csr_from_keys(unique, num_users, num_items)

        train_users = np.diff(matrices["train"].indptr) > 0
        train_items = np.bincount(matrices["train"].indices, minlength=num_items) > 0
        any_users = np.zeros(num_users, dtype=bool)
        any_items = np.zeros(num_items, dtype=bool)
        for matrix in matrices.values():
            any_users |= np.diff(matrix.indptr) > 0
            any_items |= np.bincount(matrix.indices, minlength=num_items) > 0
        notes["users_without_train"] = int((~train_users & any_users).sum())
        notes["items_without_train"] = int((~train_items & any_items).sum())
        notes["users_without_interactions"] = int((~any_users).sum())
        notes["items_without_interactions"] = int((~any_items).sum())

        checked = {}
        feature_files = dict(feature_files or {})
        for name, array in (features or {}).items():
            checked[name] = check_features(
                array, name, num_items, feature_files.get(name, f"{where} (modality {name!r})")
            )
        files.update({f"{name}_feat": path for name, path in feature_files.items()})
        return cls(
            num_users=num_users,
            num_items=num_items,
            train=matrices["train"],
            valid=matrices["valid"],
            test=matrices["test"],
            features=checked,
            user_ids=user_ids,
            item_ids=item_ids,
            format=format,
            source=source,
            notes=notes,
            files=files,
        )


# largest id: CSR indices are int32
MAX_ID = 2**31 - 1


def _check_pairs(array: np.ndarray, label: str, split: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] != 2:
        raise DataError(
            f"{label}: {split} pairs must have shape (2, N) (row 0 users, row 1 items), "
            f"got {array.shape}"
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"{label}: {split} ids must be integers, found non-integer values")
    elif array.dtype.kind == "b":
        raise DataError(f"{label}: {split} ids must be integers, got dtype bool")
    elif array.dtype.kind not in "iu":
        raise DataError(f"{label}: {split} ids must be integers, got dtype {array.dtype}")
    # before the cast: a uint64 or float id past int64 would wrap round to a negative one
    if array.dtype.kind in "uf" and array.size and array.max() > MAX_ID:
        row = 0 if array[0].max() > MAX_ID else 1
        raise DataError(
            f"{label}: {('user', 'item')[row]} id {int(array[row].max())} in {split} is larger "
            f"than {MAX_ID}, the largest id rearm takes; ids must be indices from 0"
        )
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        which = "user" if array[0].min() < 0 else "item"
        raise DataError(f"{label}: negative {which} id {int(array.min())} in {split}")
    return array


def _csr_from_keys(keys: np.ndarray, num_users: int, num_items: int) -> sp.csr_matrix:
    users, items = np.divmod(keys, num_items)
    matrix = sp.csr_matrix(
        (np.ones(len(keys), dtype=np.float32), (users, items)), shape=(num_users, num_items)
    )
    matrix.sort_indices()
    return matrix


def check_features(array: np.ndarray, name: str, num_items: int, label: str) -> np.ndarray:
    """Validate one modality table: 2-D, one row per item, finite; returned as float32."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise DataError(f"{label}: modality {name!r} features must be 2-D, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise DataError(f"{label}: modality {name!r} features must be numeric, got {array.dtype}")
    if array.shape[1] == 0:
        raise DataError(
            f"{label}: modality {name!r} features have no columns (shape {array.shape})"
        )
    if array.shape[0] != num_items:
        raise DataError(
            f"{label}: modality {name!r} has {array.shape[0]} rows but the data set has "
            f"{num_items} items"
        )
    with np.errstate(over="ignore"):  # float64 past float32's range: Inf, reported below
        array = np.ascontiguousarray(array, dtype=np.float32)
    # Row blocks keep the check at O(block) extra memory on memory-mapped 4096-d tables.
    bad_rows = []
    has_nan = False
    for start in range(0, array.shape[0], _CHECK_ROWS):
        block = array[start : start + _CHECK_ROWS]
        finite_rows = np.isfinite(block).all(axis=1)
        if not finite_rows.all():
            bad_rows.append(start + np.flatnonzero(~finite_rows))
            has_nan = has_nan or bool(np.isnan(block).any())
    if bad_rows:
        bad = np.concatenate(bad_rows)
        kind = "NaN" if has_nan else "Inf"
        raise DataError(
            f"{label}: modality {name!r} contains {kind} values in {len(bad)} rows "
            f"(first row {int(bad[0])})"
        )
    return array


_CHECK_ROWS = 4096
