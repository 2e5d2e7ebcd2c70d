"""A small trained run with string ids ("u007", "i042"), for the serving and export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rearm.data.synth import make_synthetic

NUM_USERS, NUM_ITEMS = 120, 60


def user_id(index: int) -> str:
    return f"u{index:03d}"


def item_id(index: int) -> str:
    return f"i{index:03d}"


def write_tabular(folder: Path) -> Path:
    """A planted data set in the tabular layout: interactions.csv with string ids, items.txt and
    two feature tables."""
    dataset = make_synthetic(
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        modalities={"image": 16, "text": 8},
        seed=3,
        interactions_per_user=10,
    )
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user,item,split"]
    for split in ("train", "valid", "test"):
        pairs = dataset.split(split).tocoo()
        lines += [f"{user_id(u)},{item_id(i)},{split}" for u, i in zip(pairs.row, pairs.col)]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    (folder / "items.txt").write_text("\n".join(item_id(i) for i in range(NUM_ITEMS)) + "\n")
    for name, table in dataset.features.items():
        np.save(folder / f"{name}_feat.npy", table)
    return folder


def train_small_run(root: Path) -> Path:
    """Train MF for two epochs on the tabular data set; returns the run directory."""
    from rearm.cli import main

    data = write_tabular(root / "data")
    out = root / "run"
    code = main(
        ["train", "--data", str(data), "--model", "mf", "--epochs", "2", "--out", str(out)]
        + ["--quiet", "--set", "batch_size=256"]
    )
    assert code == 0
    return out
