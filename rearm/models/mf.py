"""MF-BPR: matrix factorisation trained with the BPR pairwise loss (Rendle et al., UAI 2009).

score(u, i) = <p_u, q_i>. Regularisation is an explicit L2 term on the embeddings of the batch
(`batch_l2`, weighted by `reg_weight`): Rendle et al.'s per-example squared L2 term, rather than
the optimiser's weight decay, so only the rows a batch touches are shrunk.

Defaults (measured on Amazon Baby, issue 12; README "Why `mf` was weak"): N(0, 0.01^2)
initialisation, `reg_weight` 0.1 and Adam at lr 1e-2. The former N(0, 0.1^2), 1e-4 and 1e-3
overfitted to test Recall@20 0.0330, below item popularity.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from rearm.models.base import ProgressFn, Range, Recommender
from rearm.models.layers import bpr_loss, normal_embedding


def batch_l2(*embeddings: Tensor) -> Tensor:
    """L2 penalty of a batch: 0.5 * (sum of squared entries of all tensors) / B, B = number of
    rows of the first tensor (the batch size). Shared by the ID-embedding baselines
    (mf, lightgcn, vbpr) so that their `reg_weight` means the same thing."""
    total = sum(table.pow(2).sum() for table in embeddings)
    return 0.5 * total / max(embeddings[0].shape[0], 1)


class MF(Recommender):
    """User and item ID embeddings; the score is their inner product (plus an item bias b_i when
    `item_bias` is on: Rendle et al.'s MF-BPR has none, the peer library's BPR has one).

    Args:
        num_users, num_items: table sizes.
        embedding_dim: d of both tables.
        reg_weight: weight of `batch_l2` over (user, positive, negative) rows of the batch (the
            biases of the positive and negative items included when `item_bias` is on).
        init_std: the tables start as N(0, init_std^2).
        item_bias: add a learned b_i to every score (starts at 0). embed() then returns
            [p_u | 1] and [q_i | b_i], so the contract's inner product is still the score.
    """

    name = "mf"
    feature_free = True
    # Adam at lr 1e-2 (with the strong L2 weight, lr 1e-3 needs ~175 epochs on Baby); batch 2048
    training_defaults = {"learning_rate": 1e-2, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        num_users: int,
        num_items: int,
        *,
        embedding_dim: int = 64,
        reg_weight: float = 0.1,
        init_std: float = 0.01,
        item_bias: bool = False,
    ) -> None:
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.reg_weight = reg_weight
        self.user_embedding = normal_embedding(num_users, embedding_dim, std=init_std)
        self.item_embedding = normal_embedding(num_items, embedding_dim, std=init_std)
        self.item_bias = None
        if item_bias:
            self.item_bias = nn.Embedding(num_items, 1)
            nn.init.zeros_(self.item_bias.weight)

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, d], item [I, d]), or [U, d + 1], [I, d + 1] with the item bias."""
        users, items = self.user_embedding.weight, self.item_embedding.weight
        if self.item_bias is None:
            return users, items
        ones = torch.ones(users.shape[0], 1, dtype=users.dtype, device=users.device)
        return torch.cat([users, ones], dim=1), torch.cat([items, self.item_bias.weight], dim=1)

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "reg"}."""
        user = self.user_embedding(users)
        positive = self.item_embedding(pos_items)
        negative = self.item_embedding(neg_items)
        positive_score = (user * positive).sum(1)
        negative_score = (user * negative).sum(1)
        penalised = [user, positive, negative]
        if self.item_bias is not None:
            positive_bias, negative_bias = self.item_bias(pos_items), self.item_bias(neg_items)
            positive_score = positive_score + positive_bias.squeeze(1)
            negative_score = negative_score + negative_bias.squeeze(1)
            penalised += [positive_bias, negative_bias]
        terms = {"bpr": bpr_loss(positive_score, negative_score)}
        if self.reg_weight > 0:
            terms["reg"] = self.reg_weight * batch_l2(*penalised)
        return terms

    @classmethod
    def from_dataset(
        cls,
        dataset,
        *,
        graph_cache=None,
        seed: int = 2025,
        progress: ProgressFn | None = None,
        embedding_dim: Annotated[int, Range(ge=1), "size of the user and item embeddings"] = 64,
        reg_weight: Annotated[float, Range(ge=0), "weight of the L2 term on the batch rows"] = 0.1,
        init_std: Annotated[float, Range(gt=0), "std of the N(0, std^2) initialisation"] = 0.01,
        item_bias: Annotated[bool, "add a learned item bias b_i to the score"] = False,
    ) -> MF:
        """MF needs no graph and no modality; `dataset` only gives the table sizes."""
        return cls(
            dataset.num_users,
            dataset.num_items,
            embedding_dim=embedding_dim,
            reg_weight=reg_weight,
            init_std=init_std,
            item_bias=item_bias,
        )
