"""The area under the ROC curve of two score samples, by the rank-sum (Mann-Whitney) formula."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half.

    With n_p positives, n_n negatives and R the sum of the positives' ranks in the pooled sample
    (1 = lowest, tied values sharing their average rank):
        AUC = (R - n_p (n_p + 1) / 2) / (n_p n_n),
    which equals the fraction of (positive, negative) pairs ordered correctly, a tie counting 1/2.
    O((n_p + n_n) log(n_p + n_n)) time. ValueError if a sample is empty or holds NaN.
    """
    positive = np.asarray(positive, dtype=np.float64).ravel()
    negative = np.asarray(negative, dtype=np.float64).ravel()
    if positive.size == 0 or negative.size == 0:
        raise ValueError(
            f"auc needs at least one positive and one negative (got {positive.size} and "
            f"{negative.size})"
        )
    if np.isnan(positive).any() or np.isnan(negative).any():
        raise ValueError("auc: scores hold NaN")
    ranks = rankdata(np.concatenate([positive, negative]), method="average")
    n_pos, n_neg = positive.size, negative.size
    rank_sum = ranks[:n_pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
