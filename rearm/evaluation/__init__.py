"""How quality is measured: full-ranking top-K metrics and the named evaluation protocols."""

from rearm.evaluation.metrics import METRIC_NAMES, evaluate_model, rank_metrics
from rearm.evaluation.protocol import PROTOCOLS, Protocol, get_protocol

__all__ = [
    "METRIC_NAMES",
    "PROTOCOLS",
    "Protocol",
    "evaluate_model",
    "get_protocol",
    "rank_metrics",
]
