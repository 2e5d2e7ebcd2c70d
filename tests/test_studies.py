"""Studies: spec validation, expansion, templates, resumable parallel runs, per-user files and the
report (valid-only choice, p-values recomputed independently from the saved per-user vectors)."""

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
import yaml

from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.errors import ConfigError
from rearm.studies import TEMPLATE_NAMES, expand_cells, get_template, spec_from_dict
from rearm.studies.engine import cell_complete
from rearm.studies.spec import parse_seeds_option
from rearm.studies.templates import template_yaml

# ---------------------------------------------------------------------------------------------
# Specs: validation and expansion (no training)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"name": "x", "epochs": 3}, "unknown key 'epochs'"),
        ({"axes": {"rank": []}}, "axes.rank: empty axis"),
        ({"axes": {"rank": 3}}, "axes.rank: expected a list of values"),
        ({"axes": {"rank": ["three"]}}, "rank must be int in [1, inf), got 'three'"),
        ({"variants": {"a": {"no_meta": "yes"}}}, "no_meta must be bool"),
        ({"variants": {"a": {"not_a_key": 1}}}, "not_a_key"),
        ({"seeds": "many"}, "seeds must be a count or a list"),
        ({"seeds": []}, "seeds is empty"),
        ({"axes": {"seed": [1, 2]}}, "'seed' cannot vary here (use seeds)"),
        ({"axes": {"zip": {"rank": [1, 2], "num_layers": [1]}}}, "equal lengths"),
        ({"axes": {"rank": [1]}, "variants": {"a": {}}}, "either axes"),
        ({"reference": "nope", "variants": {"a": {}}}, "reference 'nope' is not a row"),
        ({"training": {"epochs": "ten"}}, "epochs must be int"),
        ({"models": ["rearm", "nope"]}, "nope"),
        ({"training": []}, "training must be a mapping"),
        ({"hyperparameters": False}, "hyperparameters must be a mapping"),
        ({"variants": 0}, "variants must be a mapping"),
        (
            {
                "corruption": {
                    "modality": "image",
                    "mode": "shuffle",
                    "fractions": [0.5],
                    "seed": -3,
                }
            },
            "corruption.seed must be >= 0, got -3",
        ),
    ],
)
def test_bad_specs_fail_with_one_line_and_run_nothing(tmp_path, run_cli, content, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(content))
    out = tmp_path / "study"
    code, stdout, stderr = run_cli("study", "run", spec, "--out", out, "--quiet")
    assert code == 2
    assert stderr.startswith("rearm: error: ") and len(stderr.strip().splitlines()) == 1
    assert message in stderr
    assert not out.exists()


def test_unknown_template_and_missing_spec_file(tmp_path, run_cli):
    code, _, stderr = run_cli("study", "run", "ablations", "--out", tmp_path / "s")
    assert code == 2 and "unknown study template 'ablations'" in stderr
    code, _, stderr = run_cli("study", "run", tmp_path / "nope.yaml", "--out", tmp_path / "s")
    assert code == 2 and "study spec not found" in stderr


@pytest.mark.parametrize(
    "option, message",
    [
        ("5,5", "--seeds: seeds repeat a value: [5, 5]"),
        ("0", "--seeds: seeds count must be >= 1, got 0"),
        ("x", "--seeds: expected a count or a comma-separated list, got 'x'"),
    ],
)
def test_seeds_option_says_what_is_wrong(option, message):
    with pytest.raises(ConfigError) as error:
        parse_seeds_option(option)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[]", "not a study record: a JSON list, not an object"),
        ("{}", "not a study record: no 'name'"),
        ('{"name": "s", "kind": "grid", "rows": [{}], "cells": []}', "rows[0] lacks 'label'"),
        ("{not json", "unreadable study record"),
    ],
)
def test_a_damaged_study_json_is_one_line_and_writes_nothing(tmp_path, run_cli, content, problem):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(content)
    code, _, stderr = run_cli("study", "report", out)
    assert code == 2 and problem in stderr and len(stderr.strip().splitlines()) == 1, stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"variants": {"a": {}}}))
    code, _, stderr = run_cli("study", "run", spec, "--out", out, "--quiet")
    assert code == 2 and problem in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert sorted(p.name for p in out.iterdir()) == ["study.json"]  # no runs/ or logs/ made


