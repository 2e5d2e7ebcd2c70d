"""VBPR (He & McAuley, AAAI 2016): MF plus a content factor from item features.

score(u, i) = <gamma_u, gamma_i> + <theta_u, E f_i> + beta_i + beta'^T f_i
(the global and user biases of the paper's rating predictor cancel in a pairwise ranking loss).

Several modalities: the item feature vector f_i is the CONCATENATION of every modality's feature
row, in the data set's modality order, and one projection E (and one beta') acts on it. This is
the paper's model applied to a longer content vector, equivalent to a sum of per-modality
projections with one shared theta_u, and it is what MMRec's VBPR baseline does for Amazon
Baby/Sports/Clothing.

The biases are extra embedding columns so that the contract's inner product is the exact score:
user_repr = [gamma_u | theta_u | 1 | 1], item_repr = [gamma_i | E f_i | beta_i | beta'^T f_i].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor, nn

from rearm.models.base import ProgressFn, Range, Recommender
from rearm.models.layers import bpr_loss, normal_embedding
from rearm.models.mf import batch_l2


class VBPR(Recommender):
    """Args:
    item_features: float [I, F] concatenated modality features (fixed inputs, not trained).
    num_users: U.
    embedding_dim: d of the latent factors gamma.
    content_dim: d' of the content factors theta_u and of E f_i (the paper's visual factors).
    reg_weight: weight of `batch_l2` over gamma_u, theta_u, gamma_i, gamma_j, beta_i, beta_j
        (the paper's lambda_Theta); E and beta' are not penalised (its lambda_E = 0).
    init_std: gamma_u, theta_u and gamma_i start as N(0, init_std^2). 0.01 is the scale of the
        Xavier-normal initialisation of these tables on the Amazon sets; the former 0.1 left VBPR
        below popularity on Baby (issue 12: test Recall@20 0.0438 at 0.1, 0.0664 Xavier-normal).
    """

    name = "vbpr"
    # MMRec's shared Amazon settings (Adam, lr 1e-3, batch 2048), embedding 64 per factor block
    training_defaults = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        item_features: Tensor,
        num_users: int,
        *,
        embedding_dim: int = 64,
        content_dim: int = 64,
        reg_weight: float = 1e-4,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        features = torch.as_tensor(item_features, dtype=torch.float32)
        self.num_users, self.num_items = num_users, features.shape[0]
        self.reg_weight = reg_weight
        self.register_buffer("item_features", features, persistent=False)
        self.user_factors = normal_embedding(num_users, embedding_dim, std=init_std)
        self.user_content = normal_embedding(num_users, content_dim, std=init_std)
        self.item_factors = normal_embedding(self.num_items, embedding_dim, std=init_std)
        self.item_bias = nn.Embedding(self.num_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.projection = nn.Linear(features.shape[1], content_dim, bias=False)
        nn.init.xavier_normal_(self.projection.weight)
        self.feature_bias = nn.Linear(features.shape[1], 1, bias=False)
        nn.init.zeros_(self.feature_bias.weight)

    def _items(self, items: Tensor | None = None) -> Tensor:
        """[gamma_i | E f_i | beta_i | beta'^T f_i] for `items` (all when None): [n, d + d' + 2]."""
        if items is None:
            features, factors, bias = (
                self.item_features,
                self.item_factors.weight,
                self.item_bias.weight,
            )
        else:
            features, factors, bias = (
                self.item_features[items],
                self.item_factors(items),
                self.item_bias(items),
            )
        return torch.cat(
            [factors, self.projection(features), bias, self.feature_bias(features)], dim=1
        )

    def _users(self, users: Tensor | None = None) -> Tensor:
        """[gamma_u | theta_u | 1 | 1] for `users` (all when None): [n, d + d' + 2]."""
        if users is None:
            factors, content = self.user_factors.weight, self.user_content.weight
        else:
            factors, content = self.user_factors(users), self.user_content(users)
        ones = torch.ones(factors.shape[0], 2, dtype=factors.dtype, device=factors.device)
        return torch.cat([factors, content, ones], dim=1)

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, d + d' + 2], item [I, d + d' + 2]); their inner product is the score."""
        return self._users(), self._items()

    def embedding_blocks(self) -> list[tuple[str, int]]:
        """latent <gamma_u, gamma_i>, content <theta_u, E f_i>, item_bias beta_i and
        content_bias beta'^T f_i: the four terms of the score, in embed()'s column order."""
        return [
            ("latent", self.user_factors.embedding_dim),
            ("content", self.user_content.embedding_dim),
            ("item_bias", 1),
            ("content_bias", 1),
        ]

    @torch.no_grad()
    def cold_item_representation(
        self,
        features: Mapping[str, Any],
        known_features: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
    ) -> Tensor:
        """[0 | E f_c | 0 | beta'^T f_c] for new items: no latent factors gamma_i and no item
        bias beta_i (both are learnt from interactions), the trained content path on f_c (the
        modalities concatenated in the training data's order)."""
        content = torch.from_numpy(
            concatenated_features({m: features[m] for m in known_features}, None, "VBPR")
        ).to(self.projection.weight.device)
        count = content.shape[0]
        zeros = torch.zeros(count, self.item_factors.embedding_dim, device=content.device)
        return torch.cat(
            [zeros, self.projection(content), zeros[:, :1], self.feature_bias(content)], dim=1
        )

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "reg"}."""
        user = self._users(users)
        positive = (user * self._items(pos_items)).sum(1)
        negative = (user * self._items(neg_items)).sum(1)
        terms = {"bpr": bpr_loss(positive, negative)}
        if self.reg_weight > 0:
            terms["reg"] = self.reg_weight * batch_l2(
                self.user_factors(users),
                self.user_content(users),
                self.item_factors(pos_items),
                self.item_factors(neg_items),
                self.item_bias(pos_items),
                self.item_bias(neg_items),
            )
        return terms

    @classmethod
    def from_dataset(
        cls,
        dataset,
        *,
        graph_cache=None,
        seed: int = 2025,
        progress: ProgressFn | None = None,
        embedding_dim: Annotated[int, Range(ge=1), "size of the latent factors gamma"] = 64,
        content_dim: Annotated[
            int, Range(ge=1), "size of theta_u and of the projection E f_i"
        ] = 64,
        reg_weight: Annotated[float, Range(ge=0), "weight of the L2 term on the batch rows"] = 1e-4,
        init_std: Annotated[float, Range(gt=0), "std of the N(0, std^2) initialisation"] = 0.01,
    ) -> VBPR:
        """Concatenate `dataset.features` (all modalities, data set order) into f_i."""
        return cls(
            torch.from_numpy(concatenated_features(dataset.features, dataset.source, "VBPR")),
            dataset.num_users,
            embedding_dim=embedding_dim,
            content_dim=content_dim,
            reg_weight=reg_weight,
            init_std=init_std,
        )


def concatenated_features(
    features: Mapping[str, np.ndarray], source: str | None, model: str
) -> np.ndarray:
    """{modality: [I, D_m]} -> float32 [I, sum_m D_m]; ConfigError when there is no modality."""
    from rearm.errors import ConfigError

    if not features:
        raise ConfigError(
            f"{source or 'dataset'}: {model} needs at least one item modality "
            "(no <name>_feat.npy found)"
        )
    return np.ascontiguousarray(
        np.concatenate([np.asarray(x, dtype=np.float32) for x in features.values()], axis=1)
    )
