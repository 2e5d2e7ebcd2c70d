"""The model contract test suite (rearm.models.base), shared by every model.

A model opts in with one line in tests/test_models_contract.py:

    class TestMF(ContractTests):
        model = "mf"

and may adjust the class attributes below (hyperparameters for the tiny data, training keys,
documented parameters that legitimately receive no gradient).

The tiny data set has a known answer: users and items fall into BLOCKS blocks; every user
interacts only with items of its own block, and each modality's features carry the block (a
noisy block code). A model that learns anything recovers the blocks and ranks the unseen items of
the user's block first; popularity and random ranking cannot.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from rearm.data.dataset import Dataset
from rearm.errors import ConfigError
from rearm.evaluation import get_protocol, rank_metrics
from rearm.models import get_model
from rearm.models.base import Recommender
from rearm.training.trainer import FitResult, Progress, evaluate_split, fit, seed_everything

BLOCKS = 4
USERS_PER_BLOCK = 16
ITEMS_PER_BLOCK = 12
ITEMS_PER_USER = 8  # 6 train, 1 valid, 1 test
METRIC = "Recall@10"


@functools.lru_cache(maxsize=4)
def planted_dataset(with_features: bool = True, seed: int = 7) -> Dataset:
    """Block-structured preferences: 64 users, 48 items, 512 interactions.

    Modalities: "image" [48, 8] = one-hot block code (first 4 columns) + noise; "text" [48, 6]
    = a random unit vector per block + noise. With with_features=False, no modality at all.
    """
    rng = np.random.default_rng(seed)
    num_users, num_items = BLOCKS * USERS_PER_BLOCK, BLOCKS * ITEMS_PER_BLOCK
    pairs: dict[str, list[tuple[int, int]]] = {"train": [], "valid": [], "test": []}
    for user in range(num_users):
        block = user % BLOCKS
        items = block * ITEMS_PER_BLOCK + rng.choice(ITEMS_PER_BLOCK, ITEMS_PER_USER, False)
        pairs["valid"].append((user, int(items[0])))
        pairs["test"].append((user, int(items[1])))
        pairs["train"].extend((user, int(item)) for item in items[2:])
    item_block = np.arange(num_items) // ITEMS_PER_BLOCK
    features = {}
    if with_features:
        image = np.zeros((num_items, 8), dtype=np.float32)
        image[np.arange(num_items), item_block] = 1.0
        image += 0.1 * rng.standard_normal(image.shape).astype(np.float32)
        centroids = rng.standard_normal((BLOCKS, 6)).astype(np.float32)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        text = centroids[item_block] + 0.1 * rng.standard_normal((num_items, 6))
        features = {"image": image, "text": text.astype(np.float32)}
    return Dataset.from_pairs(
        {name: np.array(values, dtype=np.int64).T for name, values in pairs.items()},
        features,
        num_users=num_users,
        num_items=num_items,
        source="planted",
    )


def popularity_metric(dataset: Dataset) -> float:
    """Test METRIC of ranking every user's unseen items by train popularity."""
    popularity = np.asarray(dataset.train.sum(axis=0)).ravel().astype(np.float32)
    scores = np.tile(popularity, (dataset.num_users, 1))
    protocol = get_protocol("standard")
    metrics = rank_metrics(
        scores, dataset.test, exclude=protocol.mask_matrix(dataset, "test"), ks=(10,)
    )
    return metrics[METRIC]


