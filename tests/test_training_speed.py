"""The throughput machinery keeps the mathematics: the fixed-shape (CUDA graph) loss equals the
eager one, the trainer's step reads losses without changing them, evaluation every N epochs
counts patience in validations, bf16 autocast trains, --threads sets the pools, and the
benchmark scripts run on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_models_rearm import make_model
from test_training_pinned import RECORD, assert_matches_record, pinned_run
from test_training_run import _fit_small

from rearm.models.layers import first_occurrence, info_nce, normalize_rows

ROOT = Path(__file__).resolve().parents[1]


def test_first_occurrence_marks_one_position_per_value_the_first():
    ids = torch.tensor([5, 3, 5, 5, 0, 3, 9, 0])
    seen, expected = set(), []
    for value in ids.tolist():
        expected.append(value not in seen)
        seen.add(value)
    assert first_occurrence(ids).tolist() == expected


def test_normalize_rows_equals_f_normalize_in_value_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(50, 24, dtype=torch.float64)
    x[7] = 0.0  # a zero row: clamped to eps, its gradient is g / eps
    x[11] *= 1e-14  # a row below eps, nonzero
    weights = torch.randn(50, 24, dtype=torch.float64)
    results = []
    for fn in (lambda v: torch.nn.functional.normalize(v, dim=1), normalize_rows):
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        (out * weights).sum().backward()
        results.append((out.detach(), leaf.grad))
    (value_a, grad_a), (value_b, grad_b) = results
    torch.testing.assert_close(value_b, value_a, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-10, atol=0)
    assert torch.equal(grad_b[7], weights[7] / 1e-12)


def test_masked_info_nce_equals_info_nce_on_the_kept_rows_with_gradients():
    generator = torch.Generator().manual_seed(0)
    anchor = torch.randn(9, 4, generator=generator, requires_grad=True)
    candidate = torch.randn(9, 4, generator=generator, requires_grad=True)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
    masked = info_nce(anchor, candidate, 0.6, keep)
    (grad_a, grad_c) = torch.autograd.grad(masked, (anchor, candidate))
    kept = info_nce(anchor[keep], candidate[keep], 0.6)
    (want_a, want_c) = torch.autograd.grad(kept, (anchor, candidate))
    assert torch.allclose(masked, kept, atol=1e-6)
    assert torch.allclose(grad_a, want_a, atol=1e-6) and torch.allclose(grad_c, want_c, atol=1e-6)
    naive = -torch.log_softmax(
        torch.nn.functional.normalize(anchor[keep], dim=1)
        @ torch.nn.functional.normalize(candidate[keep], dim=1).T
        / 0.6,
        dim=1,
    ).diagonal()
    assert torch.allclose(kept, naive.mean(), atol=1e-6)


@pytest.mark.parametrize("modalities", [("image", "text"), ("image", "text", "audio")])
def test_static_shapes_loss_equals_the_eager_loss_values_and_gradients(modalities):
    # duplicated users and items, as in real batches
    users = torch.tensor([0, 3, 3, 6, 0, 2])
    pos = torch.tensor([1, 2, 5, 8, 1, 1])
    neg = torch.tensor([0, 4, 7, 2, 4, 5])
    results = []
    for static in (False, True):
        model = make_model(modalities)
        model.static_shapes = static
        terms = model.loss(users, pos, neg)
        sum(terms.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in terms.items()}, grads))
    (eager_terms, eager_grads), (static_terms, static_grads) = results
    assert set(eager_terms) == set(static_terms) == {"bpr", "contrastive", "orthogonal"}
    for name in eager_terms:
        assert torch.allclose(eager_terms[name], static_terms[name], rtol=1e-5, atol=1e-7)
    assert set(eager_grads) == set(static_grads)
    for name, grad in eager_grads.items():
        static_grad = static_grads[name]
        if "attention." in name and name.endswith(("in_proj_bias", "out_proj.bias")):
            # the key, value and output biases have a gradient that is zero up to rounding
            # (the softmax removes the first, the LayerNorm after the attention the others'
            # shift of all coordinates alike; see test_training_pinned): that rounding differs
            # between the two paths' orders of summation, so those entries are checked to be
            # rounding-sized in both, and the query bias like every other gradient
            zero = [1, 2] if name.endswith("in_proj_bias") else [0]
            assert grad[zero].abs().max() < 1e-6 and static_grad[zero].abs().max() < 1e-6, name
            keep = [i for i in range(grad.numel()) if i not in zero]
            grad, static_grad = grad.reshape(-1)[keep], static_grad.reshape(-1)[keep]
        assert torch.allclose(grad, static_grad, rtol=1e-4, atol=1e-7), name


def test_fixed_shape_training_matches_the_recorded_run():
    """The CUDA graph's step function (static shapes), run eagerly on the CPU."""
    record = json.loads(RECORD.read_text())
    assert_matches_record(pinned_run(static_shapes=True), record)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_training_matches_the_recorded_run():
    record = json.loads(RECORD.read_text())
    result = pinned_run(device="cuda", cuda_graph=True)
    assert result["cuda_graph"]
    assert_matches_record(result, record, rtol=2e-3)
    assert not pinned_run(device="cuda", cuda_graph=False)["cuda_graph"]


