"""rank_metrics / evaluate_model against a naive per-user loop and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from rearm.errors import ConfigError, DataError
from rearm.evaluation import METRIC_NAMES, evaluate_model, rank_metrics
from rearm.evaluation.metrics import _top_items


def naive_metrics(scores, heldout, exclude, ks):
    """Straight from the definitions: one Python loop per user, a full sort per user."""
    scores = np.asarray(scores, dtype=np.float64)
    heldout = heldout.toarray() != 0
    exclude = np.zeros_like(heldout) if exclude is None else exclude.toarray() != 0
    per_user = {f"{m}@{k}": [] for k in ks for m in METRIC_NAMES}
    users = []
    for user in range(scores.shape[0]):
        relevant = set(np.flatnonzero(heldout[user]).tolist())
        if not relevant:
            continue
        users.append(user)
        allowed = [i for i in range(scores.shape[1]) if not exclude[user, i]]
        ranking = sorted(allowed, key=lambda i: (-scores[user, i], i))
        for k in ks:
            top = ranking[:k]
            rel = [1.0 if item in relevant else 0.0 for item in top]
            hits = sum(rel)
            dcg = sum(r / np.log2(j + 2) for j, r in enumerate(rel))
            ideal = sum(1 / np.log2(j + 2) for j in range(min(len(relevant), k)))
            running, average = 0.0, 0.0
            for j, r in enumerate(rel):
                if r:
                    running += 1
                    average += running / (j + 1)
            per_user[f"Recall@{k}"].append(hits / len(relevant))
            per_user[f"Precision@{k}"].append(hits / k)
            per_user[f"Hit@{k}"].append(float(hits > 0))
            per_user[f"NDCG@{k}"].append(dcg / ideal)
            per_user[f"MAP@{k}"].append(average / min(len(relevant), k))
    means = {name: float(np.mean(values)) if users else 0.0 for name, values in per_user.items()}
    return means, np.array(users), {name: np.array(v) for name, v in per_user.items()}


def random_case(seed, num_users=37, num_items=29, levels=4):
    rng = np.random.default_rng(seed)
    # Few distinct levels: most rankings are decided by the tie rule.
    scores = rng.integers(0, levels, size=(num_users, num_items)).astype(np.float32)
    heldout = sp.random(num_users, num_items, density=0.15, format="lil", random_state=rng)
    heldout[:3] = 0  # users without held-out items
    heldout[3, :] = 1  # more held-out items than any K
    exclude = sp.random(num_users, num_items, density=0.3, format="lil", random_state=rng)
    exclude[4, :-2] = 1  # fewer allowed items than K
    return scores, sp.csr_matrix(heldout), sp.csr_matrix(exclude)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_size", [1, 5, 64])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_matches_naive_loop(seed, block_size, as_tensor):
    scores, heldout, exclude = random_case(seed)
    ks = (1, 5, 10)
    expected, users, per_user = naive_metrics(scores, heldout, exclude, ks)
    given = torch.from_numpy(scores) if as_tensor else scores
    result = rank_metrics(given, heldout, exclude, ks=ks, per_user=True, block_size=block_size)
    assert result["num_users"] == len(users)
    np.testing.assert_array_equal(result["per_user"]["users"], users)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
        np.testing.assert_allclose(result["per_user"][name], per_user[name], atol=1e-12)
        assert isinstance(result[name], float)


def test_matches_naive_loop_without_exclusions_and_continuous_scores():
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((50, 40))
    heldout = sp.random(50, 40, density=0.1, format="csr", random_state=rng)
    expected, _, _ = naive_metrics(scores, heldout, None, (3, 20))
    result = rank_metrics(scores, heldout, ks=(3, 20), block_size=16)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12)


def test_hand_computed_three_users_six_items():
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1, 0.7, 0.5],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    heldout = sp.csr_matrix(
        np.array(
            [
                [0, 0, 0, 0, 1, 1],  # user 0: {4, 5}
                [0, 0, 0, 0, 0, 0],  # user 1: nothing held out -> skipped
                [0, 0, 1, 1, 1, 1],  # user 2: {2, 3, 4, 5}, more than K = 3
            ]
        )
    )
    exclude = sp.csr_matrix(
        np.array(
            [
                [1, 0, 0, 0, 0, 0],  # item 0 (the best score) is masked for user 0
                [0, 0, 0, 0, 0, 0],
                [0, 1, 0, 0, 0, 0],
            ]
        )
    )
    result = rank_metrics(scores, heldout, exclude, ks=(1, 3), per_user=True)
    # user 0 ranks 4 (0.7), then the 0.5 ties by index 1, 2, 5: top 3 = [4, 1, 2], one hit at 1.
    # user 2 ranks its all-zero ties by index without item 1: top 3 = [0, 2, 3], hits at 2 and 3.
    d2, d3 = 1 / np.log2(3), 1 / np.log2(4)  # 0.63093, 0.5
    user0 = {
        "Recall@1": 1 / 2, "Precision@1": 1.0, "Hit@1": 1.0, "NDCG@1": 1.0, "MAP@1": 1.0,
        "Recall@3": 1 / 2, "Precision@3": 1 / 3, "Hit@3": 1.0,
        "NDCG@3": 1 / (1 + d2),  # 0.613147
        "MAP@3": (1 / 1) / 2,  # min(|H|=2, K=3) = 2
    }  # fmt: skip
    user2 = {
        "Recall@1": 0.0, "Precision@1": 0.0, "Hit@1": 0.0, "NDCG@1": 0.0, "MAP@1": 0.0,
        "Recall@3": 2 / 4, "Precision@3": 2 / 3, "Hit@3": 1.0,
        "NDCG@3": (d2 + d3) / (1 + d2 + d3),  # 0.530721, ideal over min(4, 3) = 3 places
        "MAP@3": (1 / 2 + 2 / 3) / 3,  # 0.388889
    }  # fmt: skip
    assert result["num_users"] == 2
    np.testing.assert_array_equal(result["per_user"]["users"], [0, 2])
    for name in user0:
        assert result["per_user"][name] == pytest.approx([user0[name], user2[name]])
        assert result[name] == pytest.approx((user0[name] + user2[name]) / 2)
    assert result["NDCG@3"] == pytest.approx(0.5719339, abs=1e-6)
    assert result["MAP@3"] == pytest.approx(0.4444444, abs=1e-6)
    assert result["Recall@3"] == pytest.approx(0.5)


def test_all_zero_scores_give_lowest_indices_in_order():
    num_items = 500
    scores = torch.zeros(300, num_items)
    exclude = sp.random(300, num_items, density=0.02, format="csr", random_state=3)
    rows, cols = exclude.nonzero()
    items = _top_items(scores.clone(), rows.astype(np.int64), cols.astype(np.int64), 20)
    excluded = exclude.toarray() != 0
    for user in range(300):
        expected = np.flatnonzero(~excluded[user])[:20]
        np.testing.assert_array_equal(items[user], expected)


def test_ties_above_the_cut_off_are_ordered_by_index():
    # Ties strictly above the K-th score (not only at it) must also come out index-ordered.
    scores = torch.tensor([[1.0, 5.0, 3.0, 5.0, 5.0, 0.0, 3.0, 5.0]])
    items = _top_items(scores.clone(), np.empty(0, np.int64), np.empty(0, np.int64), 6)
    np.testing.assert_array_equal(items[0], [1, 3, 4, 7, 2, 6])


def test_excluded_items_never_appear():
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((64, 30)).astype(np.float32)
    exclude = sp.random(64, 30, density=0.5, format="lil", random_state=rng)
    exclude[0, :] = 1  # nothing left to rank
    exclude[1, :3] = 0
    exclude[1, 3:] = 1  # three items left for K = 10
    scores[exclude.toarray() != 0] = 1e9  # the excluded items would otherwise win
    rows, cols = sp.csr_matrix(exclude).nonzero()
    items = _top_items(torch.from_numpy(scores), rows.astype(np.int64), cols.astype(np.int64), 10)
    excluded = exclude.toarray() != 0
    for user in range(64):
        ranked = items[user][items[user] < 30]
        assert not excluded[user, ranked].any()
        assert len(ranked) == min(10, int((~excluded[user]).sum()))
    np.testing.assert_array_equal(items[0], [30] * 10)
    np.testing.assert_array_equal(items[1][:3], np.argsort(-scores[1, :3], kind="stable"))


def test_minus_infinity_scores_still_rank_above_excluded_items():
    scores = torch.tensor([[float("-inf"), 2.0, float("-inf"), 1.0]])
    heldout = sp.csr_matrix(np.array([[0, 0, 1, 0]]))
    exclude = sp.csr_matrix(np.array([[0, 0, 0, 1]]))
    result = rank_metrics(scores, heldout, exclude, ks=(2, 3))
    assert result["Hit@2"] == 0.0  # ranking 1, 0, 2: the excluded item 3 never takes a place
    assert result["Recall@3"] == 1.0
    assert result["NDCG@3"] == pytest.approx(1 / np.log2(4))


def test_evaluate_model_equals_rank_metrics():
    scores, heldout, exclude = random_case(5, num_users=90, num_items=41)
    table = torch.from_numpy(scores)
    calls = []

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        calls.append(len(users))
        assert not torch.is_grad_enabled()
        return table[users]

    result = evaluate_model(score_fn, heldout, exclude, ks=(5, 20), batch_size=16, per_user=True)
    expected = rank_metrics(scores, heldout, exclude, ks=(5, 20), per_user=True)
    assert result.keys() == expected.keys()
    for name in expected:
        if name == "per_user":
            for key, values in expected["per_user"].items():
                np.testing.assert_array_equal(result["per_user"][key], values)
        else:
            assert result[name] == expected[name]
    assert sum(calls) == expected["num_users"]  # only users with held-out items are scored
    assert max(calls) <= 16
    np.testing.assert_array_equal(table.numpy(), scores)  # masking never writes into the model


def test_one_block_of_scores_is_alive_at_a_time():
    """The previous block is freed before score_fn makes the next (a block is 0.9 GB at 10x
    Clothing), in both kinds of blocks: plain ones and inference tensors, which are copied."""
    import weakref

    scores, heldout, exclude = random_case(6, num_users=90, num_items=41)
    expected = rank_metrics(scores, heldout, exclude)
    for mode in (torch.no_grad, torch.inference_mode):
        alive = []

        def score_fn(users: torch.Tensor, alive=alive, mode=mode) -> torch.Tensor:
            assert all(ref() is None for ref in alive), "an earlier block is still referenced"
            with mode():
                block = torch.from_numpy(scores[users.numpy()]) * 1.0
            alive.append(weakref.ref(block))
            return block

        assert evaluate_model(score_fn, heldout, exclude, batch_size=16) == expected
        assert len(alive) > 2


def test_score_views_are_restored_and_expanded_scores_work():
    rng = np.random.default_rng(4)
    table = torch.from_numpy(rng.standard_normal((40, 25)))
    heldout = sp.random(40, 25, density=0.2, format="lil", random_state=rng)
    heldout[:, 0] = 1  # every user is evaluated, so blocks are contiguous row ranges
    exclude = sp.random(40, 25, density=0.3, format="csr", random_state=rng)
    before = table.clone()
    result = evaluate_model(
        lambda users: table[int(users[0]) : int(users[-1]) + 1],  # a view of the model's state
        heldout,
        exclude,
        batch_size=16,
    )
    torch.testing.assert_close(table, before, rtol=0, atol=0)
    assert result == rank_metrics(before.numpy(), heldout, exclude)
    row = torch.zeros(25)
    expanded = evaluate_model(lambda users: row.expand(len(users), 25), heldout, exclude)
    assert expanded == rank_metrics(np.zeros((40, 25)), heldout, exclude)


def test_inputs_are_not_modified():
    scores, heldout, exclude = random_case(9)
    copy = scores.copy()
    rank_metrics(scores, heldout, exclude)
    tensor = torch.from_numpy(copy.copy())
    rank_metrics(tensor, heldout, exclude)
    np.testing.assert_array_equal(scores, copy)
    np.testing.assert_array_equal(tensor.numpy(), copy)


def test_no_evaluated_users_and_errors():
    heldout = sp.csr_matrix((4, 5))
    result = rank_metrics(np.zeros((4, 5)), heldout)
    assert result["num_users"] == 0 and result["Recall@20"] == 0.0
    with pytest.raises(DataError, match="NaN"):
        rank_metrics(np.full((1, 3), np.nan), sp.csr_matrix(np.ones((1, 3))))
    with pytest.raises(DataError, match="shape"):
        rank_metrics(np.zeros((2, 3)), sp.csr_matrix((2, 4)))
    with pytest.raises(ConfigError):
        rank_metrics(np.zeros((2, 3)), sp.csr_matrix((2, 3)), ks=(0,))
    with pytest.raises(DataError, match="shape"):
        evaluate_model(lambda u: torch.zeros(len(u), 2), sp.csr_matrix(np.ones((2, 3))))


def test_k_larger_than_the_number_of_items():
    scores = np.array([[0.1, 0.3, 0.2]])
    heldout = sp.csr_matrix(np.array([[1, 0, 0]]))
    expected, _, _ = naive_metrics(scores, heldout, None, (2, 5))
    result = rank_metrics(scores, heldout, ks=(2, 5))
    for name, value in expected.items():
        assert result[name] == pytest.approx(value)
    assert result["Precision@5"] == pytest.approx(1 / 5)