def _expand(content: dict, fingerprint: str = "data"):
    spec = spec_from_dict(content, "spec")
    return spec, *expand_cells(spec, {path: fingerprint for path in spec.data})


def test_expansion_cartesian_zip_groups_and_shared_cells():
    _, rows, cells = _expand(
        {
            "seeds": [1, 2],
            "axes": {"rank": [1, 2], "zip": {"num_layers": [1, 2], "user_knn_k": [5, 6]}},
        }
    )
    assert [r.label for r in rows] == [
        "rank=1 num_layers=1 user_knn_k=5",
        "rank=1 num_layers=2 user_knn_k=6",
        "rank=2 num_layers=1 user_knn_k=5",
        "rank=2 num_layers=2 user_knn_k=6",
    ]
    assert len(cells) == 8 and len({c.key for c in cells}) == 8
    assert cells[3].config.hyperparameters["user_knn_k"] == 6 and cells[3].seed == 2
    # two axis groups; the row that equals the defaults in both groups is one shared run
    _, rows, cells = _expand(
        {"seeds": 1, "axes": [{"rank": [2, 3]}, {"num_layers": [4, 5]}]}  # defaults 3 and 4
    )
    assert [r.group for r in rows] == [0, 0, 1, 1]
    keys = [c.key for c in cells]
    assert keys[1] == keys[2] and len(set(keys)) == 3
    assert cells[1].dirname == cells[2].dirname


def test_key_ignores_device_but_not_data_or_settings():
    spec, _, cells = _expand({"seeds": 1, "variants": {"a": {}}})
    _, _, other_data = _expand({"seeds": 1, "variants": {"a": {}}}, fingerprint="other")
    _, _, other_device = _expand({"seeds": 1, "device": "cuda", "variants": {"a": {}}})
    _, _, other_epochs = _expand({"seeds": 1, "variants": {"a": {}}, "training": {"epochs": 7}})
    assert cells[0].key != other_data[0].key
    assert cells[0].key == other_device[0].key
    assert cells[0].key != other_epochs[0].key


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_template_expands_and_round_trips_as_yaml(name):
    spec, rows, cells = _expand(get_template(name))
    written = spec_from_dict(yaml.safe_load(template_yaml(name)), "file")
    assert expand_cells(written, {path: "data" for path in written.data})[1] == cells
    assert len(cells) == len(rows) * 3
    if name == "ablation":
        assert [r.label for r in rows[:4]] == ["full", "no_homographs", "no_meta", "no_orthogonal"]
        assert len(rows) == 10 and cells[3].config.hyperparameters["no_homographs"] is True
    if name == "cooccurrence":
        assert len(rows) == 20 and len({c.key for c in cells}) == 19 * 3  # default shared
    if name == "protocols":
        assert {c.config.protocol for c in cells} == {"standard", "reference"}
    # protocols are compared, never selected by validation
    sweeps = ("rank", "cooccurrence", "sparsity", "layers")
    assert spec.kind == ("sweep" if name in sweeps else "comparison")


def test_preset_applies_to_the_models_that_define_it():
    # bm3 has no `baby` preset (only `synthetic`): it runs at its defaults
    _, rows, cells = _expand(
        {"models": ["rearm", "bm3"], "preset": "baby", "seeds": 1, "data": "d"}
    )
    assert [c.config.preset for c in cells] == ["baby", None]
    with pytest.raises(ConfigError, match="preset 'nope' is defined for none"):
        _expand({"models": ["mf"], "preset": "nope"})


def test_templates_cli(run_cli):
    code, stdout, _ = run_cli("study", "templates")
    assert code == 0 and [line.split()[0] for line in stdout.splitlines()] == list(TEMPLATE_NAMES)
    code, stdout, _ = run_cli("study", "template", "rank")
    assert code == 0 and yaml.safe_load(stdout)["axes"] == {"rank": list(range(1, 11))}


