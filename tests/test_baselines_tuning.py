"""Baselines at full strength: MF's item bias and initialisation, the per-data-set presets, and the
validation-only tuning script (benchmarks/tune_baselines.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from contract import planted_dataset

from rearm.data.synth import dataset_to_pairs
from rearm.errors import ConfigError
from rearm.experiments.config import resolve_config
from rearm.models.mf import MF
from rearm.models.presets import PRESETS

BASELINES = ["mf", "lightgcn", "vbpr", "freedom"]
ROOT = Path(__file__).resolve().parents[1]


def _tune_module():
    spec = importlib.util.spec_from_file_location(
        "tune_baselines", ROOT / "benchmarks" / "tune_baselines.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mf_item_bias_is_part_of_the_score_and_of_embed() -> None:
    torch.manual_seed(0)
    model = MF(3, 4, embedding_dim=2, item_bias=True)
    with torch.no_grad():
        model.item_bias.weight.copy_(torch.tensor([[0.0], [5.0], [-1.0], [2.0]]))
    users = torch.tensor([0, 1, 2])
    expected = model.user_embedding(users) @ model.item_embedding.weight.T
    expected = expected + torch.tensor([0.0, 5.0, -1.0, 2.0])
    torch.testing.assert_close(model.score(users), expected)
    # with zero embeddings, the ranking is the bias order
    with torch.no_grad():
        model.item_embedding.weight.zero_()
    assert model.score(users)[0].argsort(descending=True).tolist() == [1, 3, 0, 2]
    # the biases of the batch's items are penalised with the embeddings
    model.reg_weight = 1.0
    terms = model.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    user_sq = model.user_embedding.weight[0].pow(2).sum()
    torch.testing.assert_close(terms["reg"], 0.5 * (user_sq + 25.0 + 1.0))


def test_mf_without_item_bias_has_no_bias_parameter() -> None:
    model = MF(3, 4, embedding_dim=2)
    assert model.item_bias is None
    assert model.embed()[1].shape == (4, 2)


def test_mf_init_std_sets_the_initial_scale() -> None:
    torch.manual_seed(0)
    small = MF(2000, 2000, embedding_dim=8, init_std=0.01)
    assert small.user_embedding.weight.std().item() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ConfigError, match="init_std"):
        MF.validate_hyperparameters({"init_std": 0.0})


@pytest.mark.parametrize("model", BASELINES)
@pytest.mark.parametrize("data_set", ["baby", "sports", "clothing"])
def test_every_baseline_has_a_valid_preset_per_data_set(model: str, data_set: str) -> None:
    assert data_set in PRESETS[model]
    config = resolve_config(model=model, preset=data_set)
    # the preset's keys reach the resolved config unchanged
    preset = PRESETS[model][data_set]
    for key, value in preset.get("hyperparameters", {}).items():
        assert config.hyperparameters[key] == value
    for key, value in preset.get("training", {}).items():
        assert config.training[key] == value


def test_grid_is_the_cartesian_product_in_order() -> None:
    tune = _tune_module()
    grid = tune.parse_grid(["reg_weight=0.01,0.1", "item_bias=false,true"])
    assert grid == {"reg_weight": [0.01, 0.1], "item_bias": [False, True]}
    assert tune.trial_settings(grid) == [
        {"reg_weight": 0.01, "item_bias": False},
        {"reg_weight": 0.01, "item_bias": True},
        {"reg_weight": 0.1, "item_bias": False},
        {"reg_weight": 0.1, "item_bias": True},
    ]
    with pytest.raises(ConfigError, match="--grid"):
        tune.parse_grid(["reg_weight"])


def test_tuning_selects_on_valid_and_tests_only_the_chosen_point(tmp_path) -> None:
    import numpy as np

    folder = tmp_path / "planted"
    folder.mkdir()
    for split, pairs in dataset_to_pairs(planted_dataset()).items():
        np.save(folder / f"{split}.npy", pairs)
    out = tmp_path / "study.json"
    tune = _tune_module()
    code = tune.main(
        [str(folder), "--model", "mf", "--grid", "learning_rate=0.0001,0.05"]
        + ["--set", "embedding_dim=8", "--epochs", "6", "--patience", "6", "--out", str(out)]
    )
    assert code == 0
    record = json.loads(out.read_text())
    trials = record["trials"]
    assert [t["settings"] for t in trials] == [{"learning_rate": 0.0001}, {"learning_rate": 0.05}]
    assert all("test" not in t for t in trials)
    values = [t["valid"]["Recall@20"] for t in trials]
    chosen = record["chosen"]
    assert chosen["trial"] == int(np.argmax(values))
    # lr 1e-4 barely moves in 6 epochs; lr 0.05 learns the planted blocks
    assert chosen["settings"] == {"learning_rate": 0.05}
    assert chosen["preset"] == {"hyperparameters": {}, "training": {"learning_rate": 0.05}}
    assert 0.0 <= chosen["test"]["Recall@20"] <= 1.0


def test_tuning_rejects_an_unknown_key_with_exit_code_2(tmp_path, capsys) -> None:
    tune = _tune_module()
    code = tune.main(
        ["synthetic", "--model", "mf", "--grid", "no_such_key=1,2", "--out", str(tmp_path / "x")]
    )
    assert code == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_gpu_converged_script_smoke_mode_writes_a_summary(tmp_path) -> None:
    """SMOKE=1: the synthetic default, 2 epochs on the CPU, one row per model in summary.json."""
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_baby_baselines_converged.sh", "mf"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [row["model"] for row in rows] == ["mf"]
    assert rows[0]["epochs_run"] == 2 and rows[0]["capped"] and not rows[0]["converged"]
    assert 0.0 < rows[0]["test_recall20"] <= 1.0
    assert (tmp_path / "results_mf.json").is_file()
