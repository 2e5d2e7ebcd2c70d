"""MGCN (Yu, Tan, Lu & Bao, ACM MM 2023): Multi-View Graph Convolutional Network for Multimedia
Recommendation.

Notation: U users, I items, d the embedding size, M the modalities, X_m [I, D_m] the feature table
of modality m, E_id = [E_u,id; E_i,id] the ID embeddings.

  * Behaviour-guided purifier (paper section 3.1): the modality features are projected,
    X~_m = W_1 X_m + b_1, and gated by the item ID embeddings,
    E^._i,m = E_i,id (.) sigmoid(W_2 X~_m + b_2)   (elementwise product; one W_1, W_2 per m).
  * User-item view (3.2.1): LightGCN on the normalised bipartite graph A^ = D^-1/2 A D^-1/2,
    E_id^(l+1) = A^ E_id^(l), E^-_id = mean(E_id^(0), ..., E_id^(L)).
  * Item-item view (3.2.2): per modality a frozen kNN graph S_m over the raw features (cosine
    top-k, self included, binarised, D^-1/2 S D^-1/2 so every value is 1/k; the builder shared
    with FREEDOM), E^.._i,m^(l+1) = S_m E^.._i,m^(l) from E^._i,m, last layer kept; users
    aggregate their items, E^.._u,m = sum_{i in N_u} E^.._i,m / sqrt(|N_u| |N_i|) (the user-item
    block of A^); E^-_m = [E^.._u,m; E^.._i,m].
  * Behaviour-aware fuser (3.3): modality-shared part by attention over the modalities, per node,
    alpha_m = softmax_m(q^T tanh(W_3 E^-_m + b_3)), E_s = sum_m alpha_m E^-_m; modality-specific
    parts E~_m = E^-_m - E_s weighted by the behaviour preference P_m = sigmoid(W_4,m E^-_id +
    b_4,m); E_mul = (E_s + sum_m E~_m (.) P_m) / (M + 1). Final E = E^-_id + E_mul and
    score(u, i) = <e_u, e_i>.
  * Self-supervised auxiliary task (3.4): InfoNCE between the fused multimodal and the behaviour
    representation of the same node, L_C = InfoNCE(E_mul[users], E^-_id[users]) +
    InfoNCE(E_mul[pos], E^-_id[pos]) over the batch (cosine similarity, temperature tau; the
    other rows of the batch are the negatives).
  * Objective: L = L_BPR + lambda_C L_C + lambda_E ||Theta||^2, the last term the batch L2 of the
    ID embeddings the batch touches (`batch_l2`, as in this package's LightGCN).

Settings and the source of each default: d = 64, `num_layers` (L, user-item view) 2,
`item_graph_layers` 1, `knn_k` 10, `reg_weight` (lambda_E) 1e-4, `contrastive_weight`
(lambda_C) 0.01, Adam lr 1e-3, batch 2048: the authors' published configuration
(embedding_size 64, n_ui_layers 2, n_layers 1, knn_k 10, reg_weight 1e-4, cl_loss 0.01,
learning_rate 1e-3). `contrastive_temperature` 0.2: not among the published configuration values;
0.2 is the value commonly used for this InfoNCE in the MMRec line of work (a tuning candidate).
The authors' step decay of the learning rate (x0.96 every 50 epochs) is not reproduced (the
trainer keeps lr constant).
Feature tables are trainable (`train_feature_tables`), as FREEDOM's here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import numpy as np
import torch
from torch import Tensor, nn

from rearm.models.base import ProgressFn, Range, Recommender
from rearm.models.layers import (
    TableProjection,
    bpr_loss,
    feature_tables,
    info_nce,
    propagate,
    sparse_transpose,
)
from rearm.models.mf import batch_l2


class MGCN(Recommender):
    """MGCN over pre-built graphs.

    Args:
        bipartite: sparse [(U+I), (U+I)] normalised user-item graph of the train split.
        item_graphs: {modality: sparse [I, I]} frozen binarised kNN graphs S_m.
        item_features: {modality: [I, D_m]} initial feature tables X_m (same keys).
        num_users: U.
        embedding_dim: d.
        num_layers: L of the user-item view (layer mean).
        item_graph_layers: layers of the item-item view (last layer).
        reg_weight: lambda_E, weight of `batch_l2` over the batch's ID embeddings.
        contrastive_weight: lambda_C, weight of the self-supervised term (0 leaves it out).
        contrastive_temperature: tau of the InfoNCE.
        train_feature_tables: fine-tune the feature tables X_m.
    """

    name = "mgcn"
    training_defaults = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        bipartite: Tensor,
        item_graphs: Mapping[str, Tensor],
        item_features: Mapping[str, Tensor],
        num_users: int,
        *,
        embedding_dim: int = 64,
        num_layers: int = 2,
        item_graph_layers: int = 1,
        reg_weight: float = 1e-4,
        contrastive_weight: float = 0.01,
        contrastive_temperature: float = 0.2,
        train_feature_tables: bool = True,
    ) -> None:
        super().__init__()
        if not item_features:
            raise ValueError("MGCN needs at least one modality")
        if set(item_graphs) != set(item_features):
            raise ValueError("item_graphs and item_features must name the same modalities")
        self.modalities = list(item_features)
        self.num_users = num_users
        self.num_items = bipartite.shape[0] - num_users
        self.num_layers = num_layers
        self.item_graph_layers = item_graph_layers
        self.reg_weight = reg_weight
        self.contrastive_weight = contrastive_weight
        self.contrastive_temperature = contrastive_temperature

        # the bipartite graph is symmetric: it is its own transpose for the cheaper backward
        self.register_buffer("bipartite", bipartite, persistent=False)
        from rearm.graphs import to_scipy, to_torch

        # E^.._u,m = (D_u^-1/2 R D_i^-1/2) E^.._i,m: the user-item block of the bipartite graph
        user_item = to_torch(to_scipy(bipartite)[:num_users, num_users:].tocsr())
        self.register_buffer("user_item", user_item, persistent=False)
        self.register_buffer("item_user", sparse_transpose(user_item), persistent=False)
        for index, name in enumerate(self.modalities):
            graph = item_graphs[name]
            self.register_buffer(f"item_graph_{index}", graph, persistent=False)
            self.register_buffer(
                f"item_graph_transpose_{index}", sparse_transpose(graph), persistent=False
            )

        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.feature_tables = feature_tables(item_features, self.modalities, train_feature_tables)
        # purifier: W_1 (projection) and W_2 (gate) per modality
        self.projections = nn.ModuleList(
            TableProjection(table.shape[1], embedding_dim) for table in self.feature_tables
        )
        self.gates = nn.ModuleList(nn.Linear(embedding_dim, embedding_dim) for _ in self.modalities)
        # fuser: shared attention q^T tanh(W_3 x + b_3); preferences W_4,m per modality
        self.attention = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim),
            nn.Tanh(),
            nn.Linear(embedding_dim, 1, bias=False),
        )
        self.preferences = nn.ModuleList(
            nn.Linear(embedding_dim, embedding_dim) for _ in self.modalities
        )

    # ----------------------------------------------------------------------------------------
    def item_graph(self, index: int) -> tuple[Tensor, Tensor]:
        return getattr(self, f"item_graph_{index}"), getattr(self, f"item_graph_transpose_{index}")

    def modality_views(self) -> list[Tensor]:
        """E^-_m = [E^.._u,m; E^.._i,m] per modality, each [(U+I), d]."""
        item_ids = self.item_embedding.weight
        views = []
        for index, (table, projection, gate) in enumerate(
            zip(self.feature_tables, self.projections, self.gates)
        ):
            purified = item_ids * torch.sigmoid(gate(projection(table)))
            graph, transpose = self.item_graph(index)
            items = propagate(
                graph, purified, self.item_graph_layers, combine="last", transpose=transpose
            )
            users = propagate(self.user_item, items, 1, combine="last", transpose=self.item_user)
            views.append(torch.cat([users, items], dim=0))
        return views

    def representations(self) -> dict[str, Tensor]:
        """{"behaviour": E^-_id, "multimodal": E_mul, "final": E^-_id + E_mul}, each [(U+I), d]
        (users first)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        behaviour = propagate(
            self.bipartite, ego, self.num_layers, combine="mean", transpose=self.bipartite
        )
        views = torch.stack(self.modality_views())  # [M, N, d]
        weights = torch.softmax(self.attention(views), dim=0)  # [M, N, 1]
        shared = (weights * views).sum(0)
        specific = sum(
            (view - shared) * torch.sigmoid(preference(behaviour))
            for view, preference in zip(views, self.preferences)
        )
        multimodal = (shared + specific) / (len(self.modalities) + 1)
        return {"behaviour": behaviour, "multimodal": multimodal, "final": behaviour + multimodal}

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, d], item [I, d])."""
        final = self.representations()["final"]
        return final[: self.num_users], final[self.num_users :]

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "reg", "contrastive"}."""
        parts = self.representations()
        final = parts["final"]
        pos_nodes, neg_nodes = pos_items + self.num_users, neg_items + self.num_users
        user = final[users]
        terms = {
            "bpr": bpr_loss((user * final[pos_nodes]).sum(1), (user * final[neg_nodes]).sum(1))
        }
        if self.reg_weight > 0:
            terms["reg"] = self.reg_weight * batch_l2(
                self.user_embedding(users),
                self.item_embedding(pos_items),
                self.item_embedding(neg_items),
            )
        if self.contrastive_weight > 0:
            multimodal, behaviour = parts["multimodal"], parts["behaviour"]
            tau = self.contrastive_temperature
            terms["contrastive"] = self.contrastive_weight * (
                info_nce(multimodal[pos_nodes], behaviour[pos_nodes], tau)
                + info_nce(multimodal[users], behaviour[users], tau)
            )
        return terms

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_dataset(
        cls,
        dataset,
        *,
        graph_cache=None,
        seed: int = 2025,
        progress: ProgressFn | None = None,
        embedding_dim: Annotated[int, Range(ge=1)] = 64,
        num_layers: Annotated[int, Range(ge=0, le=64)] = 2,
        item_graph_layers: Annotated[int, Range(ge=0, le=64)] = 1,
        knn_k: Annotated[int, Range(ge=1, le=10_000)] = 10,
        reg_weight: Annotated[float, Range(ge=0)] = 1e-4,
        contrastive_weight: Annotated[float, Range(ge=0)] = 0.01,
        contrastive_temperature: Annotated[float, Range(gt=0)] = 0.2,
        train_feature_tables: bool = True,
    ) -> MGCN:
        """Build the bipartite graph and one frozen binarised kNN item graph per modality."""
        from rearm.errors import ConfigError
        from rearm.graphs import bipartite_graph
        from rearm.models.freedom import frozen_item_graph

        if not dataset.features:
            raise ConfigError(
                f"{dataset.source or 'dataset'}: MGCN needs at least one item modality "
                "(no <name>_feat.npy found)"
            )
        item_graphs = {
            name: frozen_item_graph(
                dataset, {name: 1.0}, knn_k, graph_cache=graph_cache, progress=progress
            )
            for name in dataset.modalities
        }
        return cls(
            bipartite_graph(dataset.train),
            item_graphs,
            {name: torch.from_numpy(np.asarray(x)) for name, x in dataset.features.items()},
            dataset.num_users,
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            item_graph_layers=item_graph_layers,
            reg_weight=reg_weight,
            contrastive_weight=contrastive_weight,
            contrastive_temperature=contrastive_temperature,
            train_feature_tables=train_feature_tables,
        )