# ---------------------------------------------------------------------------------------------
# Running: one small study shared by the tests below (MF on a small synthetic data set)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("study-data") / "small"
    dataset = make_synthetic(num_users=120, num_items=80, modalities={"image": 8}, seed=4)
    write_rearm_layout(dataset, folder)
    return folder


def test_spec_errors_name_the_file_and_a_repeated_key(data_dir, tmp_path, run_cli):
    spec = tmp_path / "twice.yaml"
    spec.write_text(f"model: mf\ndata: {data_dir}\nmodel: lightgcn\n")
    code, _, stderr = run_cli("study", "run", spec, "--out", tmp_path / "a", "--dry-run")
    assert code == 2 and "key 'model' appears twice (line 3)" in stderr, stderr
    spec = tmp_path / "row.yaml"
    spec.write_text(yaml.safe_dump({"model": "mf", "axes": {"learning_rate": ["abc"]}}))
    code, _, stderr = run_cli("study", "run", spec, "--data", data_dir, "--out", tmp_path / "b")
    assert code == 2 and f"rearm: error: {spec}: row 'learning_rate=abc'" in stderr, stderr


def test_a_corruption_study_with_a_bad_row_writes_nothing(data_dir, tmp_path, run_cli):
    spec = tmp_path / "spec.yaml"
    content = {
        "model": "mf",
        "corruption": {"modality": "image", "mode": "shuffle", "fractions": [0.5]},
        "axes": {"learning_rate": ["abc"]},
    }
    spec.write_text(yaml.safe_dump(content))
    out = tmp_path / "study"
    code, _, stderr = run_cli("study", "run", spec, "--data", data_dir, "--out", out, "--quiet")
    assert code == 2 and "learning_rate" in stderr and not out.exists(), stderr
    content["corruption"]["modality"] = "audio"  # a modality the data lacks
    content["axes"]["learning_rate"] = [0.01]
    spec.write_text(yaml.safe_dump(content))
    code, _, stderr = run_cli("study", "run", spec, "--data", data_dir, "--out", out, "--quiet")
    assert code == 2 and "audio" in stderr and not out.exists(), stderr


def test_devices_are_checked_before_anything_is_written(data_dir, tmp_path, run_cli):
    spec = _spec(tmp_path, data_dir)
    out = tmp_path / "study"
    code, _, stderr = run_cli("study", "run", spec, "--out", out, "--device", "cudaxyz")
    assert code == 2 and "expected auto, cpu or cuda[:N], got 'cudaxyz'" in stderr
    import torch

    if not torch.cuda.is_available():
        code, _, stderr = run_cli("study", "run", spec, "--out", out, "--device", "cuda")
        assert code == 2 and "CUDA is not available" in stderr
    assert not out.exists()


def test_a_template_reference_holds_for_several_data_sets(data_dir, tmp_path, run_cli):
    other = tmp_path / "other"
    write_rearm_layout(make_synthetic(num_users=40, num_items=30, seed=5), other)
    for template in ("ablation", "compare"):
        code, _, stderr = run_cli(
            "study", "run", template, "--data", data_dir, "--data", other, "--seeds", "1",
            "--dry-run", "--out", tmp_path / template,
        )  # fmt: skip
        assert code == 0, stderr


def test_training_curves_skip_epochs_without_validation(tmp_path):
    from rearm.studies.report import _training_curve

    runs = []
    for number, values in enumerate(([None, 0.2, None, 0.4], [None, 0.3])):
        run = tmp_path / f"run{number}"
        run.mkdir()
        lines = [
            json.dumps({"epoch": epoch, "valid": {} if v is None else {"Recall@20": v}})
            for epoch, v in enumerate(values, start=1)
        ]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        runs.append(run)
    curve = _training_curve(runs)  # eval_every=2: epochs 2 and 4 were evaluated
    assert curve["epochs"] == [2, 4]
    assert curve["recall"] == pytest.approx([0.25, 0.4])


