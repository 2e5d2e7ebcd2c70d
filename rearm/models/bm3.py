"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal
Recommendation"): self-supervised multimodal recommendation without negative samples.

What is computed (equation numbers of the paper):
  * Multimodal latent space (eq. 1): every modality m is projected to d by a one-layer MLP,
    h_m = e_m W_m + b_m (e_m: the item's feature row).
  * ID embeddings (eqs. 2-3): LightGCN on the normalised user-item graph, layer mean over
    layers 0..L; items also add their layer-0 (ego) embedding:
    H_u = mean(H_u^0, ..., H_u^L), H_i = mean(H_i^0, ..., H_i^L) + H_i^0.
  * Contrastive views (section 3.2): the online view of any representation h is the shared
    predictor's output h~ = h W_p + b_p (one predictor for users, items and every modality); the
    target view is a dropout of the stop-gradient representation, h. = sg(h) * Bernoulli(1 - p).
  * Multimodal contrastive loss, with C(a, b) = 1 - cos(a, b) (the paper's negative cosine; the
    constant 1 changes nothing but keeps the logged terms >= 0), averaged over the batch's
    observed (user, item) pairs; no negative item is used:
      reconstruction  L_rec   = C(h~_u, h._i) + C(h~_i, h._u)            (graph reconstruction)
      alignment       L_align = sum_m C(h~_m,i, h._i)                    (inter-modality)
      masked          L_mask  = sum_m C(h~_m,i, h._m,i)                  (intra-modality)
    L = L_rec + alignment_weight (L_align + L_mask) + reg_weight R.
  * Regulariser R = (||H_u||_F + ||H_i||_F) / |I| over the online (pre-predictor) ID
    representations of all nodes: the form in the authors' public implementation, for which its
    published reg_weight values were chosen (a value does not carry over to a squared L2 term).
  * Score (section 3.3): s(u, i) = <h~_u, h~_i>, the predictor outputs of the ID representations;
    the modality projections only shape training.

Settings and the source of each default:
  embedding_dim 64 (paper, also the projection size), num_layers 1, dropout 0.5, reg_weight 0.1:
  the authors' published best point for Baby (their README; Sports: 1 / 0.5 / 0.01) in the
  paper's grid layers {1, 2} x dropout {0.3, 0.5} x reg_weight {0.1, 0.01};
  alignment_weight 2.0: the authors' published configuration (`cl_weight`);
  train_feature_tables True: the authors' implementation fine-tunes the feature tables (False
  keeps them as fixed pre-extracted inputs); Adam lr 1e-3, batch 2048, Xavier initialisation
  (paper).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rearm.models.base import ProgressFn, Range, Recommender
from rearm.models.layers import feature_tables, propagate, xavier_linear


def negative_cosine(online: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of 1 - cos(online, target); the target carries no gradient. [B, d] each."""
    return (1.0 - F.cosine_similarity(online, target.detach(), dim=-1)).mean()


class BM3(Recommender):
    """BM3 over a pre-built bipartite graph (see the module docstring for the equations).

    Args:
        bipartite: sparse [(U+I), (U+I)] normalised user-item graph of the train split.
        item_features: {modality: [I, D_m]} feature tables.
        num_users: U.
        embedding_dim: d of the ID embeddings, the modality projections and the predictor.
        num_layers: L, LightGCN layers.
        dropout: p, the fraction of target-view coordinates zeroed.
        reg_weight: weight of the regulariser R.
        alignment_weight: weight of the alignment and masked terms (`cl_weight`).
        train_feature_tables: fine-tune the feature tables (the authors' implementation).
    """

    name = "bm3"
    # paper: Adam, lr 1e-3, batch 2048
    training_defaults = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        bipartite: Tensor,
        item_features: Mapping[str, Tensor],
        num_users: int,
        *,
        embedding_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.5,
        reg_weight: float = 0.1,
        alignment_weight: float = 2.0,
        train_feature_tables: bool = True,
    ) -> None:
        super().__init__()
        if not item_features:
            raise ValueError("BM3 needs at least one modality")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.modalities = list(item_features)
        self.num_users = num_users
        self.num_items = bipartite.shape[0] - num_users
        self.num_layers = num_layers
        self.dropout = dropout
        self.reg_weight = reg_weight
        self.alignment_weight = alignment_weight
        self.register_buffer("bipartite", bipartite, persistent=False)
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.feature_tables = feature_tables(item_features, self.modalities, train_feature_tables)
        self.projections = nn.ModuleList(
            xavier_linear(table.shape[1], embedding_dim) for table in self.feature_tables
        )
        self.predictor = xavier_linear(embedding_dim, embedding_dim)

    def online(self) -> tuple[Tensor, Tensor]:
        """Online ID representations before the predictor (eq. 3): (H_u [U, d], H_i [I, d])."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        # the normalised bipartite graph is symmetric: it is its own transpose
        nodes = propagate(self.bipartite, ego, self.num_layers, "mean", transpose=self.bipartite)
        return nodes[: self.num_users], nodes[self.num_users :] + self.item_embedding.weight

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (predictor(H_u) [U, d], predictor(H_i) [I, d])."""
        users, items = self.online()
        return self.predictor(users), self.predictor(items)

    def target(self, x: Tensor) -> Tensor:
        """Target view: dropout of the stop-gradient representation. F.dropout's 1/(1-p)
        rescaling is harmless: every term compares directions only."""
        with torch.no_grad():
            return F.dropout(x.detach(), p=self.dropout, training=True)

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items: LongTensor [B] (neg_items is unused: BM3 has no negatives)
        -> {"reconstruction", "alignment", "masked", "reg"}."""
        user_repr, item_repr = self.online()
        user, item = user_repr[users], item_repr[pos_items]
        user_target, item_target = self.target(user), self.target(item)
        terms = {
            "reconstruction": negative_cosine(self.predictor(user), item_target)
            + negative_cosine(self.predictor(item), user_target)
        }
        alignment = masked = 0.0
        for table, projection in zip(self.feature_tables, self.projections):
            modal = projection(table[pos_items])
            online = self.predictor(modal)
            alignment = alignment + negative_cosine(online, item_target)
            masked = masked + negative_cosine(online, self.target(modal))
        terms["alignment"] = self.alignment_weight * alignment
        terms["masked"] = self.alignment_weight * masked
        if self.reg_weight > 0:
            terms["reg"] = (
                self.reg_weight * (user_repr.norm() + item_repr.norm()) / max(item_repr.shape[0], 1)
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
        embedding_dim: Annotated[int, Range(ge=1)] = 64,
        num_layers: Annotated[int, Range(ge=0, le=64)] = 1,
        dropout: Annotated[float, Range(ge=0, lt=1)] = 0.5,
        reg_weight: Annotated[float, Range(ge=0)] = 0.1,
        alignment_weight: Annotated[float, Range(ge=0)] = 2.0,
        train_feature_tables: bool = True,
    ) -> BM3:
        """Build the normalised bipartite graph of `dataset.train` (BM3 needs no other graph)."""
        from rearm.errors import ConfigError
        from rearm.graphs import bipartite_graph

        if not dataset.features:
            raise ConfigError(
                f"{dataset.source or 'dataset'}: BM3 needs at least one item modality "
                "(no <name>_feat.npy found)"
            )
        return cls(
            bipartite_graph(dataset.train),
            {name: torch.from_numpy(np.asarray(x)) for name, x in dataset.features.items()},
            dataset.num_users,
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            dropout=dropout,
            reg_weight=reg_weight,
            alignment_weight=alignment_weight,
            train_feature_tables=train_feature_tables,
        )
