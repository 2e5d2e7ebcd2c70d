"""Analyses of saved runs, as pure functions of model bundles (rearm.experiments.bundle):
the interaction-probability heatmap and its summary (paper Fig. 5), the AUC, and the
decomposition of the score into the blocks of the representation.
Pictures are drawn by rearm.analysis.plot (optional matplotlib)."""

from rearm.analysis.auc import auc
from rearm.analysis.contributions import (
    block_alone,
    block_shares,
    block_terms,
    contributions,
    score_blocks,
)
from rearm.analysis.heatmap import (
    HeatmapSample,
    check_same_data,
    heatmap_summary,
    probability_matrix,
    sample_heatmap,
    score_matrix,
)

__all__ = [
    "HeatmapSample",
    "auc",
    "block_alone",
    "block_shares",
    "block_terms",
    "check_same_data",
    "contributions",
    "heatmap_summary",
    "probability_matrix",
    "sample_heatmap",
    "score_blocks",
    "score_matrix",
]