def _spec(folder: Path, data: Path, rates=(0.001, 0.05)) -> Path:
    path = folder / f"spec-{len(rates)}.yaml"
    content = {
        "name": "lr",
        "model": "mf",
        "data": str(data),
        "seeds": 2,
        "training": {"epochs": 2, "batch_size": 256},
        "axes": {"learning_rate": list(rates)},
    }
    path.write_text(yaml.safe_dump(content))
    return path


def _study(args: list, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rearm.cli", "study", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("study")
    out = folder / "study"
    result = _study(["run", _spec(folder, data_dir), "--out", out, "--jobs", "2", "--threads", "1"])
    assert result.returncode == 0, result.stderr
    assert "(2 at a time, 1 threads each, auto)" in result.stderr
    assert "[4/4]" in result.stderr and "ETA" in result.stderr
    return out


def test_study_writes_ordinary_runs_and_study_json(study):
    record = json.loads((study / "study.json").read_text())
    assert record["status"] == "complete" and record["kind"] == "sweep"
    assert len(record["cells"]) == 4 and record["counts"] == {"complete": 4}
    for cell in record["cells"]:
        run = study / cell["dir"]
        assert cell_complete(run, cell["key"])
        assert cell["seconds"] > 0
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed"] == cell["seed"] and config["model"] == "mf"
        assert (run / "model" / "bundle.json").is_file()


def test_per_user_file_matches_results(study):
    run = next((study / "runs").iterdir())
    results = json.loads((run / "results.json").read_text())
    with np.load(run / "per_user.npz") as data:
        for split in ("valid", "test"):
            users = data[f"{split}_users"]
            assert np.all(np.diff(users) > 0)
            assert len(users) == results[split]["num_users"]
            for metric in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20"):
                values = data[f"{split}_{metric}"]
                assert values.shape == users.shape
                assert values.mean() == pytest.approx(results[split][metric], abs=1e-12)


def test_second_identical_call_trains_nothing(study, data_dir, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in study.glob("runs/*/results.json")}
    seconds = {
        c["key"]: c["seconds"] for c in json.loads((study / "study.json").read_text())["cells"]
    }
    result = _study(["run", _spec(tmp_path, data_dir), "--out", study, "--jobs", "2"])
    assert result.returncode == 0, result.stderr
    assert "4 complete, 0 to run" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in study.glob("runs/*/results.json")} == before
    # the skipped cells keep the training time the first call recorded
    cells = json.loads((study / "study.json").read_text())["cells"]
    assert {c["key"]: c["seconds"] for c in cells} == seconds and all(c["skipped"] for c in cells)


