"""`rearm train / evaluate / recommend` end to end on a small planted data set: run directory
contents, evaluation reproduced from the bundle, recommendations, config errors, determinism,
early stopping and Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rearm.data.synth import make_synthetic, write_rearm_layout

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
def trained(small_data, tmp_path_factory) -> Path:
    from rearm.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", "--data", str(small_data), "--epochs", "3", "--out", str(out), *FAST])
    assert code == 0
    return out


def test_run_directory_records_everything(trained):
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["model"] == "rearm" and config["training"]["epochs"] == 3
    assert config["training"]["learning_rate"] == 0.01
    assert config["hyperparameters"]["num_layers"] == 4  # fully resolved defaults
    protocol = json.loads((trained / "protocol.json").read_text())
    assert protocol["name"] == "standard"
    assert protocol["negative_exclusion"] == ["train"]
    assert protocol["mask_at_test"] == ["train", "valid"]
    assert {"train", "valid", "test"} <= set(protocol["data"]["files"])
    assert all(len(f["sha256"]) == 64 for f in protocol["data"]["files"].values())
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert {"loss_bpr", "loss_contrastive", "loss_orthogonal", "valid", "train_s", "eval_s"} <= set(
        lines[0]
    )
    results = json.loads((trained / "results.json").read_text())
    for split in ("valid", "test"):
        assert {"Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "Precision@20", "MAP@20"} <= set(
            results[split]
        )
    assert results["epochs_run"] == 3 and 1 <= results["best_epoch"] <= 3
    assert {"graphs_s", "train_epoch_s", "eval_s", "total_s"} <= set(results["timing"])
    assert results["peak_rss_mb"] > 0
    best = lines[results["best_epoch"] - 1]["valid"]
    assert best["Recall@20"] == pytest.approx(results["valid"]["Recall@20"], abs=1e-6)
    assert (trained / "model" / "bundle.json").is_file() and (trained / "checkpoint.pt").is_file()


def test_evaluate_reproduces_training_metrics(trained, run_cli):
    results = json.loads((trained / "results.json").read_text())
    for split in ("valid", "test"):
        code, out, _ = run_cli("evaluate", trained, "--split", split, "--json")
        assert code == 0
        metrics = json.loads(out)
        for name, value in results[split].items():
            assert metrics[name] == value, (split, name)


def test_evaluate_and_recommend_in_a_fresh_process_without_the_data(trained, small_data, tmp_path):
    moved = tmp_path / "elsewhere"
    small_data.rename(moved)  # the bundle must not need the training data files
    try:
        env = dict(os.environ)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rearm.cli",
                "recommend",
                str(trained),
                "--users",
                "0,5",
                "-k",
                "4",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        moved.rename(small_data)
    assert done.returncode == 0, done.stderr
    recommendations = json.loads(done.stdout)["recommendations"]
    assert [r["user"] for r in recommendations] == ["0", "5"]
    train = np.load(small_data / "train.npy")
    for entry in recommendations:
        seen = set(train[1][train[0] == int(entry["user"])].tolist())
        assert len(entry["items"]) == 4 and not seen & set(entry["items"])
        assert entry["scores"] == sorted(entry["scores"], reverse=True)


def test_recommend_unknown_user_is_a_clear_error(trained, run_cli):
    code, _, err = run_cli("recommend", trained, "--users", "0,99999")
    assert code == 2 and "unknown user id '99999'" in err and "Traceback" not in err


def test_recommend_exclude_leaves_out_the_given_items(trained, run_cli):
    code, out, _ = run_cli("recommend", trained, "--users", "3", "-k", "5", "--json")
    assert code == 0
    first = json.loads(out)["recommendations"][0]["items"]
    dropped = [str(first[0]), str(first[2])]
    code, out, _ = run_cli(
        "recommend", trained, "--users", "3", "-k", "5", "--json", "--exclude", ",".join(dropped)
    )
    assert code == 0
    again = json.loads(out)["recommendations"][0]["items"]
    assert [i for i in first if str(i) not in dropped] == again[:3] and len(again) == 5
    assert not {str(i) for i in again} & set(dropped)


def test_recommend_unknown_excluded_item_is_a_clear_error(trained, run_cli):
    code, _, err = run_cli("recommend", trained, "--users", "3", "--exclude", "123456")
    assert code == 2 and "unknown item id '123456'" in err and "Traceback" not in err


def test_evaluate_missing_run_is_a_clear_error(tmp_path, run_cli):
    code, _, err = run_cli("evaluate", tmp_path / "nope")
    assert code == 2 and "run directory not found" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "no_such_key=1"], "no_such_key: unknown key"),
        (["--set", "rank=abc"], "rank must be int"),
        (["--set", "learning_rate=fast"], "learning_rate must be float"),
        (["--set", "no_meta=1"], "no_meta must be bool"),
        (["--preset", "moon"], "unknown preset 'moon'"),
        (["--epochs", "0"], "epochs must be int in [1, inf), got 0"),
        (["--set", "cooccurrence_weighting=cubic"], "cooccurrence_weighting must be one of"),
    ],
)
def test_bad_configuration_exits_2_with_the_key_named(small_data, tmp_path, run_cli, args, message):
    code, _, err = run_cli("train", "--data", small_data, "--out", tmp_path / "r", "--quiet", *args)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "results.json").exists()


def test_config_file_unknown_key_and_override_order(small_data, tmp_path, run_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: 2\nbogus: 1\n")
    code, _, err = run_cli("train", "--data", small_data, "--config", bad, "--out", tmp_path / "r")
    assert code == 2 and "bad.yaml: unknown key 'bogus'" in err

    from rearm.experiments.config import resolve_config

    good = tmp_path / "good.yaml"
    good.write_text("preset: baby\ntraining:\n  epochs: 7\nhyperparameters:\n  rank: 5\n")
    config = resolve_config(config_file=str(good), overrides=["rank=6"], epochs=9)
    assert config.training["epochs"] == 9  # explicit flag beats file
    assert config.hyperparameters["rank"] == 6  # --set beats file beats preset
    assert config.training["weight_decay"] == 5e-4  # from the baby preset
    assert config.hyperparameters["user_knn_k"] == 40


def test_existing_run_is_not_overwritten_without_force(trained, small_data, run_cli):
    code, _, err = run_cli("train", "--data", small_data, "--out", trained, "--quiet")
    assert code == 2 and "already holds a run" in err


def test_same_seed_same_metrics_and_reference_protocol_recorded(small_data, tmp_path, run_cli):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, _, _ = run_cli(
            "train",
            "--data",
            small_data,
            "--epochs",
            "2",
            "--out",
            out,
            "--protocol",
            "reference",
            *FAST,
        )
        assert code == 0
        outs.append(json.loads((out / "results.json").read_text()))
    assert outs[0]["test"] == outs[1]["test"]
    protocol = json.loads((tmp_path / "a" / "protocol.json").read_text())
    assert protocol["negative_exclusion"] == ["train", "valid", "test"]
    assert any(note.startswith("protocol reference:") for note in outs[0]["notes"])
    assert protocol["mask_at_test"] == ["train"]


def _fit_small(**kwargs):
    from rearm.evaluation.protocol import get_protocol
    from rearm.models.mf import MF
    from rearm.training.trainer import Progress, fit, seed_everything

    dataset = make_synthetic(
        num_users=60, num_items=40, modalities={"text": 4}, seed=1, interactions_per_user=6
    )
    seed_everything(0)
    model = MF.from_dataset(dataset)
    options = dict(
        epochs=6,
        patience=20,
        batch_size=64,
        learning_rate=0.01,
        weight_decay=0.0,
        seed=0,
        progress=Progress(enabled=False),
    )
    options.update(kwargs)
    return model, fit(model, dataset, get_protocol("standard"), **options)


def test_early_stopping_with_patience():
    _, result = _fit_small(learning_rate=0.0, patience=1)
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1


def test_ctrl_c_keeps_the_best_epoch():
    calls = []

    def interrupt(record):
        calls.append(record.epoch)
        if record.epoch == 2:
            raise KeyboardInterrupt

    _, result = _fit_small(on_epoch_end=interrupt)
    assert result.interrupted and result.epochs_run == 2 and calls == [1, 2]
    assert result.best_epoch in (1, 2)


def test_cuda_without_a_gpu_is_a_clear_error_and_writes_nothing(small_data, tmp_path, run_cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(
        "train", "--data", small_data, "--device", "cuda", "--out", tmp_path / "r", "--quiet"
    )
    assert code == 2 and "CUDA is not available" in err
    assert not (tmp_path / "r").exists()


def test_later_improvements_copy_into_the_one_best_state(monkeypatch):
    """Each new best is copied into the first copy (no second copy alive), and the model that fit
    returns is the best epoch's state, not the last one's."""
    import copy as copy_module

    import torch

    import rearm.training.trainer as trainer

    recalls = iter([0.1, 0.2, 0.3, 0.05, 0.04, 0.03])

    def scripted(model, dataset, protocol, split, batch_size=1024):
        return {"Recall@20": next(recalls), "NDCG@20": 0.0}

    copies = []
    real_deepcopy = copy_module.deepcopy

    def counting_deepcopy(value, *args):
        copies.append(type(value).__name__)
        return real_deepcopy(value, *args)

    snapshots = {}

    def snapshot(record, model):
        snapshots[record.epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(trainer, "evaluate_split", scripted)
    monkeypatch.setattr(trainer.copy, "deepcopy", counting_deepcopy)
    model, result = _fit_small(on_improve=snapshot)
    assert result.best_epoch == 3 and sorted(snapshots) == [1, 2, 3]
    assert copies.count("OrderedDict") == 1  # the first improvement only
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[3][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[1][k]) for k in final)
