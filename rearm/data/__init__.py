"""Where data comes from: the Dataset representation, readers for the common layouts, the
synthetic default data set, negative sampling and the graph cache."""

from rearm.data.dataset import SPLITS, Dataset, check_features
from rearm.errors import DataError

__all__ = ["SPLITS", "DataError", "Dataset", "check_features"]
