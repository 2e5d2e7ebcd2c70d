"""rearm.analysis and `rearm analyze`: the AUC, the heatmap sample and summary, the score
decomposition into blocks, and the CLI on tiny runs trained here."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit

from rearm.analysis import (
    auc,
    block_alone,
    block_shares,
    block_terms,
    check_same_data,
    contributions,
    heatmap_summary,
    probability_matrix,
    sample_heatmap,
)
from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.errors import ConfigError, RunError
from rearm.evaluation import get_protocol, rank_metrics
from rearm.experiments.bundle import load_bundle

SMALL_REARM = ["--set", "embedding_dim=16", "--set", "num_layers=2", "--set", "rank=2"]
FAST = ["--quiet", "--epochs", "1", "--set", "learning_rate=0.01", "--set", "batch_size=256"]


# ---------------------------------------------------------------------------------------- auc
def brute_force_auc(positive, negative) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


@pytest.mark.parametrize(
    ("positive", "negative", "expected"),
    [
        ([3, 4], [1, 2], 1.0),
        ([1, 2], [3, 4], 0.0),
        ([1], [1], 0.5),
        ([5, 5, 5], [5, 5], 0.5),
        ([1, 2], [2, 3], 0.125),  # one tie among four pairs
        ([2], [1, 3], 0.5),
        ([0.3, 0.9, 0.5], [0.1, 0.5, 0.7, 0.2], 8.5 / 12),  # 2 + 4 + (2 + 1/2) of 12
    ],
)
def test_auc_hand_cases(positive, negative, expected):
    assert auc(np.array(positive), np.array(negative)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    positive = rng.integers(0, 6, rng.integers(1, 40)).astype(float)  # many ties
    negative = rng.integers(0, 5, rng.integers(1, 40)).astype(float)
    assert auc(positive, negative) == pytest.approx(brute_force_auc(positive, negative), abs=1e-12)


def test_auc_refuses_empty_and_nan():
    with pytest.raises(ValueError, match="at least one positive"):
        auc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([np.nan]), np.array([1.0]))


# ------------------------------------------------------------------------------ block shares
def test_block_shares_hand_case():
    terms = np.array([[1.0, 3.0], [-1.0, 1.0], [0.0, 0.0]])
    stats = block_shares(terms)
    # |1|/4, |3|/4 and 1/2, 1/2 averaged; the all-zero pair is left out of the share
    np.testing.assert_allclose(stats["share"], [0.375, 0.625])
    np.testing.assert_allclose(stats["mean_term"], [0.0, 4.0 / 3.0])
    assert stats["mean_score"] == pytest.approx(4.0 / 3.0)
    np.testing.assert_allclose(stats["fraction_of_score"], [0.0, 1.0])
    assert stats["pairs"] == 3 and stats["zero_pairs"] == 1


def test_block_shares_zero_mean_score_has_no_fraction():
    stats = block_shares(np.array([[1.0, -1.0], [-2.0, 2.0]]))
    assert stats["fraction_of_score"] is None
    np.testing.assert_allclose(stats["share"], [0.5, 0.5])


# --------------------------------------------------------------------------------- tiny runs
def _write(seed: int, folder: Path) -> Path:
    dataset = make_synthetic(
        num_users=120,
        num_items=60,
        modalities={"image": 16, "text": 8},
        seed=seed,
        interactions_per_user=10,
    )
    write_rearm_layout(dataset, folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """rearm, its no_homographs ablation and mf on one data set; mf on another data set."""
    from rearm.cli import main

    root = tmp_path_factory.mktemp("analysis")
    data, other = _write(3, root / "data"), _write(4, root / "other-data")
    recipes = {
        "rearm": ["--data", data, *SMALL_REARM],
        "ablation": ["--data", data, *SMALL_REARM, "--set", "no_homographs=true"],
        "mf": ["--data", data, "--model", "mf"],
        "other": ["--data", other, "--model", "mf"],
    }
    out = {}
    for name, args in recipes.items():
        out[name] = root / "runs" / name
        assert main(["train", *map(str, args), "--out", str(out[name]), *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def bundle(runs):
    return load_bundle(runs["rearm"])


def test_bundle_records_score_blocks(runs, bundle):
    assert bundle.meta["score_blocks"] == [["image", 16], ["text", 16], ["meta", 16]]
    assert load_bundle(runs["ablation"]).meta["score_blocks"][-1] == ["meta", 16]
    assert load_bundle(runs["mf"]).meta["score_blocks"] is None


# --------------------------------------------------------------------------------- heatmap
def test_heatmap_sample_is_what_it_says(bundle):
    sample = sample_heatmap(bundle, users=20, seed=7)
    test = bundle.split("test")
    known = (bundle.split("train") + bundle.split("valid") + test).tocsr()
    assert len(sample.users) == 20 and np.all(np.diff(sample.users) > 0)
    assert len(np.unique(sample.items)) == len(sample.items)
    for row, user in enumerate(sample.users):
        own = set(test[user].indices.tolist())
        assert own, "sampled users have a test item"
        assert set(sample.items[sample.heldout[row]].tolist()) == own
        negatives = set(sample.items[sample.noninteracted[row]].tolist())
        assert len(negatives) == len(own)
        assert not negatives & set(known[user].indices.tolist())
    # the first heldout_columns columns are exactly the union of the users' test items
    union = set(test[sample.users].indices.tolist())
    assert set(sample.items[: sample.heldout_columns].tolist()) == union
    assert sample.noninteracted[:, sample.heldout_columns :].any(axis=0).all()


def test_heatmap_sample_is_deterministic_in_the_seed(bundle):
    first, again = sample_heatmap(bundle, seed=11), sample_heatmap(bundle, seed=11)
    other = sample_heatmap(bundle, seed=12)
    assert np.array_equal(first.users, again.users) and np.array_equal(first.items, again.items)
    assert np.array_equal(first.noninteracted, again.noninteracted)
    assert not (
        np.array_equal(first.users, other.users) and np.array_equal(first.items, other.items)
    )


def test_heatmap_sample_takes_every_user_when_asked_for_more(bundle):
    sample = sample_heatmap(bundle, users=10_000, split="valid")
    assert np.array_equal(sample.users, np.flatnonzero(bundle.split("valid").getnnz(axis=1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"users": 0}, "--users"), ({"split": "train"}, "--split"), ({"seed": -1}, "--seed")],
)
def test_heatmap_sample_bad_options(bundle, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sample_heatmap(bundle, **kwargs)


def test_heatmap_summary_matches_a_pair_by_pair_computation(bundle):
    sample = sample_heatmap(bundle, users=30, seed=3)
    summary = heatmap_summary(bundle, sample)
    positive, negative = [], []
    for row, user in enumerate(sample.users):
        for column, item in enumerate(sample.items):
            score = float(np.dot(bundle.user_repr[user], bundle.item_repr[item]))
            if sample.heldout[row, column]:
                positive.append(score)
            if sample.noninteracted[row, column]:
                negative.append(score)
    assert summary["heldout_pairs"] == len(positive) == sample.heldout.sum()
    assert summary["noninteracted_pairs"] == len(negative) == len(positive)
    assert summary["mean_heldout_probability"] == pytest.approx(np.mean(expit(positive)), 1e-6)
    assert summary["mean_noninteracted_probability"] == pytest.approx(
        np.mean(expit(negative)), 1e-6
    )
    assert summary["auc"] == pytest.approx(brute_force_auc(positive, negative), abs=1e-9)
    probabilities = probability_matrix(bundle, sample)
    assert probabilities.shape == sample.heldout.shape
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_check_same_data(runs, bundle):
    check_same_data(bundle, load_bundle(runs["ablation"]))
    with pytest.raises(RunError, match="different data: their train interactions differ"):
        check_same_data(bundle, load_bundle(runs["other"]))
    test = bundle.split("test").tolil()
    test[0, 59] = 0 if test[0, 59] else 1
    changed = dataclasses.replace(
        bundle, interactions={**bundle.interactions, "test": sp.csr_matrix(test)}
    )
    with pytest.raises(RunError, match="their test interactions differ"):
        check_same_data(bundle, changed)
    relabelled = dataclasses.replace(bundle, item_ids=[f"i{k}" for k in range(bundle.num_items)])
    with pytest.raises(RunError, match="item ids differ"):
        check_same_data(bundle, relabelled)


# ---------------------------------------------------------------------------- contributions
def test_block_terms_add_up_to_the_score(bundle):
    pairs = bundle.split("test").tocoo()
    terms = block_terms(bundle, pairs.row, pairs.col)
    assert terms.shape == (pairs.nnz, 3)
    scores = np.einsum("ij,ij->i", bundle.user_repr[pairs.row], bundle.item_repr[pairs.col])
    np.testing.assert_allclose(terms.sum(axis=1), scores, rtol=1e-5, atol=1e-5)


def test_contributions_with_all_blocks_reproduce_the_run(runs, bundle):
    results = json.loads((runs["rearm"] / "results.json").read_text())
    for split in ("test", "valid"):
        report = contributions(bundle, split)
        assert report["all_blocks"]["Recall@20"] == results[split]["Recall@20"]
        assert report["all_blocks"]["NDCG@20"] == results[split]["NDCG@20"]
        assert report["pairs"] == bundle.split(split).nnz
        assert [b["name"] for b in report["blocks"]] == ["image", "text", "meta"]
        assert sum(b["share"] for b in report["blocks"]) == pytest.approx(1.0)
        assert sum(b["fraction_of_score"] for b in report["blocks"]) == pytest.approx(1.0)
        assert sum(b["mean_term"] for b in report["blocks"]) == pytest.approx(report["mean_score"])


def test_block_alone_metrics_equal_ranking_by_that_block(bundle):
    report = contributions(bundle, "test")
    protocol = get_protocol(bundle.meta["protocol"])
    mask = protocol.mask_matrix(bundle, "test")
    start = 0
    for block in report["blocks"]:
        stop = start + block["width"]
        scores = bundle.user_repr[:, start:stop] @ bundle.item_repr[:, start:stop].T
        expected = rank_metrics(scores, bundle.split("test"), exclude=mask, ks=protocol.ks)
        assert block["alone"]["Recall@20"] == pytest.approx(expected["Recall@20"], abs=1e-9)
        start = stop
    zeroed = block_alone(bundle, "text")
    assert not zeroed.user_repr[:, :16].any() and not zeroed.user_repr[:, 32:].any()
    np.testing.assert_array_equal(zeroed.user_repr[:, 16:32], bundle.user_repr[:, 16:32])
    with pytest.raises(ConfigError, match="unknown score block 'audio'"):
        block_alone(bundle, "audio")


def test_contributions_refuse_models_without_blocks(runs):
    with pytest.raises(RunError, match=r"this model \(mf\) has no score blocks"):
        contributions(load_bundle(runs["mf"]))


# ------------------------------------------------------------------------------------- CLI
def test_cli_heatmap_side_by_side(runs, run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "figures" / "heatmap.png"
    code, out, err = run_cli(
        "analyze", "heatmap", runs["rearm"], "--against", runs["ablation"], "--users", "12",
        "--seed", "5", "--out", png, "--json",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert [r["run"] for r in record["runs"]] == [str(runs["rearm"]), str(runs["ablation"])]
    assert len(record["users"]) == 12 and record["png"] == str(png)
    bundle = load_bundle(runs["ablation"])
    sample = sample_heatmap(load_bundle(runs["rearm"]), users=12, seed=5)
    assert record["users"] == [str(u) for u in sample.users]
    assert record["runs"][1]["auc"] == heatmap_summary(bundle, sample)["auc"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["heatmap.png"]  # no temporary left
    code, out, err = run_cli("analyze", "heatmap", runs["rearm"], "--users", "12", "--seed", "5")
    assert code == 0 and "held-out" in out and "AUC" in out
    assert f"{record['runs'][0]['auc']:.4f}" in out


def test_cli_heatmap_refuses_runs_on_different_data(runs, run_cli, tmp_path):
    code, _, err = run_cli(
        "analyze", "heatmap", runs["rearm"], "--against", runs["other"], "--json"
    )
    assert code == 2 and "trained on different data" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "0"], "--users: expected a positive integer"),
        (["--out", "picture.jpg"], "expected a file name ending in .png"),
    ],
)
def test_cli_heatmap_bad_options(runs, run_cli, tmp_path, args, message):
    code, _, err = run_cli("analyze", "heatmap", runs["rearm"], *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_heatmap_without_matplotlib(runs, run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "h.png"
    code, _, err = run_cli("analyze", "heatmap", runs["rearm"], "--out", png)
    assert code == 2 and "pip install 'rearm[plot]'" in err and not png.exists()
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run_cli("analyze", "heatmap", runs["rearm"], "--json")
    assert code == 0 and json.loads(out)["png"] is None


def test_cli_contributions(runs, run_cli):
    code, out, err = run_cli("analyze", "contributions", runs["rearm"], "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    results = json.loads((runs["rearm"] / "results.json").read_text())
    assert report["all_blocks"]["Recall@20"] == results["test"]["Recall@20"]
    code, out, err = run_cli("analyze", "contributions", runs["rearm"], "--split", "valid")
    assert code == 0 and "valid" in out and "ranking all items" in err
    assert [line.split()[0] for line in out.splitlines()[2:5]] == ["image", "text", "meta"]


def test_cli_contributions_without_blocks(runs, run_cli, tmp_path):
    code, _, err = run_cli("analyze", "contributions", runs["mf"])
    assert code == 2 and "has no score blocks" in err and "Traceback" not in err
    # a bundle written before score blocks were recorded says the same
    old = tmp_path / "old"
    shutil.copytree(runs["rearm"], old)
    meta_path = old / "model" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    del meta["score_blocks"]
    meta_path.write_text(json.dumps(meta))
    code, _, err = run_cli("analyze", "contributions", old)
    assert code == 2 and "this model (rearm) has no score blocks" in err
