"""Misaligned modalities: `rearm data corrupt` (exact per mode, deterministic, refusals, the
manifest, staged output) and the synthetic generator's planted misalignment, which must lower a
content-only recommender's recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rearm.data import load_dataset
from rearm.data.corrupt import chosen_count, corrupt_dataset, corrupt_features
from rearm.data.dataset import Dataset
from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.errors import DataError


@pytest.fixture(scope="module")
def small() -> Dataset:
    return make_synthetic(num_users=60, num_items=40, modalities={"image": 16, "text": 4}, seed=3)


def _changed_rows(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.flatnonzero((before != after).any(axis=1))


@pytest.mark.parametrize("mode", ["shuffle", "noise", "zero", "swap"])
def test_exactly_the_listed_items_change(small, mode):
    derived, manifest = corrupt_features(small, "image", 0.25, mode, seed=7)
    items = np.array(manifest["items"])
    assert manifest["count"] == len(items) == 10 and np.all(np.diff(items) > 0)
    # synthetic image rows are distinct and non-zero, so every chosen row really changes
    np.testing.assert_array_equal(
        _changed_rows(small.features["image"], derived.features["image"]), items
    )
    np.testing.assert_array_equal(derived.features["text"], small.features["text"])
    for split in ("train", "valid", "test"):
        assert (derived.split(split) != small.split(split)).nnz == 0
    assert derived.features["image"].dtype == np.float32
    assert small.features["image"] is not derived.features["image"]  # source untouched


def test_shuffle_is_a_derangement_of_the_chosen_rows(small):
    derived, manifest = corrupt_features(small, "image", 0.5, "shuffle", seed=1)
    items, sources = np.array(manifest["items"]), np.array(manifest["sources"])
    assert sorted(sources) == sorted(items)  # a permutation of the chosen rows
    assert np.all(sources != items)  # no row keeps its own features
    np.testing.assert_array_equal(
        derived.features["image"][items], small.features["image"][sources]
    )


def test_two_rows_swap_and_one_row_is_refused(small):
    _, manifest = corrupt_features(small, "image", 2 / 40, "shuffle", seed=0)
    assert manifest["sources"] == manifest["items"][::-1]
    with pytest.raises(DataError, match="shuffle needs at least 2 items"):
        corrupt_features(small, "image", 1 / 40, "shuffle")


def test_noise_matches_the_per_dimension_mean_and_std():
    rng = np.random.default_rng(0)
    num_items = 4000
    table = (rng.standard_normal((num_items, 5)) * [1, 2, 3, 0.5, 4] + [0, 1, -2, 5, 3]).astype(
        np.float32
    )
    pairs = np.array([[0, 0, 0], [0, 1, 2]])
    dataset = Dataset.from_pairs(
        {"train": pairs, "valid": pairs[:, :0], "test": pairs[:, :0]},
        {"image": table},
        num_items=num_items,
    )
    derived, manifest = corrupt_features(dataset, "image", 1.0, "noise", seed=2)
    noise = derived.features["image"]
    assert manifest["count"] == num_items and not np.allclose(noise, table)
    np.testing.assert_allclose(noise.mean(axis=0), table.mean(axis=0), atol=0.15)
    np.testing.assert_allclose(noise.std(axis=0), table.std(axis=0), rtol=0.05)
    # the noise is independent of the rows it replaces
    assert abs(np.corrcoef(noise[:, 2], table[:, 2])[0, 1]) < 0.1


def test_zero_and_swap_values(small):
    derived, manifest = corrupt_features(small, "image", 0.5, "zero", seed=3)
    assert not derived.features["image"][manifest["items"]].any()
    derived, manifest = corrupt_features(small, "image", 0.5, "swap", seed=3)
    assert manifest["swap_with"] == "text"
    image = derived.features["image"]
    assert image.shape == small.features["image"].shape  # projected to the image width
    again, _ = corrupt_features(small, "image", 0.5, "swap", seed=3)
    np.testing.assert_array_equal(again.features["image"], image)
    # the swapped rows are one linear map of the same items' text rows
    items = manifest["items"]
    text = small.features["text"][items].astype(np.float64)
    projection, *_ = np.linalg.lstsq(text, image[items].astype(np.float64), rcond=None)
    np.testing.assert_allclose(text @ projection, image[items], atol=1e-4)
    text_derived, text_manifest = corrupt_features(small, "text", 0.5, "swap", seed=3)
    assert text_derived.features["text"].shape == (40, 4) and text_manifest["swap_with"] == "image"


def test_deterministic_in_the_seed(small):
    first, manifest = corrupt_features(small, "image", 0.3, "noise", seed=11)
    second, again = corrupt_features(small, "image", 0.3, "noise", seed=11)
    assert manifest == again and first.fingerprint() == second.fingerprint()
    _, other = corrupt_features(small, "image", 0.3, "noise", seed=12)
    assert other["items"] != manifest["items"]


def test_rounding_and_the_ends(small):
    assert [chosen_count(p, 10) for p in (0.0, 0.04, 0.05, 0.15, 0.25, 1.0)] == [0, 0, 1, 2, 3, 10]
    derived, manifest = corrupt_features(small, "image", 0.0, "zero")
    assert manifest["items"] == [] and derived.fingerprint() == small.fingerprint()
    _, manifest = corrupt_features(small, "image", 1.0, "shuffle")
    assert manifest["items"] == list(range(40))


def test_cli_writes_the_data_set_and_manifest(tmp_path, run_cli, small):
    source = tmp_path / "src"
    write_rearm_layout(small, source)
    out = tmp_path / "dst"
    code, stdout, stderr = run_cli(
        "data", "corrupt", source, "--out", out, "--modality", "image", "--fraction", "0.25",
        "--mode", "shuffle", "--seed", "5",
    )  # fmt: skip
    assert code == 0, stderr
    assert "shuffle on 10 of 40 items" in stdout
    manifest = json.loads((out / "corruption.json").read_text())
    assert manifest["source"]["fingerprint"] == load_dataset(source).fingerprint()
    derived = load_dataset(out)
    assert manifest["output"]["fingerprint"] == derived.fingerprint()
    assert (manifest["mode"], manifest["fraction"], manifest["seed"]) == ("shuffle", 0.25, 5)
    assert manifest["item_ids"] == manifest["items"]  # the REARM layout's ids are the indices
    expected, _ = corrupt_features(small, "image", 0.25, "shuffle", seed=5)
    np.testing.assert_array_equal(derived.features["image"], expected.features["image"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no staging leftovers


def test_tabular_source_records_external_item_ids(tmp_path, run_cli):
    folder = tmp_path / "tab"
    folder.mkdir()
    rows = ["user,item,split"] + [
        f"u{u},i{i},{split}"
        for u in range(4)
        for i, split in ((u, "train"), ((u + 1) % 4, "valid"), ((u + 2) % 4, "test"))
    ]
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.txt").write_text("i0\ni1\ni2\ni3\n")
    np.save(folder / "image_feat.npy", np.arange(12, dtype=np.float32).reshape(4, 3) + 1)
    out = tmp_path / "dst"
    code, _, stderr = run_cli(
        "data", "corrupt", folder, "--out", out, "--modality", "image", "--fraction", "0.5",
        "--mode", "zero",
    )  # fmt: skip
    assert code == 0, stderr
    manifest = json.loads((out / "corruption.json").read_text())
    assert manifest["source"]["format"] == "tabular"
    assert manifest["item_ids"] == [f"i{index}" for index in manifest["items"]]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--fraction", "1.5"], "--fraction: must be in [0, 1], got 1.5"),
        (["--fraction", "-0.1"], "--fraction: must be in [0, 1]"),
        (["--fraction", "nan"], "--fraction: must be in [0, 1], got nan"),
        (["--modality", "audio"], "has no modality 'audio' (modalities: image)"),
        (["--mode", "swap"], "swap needs another"),
        (["--swap-with", "image"], "--swap-with: only used by --mode swap"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(tmp_path, run_cli, arguments, message):
    source = write_rearm_layout(
        make_synthetic(num_users=20, num_items=10, modalities={"image": 3}, seed=1), tmp_path / "s"
    )[0].parent
    options = {"--modality": "image", "--fraction": "0.5", "--mode": "zero"}
    for flag, value in zip(arguments[::2], arguments[1::2]):
        options[flag] = value
    out = tmp_path / "dst"
    flat = [part for pair in options.items() for part in pair]
    code, _, stderr = run_cli("data", "corrupt", source, "--out", out, *flat)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("rearm: error: ") and message in stderr
    assert not out.exists()


def test_refuses_a_non_empty_destination_and_unknown_mode(tmp_path, run_cli, small):
    source = tmp_path / "src"
    write_rearm_layout(small, source)
    out = tmp_path / "dst"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    base = ["data", "corrupt", source, "--modality", "image", "--fraction", "0.5"]
    code, _, stderr = run_cli(*base, "--out", out, "--mode", "zero")
    assert code == 2 and "folder is not empty" in stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, _, stderr = run_cli(*base, "--out", tmp_path / "new", "--mode", "blur")
    assert code == 2 and "invalid choice: 'blur'" in stderr
    with pytest.raises(DataError, match="unknown mode 'blur'"):
        corrupt_features(small, "image", 0.5, "blur")


def test_a_failure_while_writing_leaves_no_destination(tmp_path, small, monkeypatch):
    import rearm.data.corrupt as corrupt

    def fail(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(corrupt, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        corrupt_dataset(small, tmp_path / "dst", "image", 0.5, "zero")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The synthetic generator's misalignment, and what it does to a content-only recommender


def content_only_recall(dataset: Dataset, modality: str, k: int = 20) -> float:
    """Recall@k on test of a recommender that only sees features: a user's score for an item is
    the cosine between the item's `modality` row and the mean row of the user's train items."""
    table = dataset.features[modality].astype(np.float64)
    table /= np.linalg.norm(table, axis=1, keepdims=True) + 1e-12
    train = dataset.train
    counts = np.maximum(np.asarray(train.sum(axis=1)).ravel(), 1)
    profile = (train @ table) / counts[:, None]
    scores = profile @ table.T
    scores[train.nonzero()] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    test = dataset.test.toarray() > 0
    hits = np.take_along_axis(test, top, axis=1).sum(axis=1)
    relevant = test.sum(axis=1)
    users = relevant > 0
    return float(np.mean(hits[users] / np.minimum(relevant[users], k)))


def test_synthetic_misalignment_is_recorded_and_local():
    arguments = dict(num_users=80, num_items=50, modalities={"image": 8, "text": 4}, seed=9)
    aligned = make_synthetic(**arguments)
    assert make_synthetic(**arguments, misalignment=0.0).fingerprint() == aligned.fingerprint()
    assert "misalignment" not in aligned.notes
    misaligned = make_synthetic(**arguments, misalignment=0.4)
    record = misaligned.notes["misalignment"]
    items, donors = np.array(record["items"]), np.array(record["donors"])
    assert record["modality"] == "image" and len(items) == 20 and np.all(items != donors)
    # only the image rows of the listed items differ; interactions and text are the same
    np.testing.assert_array_equal(
        _changed_rows(aligned.features["image"], misaligned.features["image"]), items
    )
    np.testing.assert_array_equal(misaligned.features["text"], aligned.features["text"])
    assert (misaligned.train != aligned.train).nnz == 0
    text = make_synthetic(**arguments, misalignment=0.4, misaligned_modality="text")
    assert text.notes["misalignment"]["modality"] == "text"
    np.testing.assert_array_equal(text.features["image"], aligned.features["image"])
    with pytest.raises(DataError, match="--misalignment: must be in"):
        make_synthetic(**arguments, misalignment=1.2)
    with pytest.raises(DataError, match="no modality 'audio'"):
        make_synthetic(**arguments, misalignment=0.2, misaligned_modality="audio")


def test_planted_misalignment_and_corruption_lower_a_content_only_score():
    arguments = dict(num_users=600, num_items=300, modalities={"image": 64, "text": 16}, seed=5)
    aligned = make_synthetic(**arguments)
    recalls = [
        content_only_recall(make_synthetic(**arguments, misalignment=p), "image")
        for p in (0.0, 0.5, 1.0)
    ]
    assert recalls[0] == content_only_recall(aligned, "image")
    assert recalls[0] > recalls[1] > recalls[2]
    assert recalls[2] < 0.75 * recalls[0]
    shuffled, _ = corrupt_features(aligned, "image", 1.0, "shuffle", seed=0)
    assert content_only_recall(shuffled, "image") < 0.75 * recalls[0]
    # the untouched modality keeps its score
    assert content_only_recall(shuffled, "text") == content_only_recall(aligned, "text")


def test_cli_synth_misalignment(tmp_path, run_cli):
    out = tmp_path / "synth"
    base = ["data", "synth", "--users", "40", "--items", "20", "--modalities", "image:4,text:3"]
    code, _, stderr = run_cli(*base, "--out", out, "--misalignment", "0.5")
    assert code == 0, stderr
    record = json.loads((out / "misalignment.json").read_text())
    assert record["fraction"] == 0.5 and len(record["items"]) == 10
    assert load_dataset(out).num_items == 20  # the manifest does not disturb the reader
    code, _, stderr = run_cli(*base, "--out", tmp_path / "bad", "--misalignment", "2")
    assert code == 2 and "--misalignment: must be in [0, 1]" in stderr
    assert not Path(tmp_path / "bad").exists()


def test_trailing_items_without_interactions_are_kept_and_named(tmp_path, run_cli):
    pairs = np.array([[0, 1, 2], [0, 1, 2]])
    source = tmp_path / "src"
    source.mkdir()
    for split in ("train", "valid", "test"):
        np.save(source / f"{split}.npy", pairs if split == "train" else pairs[:, :0])
    np.save(source / "image_feat.npy", np.arange(10, dtype=np.float32).reshape(5, 2) + 1)
    out = tmp_path / "dst"
    code, stdout, stderr = run_cli(
        "data", "corrupt", source, "--out", out, "--modality", "image", "--fraction", "0.5",
        "--mode", "zero", "--num-items", "5",
    )  # fmt: skip
    assert code == 0, stderr
    assert "zero on 3 of 5 items" in stdout  # 2.5 rounds half up
    assert f"read {out} with --num-items 5" in stdout
    assert load_dataset(out, num_items=5).features["image"].shape == (5, 2)
