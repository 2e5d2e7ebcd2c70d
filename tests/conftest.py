"""Shared fixtures: tiny valid REARM-layout data sets and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rearm.cli import main
from rearm.data.synth import make_synthetic, write_rearm_layout


@pytest.fixture
def tiny_pairs() -> dict[str, np.ndarray]:
    """5 users, 6 items; every user has train, valid and test; item 5 has no train pair."""
    return {
        "train": np.array([[0, 0, 1, 1, 2, 2, 3, 3, 4], [0, 1, 1, 2, 2, 3, 3, 4, 0]]),
        "valid": np.array([[0, 1, 2, 3, 4], [2, 3, 4, 5, 1]]),
        "test": np.array([[0, 1, 2, 3, 4], [3, 4, 5, 0, 2]]),
    }


@pytest.fixture
def tiny_features() -> dict[str, np.ndarray]:
    """image float32 [6, 4] non-negative with item 5 all zero; text float32 [6, 3]."""
    rng = np.random.default_rng(0)
    image = np.maximum(rng.standard_normal((6, 4)), 0).astype(np.float32) + 0.1
    image[5] = 0.0
    return {"image": image, "text": rng.standard_normal((6, 3)).astype(np.float32)}


@pytest.fixture
def write_rearm(tiny_pairs, tiny_features):
    """write_rearm(folder, pairs=None, features=None) -> folder in the REARM layout."""

    def write(folder: Path, pairs=None, features=None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (tiny_pairs if pairs is None else pairs).items():
            np.save(folder / f"{name}.npy", np.asarray(array))
        for name, array in (tiny_features if features is None else features).items():
            np.save(folder / f"{name}_feat.npy", array)
        return folder

    return write


@pytest.fixture
def rearm_dir(tmp_path: Path, write_rearm) -> Path:
    """A valid REARM-layout folder holding the tiny data set with image and text features."""
    return write_rearm(tmp_path / "tiny")


@pytest.fixture
def run_cli(capsys):
    """run_cli(*args) runs `rearm ARGS...` in-process -> (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse errors and --help
            code = exit_.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(autouse=True, scope="session")
def _isolated_graph_cache(tmp_path_factory):
    """Graph caches built by tests go to a temporary folder, never the user's cache."""
    import os

    previous = os.environ.get("REARM_CACHE_DIR")
    os.environ["REARM_CACHE_DIR"] = str(tmp_path_factory.mktemp("graph-cache"))
    yield
    if previous is None:
        os.environ.pop("REARM_CACHE_DIR", None)
    else:
        os.environ["REARM_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """80 users x 40 items, image 8-d and text 4-d, about 6 train interactions per user (517 in
    all): a data set that every model trains on in well under a second per epoch."""
    dataset = make_synthetic(
        num_users=80, num_items=40, modalities={"image": 8, "text": 4}, seed=4,
        interactions_per_user=8,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("small") / "data"
    write_rearm_layout(dataset, folder)
    return folder
