"""Three and more modalities: the N-modality generator (styles, pure-noise tables, recipes), the
run-level `modalities` selection, REARM and FREEDOM with 1, 3 and 4 modalities, the `modalities`
study template and the cost fields that its report shows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rearm.data import DataError, make_synthetic, parse_modality_spec, parse_synthetic_recipe
from rearm.data.synth import parse_modalities
from rearm.errors import ConfigError
from rearm.experiments.config import resolve_config
from rearm.experiments.run import SYNTHETIC_DEFAULT, load_run_data, train_run
from rearm.studies import expand_cells, get_template, spec_from_dict
from rearm.studies.templates import MODALITIES_DATA

FOUR = {"image": 48, "text": 16, "audio": 24, "noise": 32}
RECIPE = "synthetic:modalities=image:48,text:16,audio:24,noise:32:noise;users=150;items=90;seed=3"


def four_modalities(num_users: int = 400, num_items: int = 300, seed: int = 3):
    return make_synthetic(
        num_users=num_users,
        num_items=num_items,
        modalities=FOUR,
        noise_modalities=("noise",),
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# Generation


def test_modality_spec_marks_noise_and_rejects_bad_entries():
    assert parse_modality_spec("image:8,text:4,clip:6:noise") == (
        {"image": 8, "text": 4, "clip": 6},
        ("clip",),
    )
    for bad, message in (
        ("image:8:loud", "the only third field is `noise`"),
        ("image:8:noise:x", "expected NAME:DIM\\[:noise\\]"),
        ("image", "expected NAME:DIM\\[:noise\\]"),
        ("image:0", "must be >= 1"),
    ):
        with pytest.raises(DataError, match=message):
            parse_modality_spec(bad)
    with pytest.raises(DataError, match="marked noise"):
        parse_modalities("image:8,clip:6:noise")
    with pytest.raises(DataError, match="not one of the modalities"):
        make_synthetic(num_users=20, num_items=10, modalities={"image": 4}, noise_modalities=["x"])


def test_four_modalities_shapes_styles_and_determinism():
    first, second = four_modalities(), four_modalities()
    assert first.fingerprint() == second.fingerprint()
    assert four_modalities(seed=4).fingerprint() != first.fingerprint()
    assert list(first.features) == list(FOUR)
    assert {name: t.shape for name, t in first.features.items()} == {
        name: (300, dim) for name, dim in FOUR.items()
    }
    image, text, audio, video = (first.features[name] for name in FOUR)
    assert (image >= 0).all() and (image == 0).mean() > 0.2  # ReLU: sparse, non-negative
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, rtol=1e-5)  # sentence-like
    np.testing.assert_allclose(audio.mean(axis=0), 0, atol=1e-5)  # dense, standardised
    np.testing.assert_allclose(audio.std(axis=0), 1, rtol=1e-3)
    assert (video >= 0).all() and (audio < 0).mean() > 0.3  # pooled ReLU vs dense Gaussian


def _neighbour_cooccurrence(dataset, table: np.ndarray, k: int = 10) -> float:
    """Mean train co-occurrence count of each item with its k nearest items (cosine) in `table`."""
    rows = table / (np.linalg.norm(table, axis=1, keepdims=True) + 1e-12)
    similarity = rows @ rows.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :k]
    together = (dataset.train.T @ dataset.train).toarray()
    np.fill_diagonal(together, 0)
    return float(together[np.arange(len(rows))[:, None], neighbours].mean())


def test_noise_modality_is_uninformative_and_the_others_are_not():
    dataset = four_modalities()
    together = (dataset.train.T @ dataset.train).toarray()
    np.fill_diagonal(together, 0)
    chance = together.sum() / (dataset.num_items * (dataset.num_items - 1))
    agreement = {
        name: _neighbour_cooccurrence(dataset, table) / chance
        for name, table in dataset.features.items()
    }
    for name in ("image", "text", "audio"):
        assert agreement[name] > 1.4, agreement  # neighbours in content are bought together
    assert 0.8 < agreement["noise"] < 1.15, agreement  # chance


def test_recipe_is_the_generator_and_checks_its_entries():
    dataset = load_run_data(RECIPE)
    expected = make_synthetic(
        num_users=150, num_items=90, modalities=FOUR, noise_modalities=("noise",), seed=3
    )
    assert dataset.fingerprint() == expected.fingerprint()
    assert dataset.source == RECIPE
    assert load_run_data("synthetic").fingerprint() == load_run_data(None).fingerprint()
    assert parse_synthetic_recipe("synthetic:users=5", SYNTHETIC_DEFAULT)["num_users"] == 5
    for bad, message in (
        ("synthetic:colour=3", "expected KEY=VALUE with KEY in"),
        ("synthetic:users=many", "users must be a non-negative integer"),
        ("synthetic:users=3;users=4", "users given twice"),
        ("synthetic:modalities=image", "expected NAME:DIM"),
    ):
        with pytest.raises(DataError, match=message):
            parse_synthetic_recipe(bad)


# ---------------------------------------------------------------------------------------------
# The run-level `modalities` selection


def test_selection_keeps_order_and_interactions_and_names_bad_names():
    dataset = four_modalities(num_users=60, num_items=40)
    chosen = dataset.select_modalities(["text", "image"])
    assert list(chosen.features) == ["text", "image"]
    assert chosen.train is dataset.train and chosen.features["text"] is dataset.features["text"]
    with pytest.raises(DataError, match="no modality 'video'.*image, text, audio, noise"):
        dataset.select_modalities(["video"])
    with pytest.raises(DataError, match="'image' given twice"):
        dataset.select_modalities(["image", "image"])
    with pytest.raises(ConfigError, match="modalities: empty list"):
        resolve_config(overrides=["modalities=[]"])
    with pytest.raises(ConfigError, match="modalities must be"):
        resolve_config(overrides=["modalities=3"])
    config = resolve_config(overrides=["modalities=[image]"], data=RECIPE)
    assert config.modalities == ["image"] and config.preset == "synthetic"
    assert "modalities" not in resolve_config().to_dict()  # unset: configs stay as they were


def test_cli_unknown_modality_is_one_line_exit_2(tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, stderr = run_cli(
        "train",
        "--data",
        RECIPE,
        "--set",
        "modalities=[image,video]",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        out,
    )
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "no modality 'video'" in stderr and not out.exists()


# ---------------------------------------------------------------------------------------------
# REARM and FREEDOM with 1, 3 and 4 modalities


@pytest.mark.parametrize("model", ["rearm", "freedom"])
def test_models_train_one_epoch_with_one_three_and_four_modalities(tmp_path, model):
    counts = {}
    for names in (["image"], ["image", "text", "audio"], list(FOUR)):
        config = resolve_config(
            overrides=[f"modalities={json.dumps(names)}", "batch_size=512"],
            model=model,
            data=RECIPE,
            epochs=1,
            device="cpu",
        )
        out = tmp_path / f"{model}-{len(names)}"
        results = train_run(config, out)
        assert results["epochs_run"] == 1 and np.isfinite(results["test"]["Recall@20"])
        assert results["timing"]["train_epoch_s"] > 0 and results["peak_rss_mb"] > 0
        counts[len(names)] = results["trainable_parameters"]
        protocol = json.loads((out / "protocol.json").read_text())["data"]
        assert list(protocol["modalities"]) == names
        # the record names the data set `data` names, whichever tables the run used
        assert protocol["fingerprint"] == load_run_data(RECIPE).fingerprint()
        losses = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        terms = {key for key in losses if key.startswith("loss_")}
        if model == "rearm":
            # the contrastive and orthogonality terms are over modality pairs: none with one
            pairwise = {"loss_contrastive", "loss_orthogonal"}
            assert (terms & pairwise) == (set() if len(names) == 1 else pairwise), terms
        else:
            assert {f"loss_{name}_bpr" for name in names} <= terms
    # trainable feature tables and per-modality projections: parameters grow with modalities
    assert counts[1] < counts[3] < counts[4]


def test_rearm_pairwise_terms_average_over_pairs():
    from rearm.models import get_model

    dataset = four_modalities(num_users=80, num_items=50)
    torch.manual_seed(0)
    model = get_model("rearm").from_dataset(dataset, seed=0, user_knn_k=5, item_knn_k=5)
    users = torch.arange(16)
    pos, neg = torch.arange(16), torch.arange(16, 32)
    terms = model.loss(users, pos, neg)
    assert set(terms) == {"bpr", "contrastive", "orthogonal"}
    assert all(torch.isfinite(value) for value in terms.values())
    one = get_model("rearm").from_dataset(
        dataset.select_modalities(["audio"]), seed=0, user_knn_k=5, item_knn_k=5
    )
    assert set(one.loss(users, pos, neg)) == {"bpr"}


# ---------------------------------------------------------------------------------------------
# The study template


def test_modalities_template_expands_to_the_modality_counts(tmp_path, run_cli):
    spec = spec_from_dict(get_template("modalities"), "modalities")
    assert spec.data == (MODALITIES_DATA,) and spec.kind == "comparison"
    rows, cells = expand_cells(spec, {MODALITIES_DATA: "fingerprint"})
    assert [row.label for row in rows] == [
        f"{model} {names}"
        for model in ("rearm", "freedom")
        for names in ("image", "image+text", "image+text+audio", "image+text+audio+noise")
    ]
    assert spec.reference == "rearm image+text+audio"
    assert [len(c.config.modalities) for c in cells[::3]] == [1, 2, 3, 4] * 2
    assert len({c.key for c in cells}) == 8 * 3
    _, noise = parse_modality_spec(MODALITIES_DATA.split("=", 1)[1])
    assert noise == ("noise",)
    code, stdout, stderr = run_cli(
        "study", "run", "modalities", "--dry-run", "--seeds", "1", "--out", tmp_path / "s"
    )
    assert code == 0, stderr
    assert "8 rows x 1 seeds: 8 runs" in stdout + stderr
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# A derived modality for a real data set (`rearm data add-modality`)


def test_add_modality_writes_source_plus_a_noisy_projection(tmp_path, run_cli):
    from rearm.data import load_dataset, write_rearm_layout
    from rearm.data.derive import MANIFEST, derive_modality

    source = make_synthetic(num_users=50, num_items=30, modalities={"image": 12, "text": 6}, seed=2)
    write_rearm_layout(source, tmp_path / "src")
    out = tmp_path / "three"
    code, stdout, stderr = run_cli(
        "data", "add-modality", tmp_path / "src", "--out", out,
        "--from", "text", "--name", "text_proj", "--dim", "9", "--seed", "4",
    )  # fmt: skip
    assert code == 0, stderr
    derived = load_dataset(out)
    assert list(derived.features) == ["image", "text", "text_proj"]
    for name in ("image", "text"):
        np.testing.assert_array_equal(derived.features[name], source.features[name])
    assert (derived.train != source.train).nnz == 0
    table = derived.features["text_proj"]
    np.testing.assert_array_equal(table, derive_modality(source, "text", "text_proj", 9, 0.5, 4))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source_fingerprint"] == load_dataset(tmp_path / "src").fingerprint()
    assert (manifest["derived_from"], manifest["dim"], manifest["seed"]) == ("text", 9, 4)
    # without noise the new table is exactly the standardised projection of the source
    clean = derive_modality(source, "text", "p", 9, 0.0, 4)
    rng = np.random.default_rng(4)
    projection = rng.standard_normal((6, 9), dtype=np.float32) / np.sqrt(6)
    expected = source.features["text"] @ projection
    expected = (expected - expected.mean(0)) / (expected.std(0) + 1e-6)
    np.testing.assert_allclose(clean, expected, rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # the staging folder was renamed into place
    for args, message in (
        (["--from", "audio", "--name", "x", "--dim", "3"], "no modality 'audio'"),
        (["--from", "text", "--name", "image", "--dim", "3"], "already has a modality 'image'"),
        (["--from", "text", "--name", "x", "--dim", "0"], "--dim: must be an integer >= 1"),
        (["--from", "text", "--name", "x", "--dim", "3", "--noise", "-1"], "--noise"),
    ):
        code, _, stderr = run_cli(
            "data", "add-modality", tmp_path / "src", "--out", tmp_path / "bad", *args
        )
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) <= 2
        assert not (tmp_path / "bad").exists()
    code, _, stderr = run_cli(
        "data", "add-modality", tmp_path / "src", "--out", out,
        "--from", "text", "--name", "y", "--dim", "3",
    )  # fmt: skip
    assert code == 2 and "exists and is not an empty folder" in stderr