def test_eval_every_validates_every_n_epochs_and_counts_patience_in_validations():
    _, result = _fit_small(learning_rate=0.0, patience=1, eval_every=2, epochs=9)
    evaluated = [r.epoch for r in result.history if r.valid]
    # best at the first validation (epoch 2); the next (epoch 4) has no gain: stop
    assert evaluated == [2, 4] and result.epochs_run == 4 and result.stopped_early
    assert result.best_epoch == 2
    assert all(r.losses for r in result.history)
    _, last = _fit_small(eval_every=4, epochs=6)
    assert [r.epoch for r in last.history if r.valid] == [4, 6]


def test_bf16_autocast_trains_close_to_fp32():
    fp32 = pinned_run(epochs=1)
    bf16 = pinned_run(epochs=1, precision="bf16")
    for name, value in fp32["epochs"][0]["losses"].items():
        got = bf16["epochs"][0]["losses"][name]
        assert got == pytest.approx(value, rel=0.05), name


def test_training_keys_have_domains(rearm_dir, tmp_path, run_cli):
    for setting, message in (
        ("eval_every=0", "eval_every must be int in [1, inf)"),
        ("precision=fp16", "precision must be one of 'fp32', 'bf16'"),
    ):
        code, _, err = run_cli(
            "train", "--data", rearm_dir, "--set", setting, "--out", tmp_path / "x"
        )
        assert code == 2 and message in err
    code, _, err = run_cli("train", "--data", rearm_dir, "--threads", "0", "--out", tmp_path / "y")
    assert code == 2 and "--threads must be an integer >= 1" in err


def test_set_threads_sets_every_pool():
    from rearm.training.threads import set_threads

    before = torch.get_num_threads()
    try:
        done = set_threads(1)
        assert done["torch"] == 1 == torch.get_num_threads()
        assert done.get("numba", 1) == 1
    finally:
        torch.set_num_threads(before)


def _run_script(*args: str, timeout: int = 600) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_training_benchmark_reports_the_ratio_on_tiny_data():
    line = _run_script("benchmarks/training.py", "--smoke", "--repeats", "1", "--profile", "1")
    report = json.loads(line.strip().splitlines()[-1])
    assert report["ratio"] == pytest.approx(report["train_epoch_s"] / report["floor_epoch_s"], 1e-2)
    assert set(report["floor_components_s"]) == {
        "table_forward",
        "projection_gradient",
        "table_gradient",
        "graph_products",
        "adamw",
    }
    assert sum(part["share"] for part in report["profile"].values()) == pytest.approx(1, abs=0.01)


