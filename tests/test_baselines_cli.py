"""Every baseline through the command line: `rearm train --model NAME` writes the same run
directory as REARM, and `rearm evaluate` / `rearm recommend` work from its bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from contract import planted_dataset

from rearm.cli import main
from rearm.data.synth import dataset_to_pairs

BASELINES = ["mf", "lightgcn", "vbpr", "freedom", "bm3", "dragon", "mgcn", "lgmrec"]
RUN_FILES = ["config.yaml", "protocol.json", "metrics.jsonl", "results.json", "checkpoint.pt"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """The planted data set written in the REARM layout, by hand (as a user would)."""
    folder = tmp_path_factory.mktemp("planted")
    dataset = planted_dataset()
    for split, pairs in dataset_to_pairs(dataset).items():
        np.save(folder / f"{split}.npy", pairs)
    for name, table in dataset.features.items():
        np.save(folder / f"{name}_feat.npy", table)
    return str(folder)


@pytest.mark.parametrize("name", BASELINES)
def test_train_evaluate_recommend(name: str, data_dir: str, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code = main(
        ["train", "--model", name, "--data", data_dir, "--epochs", "2", "--out", str(run)]
        + ["--set", "embedding_dim=16", "--quiet"]
    )
    assert code == 0
    for file_name in RUN_FILES:
        assert (run / file_name).is_file(), file_name
    assert (run / "model" / "bundle.json").is_file()
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == name and results["epochs_run"] == 2
    assert 0.0 <= results["test"]["Recall@20"] <= 1.0
    capsys.readouterr()

    assert main(["evaluate", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["model"] == name
    # the bundle reproduces the run's own test metrics exactly
    assert evaluated["Recall@20"] == results["test"]["Recall@20"]

    assert main(["recommend", str(run), "--users", "0,5", "-k", "3", "--json"]) == 0
    recommended = json.loads(capsys.readouterr().out)["recommendations"]
    train = planted_dataset().train
    for entry in recommended:
        seen = set(train[int(entry["user"])].indices.tolist())
        assert len(entry["items"]) == 3 and not seen & set(entry["items"])
