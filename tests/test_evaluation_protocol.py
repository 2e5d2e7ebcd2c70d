"""The named protocols: their records and the matrices they derive from a data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from rearm.data.dataset import Dataset
from rearm.errors import ConfigError
from rearm.evaluation import PROTOCOLS, Protocol, evaluate_model, get_protocol


@pytest.fixture
def dataset() -> Dataset:
    pairs = {
        "train": np.array([[0, 0, 1, 2, 2], [0, 1, 2, 3, 4]]),
        "valid": np.array([[0, 1, 2], [2, 3, 5]]),
        "test": np.array([[0, 1], [3, 4]]),
    }
    return Dataset.from_pairs(pairs, num_users=3, num_items=6)


def dense(matrix: sp.csr_matrix) -> np.ndarray:
    assert sp.isspmatrix_csr(matrix) and matrix.has_sorted_indices
    assert set(np.unique(matrix.data)) <= {1.0}
    return matrix.toarray().astype(int)


def test_standard_protocol_matrices(dataset):
    protocol = get_protocol("standard")
    train, valid = dense(dataset.train), dense(dataset.valid)
    np.testing.assert_array_equal(dense(protocol.negative_exclusion_matrix(dataset)), train)
    np.testing.assert_array_equal(dense(protocol.mask_matrix(dataset, "valid")), train)
    np.testing.assert_array_equal(dense(protocol.mask_matrix(dataset, "test")), train + valid)


def test_reference_protocol_matrices(dataset):
    protocol = get_protocol("reference")
    train, valid, test = (dense(dataset.split(s)) for s in ("train", "valid", "test"))
    np.testing.assert_array_equal(
        dense(protocol.negative_exclusion_matrix(dataset)), train + valid + test
    )
    np.testing.assert_array_equal(dense(protocol.mask_matrix(dataset, "valid")), train)
    # The quirk: valid items stay in the test ranking.
    np.testing.assert_array_equal(dense(protocol.mask_matrix(dataset, "test")), train)
    assert "leak" in protocol.quirk


def test_record_round_trip_and_json():
    for name, protocol in PROTOCOLS.items():
        record = protocol.to_dict()
        assert record["name"] == name
        assert Protocol.from_dict(json.loads(json.dumps(record))) == protocol
        assert record["tie_rule"] == "lower item index first"
        assert record["selection_split"] == "valid" and record["selection_metric"] == "Recall@20"
        assert set(record["metrics"]) == {"Recall", "NDCG", "Precision", "MAP", "Hit"}
        assert record["ks"] == [10, 20]
        assert "held-out" in record["evaluated_users"]


def test_errors():
    with pytest.raises(ConfigError, match="standard, reference"):
        get_protocol("leaky")
    with pytest.raises(ConfigError, match="unknown protocol field"):
        Protocol.from_dict({**PROTOCOLS["standard"].to_dict(), "colour": "red"})
    with pytest.raises(ConfigError, match="unknown split"):
        Protocol("x", "", ("train", "tset"), ("train",), ("train",))
    with pytest.raises(ConfigError, match="selection_metric"):
        Protocol("x", "", ("train",), ("train",), ("train",), ks=(5,))
    with pytest.raises(ConfigError, match="valid, test"):
        PROTOCOLS["standard"].mask_matrix(Dataset.from_pairs(_tiny_pairs()), "train")


def test_custom_protocol_is_driven_by_its_tuples(dataset):
    protocol = Protocol(
        "none", "nothing masked", (), (), ("test",), ks=(2,), selection_metric="MAP@2"
    )
    assert protocol.negative_exclusion_matrix(dataset).nnz == 0
    np.testing.assert_array_equal(dense(protocol.mask_matrix(dataset, "test")), dense(dataset.test))


def test_evaluate_uses_the_split_and_mask(dataset):
    scores = torch.arange(6, dtype=torch.float32).flip(0).expand(3, 6)  # prefers low indices
    for protocol in PROTOCOLS.values():
        for split in ("valid", "test"):
            result = protocol.evaluate(lambda users: scores[users], dataset, split)
            expected = evaluate_model(
                lambda users: scores[users],
                dataset.split(split),
                protocol.mask_matrix(dataset, split),
                ks=protocol.ks,
            )
            assert result == expected
    # user 0 at test: standard masks train {0, 1} and valid {2}, so test item 3 ranks first;
    # reference keeps valid item 2 ahead of it.
    standard = PROTOCOLS["standard"].evaluate(lambda u: scores[u], dataset, "test", per_user=True)
    reference = PROTOCOLS["reference"].evaluate(lambda u: scores[u], dataset, "test", per_user=True)
    assert standard["per_user"]["NDCG@10"][0] == pytest.approx(1.0)
    assert reference["per_user"]["NDCG@10"][0] == pytest.approx(1 / np.log2(3))


def _tiny_pairs() -> dict[str, np.ndarray]:
    return {
        "train": np.array([[0], [0]]),
        "valid": np.array([[0], [1]]),
        "test": np.array([[0], [2]]),
    }
