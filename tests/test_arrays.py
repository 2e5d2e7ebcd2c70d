"""rearm.arrays: the sort-based set operations give numpy's answers, dtype and order included."""

from __future__ import annotations

import numpy as np
import pytest

from rearm.arrays import sorted_difference, sorted_intersect, sorted_union, sorted_unique

rng = np.random.default_rng(7)

ARRAYS = {
    "int64 keys": rng.integers(0, 10**12, 5000),
    "int32 with repeats": rng.integers(-50, 50, 3000).astype(np.int32),
    "uint8": rng.integers(0, 256, 2000).astype(np.uint8),
    "bool": rng.random(100) < 0.5,
    "str ids": np.array([f"u{value}" for value in rng.integers(0, 300, 2000)]),
    "bytes": np.array([b"b", b"a", b"b", b""]),
    "floats with NaN": np.array([2.0, np.nan, 1.0, np.nan, 2.0]),
    "objects": np.array(["x", "a", "x"], dtype=object),
    "2-D": rng.integers(0, 9, (20, 7)),
    "one value": np.array([5]),
    "empty int": np.empty(0, dtype=np.int64),
    "empty str": np.empty(0, dtype="<U3"),
}


@pytest.mark.parametrize("name", ARRAYS)
def test_unique_is_numpys(name):
    values = ARRAYS[name]
    ours, theirs = sorted_unique(values), np.unique(values)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("name", ["int64 keys", "int32 with repeats", "str ids", "empty int"])
def test_union_intersection_and_difference_are_numpys(name):
    values = ARRAYS[name]
    first, second = values[: len(values) // 2], values[len(values) // 3 :]
    for ours, theirs in (
        (sorted_union(first, second), np.union1d(first, second)),
        (sorted_intersect(first, second), np.intersect1d(first, second)),
        (sorted_difference(first, second), np.setdiff1d(first, second)),
        (sorted_difference(second, first), np.setdiff1d(second, first)),
    ):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_the_input_is_not_changed():
    values = np.array([3, 1, 3, 2])
    sorted_unique(values)
    sorted_difference(values, [1])
    assert values.tolist() == [3, 1, 3, 2]
