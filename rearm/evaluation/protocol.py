"""The evaluation / training protocol as a record: which items negatives avoid, which items are
masked when ranking for validation and for test, which users count, how ties and metrics are
defined. Runs store `Protocol.to_dict()` beside their metrics, so a number always says how it was
measured.

Two protocols are named: "standard" (no information from held-out splits reaches training or
ranking) and "reference" (what the published REARM code does, spec section 9).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import scipy.sparse as sp
import torch

from rearm.data.dataset import SPLITS, Dataset
from rearm.errors import ConfigError
from rearm.evaluation.metrics import METRIC_NAMES, ScoreFn, evaluate_model

HELDOUT_SPLITS = ("valid", "test")

METRIC_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("Recall", "hits in the top K / number of the user's held-out items"),
    (
        "NDCG",
        "sum over top-K positions j of rel_j / log2(j + 1), binary rel, divided by the ideal DCG "
        "over min(|held-out|, K) positions",
    ),
    ("Precision", "hits in the top K / K"),
    (
        "MAP",
        "sum over hit positions j <= K of (hits among the first j) / j, divided by "
        "min(|held-out|, K)",
    ),
    ("Hit", "1 if any held-out item is in the top K, else 0"),
)


@dataclass(frozen=True)
class Protocol:
    """How a model is trained on negatives and ranked at validation and test.

    Attributes:
        name: the protocol's name.
        description: one paragraph on what it is and why it exists (including its quirk).
        negative_exclusion: splits whose items a user's negatives never are.
        mask_at_valid: splits whose items are removed from the ranking at validation.
        mask_at_test: splits whose items are removed from the ranking at test.
        ks: metric cut-offs.
        selection_split, selection_metric: early stopping / model selection reads this metric
            on this split ("valid", "Recall@20"); test is computed only at the selected epoch.
        evaluated_users: which users are averaged over.
        tie_rule: how equal scores are ordered in a ranking.
        metrics: (metric name, definition) pairs.
        quirk: what differs from a clean protocol, or "" if nothing.
    """

    name: str
    description: str
    negative_exclusion: tuple[str, ...]
    mask_at_valid: tuple[str, ...]
    mask_at_test: tuple[str, ...]
    ks: tuple[int, ...] = (10, 20)
    selection_split: str = "valid"
    selection_metric: str = "Recall@20"
    evaluated_users: str = "users with >= 1 held-out item in the split"
    tie_rule: str = "lower item index first"
    metrics: tuple[tuple[str, str], ...] = field(default=METRIC_DEFINITIONS)
    quirk: str = ""

    def __post_init__(self) -> None:
        for attribute in ("negative_exclusion", "mask_at_valid", "mask_at_test"):
            splits = tuple(getattr(self, attribute))
            object.__setattr__(self, attribute, splits)
            unknown = [s for s in splits if s not in SPLITS]
            if unknown:
                raise ConfigError(
                    f"protocol {self.name!r}: {attribute} has unknown split(s) {unknown}; "
                    f"expected names from {', '.join(SPLITS)}"
                )
        ks = tuple(self.ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ConfigError(f"protocol {self.name!r}: ks must be positive integers, got {ks!r}")
        object.__setattr__(self, "ks", ks)
        object.__setattr__(self, "metrics", tuple((str(n), str(d)) for n, d in self.metrics))
        if self.selection_split not in HELDOUT_SPLITS:
            raise ConfigError(
                f"protocol {self.name!r}: selection_split must be one of "
                f"{', '.join(HELDOUT_SPLITS)}, got {self.selection_split!r}"
            )
        valid_names = {f"{m}@{k}" for m in METRIC_NAMES for k in ks}
        if self.selection_metric not in valid_names:
            raise ConfigError(
                f"protocol {self.name!r}: selection_metric {self.selection_metric!r} is not "
                f"computed; expected one of {', '.join(sorted(valid_names))}"
            )

    def negative_exclusion_matrix(self, dataset: Dataset) -> sp.csr_matrix:
        """Binary CSR [num_users, num_items]: the items a user's negatives must avoid."""
        return _union(dataset, self.negative_exclusion)

    def mask_matrix(self, dataset: Dataset, split: str) -> sp.csr_matrix:
        """Binary CSR [num_users, num_items]: the items removed from rankings when evaluating
        on `split` ("valid" or "test")."""
        if split == "valid":
            return _union(dataset, self.mask_at_valid)
        if split == "test":
            return _union(dataset, self.mask_at_test)
        raise ConfigError(f"unknown evaluation split {split!r}: expected one of valid, test")

    def evaluate(
        self,
        score_fn: ScoreFn,
        dataset: Dataset,
        split: str,
        batch_size: int = 1024,
        device: torch.device | str | None = None,
        per_user: bool = False,
    ) -> dict:
        """Metrics of `score_fn` (user LongTensor [B] -> scores [B, num_items]) on `split`,
        with this protocol's mask and cut-offs; see `evaluate_model` for the result."""
        exclude = self.mask_matrix(dataset, split)
        return evaluate_model(
            score_fn,
            dataset.split(split),
            exclude=exclude,
            ks=self.ks,
            batch_size=batch_size,
            device=device,
            per_user=per_user,
        )

    def to_dict(self) -> dict:
        """A JSON-able record (lists for tuples, the metric definitions as a mapping)."""
        record: dict = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "metrics":
                record[item.name] = dict(value)
            elif isinstance(value, tuple):
                record[item.name] = list(value)
            else:
                record[item.name] = value
        return record

    @classmethod
    def from_dict(cls, record: Mapping) -> Protocol:
        """Inverse of `to_dict`; unknown keys raise ConfigError."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ConfigError(
                f"unknown protocol field(s) {unknown}; expected fields from {sorted(known)}"
            )
        values = dict(record)
        for key in ("negative_exclusion", "mask_at_valid", "mask_at_test", "ks"):
            if key in values:
                values[key] = _as_tuple(values[key], key)
        if "metrics" in values:
            metrics = values["metrics"]
            values["metrics"] = tuple(
                metrics.items() if isinstance(metrics, Mapping) else (tuple(p) for p in metrics)
            )
        try:
            return cls(**values)
        except TypeError as error:  # a required field is missing
            raise ConfigError(f"incomplete protocol record: {error}") from None


PROTOCOLS: dict[str, Protocol] = {
    "standard": Protocol(
        name="standard",
        description=(
            "Negatives avoid only the user's train items. Validation ranks all items with the "
            "user's train items masked; test masks train and valid items, which are known "
            "interactions by then. No held-out information reaches training."
        ),
        negative_exclusion=("train",),
        mask_at_valid=("train",),
        mask_at_test=("train", "valid"),
    ),
    "reference": Protocol(
        name="reference",
        description=(
            "The published REARM code: negatives avoid the user's train, valid and test items; "
            "validation and test both mask only the user's train items."
        ),
        negative_exclusion=("train", "valid", "test"),
        mask_at_valid=("train",),
        mask_at_test=("train",),
        quirk=(
            "negative sampling excludes valid and test items, which leaks held-out information "
            "into training; at test the user's valid items stay in the ranking (not masked), "
            "so they compete with test items"
        ),
    ),
}


def get_protocol(name: str) -> Protocol:
    """The named protocol ("standard" or "reference"); unknown names raise ConfigError."""
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown protocol {name!r}: expected one of {', '.join(PROTOCOLS)}"
        ) from None


def _union(dataset: Dataset, splits: Sequence[str]) -> sp.csr_matrix:
    """Binary CSR union of the named splits of `dataset`."""
    shape = (dataset.num_users, dataset.num_items)
    total = sp.csr_matrix(shape, dtype=np.float32)
    for split in splits:
        total = total + dataset.split(split)
    total = sp.csr_matrix(total)
    total.sum_duplicates()
    total.eliminate_zeros()
    total.sort_indices()
    return sp.csr_matrix((np.ones(total.nnz, dtype=np.float32), total.indices, total.indptr), shape)


def _as_tuple(value: object, key: str) -> tuple:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"protocol field {key!r} must be a list, got {value!r}")
    return tuple(value)
