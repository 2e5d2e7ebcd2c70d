"""`rearm recommend --items` (new users folded in) on a small trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.experiments.bundle import load_bundle

FAST = ["--quiet", "--set", "learning_rate=0.01", "--set", "batch_size=256"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    dataset = make_synthetic(
        num_users=120,
        num_items=60,
        modalities={"image": 16, "text": 8},
        seed=3,
        interactions_per_user=10,
    )
    folder = tmp_path_factory.mktemp("small") / "data"
    write_rearm_layout(dataset, folder)
    return folder


@pytest.fixture(scope="module")
def mf_run(small_data, tmp_path_factory) -> Path:
    from rearm.cli import main

    out = tmp_path_factory.mktemp("runs") / "mf"
    args = ["train", "--model", "mf", "--data", small_data, "--epochs", "2", "--out", out]
    assert main([str(a) for a in [*args, *FAST]]) == 0
    return out


def test_recommend_items_equals_the_api_and_excludes_the_items(mf_run, run_cli):
    code, out, err = run_cli(
        "recommend", mf_run, "--items", "3,5,8", "-k", "7", "--exclude", "10", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["from_items"] == ["3", "5", "8"] and result["k"] == 7
    assert len(result["items"]) == 7
    assert not {3, 5, 8, 10} & set(result["items"])
    expected = load_bundle(mf_run).recommend_from_items(["3", "5", "8"], k=7, exclude=["10"])
    assert result["items"] == expected["items"]
    assert result["scores"] == pytest.approx(expected["scores"], rel=1e-6)
    code, out, _ = run_cli("recommend", mf_run, "--items", "3,5,8", "-k", "3")
    assert code == 0 and out.startswith("new user from 3 item(s): 3, 5, 8")
    assert len(out.strip().splitlines()) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--items", "3,99999"], "unknown item id '99999'"),
        (["--items", " , "], "--items: give at least one item id"),
        (["--items", "3", "-k", "0"], "-k must be >= 1"),
        (["--items", "3", "--exclude", "77777"], "unknown item id '77777'"),
    ],
)
def test_recommend_items_errors_are_one_line(mf_run, run_cli, args, message):
    code, out, err = run_cli("recommend", mf_run, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_users_and_items_are_mutually_exclusive(mf_run, run_cli):
    code, _, err = run_cli("recommend", mf_run, "--users", "1", "--items", "3")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run_cli("recommend", mf_run)
    assert code == 2 and "one of the arguments --users --items is required" in err


# ------------------------------------------------------------------------------------------
# add-items


@pytest.fixture(scope="module")
def rearm_run(small_data, tmp_path_factory) -> Path:
    from rearm.cli import main

    out = tmp_path_factory.mktemp("runs") / "rearm"
    args = [
        "train",
        "--data",
        small_data,
        "--epochs",
        "2",
        "--out",
        out,
        "--set",
        "embedding_dim=16",
    ]
    assert main([str(a) for a in [*args, *FAST]]) == 0
    return out


def write_new_items(folder: Path, source: Path, rows, ids=None) -> Path:
    """New items whose features copy rows `rows` of the training data's features."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("image", "text"):
        np.save(folder / f"{name}_feat.npy", np.load(source / f"{name}_feat.npy")[rows])
    ids = ids if ids is not None else [f"new{i}" for i in range(len(rows))]
    (folder / "item_ids.txt").write_text("".join(f"{x}\n" for x in ids))
    return folder


