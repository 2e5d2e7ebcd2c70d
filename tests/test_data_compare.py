"""`rearm data compare`: items matched by id (i_id_mapping.csv) or index, per-modality cosine
between matching rows and kNN overlap, checked against naive versions and known cases."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from amazon_raw import make_reviews, write_2014, write_image_features

from rearm.data.compare import compare_datasets, compare_features, top_k_neighbours
from rearm.data.prepare import prepare_amazon, read_id_mapping
from rearm.errors import DataError


def naive_top_k(features, k):
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-30)
    unit[np.linalg.norm(features, axis=1) == 0] = 0
    result = []
    for i in range(len(unit)):
        scored = [(-round(float(unit[i] @ unit[j]), 6), j) for j in range(len(unit)) if j != i]
        result.append([j for _, j in sorted(scored)[:k]])
    return np.array(result)


def test_top_k_matches_naive_with_ties():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((60, 5)).astype(np.float32)
    features[10:20] = features[0]  # exact ties
    features[30] = 0.0  # an all-zero row
    np.testing.assert_array_equal(top_k_neighbours(_unit(features), 7), naive_top_k(features, 7))


def _unit(features):
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def test_compare_features_known_cases():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 8)).astype(np.float32)
    same = compare_features(a, 3 * a, k=5)
    assert same["cosine"]["min"] == pytest.approx(1.0, abs=1e-6) and same["knn_overlap"] == 1.0
    other = compare_features(a, rng.standard_normal((50, 8)).astype(np.float32), k=5)
    assert abs(other["cosine"]["mean"]) < 0.3 and other["knn_overlap"] < 0.4
    wider = compare_features(a, np.hstack([a, np.zeros((50, 3), np.float32)]), k=5)
    assert wider["cosine"] is None and wider["knn_overlap"] == 1.0


@pytest.fixture(scope="module")
def two_prepared(tmp_path_factory):
    """A: 5-core with published image features; B: 3-core (more items) with the same vectors
    plus small noise."""
    folder = tmp_path_factory.mktemp("compare")
    reviews, meta = write_2014(folder / "raw")
    items = sorted({item for _, item, _ in make_reviews(0)})
    vectors = write_image_features(folder / "a.b", items)
    rng = np.random.default_rng(5)
    with open(folder / "b.b", "wb") as handle:
        for item, vector in vectors.items():
            handle.write(item.encode().ljust(10))
            noisy = vector + 0.01 * rng.standard_normal(4096).astype(np.float32)
            handle.write(noisy.astype("<f4").tobytes())
    from rearm.data.prepare import image as image_step

    original = image_step.PUBLISHED_DIM
    image_step.read_published_features.__defaults__ = (32,)
    try:
        prepare_amazon(reviews, meta, folder / "A", image_features=folder / "a.b", text=False)
        prepare_amazon(reviews, meta, folder / "B", image_features=folder / "b.b", text=False, k=3)
    finally:
        image_step.read_published_features.__defaults__ = (original,)
    return folder / "A", folder / "B"


def test_compare_prepared_by_item_id(two_prepared, run_cli):
    a, b = two_prepared
    result = compare_datasets(a, b, k=5)
    ids_a, ids_b = read_id_mapping(a / "i_id_mapping.csv"), read_id_mapping(b / "i_id_mapping.csv")
    assert len(ids_b) > len(ids_a)
    assert result["items"]["shared"] == len(set(ids_a) & set(ids_b)) == len(ids_a)
    assert result["items"]["matched_by"].startswith("item id")
    image = result["modalities"]["image"]
    assert 0.99 < image["cosine"]["min"] <= 1.0
    assert image["knn_overlap"] > 0.8
    code, out, err = run_cli("data", "compare", a, b, "--k", "5")
    assert code == 0, err
    assert "image: cosine mean" in out and "kNN overlap @5" in out
    code, out, _ = run_cli("data", "compare", a, b, "--k", "5", "--json")
    assert json.loads(out)["modalities"]["image"]["knn_overlap"] == image["knn_overlap"]


def test_compare_by_index_and_errors(rearm_dir, tmp_path, two_prepared, run_cli):
    copy = tmp_path / "copy"
    shutil.copytree(rearm_dir, copy)
    result = compare_datasets(rearm_dir, copy, k=3)
    assert result["items"]["matched_by"].startswith("index")
    assert result["modalities"]["text"]["cosine"]["mean"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="no i_id_mapping.csv"):
        compare_datasets(rearm_dir, two_prepared[0])
    code, _, err = run_cli("data", "compare", rearm_dir, copy, "--k", "0")
    assert code == 2 and "--k" in err


def test_id_mapping_comma_or_tab(tmp_path):
    (tmp_path / "a.csv").write_text("item,itemID\nB2,1\nB1,0\n")
    (tmp_path / "b.csv").write_text("asin\titemID\nB1\t0\nB2\t1\n")
    assert read_id_mapping(tmp_path / "a.csv").tolist() == ["B1", "B2"]
    assert read_id_mapping(tmp_path / "b.csv").tolist() == ["B1", "B2"]
    (tmp_path / "c.csv").write_text("item,itemID\nB1,0\nB2,0\n")
    with pytest.raises(DataError, match="0..n-1"):
        read_id_mapping(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("item,itemID\nB1,0\nB1,1\n")
    with pytest.raises(DataError, match="id 'B1' is mapped 2 times"):
        read_id_mapping(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_bytes("item,itemID\ncaf\u00e9,0\n".encode("latin-1"))
    with pytest.raises(DataError, match="e.csv: not a UTF-8 text file"):
        read_id_mapping(tmp_path / "e.csv")


def test_a_mapping_of_another_data_set_is_refused(two_prepared, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(two_prepared[1], other)
    mapping = other / "i_id_mapping.csv"
    lines = mapping.read_text().splitlines()
    mapping.write_text("\n".join(lines[:-1]) + "\n")  # one item fewer than the data set has
    with pytest.raises(DataError, match="i_id_mapping.csv: maps .* item ids but its data set has"):
        compare_datasets(two_prepared[0], other)
