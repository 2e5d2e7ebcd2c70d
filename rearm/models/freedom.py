"""FREEDOM (Zhou & Shen, ACM MM 2023): a FRozen item-item graph and a DEnoised (pruned)
user-item graph for multimodal recommendation.

  * Item-item graph, built once before training and never updated ("freezing"): per modality, a
    cosine kNN graph over the raw item features with k = `knn_k` (self included), binarised and
    symmetrically normalised (every row has k entries, so each value is 1/k); the modality
    graphs are summed with weights (published: image 0.1, text 0.9).
  * User-item graph, "denoising": at the start of every epoch a fraction `pruning_ratio` of the
    train edges is dropped; edges are kept by sampling without replacement with probability
    proportional to 1 / sqrt(d_u d_i) (degree-sensitive edge pruning: edges between popular
    nodes are the likeliest to go), and the kept edges are renormalised as a fresh bipartite
    graph. Evaluation (embed()) uses the full, unpruned graph, as the paper's code does.
  * Representations: items h_i = item-graph propagation of the item ID embeddings (L_ii layers,
    last layer) added to the LightGCN layer mean over the (pruned) user-item graph
    (L_ui layers); users get the LightGCN layer mean only. score(u, i) = <u, h_i + e_i>.
  * Loss: BPR on those representations plus `modality_weight` x (a BPR term per modality where
    the item side is a linear projection of the modality's (trainable) feature table).

Published defaults (paper section 4 and the authors' MMRec config): d = 64 (also the projected
feature dim), L_ui = 2, L_ii = 1, knn_k = 10, image weight 0.1, Adam lr 1e-3, batch 2048; the
pruning ratio and the modality weight are grid-searched in {0.8, 0.9} x {0, 1e-5, 1e-4, 1e-3};
0.8 / 1e-3 are used here for all three Amazon data sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from rearm.models.base import ProgressFn, Range, Recommender, check_weights
from rearm.models.kernels import csr_dense_mm
from rearm.models.layers import bpr_loss, feature_tables, propagate

# Bump when the item-item graph recipe below changes, so cached graphs are rebuilt.
ITEM_GRAPH_VERSION = 1


class FREEDOM(Recommender):
    """FREEDOM over pre-built graphs.

    Args:
        bipartite: sparse [(U+I), (U+I)] normalised user-item graph of the train split (users
            first); the pruned graphs are drawn from its edges and their values.
        item_graph: sparse [I, I] frozen, modality-weighted item-item kNN graph.
        item_features: {modality: [I, D_m]} initial feature tables.
        num_users: U.
        embedding_dim: d of the ID embeddings and of each modality projection (the reference's
            feat_embed_dim, which must equal d: projected features are scored against users).
        num_layers: L_ui, user-item propagation layers (layer mean).
        item_graph_layers: L_ii, item-item propagation layers (last layer).
        pruning_ratio: fraction of train edges dropped each epoch (0 keeps the full graph).
        modality_weight: weight of the per-modality BPR terms (the reference's `reg_weight`).
        train_feature_tables: [reference True] fine-tune the feature tables.
    """

    name = "freedom"
    training_defaults = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        bipartite: Tensor,
        item_graph: Tensor,
        item_features: Mapping[str, Tensor],
        num_users: int,
        *,
        embedding_dim: int = 64,
        num_layers: int = 2,
        item_graph_layers: int = 1,
        pruning_ratio: float = 0.8,
        modality_weight: float = 1e-3,
        train_feature_tables: bool = True,
    ) -> None:
        super().__init__()
        if not item_features:
            raise ValueError("FREEDOM needs at least one modality")
        if not 0.0 <= pruning_ratio < 1.0:
            raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
        self.modalities = list(item_features)
        self.num_users = num_users
        self.num_items = item_graph.shape[0]
        self.num_layers = num_layers
        self.item_graph_layers = item_graph_layers
        self.pruning_ratio = pruning_ratio
        self.modality_weight = modality_weight

        self.register_buffer("bipartite", bipartite, persistent=False)
        self.register_buffer("item_graph", item_graph, persistent=False)
        # The graph loss() propagates on: the full graph until on_epoch_start draws a pruned one.
        self.register_buffer("training_graph", bipartite, persistent=False)
        # Train edges and their sampling weights 1/sqrt(d_u d_i), which are exactly the values of
        # the normalised graph's user-item block (so no second normalisation is written here).
        from rearm.graphs import to_scipy

        block = to_scipy(bipartite)[:num_users, num_users:].tocsr()
        self._edge_users = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(block.indptr))
        self._edge_items = block.indices.astype(np.int64)
        self._edge_weights = torch.from_numpy(block.data.astype(np.float64))

        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, embedding_dim)
        # the reference initialises both ID tables with Xavier-uniform
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.feature_tables = feature_tables(item_features, self.modalities, train_feature_tables)
        # No bias: a bias b adds <u, b> to the positive and the negative score alike, so it
        # cancels in the BPR difference and never receives a gradient (the reference has one).
        self.projections = nn.ModuleList(
            nn.Linear(table.shape[1], embedding_dim, bias=False) for table in self.feature_tables
        )
        for projection in self.projections:
            nn.init.xavier_normal_(projection.weight)

    # ----------------------------------------------------------------------------------------
    def prune(self, generator: torch.Generator) -> Tensor:
        """One degree-sensitive pruned graph: keep int(E (1 - pruning_ratio)) train edges drawn
        without replacement with probability proportional to 1/sqrt(d_u d_i), renormalised.

        Sampling without replacement uses exponential keys (Efraimidis-Spirakis): the edges with
        the largest log(u) / w, u ~ U(0, 1), are a weighted sample without replacement; this is
        one vectorised top-k and has no category limit (torch.multinomial stops at 2^24).
        Returns sparse [(U+I), (U+I)] on the CPU.
        """
        from rearm.graphs import bipartite_graph

        num_edges = len(self._edge_weights)
        keep = int(num_edges * (1.0 - self.pruning_ratio))
        uniform = torch.rand(num_edges, generator=generator, dtype=torch.float64)
        keys = torch.log(uniform.clamp_min(1e-300)) / self._edge_weights
        chosen = torch.topk(keys, keep).indices.numpy()
        pruned = sp.csr_matrix(
            (
                np.ones(keep, dtype=np.float32),
                (self._edge_users[chosen], self._edge_items[chosen]),
            ),
            shape=(self.num_users, self.num_items),
        )
        return bipartite_graph(pruned)

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Draw this epoch's pruned user-item graph (the reference's pre-epoch processing)."""
        if self.pruning_ratio > 0:
            self.training_graph = self.prune(generator).to(self.user_embedding.weight.device)

    def forward_graph(self, graph: Tensor) -> tuple[Tensor, Tensor]:
        """(users [U, d], items [I, d]) propagated on the user-item `graph`."""
        item_semantic = propagate(
            self.item_graph, self.item_embedding.weight, self.item_graph_layers, combine="last"
        )
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        nodes = propagate(graph, ego, self.num_layers, combine="mean")
        return nodes[: self.num_users], nodes[self.num_users :] + item_semantic

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, d], item [I, d]) on the full, unpruned user-item graph."""
        return self.forward_graph(self.bipartite)

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "<modality>_bpr" ...}."""
        user_repr, item_repr = self.forward_graph(self.training_graph)
        user = user_repr[users]
        terms = {
            "bpr": bpr_loss(
                (user * item_repr[pos_items]).sum(1), (user * item_repr[neg_items]).sum(1)
            )
        }
        if self.modality_weight > 0:
            for name, table, projection in zip(
                self.modalities, self.feature_tables, self.projections
            ):
                positive = projection(table[pos_items])
                negative = projection(table[neg_items])
                terms[f"{name}_bpr"] = self.modality_weight * bpr_loss(
                    (user * positive).sum(1), (user * negative).sum(1)
                )
        return terms

    @torch.no_grad()
    def cold_item_representation(
        self,
        features: Mapping[str, Any],
        known_features: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
    ) -> Tensor:
        """h_c for new items: their row of the frozen item-item graph (self plus the knn_k - 1
        most similar known items, binarised, modality-weighted: `cold_item_graph`) propagated
        over the known items' trained ID embeddings for item_graph_layers layers; a new item has
        no ID embedding and no user-item edge, so the LightGCN part is zero."""
        from rearm.errors import ColdStartError
        from rearm.graphs import cold_item_graph, to_torch
        from rearm.graphs import modality_weights as published_weights

        if self.item_graph_layers == 0:
            raise ColdStartError(
                "freedom with item_graph_layers=0 scores items by their ID embeddings alone: "
                "it has no feature path for new items"
            )
        weights = hyperparameters.get("modality_weights") or published_weights(
            list(known_features), hyperparameters.get("image_weight", 0.1)
        )
        rows, own = cold_item_graph(
            features, known_features, hyperparameters.get("knn_k", 10), weights, binary=True
        )
        device = self.item_embedding.weight.device
        rows = to_torch(rows).to(device)
        own = torch.from_numpy(own).to(device)[:, None]
        z_known = self.item_embedding.weight
        z_own = torch.zeros(rows.shape[0], z_known.shape[1], device=device)
        for _ in range(self.item_graph_layers):
            z_own = csr_dense_mm(rows, z_known) + own * z_own
            z_known = csr_dense_mm(self.item_graph, z_known)
        return z_own

    # ----------------------------------------------------------------------------------------
    @classmethod
    def validate(cls, hyperparameters: Mapping[str, Any], where: str = "config") -> None:
        """Explicit modality weights sum to 1 (their names are checked against the data later)."""
        check_weights(hyperparameters["modality_weights"], f"{where}: modality_weights")

    @classmethod
    def from_dataset(
        cls,
        dataset,
        *,
        graph_cache=None,
        seed: int = 2025,
        progress: ProgressFn | None = None,
        embedding_dim: Annotated[
            int, Range(ge=1), "size of the ID embeddings and modality projections"
        ] = 64,
        num_layers: Annotated[
            int, Range(ge=0, le=64), "layers on the pruned user-item graph (L_ui)"
        ] = 2,
        item_graph_layers: Annotated[
            int, Range(ge=0, le=64), "layers on the frozen item-item graph (L_ii)"
        ] = 1,
        knn_k: Annotated[
            int, Range(ge=1, le=10_000), "neighbours per item in the modality kNN graphs"
        ] = 10,
        image_weight: Annotated[
            float, Range(ge=0, le=1), "weight of the image graph (mm_image_weight)"
        ] = 0.1,
        modality_weights: Annotated[
            dict[str, Annotated[float, Range(ge=0, le=1)]] | None,
            "per-modality weights, summing to 1 (overrides image_weight)",
        ] = None,
        pruning_ratio: Annotated[
            float, Range(ge=0, lt=1), "share of train edges dropped each epoch"
        ] = 0.8,
        modality_weight: Annotated[
            float, Range(ge=0), "weight of the per-modality BPR terms"
        ] = 1e-3,
        train_feature_tables: Annotated[
            bool, "fine-tune the raw feature tables (reference)"
        ] = True,
    ) -> FREEDOM:
        """Build the bipartite graph and the frozen item-item graph from `dataset`.

        The modality weights follow the published two-modality convention: "image" gets
        `image_weight` (mm_image_weight), the other modalities share the rest; or pass
        `modality_weights` ({modality: weight}, summing to 1) for any other mix.
        """
        from rearm.errors import ConfigError
        from rearm.graphs import bipartite_graph, check_modality_weights
        from rearm.graphs import modality_weights as published_weights

        if not dataset.features:
            raise ConfigError(
                f"{dataset.source or 'dataset'}: FREEDOM needs at least one item modality "
                "(no <name>_feat.npy found)"
            )
        if not 0.0 <= pruning_ratio < 1.0:
            raise ConfigError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
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
            {name: torch.from_numpy(np.asarray(x)) for name, x in dataset.features.items()},
            dataset.num_users,
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            item_graph_layers=item_graph_layers,
            pruning_ratio=pruning_ratio,
            modality_weight=modality_weight,
            train_feature_tables=train_feature_tables,
        )