def test_report_statistics_and_valid_only_choice(study, run_cli, tmp_path):
    scipy_stats = pytest.importorskip("scipy.stats")
    code, stdout, stderr = run_cli("study", "report", study, "--format", "json")
    assert code == 0, stderr
    report = json.loads(stdout)
    (table,) = report["tables"]
    rows = {row["label"]: row for row in table["rows"]}
    record = json.loads((study / "study.json").read_text())

    def runs(label):
        index = next(r["index"] for r in record["rows"] if r["label"] == label)
        return [study / c["dir"] for c in record["cells"] if c["row"] == index]

    def per_user(label, metric):
        arrays = []
        for run in runs(label):
            with np.load(run / "per_user.npz") as data:
                arrays.append(data[f"test_{metric}"])
        return np.mean(arrays, axis=0)

    def results(label, split, metric):
        return [json.loads((r / "results.json").read_text())[split][metric] for r in runs(label)]

    reference, other = "learning_rate=0.001", "learning_rate=0.05"
    assert table["reference"] == reference and rows[reference]["reference"]
    for metric in ("Recall@20", "NDCG@20"):
        expected = scipy_stats.wilcoxon(per_user(other, metric), per_user(reference, metric))
        test = rows[other]["wilcoxon"][metric]
        assert test["p"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert test["p_holm"] == pytest.approx(min(1.0, expected.pvalue), rel=1e-9)  # one row
    for label, row in rows.items():
        values = results(label, "test", "Recall@20")
        assert row["test"]["Recall@20"]["mean"] == pytest.approx(np.mean(values))
        assert row["test"]["Recall@20"]["std"] == pytest.approx(np.std(values, ddof=1))
    valid_best = max(rows, key=lambda label: np.mean(results(label, "valid", "Recall@20")))
    assert [label for label, row in rows.items() if row["chosen"]] == [valid_best]
    assert table["chosen"] == [valid_best]

    out = study / "report"
    for name in ("report.md", "report.csv", "report.tex", "report.json"):
        assert (out / name).stat().st_size > 0
    assert "(chosen)" in (out / "report.md").read_text()
    if pytest.importorskip("matplotlib"):
        for name in ("sensitivity_learning_rate.png", "training_curves.png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_reference_option_and_csv(study, run_cli):
    code, stdout, _ = run_cli(
        "study", "report", study, "--format", "csv", "--reference", "learning_rate=0.05"
    )
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].startswith("data,row,model,seeds,reference,chosen,valid_Recall@10_mean")
    assert lines[2].split(",")[4] == "True"  # the second row is now the reference
    code, _, stderr = run_cli("study", "report", study, "--reference", "nope")
    assert code == 2 and "--reference: no row 'nope'" in stderr


def test_report_shows_each_rows_cost(study, run_cli):
    code, stdout, _ = run_cli("study", "report", study, "--format", "json")
    assert code == 0
    (table,) = json.loads(stdout)["tables"]
    record = json.loads((study / "study.json").read_text())
    for row in table["rows"]:
        index = next(r["index"] for r in record["rows"] if r["label"] == row["label"])
        results = [
            json.loads((study / c["dir"] / "results.json").read_text())
            for c in record["cells"]
            if c["row"] == index
        ]
        assert row["cost"]["epoch_s"] == pytest.approx(
            np.mean([r["timing"]["train_epoch_s"] for r in results])
        )
        assert row["cost"]["peak_rss_mb"] == pytest.approx(
            np.mean([r["peak_rss_mb"] for r in results])
        )
        assert row["cost"]["trainable_parameters"] == results[0]["trainable_parameters"] > 0
    code, stdout, _ = run_cli("study", "report", study, "--format", "md")
    assert "| s/epoch | peak RSS MB | params |" in stdout
    code, stdout, _ = run_cli("study", "report", study, "--format", "csv")
    assert stdout.splitlines()[0].endswith(",epoch_s,peak_rss_mb,trainable_parameters")


def test_resume_reruns_only_incomplete_and_new_cells(study, data_dir, tmp_path):
    runs = sorted((study / "runs").iterdir())
    (runs[0] / "results.json").unlink()  # as if that run had been interrupted
    untouched = {p: p.stat().st_mtime_ns for p in runs[1:]}
    spec = _spec(tmp_path, data_dir, rates=(0.001, 0.05, 0.02))  # one more axis value
    result = _study(["run", spec, "--out", study, "--jobs", "2"])
    assert result.returncode == 0, result.stderr
    assert "6 runs, 3 complete, 3 to run" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    record = json.loads((study / "study.json").read_text())
    assert record["status"] == "complete" and len(record["cells"]) == 6


def test_completeness_needs_results_status_and_matching_key(study):
    record = json.loads((study / "study.json").read_text())
    cell = record["cells"][1]
    run = study / cell["dir"]
    assert cell_complete(run, cell["key"])
    assert not cell_complete(run, "0" * 64)  # another configuration or data set
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    assert not cell_complete(run, cell["key"])
    (run / "status.json").write_text(json.dumps({"status": "complete"}))
    assert cell_complete(run, cell["key"])
    (run / "status.json").unlink()


def test_ctrl_c_stops_cells_and_leaves_a_resumable_study(data_dir, tmp_path):
    out = tmp_path / "study"
    spec = tmp_path / "slow.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "model": "mf",
                "data": str(data_dir),
                "seeds": 1,
                "training": {"epochs": 400, "patience": 400, "batch_size": 64},
                "variants": {"a": {}, "b": {"embedding_dim": 8}},
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "rearm.cli", "study", "run", str(spec), "--out", str(out)]
        + ["--jobs", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = list((out / "logs").glob("*.log")) if (out / "logs").exists() else []
        if logs and "epoch 1:" in logs[0].read_text():
            break
        time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "interrupted"
    assert sorted(c["status"] for c in record["cells"]) == ["interrupted", "pending"]
    assert not any(cell_complete(out / c["dir"], c["key"]) for c in record["cells"])


def test_thread_environment():
    from rearm.studies.worker import thread_environment

    assert thread_environment(3) == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "NUMBA_NUM_THREADS": "3",
    }


