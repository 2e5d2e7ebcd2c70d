"""The public Amazon Baby split (shared/data/amazon/baby beside the repository) reads with the
published sizes, in the REARM layout and in the MMRec layout. Skipped where shared/ is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rearm.data import describe, load_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = next(
    (p for p in (ROOT.parent / "shared", ROOT / "shared") if (p / "data/amazon/baby").is_dir()),
    None,
)
pytestmark = pytest.mark.skipif(SHARED is None, reason="shared/data/amazon/baby not found")


@pytest.fixture(scope="module")
def baby_dir(tmp_path_factory) -> Path:
    """Baby splits + proxy features (image 4096-d, text 384-d) in a temporary REARM folder."""
    out = tmp_path_factory.mktemp("baby")
    tool = SHARED / "tools" / "proxy_features.py"
    subprocess.run(
        [sys.executable, str(tool), str(SHARED / "data/amazon/baby"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def baby_mmrec_dir(baby_dir, tmp_path_factory) -> Path:
    """The same data in the MMRec layout: baby.inter + links to the feature files."""
    out = tmp_path_factory.mktemp("baby_mmrec")
    splits = [np.load(baby_dir / f"{name}.npy") for name in ("train", "valid", "test")]
    labels = np.concatenate([np.full(s.shape[1], code) for code, s in enumerate(splits)])
    rows = np.column_stack([np.hstack(splits).T, labels])
    np.savetxt(
        out / "baby.inter",
        rows,
        fmt="%d",
        delimiter="\t",
        header="userID\titemID\tx_label",
        comments="",
    )
    for name in ("image_feat.npy", "text_feat.npy"):
        os.symlink(baby_dir / name, out / name)
    return out


EXPECTED_LINES = [
    "users         19,445",
    "items         7,050",
    "interactions  train 118,551 | valid 20,559 | test 21,682 | total 160,792",
    "sparsity      99.88%",
    "  image  dim 4096,",
    "  text   dim 384,",
]


def test_baby_info_rearm_and_mmrec(baby_dir, baby_mmrec_dir, run_cli):
    outputs = {}
    for folder in (baby_dir, baby_mmrec_dir):
        code, out, err = run_cli("data", "info", folder)
        assert code == 0, err
        for line in EXPECTED_LINES:
            assert line in out, (line, out)
        outputs[folder] = out.splitlines()[1:]  # all but the source line
    assert outputs[baby_dir] == outputs[baby_mmrec_dir]

    code, out, _ = run_cli("data", "info", baby_mmrec_dir, "--json")
    card = json.loads(out)
    assert card["format"] == "mmrec"
    assert card["interactions"] == {
        "train": 118551,
        "valid": 20559,
        "test": 21682,
        "total": 160792,
    }
    assert {name: m["dim"] for name, m in card["modalities"].items()} == {
        "image": 4096,
        "text": 384,
    }


def test_baby_same_dataset_both_layouts(baby_dir, baby_mmrec_dir):
    rearm = load_dataset(baby_dir)
    mmrec = load_dataset(baby_mmrec_dir)
    assert (rearm.num_users, rearm.num_items) == (19445, 7050)
    assert rearm.fingerprint() == mmrec.fingerprint()
    card = describe(rearm)
    assert f"{100 * card['sparsity']:.2f}" == "99.88"
    assert card["notes"]["duplicates_within_split"] == {"train": 0, "valid": 0, "test": 0}
