"""Training key max_steps_per_epoch: each epoch trains on its first N batches, everything after
(validation, saving, the final evaluation) runs as in a full run."""

from __future__ import annotations

import json

import pytest
from test_resume import FAST, STEPS, Killed, _assert_same_run, _kill_at_step

from rearm.experiments.config import resolve_config
from rearm.planning import plan, synthetic_shape
from rearm.studies.spec import cell_key
from rearm.training import trainer


def _count_steps(monkeypatch) -> dict:
    calls = {"n": 0}
    original = trainer.TrainStep.__call__

    def counting(self, *batch):
        calls["n"] += 1
        return original(self, *batch)

    monkeypatch.setattr(trainer.TrainStep, "__call__", counting)
    return calls


def test_each_epoch_trains_only_its_first_steps(small_data, tmp_path, run_cli, monkeypatch):
    calls = _count_steps(monkeypatch)
    common = ["--data", str(small_data), "--epochs", "3", "--patience", "3", *FAST]
    code, _, err = run_cli(
        "train", *common, "--set", "max_steps_per_epoch=5", "--out", tmp_path / "a"
    )
    assert code == 0, err
    assert calls["n"] == 3 * 5
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["status"] == "complete" and results["epochs_run"] == 3
    assert results["max_steps_per_epoch"] == 5
    assert set(results["test"]) >= {"Recall@20", "NDCG@20"}  # evaluated from the saved bundle
    assert "max_steps_per_epoch: 5" in (tmp_path / "a" / "config.yaml").read_text()
    # a cap at or above the epoch's length changes nothing
    calls["n"] = 0
    code, _, err = run_cli(
        "train", *common, "--set", f"max_steps_per_epoch={STEPS}", "--out", tmp_path / "b"
    )
    assert code == 0, err
    assert calls["n"] == 3 * STEPS
    assert "max_steps_per_epoch" in json.loads((tmp_path / "b" / "results.json").read_text())
    calls["n"] = 0
    assert run_cli("train", *common, "--out", tmp_path / "c")[0] == 0  # no cap: not recorded
    assert calls["n"] == 3 * STEPS
    assert "max_steps_per_epoch" not in json.loads((tmp_path / "c" / "results.json").read_text())


def test_the_progress_line_says_how_many_steps_of_the_epoch_train(small_data, tmp_path, run_cli):
    code, _, err = run_cli(
        "train", "--data", small_data, "--epochs", "1", "--set", "batch_size=32",
        "--set", "max_steps_per_epoch=4", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err
    assert f"each epoch trains 4 of its {STEPS} steps" in err


def test_a_capped_run_stopped_and_resumed_matches_the_run_never_stopped(
    small_data, tmp_path, run_cli, monkeypatch
):
    common = ["--data", str(small_data), "--epochs", "3", *FAST, "--set", "max_steps_per_epoch=6"]
    assert run_cli("train", *common, "--out", tmp_path / "straight")[0] == 0
    _kill_at_step(monkeypatch, 9)  # epoch 2, step 3
    with pytest.raises(Killed):
        run_cli("train", *common, "--set", "resume_every_s=0.000001", "--out", tmp_path / "killed")
    monkeypatch.undo()
    code, _, err = run_cli("train", "--resume", tmp_path / "killed", "--quiet")
    assert code == 0, err
    _assert_same_run(tmp_path / "straight", tmp_path / "killed")
    processes = json.loads((tmp_path / "killed" / "results.json").read_text())["processes"]
    assert processes[1]["from"] == {"epoch": 2, "step": 2, "steps": 6}


def test_a_negative_cap_is_refused_in_one_line(small_data, tmp_path, run_cli):
    code, out, err = run_cli(
        "train", "--data", small_data, "--set", "max_steps_per_epoch=-1", "--out", tmp_path / "r"
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "max_steps_per_epoch" in err
    assert not (tmp_path / "r").exists()


def test_the_plan_counts_the_capped_steps():
    shape = synthetic_shape(1000, 500, 20000, {"image": 64, "text": 32})
    full = plan(shape, training={"batch_size": 100})
    capped = plan(shape, training={"batch_size": 100, "max_steps_per_epoch": 30})
    assert (full.steps_per_epoch, capped.steps_per_epoch) == (200, 30)
    assert capped.peak_bytes == full.peak_bytes  # a shorter epoch needs no less memory


def test_study_cells_keep_their_keys_while_the_cap_is_off():
    default = resolve_config(overrides=["epochs=2"]).to_dict()
    assert default["training"]["max_steps_per_epoch"] == 0
    without = json.loads(json.dumps(default))
    del without["training"]["max_steps_per_epoch"]  # a configuration from before the key
    assert cell_key(default, "f") == cell_key(without, "f")
    capped = resolve_config(overrides=["epochs=2", "max_steps_per_epoch=3"]).to_dict()
    assert cell_key(capped, "f") != cell_key(default, "f")
