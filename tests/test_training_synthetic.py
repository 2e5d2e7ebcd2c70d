"""The main job: `rearm train` on the embedded synthetic default. REARM (with its "synthetic"
preset, fixed seed) must beat popularity and a pure-ID MF baseline on the test split."""

from __future__ import annotations

import numpy as np
import pytest

from rearm.evaluation import rank_metrics
from rearm.evaluation.protocol import get_protocol
from rearm.experiments.config import resolve_config
from rearm.experiments.run import load_run_data, train_run
from rearm.training.trainer import Progress


@pytest.fixture(scope="module")
def default_data():
    return load_run_data(None)


def _test_recall(model: str, tmp_path, dataset) -> dict:
    config = resolve_config(model=model)
    assert config.preset == "synthetic"  # no --data: the model's synthetic preset
    results = train_run(config, tmp_path / model, dataset=dataset, progress=Progress(enabled=False))
    return results["test"]


def test_rearm_beats_popularity_and_mf_on_the_synthetic_default(tmp_path, default_data):
    protocol = get_protocol("standard")
    popularity = np.asarray(default_data.train.sum(0)).ravel().astype(np.float32)
    scores = np.broadcast_to(popularity, (default_data.num_users, default_data.num_items))
    popular = rank_metrics(
        scores, default_data.test, protocol.mask_matrix(default_data, "test"), ks=(20,)
    )
    mf = _test_recall("mf", tmp_path, default_data)
    rearm = _test_recall("rearm", tmp_path, default_data)
    # observed with seed 2025 (test Recall@20): popularity 0.084, REARM 0.306, MF 0.295 at its
    # issue-12 defaults (N(0, 0.01^2), reg_weight 0.1; 0.188 at the former ones), NDCG@20 0.174
    assert rearm["Recall@20"] > popular["Recall@20"] + 0.15
    assert mf["Recall@20"] > popular["Recall@20"] + 0.15
    assert rearm["Recall@20"] > mf["Recall@20"] + 0.005
