"""MF-BPR: matrix factorisation trained with the BPR pairwise loss (Rendle et al., UAI 2009).

score(u, i) = <p_u, q_i>. Regularisation is an explicit L2 term on the embeddings of the batch
(`batch_l2`, weighted by `reg_weight`), the convention of the LightGCN paper and of MMRec's
baselines, rather than the optimiser's weight decay: only the rows a batch touches are shrunk.
"""

from __future__ import annotations

from typing import Annotated

from torch import Tensor

from rearm.models.base import ProgressFn, Range, Recommender
from rearm.models.layers import bpr_loss, normal_embedding


def batch_l2(*embeddings: Tensor) -> Tensor:
    """L2 penalty of a batch: 0.5 * (sum of squared entries of all tensors) / B, B = number of
    rows of the first tensor (the batch size). Shared by the ID-embedding baselines
    (mf, lightgcn, vbpr) so that their `reg_weight` means the same thing."""
    total = sum(table.pow(2).sum() for table in embeddings)
    return 0.5 * total / max(embeddings[0].shape[0], 1)


class MF(Recommender):
    """User and item ID embeddings; the score is their inner product.

    Args:
        num_users, num_items: table sizes.
        embedding_dim: d of both tables.
        reg_weight: weight of `batch_l2` over (user, positive, negative) rows of the batch.
    """

    name = "mf"
    # MMRec's shared training settings for Amazon Baby/Sports/Clothing: Adam, lr 1e-3, batch 2048
    training_defaults = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self, num_users: int, num_items: int, *, embedding_dim: int = 64, reg_weight: float = 1e-4
    ) -> None:
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.reg_weight = reg_weight
        self.user_embedding = normal_embedding(num_users, embedding_dim)
        self.item_embedding = normal_embedding(num_items, embedding_dim)

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, d], item [I, d])."""
        return self.user_embedding.weight, self.item_embedding.weight

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "reg"}."""
        user = self.user_embedding(users)
        positive = self.item_embedding(pos_items)
        negative = self.item_embedding(neg_items)
        terms = {"bpr": bpr_loss((user * positive).sum(1), (user * negative).sum(1))}
        if self.reg_weight > 0:
            terms["reg"] = self.reg_weight * batch_l2(user, positive, negative)
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
        reg_weight: Annotated[float, Range(ge=0), "weight of the L2 term on the batch rows"] = 1e-4,
    ) -> MF:
        """MF needs no graph and no modality; `dataset` only gives the table sizes."""
        return cls(
            dataset.num_users,
            dataset.num_items,
            embedding_dim=embedding_dim,
            reg_weight=reg_weight,
        )
