"""Studies over misaligned modalities: the `corruption` spec entry (data sets derived per
fraction under the study folder), variants that name their model, the robustness template's
expansion, and the across-fraction report (p at each P with Holm over P, the degradation test)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rearm.data import load_dataset
from rearm.data.corrupt import corrupt_features
from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.studies import get_template, spec_from_dict
from rearm.studies.engine import run_study
from rearm.studies.stats import holm, wilcoxon_signed_rank


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("robust-data") / "small"
    dataset = make_synthetic(num_users=120, num_items=80, modalities={"image": 8}, seed=4)
    write_rearm_layout(dataset, folder)
    return folder


def test_robustness_template_expands_to_the_expected_runs(data_dir, tmp_path):
    spec = spec_from_dict(get_template("robustness"), "template robustness")
    spec = dataclasses.replace(spec, data=(str(data_dir),))
    out = tmp_path / "study"
    lines: list[str] = []
    result = run_study(spec, out, dry_run=True, line=lines.append)
    assert result == {"rows": 36, "runs": 108}  # 6 fractions x 6 rows, 3 seeds
    assert lines[-1] == "36 rows x 3 seeds: 108 runs"
    assert not out.exists()  # a dry run derives in memory and writes nothing
    listed = [line.split("  ")[1] for line in lines if "  seed " in line]
    assert listed[0] == "small-shuffle-image-0 full" and listed[6] == "small-shuffle-image-0.2 full"
    fractions = {label.split(" ")[0] for label in listed}
    assert fractions == {f"small-shuffle-image-{p}" for p in ("0", "0.2", "0.4", "0.6", "0.8", "1")}
    assert {label.split(" ")[1] for label in listed} == {
        "full", "no_meta", "no_contrastive", "freedom", "vbpr", "lightgcn"
    }  # fmt: skip
    # seed by seed: every row's first seed comes before any second seed
    seeds = [int(line.split("  seed ")[1]) for line in lines if "  seed " in line]
    assert seeds == sorted(seeds) and seeds.count(2025) == 36


def test_variants_name_models_and_ablations(data_dir):
    from rearm.studies.spec import expand_cells

    spec = spec_from_dict({**get_template("robustness"), "data": str(data_dir)}, "t")
    rows, cells = expand_cells(spec, {str(data_dir): "f"})
    models = {row.label: row.model for row in rows}
    assert models == {
        "full": "rearm", "no_meta": "rearm", "no_contrastive": "rearm",
        "freedom": "freedom", "vbpr": "vbpr", "lightgcn": "lightgcn",
    }  # fmt: skip
    hyper = {rows[c.row].label: c.config.hyperparameters for c in cells if c.seed == 2025}
    assert hyper["no_meta"]["no_meta"] and not hyper["full"]["no_meta"]
    assert hyper["no_contrastive"]["no_contrastive"] and "no_meta" not in hyper["freedom"]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {"corruption": {"mode": "shuffle", "fractions": [0.5]}},
            "corruption: modality is missing",
        ),
        (
            {"corruption": {"modality": "image", "mode": "blur", "fractions": [0.5]}},
            "corruption.mode: expected one of shuffle, noise, zero, swap",
        ),
        (
            {"corruption": {"modality": "image", "mode": "zero", "fractions": [0.5, 1.5]}},
            "1.5 is outside [0, 1]",
        ),
        (
            {"corruption": {"modality": "image", "mode": "zero", "fractions": []}},
            "empty axis",
        ),
        (
            {"corruption": {"modality": "image", "mode": "zero", "fractions": [0], "x": 1}},
            "unknown key 'x'",
        ),
        (
            {"models": ["mf", "vbpr"], "variants": {"a": {"model": "mf"}}},
            "variants.a names a model; then give no models list",
        ),
        ({"axes": {"model": ["mf"]}}, "'model' cannot vary here (use models)"),
    ],
)
def test_bad_corruption_specs_fail_with_one_line(tmp_path, run_cli, content, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(content))
    code, _, stderr = run_cli("study", "run", spec, "--out", tmp_path / "s", "--quiet")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert message in stderr
    assert not (tmp_path / "s").exists()


def test_unknown_modality_is_named_before_anything_runs(tmp_path, run_cli, data_dir):
    spec = tmp_path / "spec.yaml"
    content = {"data": str(data_dir), "model": "mf", "seeds": 1}
    content["corruption"] = {"modality": "audio", "mode": "zero", "fractions": [0.5]}
    spec.write_text(yaml.safe_dump(content))
    code, _, stderr = run_cli("study", "run", spec, "--out", tmp_path / "s", "--quiet")
    assert code == 2 and "corruption of" in stderr and "no modality 'audio'" in stderr
    assert not list((tmp_path / "s").glob("runs/*"))


def test_each_copy_is_derived_once_and_a_matching_folder_is_read_not_derived(
    data_dir, tmp_path, monkeypatch
):
    from rearm.studies import derive

    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs["fraction"])
        return corrupt_features(*args, **kwargs)

    monkeypatch.setattr(derive, "corrupt_features", counted)
    content = {"data": str(data_dir), "model": "mf", "seeds": 1}
    content["corruption"] = {"modality": "image", "mode": "noise", "fractions": [0.25, 0.75]}
    spec = spec_from_dict(content, "spec")
    out = tmp_path / "study"
    derivation = derive.derive_corrupted(spec, out, lambda _: None)
    assert calls == [0.25, 0.75] and not out.exists()  # derived in memory, nothing written
    in_memory = {f: d.fingerprint() for f, d in derivation.datasets.items()}
    derive.write_derived(derivation, lambda _: None)
    assert not derivation.pending and calls == [0.25, 0.75]  # written, not derived again
    assert {f: d.fingerprint() for f, d in derivation.datasets.items()} == in_memory
    # a second study over the same folder reads both copies; a changed one is derived anew
    stale = Path(next(iter(in_memory)))
    np.save(stale / "image_feat.npy", np.zeros_like(np.load(stale / "image_feat.npy")))
    again = derive.derive_corrupted(spec, out, lambda _: None)
    assert calls == [0.25, 0.75, 0.25] and list(again.pending) == [str(stale)]
    derive.write_derived(again, lambda _: None)
    assert load_dataset(stale).fingerprint() == in_memory[str(stale)]


# ---------------------------------------------------------------------------------------------
# A small corruption study that trains (VBPR: it uses the image features; 1 epoch)


def _spec(folder: Path, data: Path) -> Path:
    path = folder / "spec.yaml"
    content = {
        "name": "tiny-robustness",
        "data": str(data),
        "seeds": 1,
        "training": {"epochs": 1, "batch_size": 256},
        "corruption": {"modality": "image", "mode": "shuffle", "fractions": [0.0, 1.0]},
        "variants": {"full": {"model": "vbpr"}, "floor": {"model": "lightgcn"}},
    }
    path.write_text(yaml.safe_dump(content))
    return path


def _study(args: list) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rearm.cli", "study", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("robust-study")
    out = folder / "study"
    result = _study(["run", _spec(folder, data_dir), "--out", out, "--jobs", "2", "--threads", "1"])
    assert result.returncode == 0, result.stderr
    assert "2 rows x 1 seeds" not in result.stderr and "4 runs, 0 complete" in result.stderr
    return out


def test_derived_data_sets_are_recorded_and_exact(study, data_dir):
    record = json.loads((study / "study.json").read_text())
    derived = record["derived"]
    assert sorted(Path(p).name for p in derived) == [
        "small-shuffle-image-0",
        "small-shuffle-image-1",
    ]
    source = load_dataset(data_dir)
    for path, how in derived.items():
        assert Path(path).parent == (study / "data").resolve()
        manifest = json.loads((Path(path) / "corruption.json").read_text())
        assert manifest["source"]["fingerprint"] == how["source_fingerprint"]
        assert manifest["source"]["fingerprint"] == source.fingerprint()
        expected, _ = corrupt_features(source, "image", how["fraction"], "shuffle", seed=0)
        assert load_dataset(path).fingerprint() == expected.fingerprint()
    # every run trained on its fraction's data set
    for cell in record["cells"]:
        config = yaml.safe_load((study / cell["dir"] / "config.yaml").read_text())
        assert Path(config["data"]).name == cell["label"].split(" ")[0]


def test_resume_reuses_the_derived_data_and_trains_nothing(study, data_dir, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in study.glob("data/*/*")}
    result = _study(["run", _spec(tmp_path, data_dir), "--out", study, "--jobs", "2"])
    assert result.returncode == 0, result.stderr
    assert "4 complete, 0 to run" in result.stderr and "deriving" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in study.glob("data/*/*")} == before


def test_fraction_report_tests_at_each_fraction_with_holm_over_fractions(study, run_cli):
    code, stdout, stderr = run_cli("study", "report", study, "--format", "json")
    assert code == 0, stderr
    report = json.loads(stdout)
    view = report["fractions"]
    assert view["fractions"] == [0.0, 1.0] and view["reference"] == "full"
    record = json.loads((study / "study.json").read_text())

    def per_user(label):
        (cell,) = [c for c in record["cells"] if c["label"] == label]
        with np.load(study / cell["dir"] / "per_user.npz") as data:
            return data["test_users"], data["test_Recall@20"]

    rows = {curve["label"]: curve for curve in view["rows"]}
    raw = []
    for fraction in ("0", "1"):
        users, full = per_user(f"small-shuffle-image-{fraction} full")
        other_users, floor = per_user(f"small-shuffle-image-{fraction} floor")
        assert np.array_equal(users, other_users)
        raw.append(wilcoxon_signed_rank(floor, full)[1])
    floor_tests = rows["floor"]["tests"]["Recall@20"]
    assert floor_tests["p"] == pytest.approx(raw, nan_ok=True)
    assert floor_tests["p_holm"] == pytest.approx(list(holm(raw)), nan_ok=True)
    # LightGCN uses no features: the same numbers at every fraction, so no drop
    values = [v["mean"] for v in rows["floor"]["test"]["Recall@20"]]
    assert values[0] == values[1] and rows["floor"]["degradation"]["Recall@20"]["drop"] == 0.0
    full_values = [v["mean"] for v in rows["full"]["test"]["Recall@20"]]
    assert rows["full"]["degradation"]["Recall@20"]["drop"] == pytest.approx(
        full_values[0] - full_values[1]
    )
    markdown = (study / "report" / "report.md").read_text()
    assert markdown.startswith("tiny-robustness: test Recall@20") and "| P=0 | P=1 |" in markdown
    if pytest.importorskip("matplotlib"):
        assert (study / "report" / "recall_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"
