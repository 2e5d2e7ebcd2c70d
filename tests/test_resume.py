"""Resumable training: RUN_DIR/resume.pt and `rearm train --resume RUN_DIR`.

A run stopped anywhere (killed between two resume states, or stopped by a signal) and resumed
must end exactly like the same run never stopped: same parameters, same metrics.jsonl (timings
aside), same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rearm.data.synth import make_synthetic
from rearm.training import trainer

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--quiet", "--set", "learning_rate=0.01", "--set", "batch_size=32"]


class Killed(BaseException):
    """Stands for SIGKILL: no handler sees it, so the run is left `running` with its lock free."""


def _kill_at_step(monkeypatch, step: int) -> None:
    calls = {"n": 0}
    original = trainer.TrainStep.__call__

    def dying(self, *batch):
        calls["n"] += 1
        if calls["n"] == step:
            raise Killed
        return original(self, *batch)

    monkeypatch.setattr(trainer.TrainStep, "__call__", dying)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("train_s", "eval_s")} for row in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    first = torch.load(a / "checkpoint.pt", weights_only=True)
    second = torch.load(b / "checkpoint.pt", weights_only=True)
    assert first["epoch"] == second["epoch"]
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][name]), name
    assert _metrics(a) == _metrics(b)
    results = [json.loads((run / "results.json").read_text()) for run in (a, b)]
    for key in ("best_epoch", "epochs_run", "valid", "test", "status"):
        assert results[0][key] == results[1][key], key
    per_user = [np.load(run / "per_user.npz") for run in (a, b)]
    assert sorted(per_user[0].files) == sorted(per_user[1].files)
    for name in per_user[0].files:
        np.testing.assert_array_equal(per_user[0][name], per_user[1][name])


STEPS = 17  # per epoch: 517 train interactions in batches of 32


@pytest.mark.parametrize(
    ("model", "kill_at"),
    [
        ("rearm", 20),  # attention dropout draws from torch's generator at every step
        # killed in epoch 2's first step: the last state is epoch 1 before its validation, and
        # checkpoint.pt already holds epoch 1
        ("rearm", STEPS + 1),
        ("freedom", 20),  # draws a pruned graph at each epoch's start from the loop's generator
        ("lightgcn", 20),
    ],
)
def test_a_killed_run_resumes_to_exactly_the_run_never_stopped(
    small_data, tmp_path, run_cli, monkeypatch, model, kill_at
):
    common = ["--model", model, "--data", str(small_data), "--epochs", "3", *FAST]
    code, _, err = run_cli("train", *common, "--out", tmp_path / "straight")
    assert code == 0, err
    # a resume state after every step; killed in epoch 2
    saving = ["--set", "resume_every_s=0.000001"]
    steps = json.loads((tmp_path / "straight" / "results.json").read_text())["epochs_run"]
    assert steps == 3
    _kill_at_step(monkeypatch, kill_at)
    with pytest.raises(Killed):
        run_cli("train", *common, *saving, "--out", tmp_path / "killed")
    monkeypatch.undo()
    killed = tmp_path / "killed"
    assert json.loads((killed / "status.json").read_text())["status"] == "running"
    assert (killed / "resume.pt").is_file() and not (killed / "results.json").exists()
    code, out, err = run_cli("train", "--resume", killed, "--quiet")
    assert code == 0, err
    assert json.loads(out)["epochs_run"] == 3
    _assert_same_run(tmp_path / "straight", killed)
    assert json.loads((killed / "status.json").read_text())["status"] == "complete"
    assert not (killed / "resume.pt").exists()  # a complete run keeps no resume state
    results = json.loads((killed / "results.json").read_text())
    processes = results["processes"]
    assert len(processes) == 2 and processes[0]["from"] is None
    epoch, done = divmod(kill_at - 2, STEPS)  # the step before kill_at wrote the last state
    assert processes[1]["from"] == {"epoch": epoch + 1, "step": done + 1, "steps": STEPS}
    assert results["timing"]["resume_saves"] > 0


def test_killed_twice_and_resumed_twice(small_data, tmp_path, run_cli, monkeypatch):
    common = ["--model", "rearm", "--data", str(small_data), "--epochs", "3", *FAST]
    assert run_cli("train", *common, "--out", tmp_path / "straight")[0] == 0
    killed = tmp_path / "killed"
    _kill_at_step(monkeypatch, 9)
    with pytest.raises(Killed):
        run_cli("train", *common, "--set", "resume_every_s=0.000001", "--out", killed)
    _kill_at_step(monkeypatch, 14)  # counts again from the resumed process's first step
    with pytest.raises(Killed):
        run_cli("train", "--resume", killed)
    monkeypatch.undo()
    code, _, err = run_cli("train", "--resume", killed, "--quiet")
    assert code == 0, err
    _assert_same_run(tmp_path / "straight", killed)
    assert len(json.loads((killed / "results.json").read_text())["processes"]) == 3


def test_a_stop_between_epochs_resumes_exactly_and_keeps_early_stopping():
    """A stop signal at the end of an epoch (the state `between` two epochs), at the fit level;
    with patience 1 and a learning rate of 0 the resumed run must still stop early."""
    from rearm.evaluation.protocol import get_protocol
    from rearm.models.mf import MF
    from rearm.training.trainer import Progress, fit, seed_everything

    dataset = make_synthetic(num_users=60, num_items=40, modalities={"t": 4}, seed=1)

    def run(resume=None, stop_at=None, learning_rate=0.01, patience=20):
        seed_everything(0)
        model = MF.from_dataset(dataset)
        states = []

        def on_epoch_end(record):
            if record.epoch == stop_at:
                raise KeyboardInterrupt

        result = fit(
            model, dataset, get_protocol("standard"), epochs=4, patience=patience, batch_size=64,
            learning_rate=learning_rate, weight_decay=0.0, seed=0,
            progress=Progress(enabled=False), on_epoch_end=on_epoch_end,
            resume_every_s=1000000000, on_resume_state=states.append, resume=resume,
        )  # fmt: skip
        return model, result, states

    model, result, states = run()
    assert not result.interrupted and states == []  # never due, no stop: nothing saved
    _, stopped, states = run(stop_at=2)
    assert stopped.interrupted and len(states) == 1
    assert states[0]["epoch"] == 3 and states[0]["epoch_start"] is None
    resumed_model, resumed, _ = run(resume=states[0])
    assert [r.losses for r in resumed.history] == [r.losses for r in result.history]
    assert resumed.best_epoch == result.best_epoch and resumed.epochs_run == 4
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)

    _, early, states = run(stop_at=2, learning_rate=0.0, patience=1)
    assert early.stopped_early and early.interrupted and states[0]["best"]["stopped"]
    _, after, _ = run(resume=states[0], learning_rate=0.0, patience=1)
    assert after.stopped_early and after.epochs_run == 2  # no epoch after the early stop


def _start(cache: Path, *argv: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), REARM_CACHE_DIR=str(cache))
    return subprocess.Popen(
        [sys.executable, "-m", "rearm.cli", "train", *argv], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigterm_saves_a_resume_state_and_the_resumed_run_matches(small_data, tmp_path, run_cli):
    """A real process stopped by SIGTERM at whatever step it is in writes a resume state (the
    periodic ones are never due here), saves its best epoch and exits 143 (128 + SIGTERM);
    resumed, it finishes exactly as the same configuration trained without a stop."""
    epochs = "400"
    common = ["--model", "mf", "--data", str(small_data), "--epochs", epochs, "--patience", epochs,
              *FAST, "--set", "resume_every_s=1000000000"]  # fmt: skip
    out = tmp_path / "stopped"
    process = _start(tmp_path / "cache", *common, "--out", str(out))
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "interrupted"
    assert "Traceback" not in stderr
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and (out / "resume.pt").is_file()
    stopped_after = json.loads((out / "results.json").read_text())["epochs_run"]
    assert stopped_after < int(epochs), "the run finished before the signal; make it longer"
    code, _, err = run_cli("train", "--resume", out, "--quiet")
    assert code == 0, err
    code, _, err = run_cli("train", *common, "--out", tmp_path / "straight")
    assert code == 0, err
    _assert_same_run(tmp_path / "straight", out)


def test_a_stop_before_the_first_validation_saves_no_model(
    small_data, tmp_path, run_cli, monkeypatch
):
    """eval_every > 1: a SIGTERM in epoch 2, before any validation, leaves a resume state but
    no model, as no epoch was ever selected (it used to save the last parameters as 'best
    epoch 0'); the exit code is 143 like any stop, not the 2 of bad input."""
    out = tmp_path / "run"
    original = trainer.TrainStep.__call__

    def stop_in_epoch_two(self, *batch):
        if (out / "metrics.jsonl").exists():  # written when epoch 1 ended (without validation)
            signal.raise_signal(signal.SIGTERM)
        return original(self, *batch)

    monkeypatch.setattr(trainer.TrainStep, "__call__", stop_in_epoch_two)
    code, _, err = run_cli("train", "--model", "mf", "--data", str(small_data), *FAST,
                           "--epochs", "3", "--set", "eval_every=1000", "--out", out)  # fmt: skip
    assert code == 143, err
    assert "interrupted before the first validation (eval_every=1000)" in err
    assert (out / "resume.pt").is_file()
    assert not (out / "results.json").exists() and not (out / "model").exists()
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"


@pytest.fixture
def killed_run(small_data, tmp_path, run_cli, monkeypatch) -> Path:
    out = tmp_path / "killed"
    _kill_at_step(monkeypatch, 5)
    with pytest.raises(Killed):
        run_cli("train", "--model", "mf", "--data", str(small_data), *FAST,
                "--set", "resume_every_s=0.000001", "--out", out)  # fmt: skip
    monkeypatch.undo()
    return out


def _error(run_cli, *argv) -> str:
    code, out, err = run_cli("train", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, (code, err)
    assert "Traceback" not in err
    return lines[0]


def test_resume_refuses_what_it_cannot_continue(small_data, killed_run, tmp_path, run_cli):
    # flags the run's own config.yaml fixes
    line = _error(run_cli, "--resume", killed_run, "--set", "learning_rate=0.1", "--epochs", "9")
    assert "--set, --epochs cannot be changed when resuming" in line
    assert "--seed cannot be changed" in _error(run_cli, "--resume", killed_run, "--seed", "0")
    assert "--resume" in _error(run_cli, "--resume", tmp_path / "nowhere")
    assert "no such run directory" in _error(run_cli, "--resume", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "holds no rearm run" in _error(run_cli, "--resume", tmp_path / "empty")

    # a complete run has nothing to resume (and keeps no resume.pt)
    done = tmp_path / "done"
    assert (
        run_cli("train", "--model", "mf", "--data", str(small_data), *FAST, "--out", done)[0] == 0
    )
    assert "nothing to resume" in _error(run_cli, "--resume", done)

    # a run that saved none
    from rearm.experiments.status import write_status

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((killed_run / "config.yaml").read_text())
    write_status(bare, "interrupted", signal="SIGTERM", epoch=1)
    line = _error(run_cli, "--resume", bare)
    assert "wrote no resume.pt" in line and "resume_every_s" in line

    # a run another process is writing
    from rearm.experiments.status import run_lock

    with run_lock(killed_run):
        write_status(killed_run, "running")
        assert "still training" in _error(run_cli, "--resume", killed_run)

    # a damaged resume state
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(killed_run, damaged)
    raw = (damaged / "resume.pt").read_bytes()
    (damaged / "resume.pt").write_bytes(raw[: len(raw) // 3])
    assert "not a readable resume state" in _error(run_cli, "--resume", damaged)
    assert (damaged / "resume.pt").is_file()  # refused, nothing removed


def test_resume_refuses_other_data(small_data, killed_run, tmp_path, run_cli):
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(small_data, changed)
    config = (killed_run / "config.yaml").read_text().replace(str(small_data), str(changed))
    (killed_run / "config.yaml").write_text(config)
    features = np.load(changed / "image_feat.npy")
    features[0, 0] += 1.0  # one item's image features changed
    np.save(changed / "image_feat.npy", features)
    line = _error(run_cli, "--resume", killed_run, "--quiet")
    assert "is not the one the run started on" in line and "fingerprint" in line
    assert (killed_run / "resume.pt").is_file()


def test_evaluate_on_a_killed_run_says_how_to_resume(killed_run, run_cli):
    code, _, err = run_cli("evaluate", killed_run)
    assert code == 2 and f"rearm train --resume {killed_run}" in err


def test_resume_every_s_is_a_checked_training_key_outside_study_cell_keys(
    small_data, run_cli, tmp_path
):
    from rearm.experiments.config import resolve_config
    from rearm.studies.spec import cell_key

    line = _error(
        run_cli, "--data", str(small_data), "--set", "resume_every_s=-1", "--out", tmp_path
    )
    assert "resume_every_s" in line
    often = resolve_config(model="mf", overrides=["resume_every_s=5"]).to_dict()
    never = resolve_config(model="mf", overrides=["resume_every_s=0"]).to_dict()
    other = resolve_config(model="mf", overrides=["learning_rate=0.5"]).to_dict()
    assert cell_key(often, "f") == cell_key(never, "f") != cell_key(other, "f")


def test_resume_check_script_kills_with_sigkill_and_finds_the_resumed_run_exact(tmp_path):
    """benchmarks/resume_check.py: a real SIGKILL between two resume states, then
    `rearm train --resume`; on the CPU the resumed run must equal the straight one exactly."""
    recipe = "synthetic:modalities=image:16,text:8;users=300;items=150"
    result = subprocess.run(
        [sys.executable, "benchmarks/resume_check.py", "--data", recipe, "--epochs", "3",
         "--work", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    record = json.loads(result.stdout)
    assert record["exact"] and record["killed_after"].startswith("resume state saved (epoch 2,")
    for pair in ("straight_vs_straight", "straight_vs_resumed"):
        assert record[pair]["max_parameter_difference"] == 0.0
        assert record[pair]["losses_equal"]
    status = json.loads((tmp_path / "resumed" / "status.json").read_text())
    assert status["status"] == "complete"
    processes = json.loads((tmp_path / "resumed" / "results.json").read_text())["processes"]
    assert processes[1]["from"]["epoch"] == 2