def frozen_item_graph(
    dataset,
    weights: Mapping[str, float],
    knn_k: int,
    *,
    graph_cache=None,
    progress: ProgressFn | None = None,
) -> Tensor:
    """sum_m w_m S_m with S_m the binarised cosine kNN graph of modality m (self included, each
    row k entries of value 1/k: FREEDOM's D^-1/2 S D^-1/2 with binary S and row degree k).

    The kNN lists come from the shared builder (rearm.graphs knn_neighbours); only the values
    differ from `knn_graph` (which keeps cosine / k), because FREEDOM binarises.
    Returns float32 torch sparse CSR [I, I].
    """
    from rearm.graphs import combine_modalities, knn_neighbours, to_torch
    from rearm.graphs.similarity import neighbours_to_csr

    def build(name: str) -> sp.csr_matrix:
        indices, sims = knn_neighbours(dataset.features[name], knn_k)
        return neighbours_to_csr(indices, np.ones_like(sims))

    # zero-weight modalities contribute nothing: skip building them
    weights = {name: weight for name, weight in weights.items() if weight > 0}
    graphs = {}
    for name in weights:
        if progress is not None:
            progress(f"binarised item kNN graph (k={knn_k}): {name}")
        if graph_cache is None:
            matrix = build(name)
        else:
            matrix = graph_cache.graph(
                dataset.fingerprint(),
                "freedom_item_knn",
                ITEM_GRAPH_VERSION,
                {"modality": name, "k": knn_k},
                lambda name=name: build(name),
            )
        graphs[name] = to_torch(matrix)
    return combine_modalities(graphs, weights)
