"""`rearm graphs` / export_graphs: the graphs written are the ones training builds, the manifest
records how, and bad output folders or settings fail with one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from rearm.cli import main
from rearm.data import load_dataset
from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.graphs import GRAPH_FILES, build_graphs, to_scipy
from rearm.models import get_model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    dataset = make_synthetic(
        num_users=90, num_items=40, modalities={"image": 12, "text": 6}, seed=4
    )
    folder = tmp_path_factory.mktemp("graphs-data") / "data"
    write_rearm_layout(dataset, folder)
    return folder


def load_all(folder: Path) -> dict[str, sp.csr_matrix]:
    return {
        name: sp.load_npz(folder / file)
        for name, file in GRAPH_FILES.items()
        if (folder / file).exists()
    }


def test_graphs_command_writes_the_graphs_training_builds(data_dir, tmp_path, capsys):
    out = tmp_path / "graphs"
    code = main(["graphs", "--data", str(data_dir), "--out", str(out), "--set", "user_knn_k=7"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*GRAPH_FILES.values(), "graphs.json"])
    manifest = json.loads((out / "graphs.json").read_text())
    assert manifest["arguments"]["user_knn_k"] == 7
    assert manifest["arguments"]["item_knn_k"] == 10  # REARM's default
    assert manifest["data"]["users"] == 90 and manifest["data"]["items"] == 40
    assert manifest["data"]["modalities"] == {"image": 12, "text": 6}
    assert "user_homograph.npz" in capsys.readouterr().out

    dataset = load_dataset(data_dir)
    assert manifest["data"]["fingerprint"] == dataset.fingerprint()
    arguments = get_model("rearm").graph_arguments(dataset, {"user_knn_k": 7})
    expected = build_graphs(dataset, **arguments, seed=2025)
    written = load_all(out)
    for name, matrix in written.items():
        reference = to_scipy(getattr(expected, name))
        assert matrix.format == "csr" and matrix.shape == reference.shape, name
        assert manifest["graphs"][name]["nnz"] == matrix.nnz == reference.nnz, name
        np.testing.assert_allclose(matrix.toarray(), reference.toarray(), atol=1e-7)
    # user kNN rows hold at most 7 neighbours per modality
    assert np.diff(written["user_interest_graph"].indptr).max() <= 2 * 7


def test_preset_seed_and_ablation_reach_the_graphs(data_dir, tmp_path):
    out = tmp_path / "clothing"
    assert main(["graphs", "--data", str(data_dir), "--preset", "clothing", "--quiet",
                 "--seed", "5", "--out", str(out), "--no-cache"]) == 0  # fmt: skip
    manifest = json.loads((out / "graphs.json").read_text())
    arguments = manifest["arguments"]
    assert (arguments["user_knn_k"], arguments["item_knn_k"]) == (45, 10)
    assert arguments["user_cooccurrence_weight"] == pytest.approx(0.7)
    assert arguments["user_modality_weights"] == {"image": 0.1, "text": 0.9}
    assert manifest["seed"] == 5 and manifest["preset"] == "clothing"
    assert manifest["cache"] is False

    only = tmp_path / "cooccurrence-only"
    assert main(["graphs", "--data", str(data_dir), "--set", "cooccurrence_only=true",
                 "--quiet", "--out", str(only)]) == 0  # fmt: skip
    graphs = load_all(only)
    # the semantic graphs have weight 0 there: not built, not written, not in the manifest
    assert set(graphs) == set(GRAPH_FILES) - {"item_semantic", "user_interest_graph"}
    assert set(json.loads((only / "graphs.json").read_text())["graphs"]) == set(graphs)
    assert (graphs["item_homograph"] != graphs["item_cooccurrence"]).nnz == 0
    assert (graphs["user_homograph"] != graphs["user_cooccurrence"]).nnz == 0

    # replacing a full export with an ablation's removes the graphs it does not have
    no_users = tmp_path / "no-user-graph"
    assert main(["graphs", "--data", str(data_dir), "--quiet", "--out", str(no_users)]) == 0
    assert main(["graphs", "--data", str(data_dir), "--set", "no_user_graph=true", "--force",
                 "--quiet", "--out", str(no_users)]) == 0  # fmt: skip
    assert set(load_all(no_users)) == {
        "bipartite", "item_cooccurrence", "item_semantic", "item_homograph"
    }  # fmt: skip


def test_export_graphs_python_api(tmp_path):
    from rearm.experiments.config import resolve_config
    from rearm.experiments.graphs import export_graphs

    dataset = make_synthetic(num_users=50, num_items=30, modalities={"text": 8}, seed=1)
    config = resolve_config(model="rearm", overrides=["item_knn_k=4"])
    manifest = export_graphs(config, tmp_path / "g", dataset=dataset, use_cache=False)
    assert set(manifest["graphs"]) == set(GRAPH_FILES)
    assert manifest["arguments"]["item_knn_k"] == 4
    assert manifest["arguments"]["user_modality_weights"] == {"text": 1.0}
    item_semantic = sp.load_npz(tmp_path / "g" / "item_semantic.npz")
    assert (np.diff(item_semantic.indptr) == 4).all()
    assert all(entry["seconds"] >= 0 for entry in manifest["graphs"].values())


def test_files_are_stored_uncompressed_unless_asked(data_dir, tmp_path, capsys):
    import zipfile

    base = ["graphs", "--data", str(data_dir), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--compress", "--out", str(tmp_path / "zipped")]) == 0
    capsys.readouterr()
    plain, zipped = load_all(tmp_path / "plain"), load_all(tmp_path / "zipped")
    assert set(plain) == set(zipped) == set(GRAPH_FILES)
    for name, file in GRAPH_FILES.items():
        assert (plain[name] != zipped[name]).nnz == 0
        for folder, method in (("plain", zipfile.ZIP_STORED), ("zipped", zipfile.ZIP_DEFLATED)):
            with zipfile.ZipFile(tmp_path / folder / file) as archive:
                assert {member.compress_type for member in archive.infolist()} == {method}
    for folder, compressed in (("plain", False), ("zipped", True)):
        manifest = json.loads((tmp_path / folder / "graphs.json").read_text())
        assert manifest["compressed"] is compressed


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rearm: error: "), err
    return err[0]


def test_bad_output_folders_and_settings_fail_cleanly(data_dir, tmp_path, capsys):
    base = ["graphs", "--data", str(data_dir), "--quiet"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main([*base, "--out", str(a_file)]) == 2
    assert "not a directory" in error_line(capsys)
    assert main([*base, "--out", str(a_file / "sub")]) == 2  # under a file: no traceback
    assert f"{a_file / 'sub'}" in error_line(capsys)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([*base, "--out", str(foreign)]) == 2
    assert "notes.txt" in error_line(capsys)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    out = tmp_path / "graphs"
    assert main([*base, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(out)]) == 2
    assert "--force" in error_line(capsys)
    assert main([*base, "--out", str(out), "--force", "--set", "item_knn_k=3"]) == 0
    assert json.loads((out / "graphs.json").read_text())["arguments"]["item_knn_k"] == 3

    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x"), "--set", "user_knn_k=0"]) == 2
    assert "user_knn_k" in error_line(capsys)
    assert main([*base, "--out", str(tmp_path / "x"), "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in error_line(capsys)
    missing = ["graphs", "--quiet", "--data", str(tmp_path / "missing")]
    assert main([*missing, "--out", str(tmp_path / "y")]) == 2
    assert "missing" in error_line(capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def run_benchmark(*args: str) -> dict:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "graphs.py"
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_graph_benchmark_reports_and_saves_every_graph(data_dir, tmp_path):
    report = run_benchmark(str(data_dir), "--preset", "baby", "--save", str(tmp_path / "saved"))
    assert report["total_s"] > 0 and report["peak_rss_mb"] > 0
    assert set(report["graphs"]) == set(GRAPH_FILES)
    assert report["parameters"]["user_knn_k"] == 40 and report["preset"] == "baby"
    saved = load_all(tmp_path / "saved")
    for name, entry in report["graphs"].items():
        assert entry["nnz"] == saved[name].nnz and entry["seconds"] >= 0, name
    dataset = load_dataset(data_dir)
    assert saved["bipartite"].shape == (dataset.num_users + dataset.num_items,) * 2

    synthetic = run_benchmark(
        "--synthetic", "--users", "300", "--items", "120", "--interactions", "3000",
        "--dims", "text:16", "--user-knn-k", "6", "--threads", "1",
    )  # fmt: skip
    assert synthetic["data"]["synthetic"] and synthetic["data"]["users"] == 300
    assert synthetic["threads"] == 1
    assert synthetic["parameters"]["user_knn_k"] == 6
    assert synthetic["graphs"]["user_interest_graph"]["nnz"] <= 300 * 6