def test_unique_benchmark_times_both_ways_and_loads_the_data(tmp_path):
    from rearm.data import load_dataset
    from rearm.data.synth import make_synthetic, write_rearm_layout

    write_rearm_layout(make_synthetic(300, 120, {"image": 8}, seed=1), tmp_path / "d")
    out = tmp_path / "unique.json"
    args = ["--size", "2000", "--repeats", "1", "--data", str(tmp_path / "d"), "--out", str(out)]
    printed = json.loads(_run_script("benchmarks/unique.py", *args))
    assert json.loads(out.read_text()) == printed
    for part in ("unique_int64", "unique_str", "union_int64"):
        assert printed[part]["numpy_s"] > 0 and printed[part]["rearm_s"] > 0
    (load,) = printed["load"].values()
    dataset = load_dataset(tmp_path / "d")
    assert load["interactions"] == sum(dataset.split(n).nnz for n in ("train", "valid", "test"))


@pytest.mark.slow
def test_plan_time_benchmark_plans_and_measures_a_tiny_set(tmp_path):
    from rearm.data.synth import make_synthetic, write_rearm_layout

    write_rearm_layout(make_synthetic(300, 120, {"image": 16, "text": 8}, seed=1), tmp_path / "d")
    out = tmp_path / "plan_time.json"
    spec = f"{tmp_path / 'd'}:synthetic"
    _run_script(
        "benchmarks/plan_time.py",
        "--data",
        spec,
        "--calibrations",
        "1",
        "--steps",
        "2",
        "--out",
        str(out),
    )
    (row,) = json.loads(out.read_text())["data"].values()
    (planned,) = row["planned_s_per_step"]
    assert planned > 0 and row["measured"]["s_per_step"] > 0
    assert row["planned_over_measured"] == [round(planned / row["measured"]["s_per_step"], 3)]


@pytest.mark.slow
def test_gpu_throughput_script_smoke_on_the_cpu(tmp_path):
    _run_script("benchmarks/gpu_throughput.py", "--smoke", "--out", str(tmp_path), timeout=900)
    report = json.loads((tmp_path / "gpu_throughput.json").read_text())
    assert report["floor"]["floor_epoch_s"] > 0
    assert report["epoch"]["eager"]["train_epoch_s"] > 0
    assert [row["finished"] for row in report["concurrency"].values()] == [1, 2]
    assert set(report["precision"]) >= {"fp32", "bf16"}


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (
            "benchmarks/training.py",
            ["--smoke", "--steps", "0"],
            "--steps: expected an integer >= 1",
        ),
        ("benchmarks/training.py", ["--smoke", "--top", "-1"], "--top: expected an integer >= 0"),
        ("benchmarks/floor.py", ["--smoke", "--repeats", "0"], "--repeats: expected an integer"),
        ("benchmarks/floor.py", ["--data", "no/such/data"], "no/such/data: no such file"),
        ("benchmarks/resume_check.py", ["--epochs", "1"], "--epochs: expected an integer >= 2"),
        (
            "benchmarks/resume_check.py",
            ["--epochs", "2", "--kill-epoch", "3"],
            "--kill-epoch 3 is after the last epoch (2)",
        ),
        ("benchmarks/resume_check.py", ["--data", "no/such/data"], "no/such/data"),
        ("benchmarks/plan_time.py", ["--data", "no/such/data:baby"], "no/such/data: no such"),
        ("benchmarks/unique.py", ["--data", "no/such/data"], "--data no/such/data: no such folder"),
        ("benchmarks/unique.py", ["--repeats", "0"], "--size must be >= 2 and --repeats >= 1"),
        ("benchmarks/plan_time.py", ["--data", "data"], "expected PATH:PRESET, got 'data'"),
        (
            "benchmarks/plan_time.py",
            ["--data", "x:baby", "--steps", "0"],
            "--calibrations and --steps must be >= 1",
        ),
        (
            "benchmarks/plan_time.py",
            ["--data", "x:baby", "--out", "no/such/folder/t.json"],
            "--out no/such/folder/t.json: its folder does not exist",
        ),
    ],
)
def test_benchmark_scripts_refuse_bad_values_in_one_line(script, args, message):
    result = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last and message in last
