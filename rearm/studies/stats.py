"""Small, pure statistics for study reports: mean and sample standard deviation, relative change,
the Wilcoxon signed-rank test (two-sided, as scipy.stats.wilcoxon computes it) and Holm's
step-down correction. Each is tested against scipy or a hand computation on hand-made vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# "auto" uses the exact null distribution up to this many differences (without ties or zeros).
EXACT_MAX_N = 50


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1); std is NaN for fewer than two values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), std


def relative_change(value: float, reference: float) -> float:
    """(value - reference) / reference; NaN when the reference is 0."""
    if reference == 0:
        return math.nan
    return (value - reference) / reference


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values`, ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # start of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def wilcoxon_signed_rank(
    x: Sequence[float], y: Sequence[float] | None = None, method: str = "auto"
) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of the paired differences d = x - y.

    Zero differences are dropped (Wilcoxon's convention, scipy's default "wilcox"). The statistic
    is min(W+, W-) over the ranks of |d| (ties get mean ranks). method "exact" uses the null
    distribution of W+ given these ranks: all 2^n sign patterns equally likely, counted over the
    doubled ranks (whole numbers, since mean ranks are whole or half); without ties it is the
    classic table. "approx" is the normal approximation with the tie correction of the variance
    and no continuity correction. "auto" is exact for at most 50 non-zero differences, else
    approx. scipy's "auto" agrees without ties or zeros and, with them, up to 13 differences (its
    permutation test enumerates the same sign patterns); from 14 to 50 it approximates. With ties
    the approximation can be far off at small n (four equal differences: p 0.046 against the
    exact 0.125, the smallest p four pairs can give); study tables compare thousands of users,
    where both use the approximation.

    Returns:
        (statistic, p-value); (nan, nan) when no non-zero difference is left.
    """
    d = np.asarray(x, dtype=np.float64)
    if y is not None:
        d = d - np.asarray(y, dtype=np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return math.nan, math.nan
    ranks = rankdata(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    r_minus = float(ranks[d < 0].sum())
    statistic = min(r_plus, r_minus)
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_N else "approx"
    if method == "exact":
        doubled = np.rint(2.0 * ranks).astype(np.int64)
        counts = _signed_rank_counts(doubled)
        total = counts.sum()
        w = int(round(2.0 * r_plus))
        below = counts[: w + 1].sum() / total  # P(W+ <= w)
        above = counts[w:].sum() / total  # P(W+ >= w)
        return statistic, float(min(1.0, 2.0 * min(below, above)))
    if method != "approx":
        raise ValueError(f"method must be auto, exact or approx, got {method!r}")
    mean = n * (n + 1) / 4.0
    variance = n * (n + 1) * (2 * n + 1) / 24.0
    _, tie_sizes = np.unique(ranks, return_counts=True)
    variance -= float((tie_sizes**3 - tie_sizes).sum()) / 48.0
    if variance <= 0:
        return statistic, math.nan
    z = (statistic - mean) / math.sqrt(variance)
    return statistic, float(min(1.0, math.erfc(abs(z) / math.sqrt(2.0))))


def _signed_rank_counts(weights: np.ndarray) -> np.ndarray:
    """counts[w] = number of subsets of `weights` (whole numbers >= 1) whose sum is w: the null
    distribution of W+ over the sign patterns (exact in float64 up to 2^53 patterns)."""
    counts = np.zeros(int(weights.sum()) + 1, dtype=np.float64)
    counts[0] = 1.0
    for weight in weights.tolist():
        counts[weight:] = counts[weight:] + counts[:-weight].copy()
    return counts


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), same order as the input.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    NaN entries are left NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = len(present)
    if m == 0:
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