@pytest.mark.slow
def test_ray_executor_on_a_local_two_cpu_instance(data_dir, tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "ray.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"model": "mf", "data": str(data_dir), "seeds": 2, "training": {"epochs": 1}}
        )
    )
    out = tmp_path / "study"
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
    args = ["run", spec, "--out", out, "--executor", "ray", "--jobs", "2", "--threads", "1"]
    result = _study(args, env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "study.json").read_text())
    assert record["counts"] == {"complete": 2}
    # the same study resumes with the local executor: nothing left to train
    assert "2 complete, 0 to run" in _study(args[:4]).stderr


def test_default_jobs_follow_the_measured_gpu_concurrency():
    import torch

    from rearm.studies.engine import GPU_JOBS_PER_DEVICE, default_jobs

    on_cpu = min(2, os.cpu_count() or 1)
    assert default_jobs(["cpu"]) == on_cpu
    assert default_jobs(["cuda:0"]) == GPU_JOBS_PER_DEVICE == 4
    assert default_jobs(["cuda:0", "cuda:1"]) == 8
    assert default_jobs(["auto"]) == (4 if torch.cuda.is_available() else on_cpu)


def test_a_stopped_cell_with_a_resume_state_continues_where_it_was(study, tmp_path, monkeypatch):
    """A cell whose run was killed after writing resume.pt is continued (`rearm train --resume`),
    not started again, and ends with the results of the cell that was never stopped."""
    import shutil
    from dataclasses import replace

    import torch

    from rearm.experiments.config import resolve_config
    from rearm.experiments.run import train_run
    from rearm.training import trainer
    from rearm.training.threads import set_threads
    from rearm.training.trainer import Progress

    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    cell = json.loads((copy / "study.json").read_text())["cells"][0]
    run = copy / cell["dir"]
    straight = json.loads((run / "results.json").read_text())
    config = resolve_config(config_file=str(run / "config.yaml"))
    config = replace(config, training={**config.training, "resume_every_s": 1e-6})

    class Killed(BaseException):
        pass

    original, calls = trainer.TrainStep.__call__, {"n": 0}

    def dying(self, *batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return original(self, *batch)

    monkeypatch.setattr(trainer.TrainStep, "__call__", dying)
    before = torch.get_num_threads()
    set_threads(1)  # as the study's workers (--threads 1), so that the numbers can match
    try:
        with pytest.raises(Killed):
            train_run(config, run, force=True, progress=Progress(enabled=False))
    finally:
        set_threads(before)
    monkeypatch.undo()
    assert (run / "resume.pt").is_file() and not (run / "results.json").exists()

    result = _study(["run", _spec(tmp_path, Path(config.data)), "--out", copy, "--threads", "1"])
    assert result.returncode == 0, result.stderr
    assert "4 runs, 3 complete, 1 to run" in result.stderr
    log = (copy / "logs" / f"{cell['dir'].split('/')[-1]}.log").read_text()
    assert "resuming" in log
    assert log.count("building mf") == 2  # appended to the log the cell had, not replacing it
    resumed = json.loads((run / "results.json").read_text())
    assert len(resumed["processes"]) == 2 and not (run / "resume.pt").exists()
    for key in ("best_epoch", "epochs_run", "valid", "test"):
        assert resumed[key] == straight[key], key
