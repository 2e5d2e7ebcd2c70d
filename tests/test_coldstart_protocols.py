"""The cold-users and cold-items protocols at a tiny size: held-out draws, what is trained on,
the reported rows, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.experiments.coldstart import (
    cold_items_protocol,
    cold_users_protocol,
    content_knn_scores,
    subset_items,
    subset_users,
)
from rearm.experiments.config import resolve_config
from rearm.training.trainer import Progress

QUICK = ["learning_rate=0.01", "batch_size=256"]


@pytest.fixture(scope="module")
def small():
    return make_synthetic(
        num_users=150,
        num_items=80,
        modalities={"image": 16, "text": 8},
        seed=5,
        interactions_per_user=10,
    )


def quiet():
    return Progress(enabled=False)


def test_subsets_keep_the_rest_intact(small):
    users = np.array([0, 3, 7])
    part = subset_users(small, users)
    assert part.num_users == 3 and part.num_items == small.num_items
    assert (part.train != small.train[users]).nnz == 0
    items = np.arange(0, 80, 2)
    part = subset_items(small, items)
    assert part.num_items == 40 and part.features["image"].shape == (40, 16)
    np.testing.assert_array_equal(part.features["text"], small.features["text"][items])
    assert (part.test != small.test[:, items]).nnz == 0


def test_content_knn_is_the_mean_cosine_to_the_users_items(small):
    users = np.array([2])
    scores = content_knn_scores(users, small.train, small.features)
    items = small.train[2].indices
    expected = 0
    for table in small.features.values():
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)
        expected = expected + (unit @ unit[items].T).mean(axis=1)
    np.testing.assert_allclose(scores[0], expected / 2, rtol=1e-4, atol=1e-6)


def test_cold_users_protocol(small, tmp_path):
    config = resolve_config(model="mf", overrides=QUICK, epochs=2)
    record = cold_users_protocol(config, tmp_path / "out", dataset=small, progress=quiet())
    assert record["users"] == {"total": 150, "cold": 15, "warm": 135}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["users"] == record["users"]
    cold = record["cold_users"]
    assert {"mean", "popularity", "least_squares(confidence=1)"} <= set(cold)
    for row in cold.values():
        assert row["test"]["num_users"] == 15 and 0 <= row["test"]["Recall@20"] <= 1
    assert record["warm_users"]["trained"]["num_users"] == 135
    assert record["best_fold_in_by_valid"] in cold
    # the model never saw the held-out users: its bundle has the others only
    from rearm.experiments.bundle import load_bundle

    assert load_bundle(tmp_path / "out" / "run").num_users == 135
    # the same seed draws the same users; results are not overwritten without force
    with pytest.raises(Exception, match="already holds cold-start results"):
        cold_users_protocol(config, tmp_path / "out", dataset=small, progress=quiet())
    # --reuse evaluates the saved run again without training it (same numbers)
    stamp = (tmp_path / "out" / "run" / "model" / "weights.pt").stat().st_mtime_ns
    again = cold_users_protocol(
        config, tmp_path / "out", dataset=small, reuse=True, progress=quiet()
    )
    assert (tmp_path / "out" / "run" / "model" / "weights.pt").stat().st_mtime_ns == stamp
    assert again["cold_users"] == record["cold_users"]


@pytest.mark.parametrize("model", ["rearm", "vbpr", "freedom", "lightgcn"])
def test_cold_items_protocol(small, tmp_path, model):
    overrides = QUICK + (["embedding_dim=16"] if model == "rearm" else [])
    config = resolve_config(model=model, overrides=overrides, epochs=1)
    record = cold_items_protocol(
        config, tmp_path / "out", dataset=small, warm=model == "vbpr", progress=quiet()
    )
    assert record["items"]["cold"] == round(0.1 * (small.test.getnnz(axis=0) > 0).sum())
    rows = record["cold_items"]
    methods = {f"model neighbours(k={k})" for k in (3, 10, 30)}
    if model != "lightgcn":  # lightgcn has no feature path: the neighbour methods only
        methods.add("model features")
    assert set(rows) == methods | {"content_knn"} | (
        {"model_trained_warm"} if model == "vbpr" else set()
    )
    users = rows["content_knn"]["num_users"]
    assert users == record["evaluated_users"] > 0
    assert all(row["num_users"] == users for row in rows.values())
    among = record["cold_items_among_themselves"]
    assert set(among) == set(rows) == set(record["cold_items_valid"])
    # among the held-out items only, the same users find at least as much
    assert all(among[name]["Recall@20"] >= rows[name]["Recall@20"] for name in rows)
    valid = record["cold_items_valid"]
    best = record["best_cold_item_method_by_valid"]
    assert valid[f"model {best}"]["Recall@20"] == max(valid[m]["Recall@20"] for m in methods)
    choice = record["add_items_choice"]
    assert {f"model {label}" for label in choice["valid_recall_at_20"]} == methods
    assert set(record["evaluated_users_all_test_items"]) == set(rows)
    from rearm.experiments.bundle import load_bundle

    assert load_bundle(tmp_path / "out" / "run").num_items == 80 - record["items"]["cold"]


def test_cli_and_errors(small, tmp_path, run_cli):
    data = tmp_path / "data"
    write_rearm_layout(small, data)
    out = tmp_path / "users"
    args = ["--data", data, "--epochs", "1", "--quiet", "--set", "batch_size=256"]
    code, stdout, err = run_cli("coldstart", "users", "--model", "mf", *args, "--out", out)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["protocol"] == "cold_users" and summary["cold_users_test"]["num_users"] == 15
    code, _, err = run_cli("coldstart", "users", *args, "--out", out)
    assert code == 2 and "already holds cold-start results" in err and err.count("\n") == 1
    bare = tmp_path / "bare"
    write_rearm_layout(small, bare)
    for table in bare.glob("*_feat.npy"):
        table.unlink()
    code, _, err = run_cli("coldstart", "items", *args[2:], "--data", bare, "--out", tmp_path / "x")
    assert code == 2 and "has no item features" in err and err.count("\n") == 1
    assert not Path(tmp_path / "x").exists()
    code, _, err = run_cli(
        "coldstart", "users", "--fraction", "1.5", *args, "--out", tmp_path / "y"
    )
    assert code == 2 and "--fraction must be in (0, 1)" in err
    code, _, err = run_cli(
        "coldstart", "users", "--fraction", "0.001", *args, "--out", tmp_path / "z"
    )
    assert code == 2 and "holds out 0 of" in err
