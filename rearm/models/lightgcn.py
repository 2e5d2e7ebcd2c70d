"""LightGCN (He et al., SIGIR 2020): ID embeddings smoothed on the normalised user-item graph.

E^(0) = [users; items] (the ego embeddings), E^(l+1) = A_hat E^(l) with A_hat = D^-1/2 A D^-1/2,
final E = mean(E^(0), ..., E^(L)); score(u, i) = <e_u, e_i>. The loss is BPR on the final
embeddings plus `reg_weight` times the L2 norm of the batch's ego embeddings (paper eq. 15;
the paper's lambda = 1e-4 and L = 3 are the defaults).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from rearm.models.base import ProgressFn, Range, Recommender
from rearm.models.layers import bpr_loss, normal_embedding, propagate
from rearm.models.mf import batch_l2


class LightGCN(Recommender):
    """Args:
    bipartite: sparse [(U+I), (U+I)] normalised user-item graph, users first.
    num_users, num_items: sizes (num_users + num_items = graph size).
    embedding_dim: d.
    num_layers: L propagation layers (layer mean, layer 0 included).
    reg_weight: weight of `batch_l2` over the batch's ego (layer-0) embeddings.
    """

    name = "lightgcn"
    feature_free = True
    # the paper's settings: Adam lr 1e-3, batch 2048 (as in MMRec for the Amazon data sets)
    training_defaults = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        bipartite: Tensor,
        num_users: int,
        num_items: int,
        *,
        embedding_dim: int = 64,
        num_layers: int = 3,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__()
        if bipartite.shape[0] != num_users + num_items:
            raise ValueError(
                f"bipartite graph has {bipartite.shape[0]} nodes, expected "
                f"{num_users} + {num_items}"
            )
        self.num_users, self.num_items = num_users, num_items
        self.num_layers = num_layers
        self.reg_weight = reg_weight
        self.register_buffer("bipartite", bipartite, persistent=False)
        # the paper initialises with N(0, 0.1^2)
        self.user_embedding = normal_embedding(num_users, embedding_dim)
        self.item_embedding = normal_embedding(num_items, embedding_dim)

    def propagated(self) -> Tensor:
        """Layer-mean embeddings of all nodes, [(U+I), d]."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        return propagate(self.bipartite, ego, self.num_layers, combine="mean")

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, d], item [I, d])."""
        nodes = self.propagated()
        return nodes[: self.num_users], nodes[self.num_users :]

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "reg"}."""
        user_repr, item_repr = self.embed()
        user = user_repr[users]
        positive = (user * item_repr[pos_items]).sum(1)
        negative = (user * item_repr[neg_items]).sum(1)
        terms = {"bpr": bpr_loss(positive, negative)}
        if self.reg_weight > 0:
            terms["reg"] = self.reg_weight * batch_l2(
                self.user_embedding(users),
                self.item_embedding(pos_items),
                self.item_embedding(neg_items),
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
        embedding_dim: Annotated[int, Range(ge=1), "size of the user and item embeddings"] = 64,
        num_layers: Annotated[
            int, Range(ge=0, le=64), "propagation layers (their mean is the representation)"
        ] = 3,
        reg_weight: Annotated[
            float, Range(ge=0), "weight of the L2 term on the ego embeddings"
        ] = 1e-4,
    ) -> LightGCN:
        """Build the normalised bipartite graph of `dataset.train` (no modality needed)."""
        from rearm.graphs import bipartite_graph

        return cls(
            bipartite_graph(dataset.train),
            dataset.num_users,
            dataset.num_items,
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            reg_weight=reg_weight,
        )
