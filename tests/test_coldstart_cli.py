"""`rearm recommend --items` (new users folded in) on a small trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rearm.data.synth import make_synthetic, write_rearm_layout
from rearm.experiments.bundle import load_bundle

FAST = ["--quiet", "--set", "learning_rate=0.01", "--set", "batch_size=256"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    dataset = make_synthetic(
        num_users=120,
        num_items=60,
        modalities={"image": 16, "text": 8},
        seed=3,
        interactions_per_user=10,
    )
    folder = tmp_path_factory.mktemp("small") / "data"
    write_rearm_layout(dataset, folder)
    return folder


@pytest.fixture(scope="module")
def mf_run(small_data, tmp_path_factory) -> Path:
    from rearm.cli import main

    out = tmp_path_factory.mktemp("runs") / "mf"
    args = ["train", "--model", "mf", "--data", small_data, "--epochs", "2", "--out", out]
    assert main([str(a) for a in [*args, *FAST]]) == 0
    return out


def test_recommend_items_equals_the_api_and_excludes_the_items(mf_run, run_cli):
    code, out, err = run_cli(
        "recommend", mf_run, "--items", "3,5,8", "-k", "7", "--exclude", "10", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["from_items"] == ["3", "5", "8"] and result["k"] == 7
    assert len(result["items"]) == 7
    assert not {3, 5, 8, 10} & set(result["items"])
    expected = load_bundle(mf_run).recommend_from_items(["3", "5", "8"], k=7, exclude=["10"])
    assert result["items"] == expected["items"]
    assert result["scores"] == pytest.approx(expected["scores"], rel=1e-6)
    code, out, _ = run_cli("recommend", mf_run, "--items", "3,5,8", "-k", "3")
    assert code == 0 and out.startswith("new user from 3 item(s): 3, 5, 8")
    assert len(out.strip().splitlines()) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--items", "3,99999"], "unknown item id '99999'"),
        (["--items", " , "], "--items: give at least one item id"),
        (["--items", "3", "-k", "0"], "-k must be >= 1"),
        (["--items", "3", "--exclude", "77777"], "unknown item id '77777'"),
    ],
)
def test_recommend_items_errors_are_one_line(mf_run, run_cli, args, message):
    code, out, err = run_cli("recommend", mf_run, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_users_and_items_are_mutually_exclusive(mf_run, run_cli):
    code, _, err = run_cli("recommend", mf_run, "--users", "1", "--items", "3")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run_cli("recommend", mf_run)
    assert code == 2 and "one of the arguments --users --items is required" in err
