"""Hardening: declared domains checked before anything is written, divergence, the run life cycle
(status.json, SIGINT / SIGTERM / kill -9 with real processes), bundle and cache integrity, the
cache race between two real processes, and output errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from rearm.data.synth import make_synthetic
from rearm.errors import ConfigError, RunError
from rearm.experiments.config import TRAINING_TYPES, config_keys, resolve_config
from rearm.models import MODEL_NAMES, get_model
from rearm.models.base import Range, domain_of

FAST = ["--quiet", "--set", "learning_rate=0.01", "--set", "batch_size=128"]
ROOT = Path(__file__).resolve().parent.parent


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rearm: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# declared domains


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("rank=-1", "rank must be int in [1, inf), got -1"),
        ("learning_rate=-1", "learning_rate must be float in (0, inf), got -1.0"),
        ("embedding_dim=0", "embedding_dim must be int in [1, inf), got 0"),
        ("self_attention_dropout=2", "self_attention_dropout must be float in [0, 1], got 2.0"),
        ("num_layers=-2", "num_layers must be int in [0, 64], got -2"),
        ("contrastive_temperature=0", "contrastive_temperature must be float in (0, inf)"),
        ("item_modality_weights={image: 0.3, text: 0.3}", "summing to 1"),
        ("seed=-5", "seed must be int in [0, 4294967295]"),
    ],
)
def test_impossible_values_exit_2_before_anything_is_written(tmp_path, run_cli, setting, message):
    code, _, err = run_cli("train", "--set", setting, "--out", tmp_path / "y")
    assert code == 2 and message in _one_error_line(err)
    assert not (tmp_path / "y").exists()


def test_every_numeric_key_of_every_model_declares_a_domain():
    def numeric_without_range(annotation) -> bool:
        base, domains = domain_of(annotation)
        if typing.get_origin(base) in (typing.Union, __import__("types").UnionType):
            return any(numeric_without_range(arg) for arg in typing.get_args(base))
        return base in (int, float) and not any(isinstance(d, Range) for d in domains)

    for name in MODEL_NAMES:
        for key, (annotation, _default) in get_model(name).hyperparameters().items():
            assert not numeric_without_range(annotation), f"{name}.{key}"
    for key, annotation in TRAINING_TYPES.items():
        assert not numeric_without_range(annotation), key


def test_config_show_and_help_config_list_every_declared_key(run_cli):
    for name in MODEL_NAMES:
        code, out, _ = run_cli("config", "show", name, "--json")
        assert code == 0
        rows = {row["key"]: row for row in json.loads(out)}
        assert set(get_model(name).hyperparameters()) | set(TRAINING_TYPES) <= set(rows)
    code, out, _ = run_cli("train", "--model", "mf", "--help-config")
    assert code == 0 and "reg_weight" in out and "float in [0, inf)" in out
    keys = {row["key"]: row for row in config_keys("rearm", "sports")}
    assert keys["self_attention_dropout"]["default"] == 1.0  # the preset's value
    assert keys["rank"]["domain"] == "int in [1, inf)" and keys["rank"]["meaning"]


def test_relations_between_keys_are_checked():
    with pytest.raises(ConfigError, match="exclude each other"):
        resolve_config(overrides=["cooccurrence_only=true", "semantic_only=true"])
    with pytest.raises(ConfigError, match="modality_weights must be weights in"):
        resolve_config(model="freedom", overrides=["modality_weights={image: 0.9, text: 0.9}"])
    ok = resolve_config(overrides=["user_modality_weights={image: 0.25, text: 0.75}"])
    assert ok.hyperparameters["user_modality_weights"] == {"image": 0.25, "text": 0.75}


# ---------------------------------------------------------------------------------------------
# divergence


def _poisoned_loss(bad_call: int, where: str):
    """MF.loss whose `bad_call`-th call has a NaN term (where="loss") or a finite loss with an
    infinite gradient (where="gradient": d sqrt(x) / dx at 0)."""
    from rearm.models.mf import MF

    original, calls = MF.loss, [0]

    def loss(self, users, pos_items, neg_items):
        terms = original(self, users, pos_items, neg_items)
        calls[0] += 1
        if calls[0] == bad_call:
            if where == "loss":
                terms["reg"] = terms["reg"] * float("nan")
            else:
                terms["reg"] = terms["reg"] + torch.sqrt(self.user_embedding.weight[0, 0] * 0)
        return terms

    return loss


@pytest.mark.parametrize(
    ("where", "term"), [("loss", "loss term 'reg'"), ("gradient", "the gradient")]
)
def test_non_finite_loss_or_gradient_stops_at_once_and_keeps_the_best_epoch(where, term):
    from rearm.evaluation.protocol import get_protocol
    from rearm.training.trainer import Progress, fit, seed_everything

    dataset = make_synthetic(num_users=60, num_items=40, modalities={"text": 4}, seed=1)
    seed_everything(0)
    steps_per_epoch = int(np.ceil(dataset.train.nnz / 64))
    from rearm.models.mf import MF

    poisoned = type("Poisoned", (MF,), {"loss": _poisoned_loss(steps_per_epoch + 2, where)})
    model = poisoned.from_dataset(dataset)
    result = fit(model, dataset, get_protocol("standard"), epochs=5, patience=5, batch_size=64,
                 learning_rate=0.01, weight_decay=0.0, seed=0, progress=Progress(enabled=False))  # fmt: skip
    assert result.diverged == {"epoch": 2, "step": 2, "term": term}, result.diverged
    assert result.epochs_run == 1 and result.best_epoch == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_diverged_run_records_where_and_keeps_its_best_epoch(small_data, tmp_path, run_cli,
                                                               monkeypatch):  # fmt: skip
    from rearm.models import mf

    steps = int(np.ceil(np.load(small_data / "train.npy").shape[1] / 128))
    monkeypatch.setattr(mf.MF, "loss", _poisoned_loss(steps + 1, "loss"))
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--epochs", "4",
                           "--out", out, *FAST)  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and "diverged in epoch 2, step 1: loss term 'reg' is not finite" in line
    assert "kept the best epoch 1" in line
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged" and results["best_epoch"] == 1
    assert results["diverged"] == {"epoch": 2, "step": 1, "term": "loss term 'reg'"}
    assert json.loads((out / "status.json").read_text())["status"] == "diverged"
    code, out_text, err = run_cli("evaluate", out, "--json")
    assert code == 0 and "run is diverged (epoch 2, step 1" in err


# ---------------------------------------------------------------------------------------------
# life cycle


def test_status_follows_the_run_and_a_failed_run_is_replaced(small_data, tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--epochs", "1",
                           "--out", out, *FAST)  # fmt: skip
    assert code == 0 and json.loads((out / "status.json").read_text())["status"] == "complete"
    assert "replacing" not in err  # a fresh --out holds only the run's own lock: nothing to replace
    code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--out", out, *FAST)
    assert code == 2 and "already holds a run (complete" in err
    from rearm.experiments.status import write_status

    write_status(out, "failed", error="disk on fire")
    code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--epochs", "1",
                           "--out", out, "--set", "learning_rate=0.01")  # fmt: skip
    assert code == 0 and "replacing the failed (disk on fire) run" in err
    assert json.loads((out / "status.json").read_text())["status"] == "complete"


def test_a_running_run_is_refused_and_an_unfinished_one_is_named(small_data, tmp_path, run_cli):
    from rearm.experiments.status import run_lock, write_status

    out = tmp_path / "run"
    out.mkdir()
    write_status(out, "running")
    with run_lock(out):  # as if another process were training there
        code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--out", out,
                               "--force", *FAST)  # fmt: skip
        assert code == 2 and "a run is being written there (running (process" in err
        code, _, err = run_cli("evaluate", out)
        assert code == 2 and "run is running" in _one_error_line(err)
    code, _, err = run_cli("recommend", out, "--users", "0")
    assert code == 2 and "not complete: its process" in _one_error_line(err)


def _start_training(data: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), REARM_CACHE_DIR=str(cache))
    return subprocess.Popen(
        [sys.executable, "-m", "rearm.cli", "train", "--model", "mf", "--data", str(data),
         "--out", str(out), "--epochs", "100000", "--patience", "100000", *FAST, *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_epochs(out: Path, process: subprocess.Popen, epochs: int = 2) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.kill()
    pytest.fail("training did not reach its second epoch in time")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_after_the_batch_and_write_everything(small_data, tmp_path, stop):
    out = tmp_path / "run"
    process = _start_training(small_data, out, tmp_path / "cache")
    _wait_for_epochs(out, process)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + stop, stderr  # 143 / 130: not a finished run
    assert "Traceback" not in stderr
    assert json.loads(stdout)["status"] == "interrupted"
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["interrupted"]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == stop.name
    assert (out / "model" / "bundle.json").is_file() and (out / "checkpoint.pt").is_file()
    assert results["best_epoch"] >= 1 and json.loads(stdout)["best_epoch"] == results["best_epoch"]


def test_kill_9_leaves_a_run_later_commands_call_unfinished(small_data, tmp_path, run_cli):
    out = tmp_path / "run"
    process = _start_training(small_data, out, tmp_path / "cache")
    _wait_for_epochs(out, process, epochs=1)
    process.kill()
    process.communicate()
    code, _, err = run_cli("evaluate", out)
    assert code == 2 and "not complete: its process" in _one_error_line(err)
    code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--epochs", "1",
                           "--out", out, *FAST[1:])  # fmt: skip
    assert code == 0 and "replacing the not complete" in err, err


# ---------------------------------------------------------------------------------------------
# integrity


@pytest.fixture(scope="module")
def finished(small_data, tmp_path_factory) -> Path:
    from rearm.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    argv = ["train", "--model", "mf", "--data", str(small_data), "--epochs", "1", "--out", str(out)]
    assert main([*argv, *FAST]) == 0
    return out


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("embeddings.npz", "truncate"),
        ("weights.pt", "flip"),
        ("interactions.npz", "flip"),
        ("ids.json", "truncate"),
    ],
)
def test_a_damaged_bundle_file_is_named(finished, tmp_path, run_cli, name, damage):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    path = copy / "model" / name
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        raw[len(raw) // 2] ^= 0x40
        path.write_bytes(bytes(raw))
    for command in (["evaluate", copy], ["recommend", copy, "--users", "0"]):
        code, _, err = run_cli(*command)
        assert code == 2 and f"model/{name}: SHA-256 differs" in _one_error_line(err)


def test_a_damaged_cache_entry_is_rebuilt_and_reported(tmp_path):
    import scipy.sparse as sp

    from rearm.data.cache import GraphCache

    lines: list[str] = []
    cache = GraphCache(tmp_path / "cache", report=lines.append)
    graph = sp.random(30, 30, density=0.2, format="csr", random_state=0)
    table = np.arange(60, dtype=np.float32).reshape(20, 3)
    first = cache.graph("f", "g", 1, {}, lambda: graph)
    cache.array("f", "a", 1, {}, lambda: table)
    entries = sorted((tmp_path / "cache").iterdir())
    assert len(entries) == 2 and not lines
    for path in entries:  # one truncated, one with an altered byte
        raw = bytearray(path.read_bytes())
        if path.name.endswith(".array.npz"):
            raw[len(raw) // 2] ^= 0x01
            path.write_bytes(bytes(raw))
        else:
            path.write_bytes(bytes(raw[: len(raw) // 3]))
    again = cache.graph("f", "g", 1, {}, lambda: graph)
    table_again = cache.array("f", "a", 1, {}, lambda: table)
    assert (again != first).nnz == 0 and np.array_equal(table_again, table)
    assert len(lines) == 2 and all("is damaged" in line and "rebuilding" in line for line in lines)
    assert len(cache.damaged) == 2
    fresh = GraphCache(tmp_path / "cache", report=lines.append)
    fresh.graph("f", "g", 1, {}, lambda: pytest.fail("the rebuilt entry was not stored"))
    assert fresh.hits == 1


def test_two_processes_sharing_one_cache_folder_both_succeed(small_data, tmp_path):
    cache = tmp_path / "shared-cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT), REARM_CACHE_DIR=str(cache))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rearm.cli",
                "train",
                "--data",
                str(small_data),
                "--epochs",
                "1",
                "--out",
                str(tmp_path / f"run{i}"),
                *FAST,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "damaged" not in stderr
    results = [json.loads((tmp_path / f"run{i}" / "results.json").read_text()) for i in range(2)]
    assert results[0]["test"] == results[1]["test"]
    assert not list(cache.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# output errors


@pytest.mark.parametrize(("error", "target"), [(errno.ENOSPC, "metrics.jsonl"),
                                               (errno.EROFS, "config.yaml")])  # fmt: skip
def test_an_output_error_leaves_no_partial_run(small_data, tmp_path, run_cli, monkeypatch,
                                               error, target):  # fmt: skip
    import rearm.experiments.run as run_module

    real = run_module.atomic_open

    def failing(path, mode="w"):
        if Path(path).name == target:
            raise OSError(error, os.strerror(error), str(path))
        return real(path, mode)

    monkeypatch.setattr(run_module, "atomic_open", failing)
    out = tmp_path / "new" / "run"
    code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--epochs", "2",
                           "--out", out, *FAST)  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and target in line and os.strerror(error) in line
    assert not out.exists()


def test_out_in_a_read_only_folder(small_data, tmp_path, run_cli):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the injected EROFS test covers it")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, _, err = run_cli("train", "--model", "mf", "--data", small_data, "--out",
                               parent / "run", *FAST)  # fmt: skip
    finally:
        parent.chmod(0o755)
    assert code == 2 and "cannot write" in _one_error_line(err)
    assert not (parent / "run").exists()


def test_load_bundle_rejects_a_bundle_without_its_record(finished):
    from rearm.experiments.bundle import load_bundle

    assert load_bundle(finished).num_users == 80
    with pytest.raises(RunError, match="no saved model bundle"):
        load_bundle(finished / "model")
