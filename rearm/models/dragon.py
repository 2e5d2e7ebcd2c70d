"""DRAGON (Zhou et al., ECAI 2023, "Enhancing Dyadic Relations with Homogeneous Graphs for
Multimodal Recommendation"): dual representations of users and items learnt on the user-item
(heterogeneous) graph and on user-user and item-item (homogeneous) graphs.

What is computed:
  * Heterogeneous graph, one channel per modality m: users carry a trainable preference table
    P_m [U, d]; items carry their feature rows passed through an MLP,
    MLP_m(X_m) = W2 LeakyReLU(W1 X_m + b1) + b2 (D_m -> 4d -> d). Every node's layer-0 vector is
    L2-normalised, x_m = norm([P_m; MLP_m(X_m)]), and propagated on the symmetrically
    normalised bipartite graph A: h_m = x_m + A x_m + ... + A^L x_m (sum of layers 0..L).
  * Fusion (attentive concatenation): items h_i = [h_1,i | ... | h_M,i]; users weight each
    modality with a trainable per-user weight, h_u = [a_u,1 h_1,u | ... | a_u,M h_M,u]
    (a_u initialised as a softmax over the modalities).
  * Homogeneous graphs, each added to the fused representation:
    item-item, frozen: S = sum_m w_m S_m with S_m the binarised cosine kNN graph of the raw
    features (self included, D^-1/2 S_m D^-1/2, every value 1/k), built once ("freezing", as in
    FREEDOM); h_i <- h_i + (S^{L_ii} h)_i.
    user-user: G[u, v] over the k users sharing the most train items with u (co-occurrence
    counts R R^T, top-k), weights softmax of the counts over the kept k; a user with fewer than
    k co-occurring users is padded by resampling its own neighbours, one with none keeps only
    its own representation; h_u <- h_u + (G^{L_uu} h)_u.
  * Score <h_u, h_i> (dimension M d); loss BPR + reg_weight R with
    R = sum_m mean(P_m[batch users]^2) + mean(a^2) (means over entries; the authors'
    regulariser, for which their published reg_weight values were chosen).

Settings and the source of each default:
  embedding_dim 64, num_layers 2 (L, heterogeneous graph), item_graph_layers 1 (L_ii), knn_k 10,
  image_weight 0.1 (text 0.9): the authors' published configuration; user_graph_k 40,
  user_graph_layers 1, the MLP shape (D_m -> 4d -> d, LeakyReLU), the layer-0 normalisation and
  the layer sum: the authors' implementation; reg_weight 1e-3 with Adam lr 1e-4, batch
  2048: the authors' published values for Baby and Sports (Clothing: reg_weight 0.1, lr 1e-4)
  from the grid lr x reg_weight in {1e-1, ..., 1e-5}.

Differences from the authors' implementation (kept small and stated): BPR uses the natural
logarithm (theirs log2, i.e. BPR scaled by 1/ln 2 ~ 1.44 against the regulariser); the user-user
padding is drawn once with a fixed seed (theirs redraws it every epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rearm.models.base import ProgressFn, Range, Recommender
from rearm.models.layers import bpr_loss, propagate, sparse_transpose


class DRAGON(Recommender):
    """DRAGON over pre-built graphs (see the module docstring for the equations).

    Args:
        bipartite: sparse [(U+I), (U+I)] normalised user-item graph of the train split.
        item_graph: sparse [I, I] frozen, modality-weighted item-item kNN graph.
        user_graph: sparse [U, U] top-k user co-occurrence graph (rows sum to 1 or are empty).
        item_features: {modality: [I, D_m]} fixed feature tables.
        num_users: U.
        embedding_dim: d per modality channel (the final representations have M d entries).
        num_layers: L, heterogeneous-graph layers (sum over layers 0..L).
        item_graph_layers, user_graph_layers: L_ii, L_uu (last layer; 0 drops that graph).
        reg_weight: weight of R.
    """

    name = "dragon"
    # the authors' published Baby / Sports setting: Adam, lr 1e-4, batch 2048
    training_defaults = {"learning_rate": 1e-4, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        bipartite: Tensor,
        item_graph: Tensor,
        user_graph: Tensor,
        item_features: Mapping[str, Tensor],
        num_users: int,
        *,
        embedding_dim: int = 64,
        num_layers: int = 2,
        item_graph_layers: int = 1,
        user_graph_layers: int = 1,
        reg_weight: float = 1e-3,
    ) -> None:
        super().__init__()
        if not item_features:
            raise ValueError("DRAGON needs at least one modality")
        self.modalities = list(item_features)
        self.num_users = num_users
        self.num_items = item_graph.shape[0]
        if bipartite.shape[0] != num_users + self.num_items or user_graph.shape[0] != num_users:
            raise ValueError(
                f"graph sizes {tuple(bipartite.shape)}, {tuple(item_graph.shape)}, "
                f"{tuple(user_graph.shape)} do not fit {num_users} users"
            )
        self.num_layers = num_layers
        self.item_graph_layers = item_graph_layers
        self.user_graph_layers = user_graph_layers
        self.reg_weight = reg_weight
        self.register_buffer("bipartite", bipartite, persistent=False)
        self.register_buffer("item_graph", item_graph, persistent=False)
        self.register_buffer("user_graph", user_graph, persistent=False)
        # transposes built once for a cheaper backward (the bipartite graph is symmetric)
        self.register_buffer("item_graph_t", sparse_transpose(item_graph), persistent=False)
        self.register_buffer("user_graph_t", sparse_transpose(user_graph), persistent=False)
        for m, name in enumerate(self.modalities):
            features = torch.as_tensor(item_features[name], dtype=torch.float32)
            self.register_buffer(f"features_{m}", features, persistent=False)

        self.user_preferences = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(num_users, embedding_dim)))
            for _ in self.modalities
        )
        self.feature_mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(getattr(self, f"features_{m}").shape[1], 4 * embedding_dim),
                nn.LeakyReLU(),
                nn.Linear(4 * embedding_dim, embedding_dim),
            )
            for m in range(len(self.modalities))
        )
        # Xavier-normal draws over a [U, M, 1] tensor, then a softmax over the modalities
        draws = nn.init.xavier_normal_(torch.empty(num_users, len(self.modalities), 1))
        self.user_modality_weights = nn.Parameter(torch.softmax(draws[..., 0], dim=1))

    def features(self, m: int) -> Tensor:
        return getattr(self, f"features_{m}")

    def modality_views(self) -> list[Tensor]:
        """Per modality, the heterogeneous-graph representation of every node, [(U+I), d]."""
        views = []
        for m, (preference, mlp) in enumerate(zip(self.user_preferences, self.feature_mlps)):
            x = F.normalize(torch.cat([preference, mlp(self.features(m))], dim=0), dim=1)
            # layer sum = (L + 1) x the layer mean that `propagate` returns
            views.append(
                propagate(self.bipartite, x, self.num_layers, "mean", transpose=self.bipartite)
                * (self.num_layers + 1)
            )
        return views

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, M d], item [I, M d])."""
        views = self.modality_views()
        users = torch.cat(
            [
                self.user_modality_weights[:, m : m + 1] * view[: self.num_users]
                for m, view in enumerate(views)
            ],
            dim=1,
        )
        items = torch.cat([view[self.num_users :] for view in views], dim=1)
        if self.item_graph_layers > 0:
            items = items + propagate(
                self.item_graph, items, self.item_graph_layers, "last", self.item_graph_t
            )
        if self.user_graph_layers > 0:
            users = users + propagate(
                self.user_graph, users, self.user_graph_layers, "last", self.user_graph_t
            )
        return users, items

    def embedding_blocks(self) -> list[tuple[str, int]]:
        """One block of d columns per modality channel, in embed()'s column order: the
        homogeneous graphs act on every column alike, so the score is the sum of the
        per-modality inner products."""
        width = self.user_preferences[0].shape[1]
        return [(name, width) for name in self.modalities]

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "reg"}."""
        user_repr, item_repr = self.embed()
        user = user_repr[users]
        terms = {
            "bpr": bpr_loss(
                (user * item_repr[pos_items]).sum(1), (user * item_repr[neg_items]).sum(1)
            )
        }
        if self.reg_weight > 0:
            penalty = sum(preference[users].pow(2).mean() for preference in self.user_preferences)
            terms["reg"] = self.reg_weight * (penalty + self.user_modality_weights.pow(2).mean())
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
        num_layers: Annotated[int, Range(ge=0, le=64)] = 2,
        item_graph_layers: Annotated[int, Range(ge=0, le=64)] = 1,
        user_graph_layers: Annotated[int, Range(ge=0, le=64)] = 1,
        knn_k: Annotated[int, Range(ge=1, le=10_000)] = 10,
        user_graph_k: Annotated[int, Range(ge=1, le=10_000)] = 40,
        image_weight: Annotated[float, Range(ge=0, le=1)] = 0.1,
        modality_weights: dict[str, float] | None = None,
        reg_weight: Annotated[float, Range(ge=0)] = 1e-3,
    ) -> DRAGON:
        """Build the bipartite graph, the frozen item-item graph (shared with FREEDOM) and the
        user co-occurrence graph from `dataset`. Modality weights as in FREEDOM: "image" gets
        `image_weight`, the other modalities share the rest, or pass `modality_weights`."""
        from rearm.errors import ConfigError
        from rearm.graphs import bipartite_graph, check_modality_weights
        from rearm.graphs import modality_weights as published_weights
        from rearm.models.freedom import frozen_item_graph

        if not dataset.features:
            raise ConfigError(
                f"{dataset.source or 'dataset'}: DRAGON needs at least one item modality "
                "(no <name>_feat.npy found)"
            )
        weights = (
            check_modality_weights(modality_weights, dataset.modalities, "modality_weights")
            if modality_weights is not None
            else published_weights(dataset.modalities, image_weight)
        )
        item_graph = frozen_item_graph(
            dataset, weights, knn_k, graph_cache=graph_cache, progress=progress
        )
        return cls(
            bipartite_graph(dataset.train),
            item_graph,
            dragon_user_graph(
                dataset, user_graph_k, seed=seed, graph_cache=graph_cache, progress=progress
            ),
            {name: torch.from_numpy(np.asarray(x)) for name, x in dataset.features.items()},
            dataset.num_users,
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            item_graph_layers=item_graph_layers,
            user_graph_layers=user_graph_layers,
            reg_weight=reg_weight,
        )


def dragon_user_graph(
    dataset, k: int, *, seed: int, graph_cache=None, progress: ProgressFn | None = None
) -> Tensor:
    """DRAGON's user-user graph: the shared `user_cooccurrence_graph` builder with softmax
    weights, resampled padding and empty rows left empty. Cached under the same recipe key as
    REARM's user co-occurrence graph, so equal arguments share one file.
    Returns float32 torch sparse CSR [U, U]."""
    from rearm.graphs import to_scipy, to_torch, user_cooccurrence_graph
    from rearm.graphs.build import BUILDER_VERSION

    options = {"weighting": "softmax", "pad": "resample", "empty": "none", "seed": seed}
    if progress is not None:
        progress("dragon user co-occurrence graph")

    def build():
        return to_scipy(user_cooccurrence_graph(dataset.train, k, **options))

    if graph_cache is None:
        return to_torch(build())
    matrix = graph_cache.graph(
        dataset.fingerprint(), "user_cooccurrence", BUILDER_VERSION, {"k": k, **options}, build
    )
    return to_torch(matrix)