class ContractTests:
    """Mixin: subclasses set `model` (a MODELS name) and optionally the attributes below."""

    model: ClassVar[str]
    # from_dataset keywords for the tiny data set (small dimensions keep the suite fast)
    hyperparameters: ClassVar[dict[str, Any]] = {"embedding_dim": 16}
    # trainer keys for the recovery run
    training: ClassVar[dict[str, Any]] = {
        "epochs": 8,
        "batch_size": 64,
        "learning_rate": 0.05,
        "weight_decay": 0.0,
    }
    # substrings of parameter names that receive no gradient by design (documented quirks)
    no_gradient: ClassVar[tuple[str, ...]] = ()
    # does from_dataset need at least one modality?
    needs_modalities: ClassVar[bool] = False

    # ------------------------------------------------------------------------------------
    @property
    def model_class(self) -> type[Recommender]:
        return get_model(self.model)

    def build(self, seed: int = 0, dataset: Dataset | None = None) -> Recommender:
        seed_everything(seed)
        return self.model_class.from_dataset(
            dataset if dataset is not None else planted_dataset(),
            graph_cache=None,
            seed=seed,
            progress=None,
            **self.hyperparameters,
        )

    def train(self, seed: int = 0, epochs: int | None = None) -> tuple[Recommender, FitResult]:
        model = self.build(seed)
        training = dict(self.training)
        if epochs is not None:
            training["epochs"] = epochs
        result = fit(
            model,
            planted_dataset(),
            get_protocol("standard"),
            patience=training["epochs"],
            seed=seed,
            progress=Progress(enabled=False),
            **training,
        )
        return model, result

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every train pair once, with a fixed negative per pair (an item of another block)."""
        train = planted_dataset().train.tocoo()
        users = torch.from_numpy(train.row.astype(np.int64))
        positives = torch.from_numpy(train.col.astype(np.int64))
        negatives = (positives + ITEMS_PER_BLOCK) % (BLOCKS * ITEMS_PER_BLOCK)
        return users, positives, negatives

    # ------------------------------------------------------------------------------------
    def test_hyperparameters_are_typed_keywords(self) -> None:
        known = self.model_class.hyperparameters()
        assert known, "from_dataset must expose its hyperparameters as typed keyword-only args"
        defaults = self.model_class.validate_hyperparameters({})
        assert set(defaults) == set(known)
        with pytest.raises(ConfigError, match="unknown hyperparameter"):
            self.model_class.validate_hyperparameters({"no_such_key": 1})
        assert self.model_class.name == self.model

    def test_losses_are_named_finite_scalars(self) -> None:
        model = self.build()
        model.train()
        model.on_epoch_start(1, torch.Generator().manual_seed(0))
        terms = model.loss(*self.batch())
        assert isinstance(terms, dict) and terms, "loss() must return a non-empty dict"
        for name, value in terms.items():
            assert isinstance(name, str) and name
            assert value.ndim == 0, f"loss term {name!r} is not a scalar"
            assert torch.isfinite(value), f"loss term {name!r} is not finite"

    def test_gradients_reach_every_trainable_parameter(self) -> None:
        model = self.build()
        model.train()
        model.on_epoch_start(1, torch.Generator().manual_seed(0))
        sum(model.loss(*self.batch()).values()).backward()
        missing = [
            name
            for name, parameter in model.named_parameters()
            if parameter.requires_grad
            and not any(part in name for part in self.no_gradient)
            and (parameter.grad is None or not bool(parameter.grad.abs().sum() > 0))
        ]
        assert not missing, f"no gradient reaches {missing}"
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                assert torch.isfinite(parameter.grad).all(), f"non-finite gradient in {name}"

    def test_scores_are_raw_inner_products(self) -> None:
        model = self.build()
        model.eval()
        with torch.no_grad():
            user_repr, item_repr = model.embed()
            users = torch.arange(user_repr.shape[0])
            scores = model.score(users)
        dataset = planted_dataset()
        assert user_repr.shape[0] == dataset.num_users
        assert item_repr.shape[0] == dataset.num_items
        assert scores.shape == (dataset.num_users, dataset.num_items)
        # nothing is excluded by the model itself: train items get finite scores too
        assert torch.isfinite(scores).all()
        torch.testing.assert_close(scores, user_repr @ item_repr.T)

    def test_embedding_blocks_split_the_score_exactly(self) -> None:
        model = self.build()
        model.eval()
        blocks = model.embedding_blocks()
        if blocks is None:  # a model without blocks says so with None, nothing else
            return
        with torch.no_grad():
            user_repr, item_repr = model.embed()
        names = [name for name, _ in blocks]
        assert len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names)
        assert all(isinstance(w, int) and w >= 1 for _, w in blocks)
        assert sum(width for _, width in blocks) == user_repr.shape[1] == item_repr.shape[1]
        total, start = torch.zeros(user_repr.shape[0], item_repr.shape[0]), 0
        for _, width in blocks:
            total += user_repr[:, start : start + width] @ item_repr[:, start : start + width].T
            start += width
        torch.testing.assert_close(total, user_repr @ item_repr.T, rtol=1e-5, atol=1e-5)

    def test_state_dict_round_trip(self, tmp_path) -> None:
        # a differently seeded fresh model must take on the saved one's outputs exactly
        model = self.build(seed=0)
        path = tmp_path / "weights.pt"
        torch.save(model.state_dict(), path)
        fresh = self.build(seed=123)
        fresh.load_state_dict(torch.load(path))
        model.eval()
        fresh.eval()
        with torch.no_grad():
            for before, after in zip(model.embed(), fresh.embed()):
                torch.testing.assert_close(before, after, rtol=0, atol=0)

    def test_recovers_planted_blocks(self) -> None:
        model, result = self.train()
        dataset = planted_dataset()
        test = evaluate_split(model, dataset, get_protocol("standard"), "test")
        popularity = popularity_metric(dataset)
        assert result.best_epoch >= 1
        assert test[METRIC] > max(0.6, popularity + 0.25), (
            f"{self.model}: test {METRIC} {test[METRIC]:.3f} vs popularity {popularity:.3f}"
        )

    def test_same_seed_same_metrics(self) -> None:
        _, first = self.train(seed=3, epochs=2)
        _, second = self.train(seed=3, epochs=2)
        assert [r.valid for r in first.history] == [r.valid for r in second.history]
        assert [r.losses for r in first.history] == [r.losses for r in second.history]

    def test_modalities_required_or_optional(self) -> None:
        bare = planted_dataset(with_features=False)
        if self.needs_modalities:
            with pytest.raises(ConfigError, match="modality"):
                self.build(dataset=bare)
        else:
            user_repr, item_repr = self.build(dataset=bare).embed()
            assert item_repr.shape[0] == bare.num_items
