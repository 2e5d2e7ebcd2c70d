"""The report's statistics against scipy and hand computations on hand-made vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rearm.studies.stats import holm, mean_std, rankdata, relative_change, wilcoxon_signed_rank

scipy_stats = pytest.importorskip("scipy.stats")

# differences with no ties and no zeros (exact is valid), with ties, and with zeros
NO_TIES = ([0.9, -0.3, 1.4, 0.2, -0.75, 2.1, 0.55, 1.05], [0.0] * 8)
TIES = ([0.1, 0.2, 0.2, 0.5, -0.3, 0.3, 0.3, -0.1, 0.4, 0.2, 0.7, -0.2], None)
ZEROS = ([0.3, 0.0, -0.1, 0.4, 0.0, 0.25, 0.6, -0.35, 0.8, 0.15], None)


@pytest.mark.parametrize("x, y", [NO_TIES, TIES, ZEROS])
@pytest.mark.parametrize("method", ["exact", "approx"])
def test_wilcoxon_matches_scipy(x, y, method):
    mine = wilcoxon_signed_rank(x, y, method=method)
    theirs = scipy_stats.wilcoxon(x, y, method=method)
    assert mine[0] == pytest.approx(theirs.statistic)
    assert mine[1] == pytest.approx(theirs.pvalue, rel=1e-12)


def test_wilcoxon_auto_and_large_samples_match_scipy():
    rng = np.random.default_rng(3)
    # per-user metrics: many exact zeros and ties, as in real Recall@20 vectors
    a = rng.integers(0, 5, 700) / 4
    b = np.clip(a + rng.integers(-1, 2, 700) / 4 * (rng.random(700) < 0.3), 0, 1)
    mine = wilcoxon_signed_rank(a, b)
    theirs = scipy_stats.wilcoxon(a, b)  # auto -> normal approximation here
    assert mine == pytest.approx((theirs.statistic, theirs.pvalue), rel=1e-12)
    small = rng.normal(0.2, 1, 20)  # no ties, no zeros, n <= 50: exact in both
    assert wilcoxon_signed_rank(small)[1] == pytest.approx(scipy_stats.wilcoxon(small).pvalue)


@pytest.mark.parametrize(
    "d",
    [[1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, -1], [0, 0, 0, 1], [1, 1, 2, 2, 3, -3, 4]],
)
def test_wilcoxon_small_samples_with_ties_are_exact(d):
    # four equal differences: the 16 sign patterns give P(W+ = 0) = 1/16, so p = 0.125 is the
    # smallest two-sided p four pairs can give; the normal approximation said 0.046 ("*")
    mine = wilcoxon_signed_rank(d)
    theirs = scipy_stats.wilcoxon(d)  # auto: a permutation test over the same sign patterns
    assert mine == pytest.approx((theirs.statistic, theirs.pvalue), rel=1e-12)
    assert wilcoxon_signed_rank([1, 1, 1, 1])[1] == 0.125


def test_wilcoxon_hand_computed_and_degenerate():
    # d = 1, 2, 3, -4: ranks 1..4, W+ = 6, W- = 4, statistic 4. Under the null the 16 sign
    # patterns give W+ = 0..10 with counts 1,1,1,2,2,2,2,2,1,1,1: P(W+ >= 6) = 7/16, so the
    # two-sided p is 14/16; with d = 1, 2, 3, 4: W+ = 10, p = 2 x 1/16
    assert wilcoxon_signed_rank([1, 2, 3, -4], method="exact") == (4.0, 0.875)
    assert wilcoxon_signed_rank([1, 2, 3, 4], method="exact") == (0.0, 0.125)
    statistic, p = wilcoxon_signed_rank([0.5, 0.5], [0.5, 0.5])
    assert math.isnan(statistic) and math.isnan(p)


def test_rankdata_matches_scipy():
    values = np.array([3.0, 1.0, 3.0, 2.0, 5.0, 3.0, 1.0])
    np.testing.assert_array_equal(rankdata(values), scipy_stats.rankdata(values))


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.04, 0.30 with m = 4: 0.04, 0.06, 0.08, 0.30 (monotone already);
    # the NaN (the reference row) is left out of m
    adjusted = holm([0.04, math.nan, 0.01, 0.30, 0.02])
    np.testing.assert_allclose(adjusted[[0, 2, 3, 4]], [0.08, 0.04, 0.30, 0.06])
    assert math.isnan(adjusted[1])
    # monotonicity: 3 x 0.011 = 0.033 < 4 x 0.01 = 0.04 is raised to 0.04; capped at 1
    np.testing.assert_allclose(holm([0.01, 0.011, 0.9]), [0.03, 0.03, 0.9])
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])


def test_mean_std_and_relative_change():
    mean, std = mean_std([0.30, 0.32, 0.31])
    assert mean == pytest.approx(0.31)
    assert std == pytest.approx(np.std([0.30, 0.32, 0.31], ddof=1))
    assert math.isnan(mean_std([0.3])[1])
    assert relative_change(0.33, 0.30) == pytest.approx(0.1)
    assert math.isnan(relative_change(0.1, 0.0))
