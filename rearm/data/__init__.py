"""Where data comes from: the Dataset representation, readers for the common layouts, the
dataset card, the synthetic default data set, negative sampling and the graph cache."""

from rearm.data.corrupt import corrupt_dataset, corrupt_features
from rearm.data.dataset import SPLITS, Dataset, check_features
from rearm.data.describe import describe, modality_stats
from rearm.data.readers import FORMATS, detect_format, load_dataset
from rearm.data.synth import (
    make_synthetic,
    parse_modalities,
    parse_modality_spec,
    parse_synthetic_recipe,
    write_rearm_layout,
)
from rearm.errors import DataError

__all__ = [
    "FORMATS",
    "SPLITS",
    "DataError",
    "Dataset",
    "check_features",
    "corrupt_dataset",
    "corrupt_features",
    "describe",
    "detect_format",
    "load_dataset",
    "make_synthetic",
    "modality_stats",
    "parse_modalities",
    "parse_modality_spec",
    "parse_synthetic_recipe",
    "write_rearm_layout",
]