def test_add_items_round_trip(rearm_run, small_data, tmp_path, run_cli):
    popular = np.argsort(-np.bincount(np.load(small_data / "train.npy")[1]))[:4]
    new = write_new_items(tmp_path / "new", small_data, popular)
    out = tmp_path / "extended"
    code, stdout, err = run_cli("add-items", rearm_run, "--features", new, "--out", out)
    assert code == 0, err
    assert json.loads(stdout)["added"] == 4
    old, extended = load_bundle(rearm_run), load_bundle(out)
    assert extended.num_items == old.num_items + 4 == 64
    assert extended.item_ids[-4:] == ["new0", "new1", "new2", "new3"]
    np.testing.assert_array_equal(extended.item_repr[:60], old.item_repr)
    np.testing.assert_array_equal(extended.user_repr, old.user_repr)
    record = extended.meta["added_items"]
    assert record["count"] == 4 and record["from_run"] == str(rearm_run)
    choice = record["choice"]  # --method auto: chosen on the run's own items made cold
    assert set(choice["valid_recall_at_20"]) == {
        "features",
        "neighbours(k=3)",
        "neighbours(k=10)",
        "neighbours(k=30)",
    }
    assert choice["valid_recall_at_20"][choice["label"]] == max(
        choice["valid_recall_at_20"].values()
    )
    assert record["method"] == choice["method"] and choice["items"] > 0
    assert set(record["features"]) == {"item_ids.txt", "image_feat.npy", "text_feat.npy"}
    from rearm.experiments.coldstart import (
        cold_item_table,
        feature_path_table,
        load_run_dataset,
        neighbour_rows,
        rebuild_model,
    )

    config = old.meta["config"]
    dataset = load_run_dataset(rearm_run, config)
    features = {m: dataset.features[m][popular] for m in ("image", "text")}
    model = rebuild_model(rearm_run / "model", config, dataset)
    expected = cold_item_table(
        model, features, dataset, config, old.item_repr, choice["method"], choice["neighbours"]
    )
    np.testing.assert_allclose(extended.item_repr[60:], expected, rtol=1e-5)
    # --method neighbours: the trained rows of the 10 most feature-similar items
    code, stdout, err = run_cli(
        "add-items", rearm_run, "--features", new, "--out", tmp_path / "n", "--method", "neighbours"
    )
    assert code == 0 and json.loads(stdout)["method"] == "neighbours", err
    np.testing.assert_allclose(
        load_bundle(tmp_path / "n").item_repr[60:],
        neighbour_rows(features, dataset.features, old.item_repr, 10),
    )
    # --method features: the model's own feature path (no ID, no edges: not a copy)
    code, stdout, err = run_cli(
        "add-items", rearm_run, "--features", new, "--out", tmp_path / "f", "--method", "features"
    )
    assert code == 0 and json.loads(stdout)["method"] == "features", err
    path = load_bundle(tmp_path / "f").item_repr[60:]
    np.testing.assert_allclose(
        path, feature_path_table(model, features, dataset, config), rtol=1e-5
    )
    assert not np.allclose(path, old.item_repr[popular], atol=1e-3)
    # served like any item: recommend (every item ranked), recommend --items, exclusion
    code, stdout, err = run_cli("recommend", out, "--users", "0,1", "-k", "64", "--json")
    assert code == 0, err
    for entry in json.loads(stdout)["recommendations"]:
        assert {"new0", "new1", "new2", "new3"} <= set(entry["items"])
    result = extended.recommend_from_items(["new0", "3"], k=5, exclude=["new1"])
    assert not {"new0", "3", "new1"} & set(result["items"])
    code, _, err = run_cli("evaluate", out, "--json")
    assert code == 0, err
    # no chained additions
    code, _, err = run_cli("add-items", out, "--features", new, "--out", tmp_path / "again")
    assert code == 2 and "already extends another run" in err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "item_ids.txt").unlink(), "item_ids.txt: missing"),
        (lambda d: (d / "item_ids.txt").write_text("a\na\nb\n"), "item id 'a' is repeated"),
        (lambda d: (d / "item_ids.txt").write_text("a\n7\nb\n"), "item id '7' is already in"),
        (lambda d: (d / "item_ids.txt").write_text("a\n\nb\n"), "line 2 is empty"),
        (lambda d: (d / "item_ids.txt").write_text("a\nb\n"), "has 3 rows but the data set has 2"),
        (lambda d: (d / "text_feat.npy").unlink(), "text_feat.npy: missing"),
        (lambda d: np.save(d / "audio_feat.npy", np.ones((3, 2))), "modality 'audio' is not one"),
        (lambda d: np.save(d / "text_feat.npy", np.ones((3, 5))), "is 5-d, the run's is 8-d"),
        (lambda d: np.save(d / "text_feat.npy", np.full((3, 8), np.nan)), "contains NaN"),
        (lambda d: (d / "image_feat.npy").write_text("no array"), "not a readable .npy"),
    ],
)
def test_add_items_bad_feature_folders(rearm_run, small_data, tmp_path, run_cli, damage, message):
    new = write_new_items(tmp_path / "new", small_data, [1, 2, 3], ids=["a", "b", "c"])
    damage(new)
    out = tmp_path / "extended"
    code, stdout, err = run_cli("add-items", rearm_run, "--features", new, "--out", out, "--quiet")
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_add_items_for_models_without_features(mf_run, small_data, tmp_path, run_cli):
    """mf has no feature path: --method features is refused, the neighbours method works from
    its trained table and the data's features; bad --neighbours is one line."""
    new = write_new_items(tmp_path / "new", small_data, [1])
    args = ["add-items", mf_run, "--features", new, "--quiet"]
    code, _, err = run_cli(*args, "--out", tmp_path / "x", "--method", "features")
    assert code == 2 and err.count("\n") == 1
    assert "mf has no item features" in err and "--method neighbours" in err
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(
        *args, "--out", tmp_path / "y", "--method", "neighbours", "--neighbours", "0"
    )
    assert code == 2 and err.count("\n") == 1 and "--neighbours must be a positive" in err
    code, _, err = run_cli(*args, "--out", tmp_path / "y", "--neighbours", "5")
    assert code == 2 and err.count("\n") == 1 and "--method auto chooses k itself" in err
    code, _, err = run_cli(*args, "--out", tmp_path / "auto")
    assert code == 0, err
    choice = load_bundle(tmp_path / "auto").meta["added_items"]["choice"]
    assert "features" not in choice["valid_recall_at_20"] and choice["method"] == "neighbours"
    code, _, err = run_cli(
        *args, "--out", tmp_path / "z", "--method", "neighbours", "--neighbours", "1"
    )
    assert code == 0, err
    extended, old = load_bundle(tmp_path / "z"), load_bundle(mf_run)
    assert extended.num_items == old.num_items + 1
    # item 1's own features: with one neighbour, item 1's trained row
    np.testing.assert_allclose(extended.item_repr[-1], old.item_repr[1], rtol=1e-6)


def test_add_items_needs_the_runs_data(rearm_run, small_data, tmp_path, run_cli):
    new = write_new_items(tmp_path / "new", small_data, [1])
    other = tmp_path / "other"
    other.mkdir()
    for name in ("train", "valid", "test", "image_feat", "text_feat"):
        np.save(other / f"{name}.npy", np.load(small_data / f"{name}.npy"))
    train = np.load(small_data / "train.npy")
    np.save(other / "train.npy", train[:, 1:])
    code, _, err = run_cli(
        "add-items",
        rearm_run,
        "--features",
        new,
        "--out",
        tmp_path / "x",
        "--data",
        other,
        "--quiet",
    )
    assert code == 2 and "not the data" in err and err.count("\n") == 1
    code, _, err = run_cli("add-items", rearm_run, "--features", new, "--out", rearm_run)
    assert code == 2 and "must differ" in err
