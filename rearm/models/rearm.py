"""REARM (Ma, Zeng, Wu, Xu, ACM MM 2025), as specified in docs REARM_SPEC.md sections 3-8.

Pipeline of one full forward over all nodes:
  homography learning (item / user homographs, last layer, row-normalised)
  -> item attention over modality views, user views through the activation only
  -> LightGCN on the bipartite graph (layer mean) for modality views and ID embeddings together
  -> meta-network: per-node rank-r transform of the ID embedding from modal-shared knowledge
  -> h_n = [act(F_m[n]) + E[n] for each modality m | act(s_n) + E[n]], score = <h_u, h_i>.
Any number of modalities >= 1 is supported; with one modality the contrastive and orthogonality
terms have nothing to compare and are absent.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from rearm.models.base import ProgressFn, Range, Recommender, check_weights
from rearm.models.kernels import csr_dense_mm
from rearm.models.layers import (
    MetaNetwork,
    ModalityAttention,
    PReLU,
    TableProjection,
    bpr_loss,
    feature_tables,
    first_occurrence,
    info_nce,
    normal_embedding,
    normalize_rows,
    orthogonal_loss,
    propagate,
    sparse_transpose,
)


def _first_positions(nodes: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct value of nodes [n], in increasing
    order of the value (the order of torch.unique)."""
    distinct, inverse = torch.unique(nodes, return_inverse=True)
    positions = torch.arange(len(nodes), device=nodes.device)
    first = torch.full((len(distinct),), len(nodes), device=nodes.device)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin")


def _rows(x: Tensor, where: Tensor | None) -> Tensor:
    return x if where is None else x[where]


class _SidesAndRows(torch.autograd.Function):
    """From the propagated [(U+I), W] nodes: the users' and the items' first `fused` columns
    (the meta-network's inputs, contiguous) and the rows at `index` (a batch), with one gradient
    buffer in backward: slicing and indexing separately each fill a zero tensor of the full
    [(U+I), W] shape and autograd adds them up, five passes over all nodes per step that
    dominated the non-graph time at 10x Clothing."""

    @staticmethod
    def forward(ctx, stacked: Tensor, users: int, fused: int, index: Tensor):
        ctx.shape, ctx.dtype, ctx.users, ctx.fused = stacked.shape, stacked.dtype, users, fused
        ctx.save_for_backward(index)
        return (
            stacked[:users, :fused].contiguous(),
            stacked[users:, :fused].contiguous(),
            stacked[index],
        )

    @staticmethod
    def backward(ctx, user_grad: Tensor, item_grad: Tensor, row_grad: Tensor):
        (index,) = ctx.saved_tensors
        users, fused = ctx.users, ctx.fused
        grad = index.new_empty(ctx.shape, dtype=ctx.dtype)
        for part, side in ((slice(0, users), user_grad), (slice(users, None), item_grad)):
            if side is None:
                grad[part, :fused] = 0
            else:
                grad[part, :fused] = side
        grad[:, fused:] = 0
        if row_grad is not None:
            grad.index_add_(0, index, row_grad)
        return grad, None, None, None


class REARM(Recommender):
    """REARM over pre-built graphs and item features.

    Args:
        item_features: {modality: [I, D_m]} initial item modality tables X_m.
        user_features: {modality: [U, D_m]} initial user preference tables P_m (mean of the
            user's train items' features), same modality order as item_features.
        bipartite: sparse [(U+I), (U+I)] normalised user-item graph (users first).
        item_homograph, user_homograph: sparse [I, I] / [U, U], or None to skip that side's
            homograph propagation (ablations no_item_graph / no_user_graph / no_homographs).
        train_feature_tables: [quirk, published True] fine-tune X_m and P_m; False freezes them
            (far fewer trainable parameters, changes the model).
        detach_knowledge: [quirk, published True] detach the meta-network's knowledge vector.
        use_attention, use_meta, use_contrastive, use_orthogonal: ablation switches.
    """

    name = "rearm"
    capturable = True
    # reference defaults: AdamW lr 5e-5, reg_weight (weight decay) of the baby setting
    training_defaults = {"learning_rate": 5e-5, "weight_decay": 5e-4}

    def __init__(
        self,
        item_features: Mapping[str, Tensor],
        user_features: Mapping[str, Tensor],
        bipartite: Tensor,
        item_homograph: Tensor | None,
        user_homograph: Tensor | None,
        *,
        embedding_dim: int = 64,
        num_layers: int = 4,
        user_homograph_layers: int = 1,
        item_homograph_layers: int = 1,
        rank: int = 3,
        self_attention_dropout: float = 0.4,
        cross_attention_dropout: float = 0.6,
        contrastive_temperature: float = 0.6,
        contrastive_weight: float = 5e-6,
        orthogonal_weight: float = 5e-5,
        train_feature_tables: bool = True,
        detach_knowledge: bool = True,
        use_attention: bool = True,
        use_meta: bool = True,
        use_contrastive: bool = True,
        use_orthogonal: bool = True,
    ) -> None:
        super().__init__()
        if not item_features:
            raise ValueError("REARM needs at least one modality")
        if list(item_features) != list(user_features):
            raise ValueError("item_features and user_features must name the same modalities")
        self.modalities = list(item_features)
        first = next(iter(item_features.values()))
        self.num_items = first.shape[0]
        self.num_users = next(iter(user_features.values())).shape[0]
        self.dim = embedding_dim
        self.num_layers = num_layers
        self.user_homograph_layers = user_homograph_layers if user_homograph is not None else 0
        self.item_homograph_layers = item_homograph_layers if item_homograph is not None else 0
        self.contrastive_temperature = contrastive_temperature
        self.contrastive_weight = contrastive_weight if use_contrastive else 0.0
        self.orthogonal_weight = orthogonal_weight if use_orthogonal else 0.0
        self.use_meta = use_meta

        self.register_buffer("bipartite", bipartite, persistent=False)
        self.register_buffer("item_homograph", item_homograph, persistent=False)
        self.register_buffer("user_homograph", user_homograph, persistent=False)
        # transposes for the backward products, built once (rearm.models.layers.propagate)
        for name in ("bipartite", "item_homograph", "user_homograph"):
            graph = getattr(self, name)
            transpose = None if graph is None else sparse_transpose(graph)
            self.register_buffer(f"{name}_transpose", transpose, persistent=False)

        self.user_id = normal_embedding(self.num_users, embedding_dim)
        self.item_id = normal_embedding(self.num_items, embedding_dim)
        self.item_tables = feature_tables(item_features, self.modalities, train_feature_tables)
        self.user_tables = feature_tables(user_features, self.modalities, train_feature_tables)
        self.item_projections = nn.ModuleList(
            TableProjection(table.shape[1], embedding_dim) for table in self.item_tables
        )
        self.user_projections = nn.ModuleList(
            TableProjection(table.shape[1], embedding_dim) for table in self.user_tables
        )
        # one LayerNorm and one PReLU shared by the attention block, the user views and h
        self.norm = nn.LayerNorm(embedding_dim)
        self.activation = PReLU()
        self.attention = ModalityAttention(
            len(self.modalities),
            embedding_dim,
            self_attention_dropout,
            cross_attention_dropout,
            self.norm,
            self.activation,
            use_attention=use_attention,
        )
        fused = len(self.modalities) * embedding_dim
        if use_meta:
            self.user_meta = MetaNetwork(fused, embedding_dim, rank, detach_knowledge)
            self.item_meta = MetaNetwork(fused, embedding_dim, rank, detach_knowledge)

    # ----------------------------------------------------------------------------------------
    def _homography(
        self, ids: Tensor, tables, projections, graph: Tensor | None, transpose, layers: int
    ) -> tuple[Tensor, list[Tensor]]:
        z = torch.cat([ids] + [proj(table) for proj, table in zip(projections, tables)], dim=1)
        if graph is not None and layers > 0:
            z = propagate(graph, z, layers, combine="last", transpose=transpose)
        z = normalize_rows(z)
        parts = z.split(self.dim, dim=1)
        return parts[0], list(parts[1:])

    def propagated(self, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Homographs, item attention and the bipartite LightGCN over all nodes.

        Returns:
            stacked: [(U+I), (M+1) d]: the propagated modality views F (first M d columns) and
                the propagated ID embeddings E (last d columns), users first; with `index`
                (node indices, users first) only those rows, in that order;
            meta: for users and for items, MetaNetwork.logits of their rows of F (None without
                the meta block).
        """
        item_ids, item_views = self._homography(
            self.item_id.weight,
            self.item_tables,
            self.item_projections,
            self.item_homograph,
            self.item_homograph_transpose,
            self.item_homograph_layers,
        )
        user_ids, user_views = self._homography(
            self.user_id.weight,
            self.user_tables,
            self.user_projections,
            self.user_homograph,
            self.user_homograph_transpose,
            self.user_homograph_layers,
        )
        item_views = self.attention(item_views)
        user_views = [self.activation(view) for view in user_views]
        # modality views and ID embeddings share the graph: propagate them in one product
        stacked = torch.cat(user_views + [user_ids], dim=1)
        stacked = torch.cat([stacked, torch.cat(item_views + [item_ids], dim=1)], dim=0)
        stacked = propagate(
            self.bipartite,
            stacked,
            self.num_layers,
            combine="mean",
            transpose=self.bipartite_transpose,
        )
        meta = None
        fused = len(self.modalities) * self.dim
        users = self.num_users
        if index is not None and self.use_meta and stacked.requires_grad:
            user_modal, item_modal, stacked = _SidesAndRows.apply(stacked, users, fused, index)
            meta = (self.user_meta.logits(user_modal), self.item_meta.logits(item_modal))
            return stacked, meta
        if self.use_meta:
            meta = (
                self.user_meta.logits(stacked[:users, :fused]),
                self.item_meta.logits(stacked[users:, :fused]),
            )
        return (stacked if index is None else stacked[index]), meta

    def represent(self, rows: Tensor, meta, network, index: Tensor | None = None) -> Tensor:
        """h for some nodes of one side: rows [n, (M+1) d] of `stacked` (propagated), meta the
        side's MetaNetwork.logits over all its nodes, index [n] the rows' node indices within
        the side (None: all nodes, in order) -> [n, (M+1) d] ([n, M d] without the meta block).
        """
        fused = len(self.modalities) * self.dim
        ids = rows[:, fused:]
        blocks = [self.activation(view) + ids for view in rows[:, :fused].split(self.dim, dim=1)]
        if meta is not None:
            w1, w1_mean, w2, w2_mean = meta
            if index is not None:
                # index_select, not w1[index]: its backward adds repeated rows in a fixed
                # order, so two threads give the same gradients run after run
                w1, w2 = w1.index_select(0, index), w2.index_select(0, index)
            shared = network.transform(ids, w1, w1_mean, w2, w2_mean)
            blocks.append(self.activation(shared) + ids)
        return torch.cat(blocks, dim=1)

    def forward_all(self) -> tuple[Tensor, Tensor, Tensor]:
        """One full forward over all nodes.

        Returns:
            h: [(U+I), (M+1) d] final representations (M d without the meta block);
            modal: [(U+I), M d] LightGCN-propagated modality views F;
            ids: [(U+I), d] LightGCN-propagated ID embeddings E.
        """
        stacked, meta = self.propagated()
        users = self.num_users
        user_meta, item_meta = meta if meta is not None else (None, None)
        h = torch.cat(
            [
                self.represent(stacked[:users], user_meta, getattr(self, "user_meta", None)),
                self.represent(stacked[users:], item_meta, getattr(self, "item_meta", None)),
            ],
            dim=0,
        )
        fused = len(self.modalities) * self.dim
        return h, stacked[:, :fused], stacked[:, fused:]

    def embedding_blocks(self) -> list[tuple[str, int]]:
        """h = [one block per modality (data set order) | meta block (absent under no_meta)],
        each embedding_dim wide; the meta block is named "meta" (or "meta_network" if a
        modality is itself called "meta")."""
        blocks = [(modality, self.dim) for modality in self.modalities]
        if self.use_meta:
            blocks.append(("meta" if "meta" not in self.modalities else "meta_network", self.dim))
        return blocks

    def gradient_checked_parameters(self) -> list[nn.Parameter]:
        """Everything but the feature tables. A table's gradient is G W (TableProjection), and its
        projection's gradient G^T X is checked: a non-finite entry of G makes G^T X non-finite
        (X is finite), so with the checked gradients finite the table's is too, short of G W
        overflowing float32. Skipping the tables saves a pass over ~120M gradient values per
        step (Baby), a few percent of a CPU epoch."""
        tables = {id(p) for p in list(self.item_tables) + list(self.user_tables)}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in tables]

    def notes(self) -> list[str]:
        out = []
        if self.attention.self_attention and self.attention.self_attention[0].dropout >= 1.0:
            out.append(
                "self_attention_dropout >= 1 (published Sports setting): while training every "
                "self-attention weight is dropped, so that block outputs its bias; evaluation "
                "attends normally"
            )
        if not self.item_tables[0].requires_grad:
            out.append(
                "train_feature_tables=false: raw feature tables frozen (not the published model)"
            )
        return out

    def embed(self) -> tuple[Tensor, Tensor]:
        h, _, _ = self.forward_all()
        return h[: self.num_users], h[self.num_users :]

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        batch = len(users)
        # h is needed only at the batch's rows: gather them once (one scatter in backward),
        # then finish the representations for those rows alone
        items = torch.cat([pos_items, neg_items])
        rows, meta = self.propagated(torch.cat([users, self.num_users + items]))
        user_meta, item_meta = meta if meta is not None else (None, None)
        user_h = self.represent(rows[:batch], user_meta, getattr(self, "user_meta", None), users)
        item_h = self.represent(rows[batch:], item_meta, getattr(self, "item_meta", None), items)
        positive = (user_h * item_h[:batch]).sum(1)
        negative = (user_h * item_h[batch:]).sum(1)
        terms = {"bpr": bpr_loss(positive, negative)}
        pairs = list(itertools.combinations(range(len(self.modalities)), 2))
        if not pairs:
            return terms
        views = rows[:, : len(self.modalities) * self.dim].split(self.dim, dim=1)
        if self.contrastive_weight > 0:
            # over the distinct users and the distinct items (positives and negatives) of the batch
            parts = ((slice(0, batch), users), (slice(batch, 3 * batch), items))
            if self.static_shapes:
                selected = [(part, None, first_occurrence(nodes)) for part, nodes in parts]
            else:
                selected = [(part, _first_positions(nodes), None) for part, nodes in parts]
            contrastive = sum(
                info_nce(
                    _rows(views[a][part], where),
                    _rows(views[b][part], where),
                    self.contrastive_temperature,
                    keep,
                )
                for part, where, keep in selected
                for a, b in pairs
            ) / len(pairs)
            terms["contrastive"] = self.contrastive_weight * contrastive
        if self.orthogonal_weight > 0:
            orthogonal = sum(
                orthogonal_loss(views[a][part], views[b][part])
                for part in (slice(0, batch), slice(batch, 2 * batch))
                for a, b in pairs
            ) / len(pairs)
            terms["orthogonal"] = self.orthogonal_weight * orthogonal
        return terms

    @torch.no_grad()
    def cold_item_representation(
        self,
        features: Mapping[str, Any],
        known_features: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
    ) -> Tensor:
        """h [n, (M+1) d] of n new items from their features alone (see Recommender).

        The forward of section 4-7 for an item with no ID embedding (E = 0) and no train
        interactions: its homograph row is its item semantic row (self plus the item_knn_k - 1
        most similar known items by feature cosine, `cold_item_graph`; it has no co-occurrence,
        so the semantic part takes the whole row), propagated over the known items' trained
        [E_i | W_m X_m] for item_homograph_layers layers; then the trained attention; the
        bipartite LightGCN leaves an isolated node at its layer-0 value / (num_layers + 1); the
        meta-network uses the known items' means. Known items are unchanged."""
        from types import SimpleNamespace

        from rearm.graphs import cold_item_graph, to_torch

        self.eval()
        stacked, meta = self.propagated()
        device = self.item_id.weight.device
        new = {m: torch.as_tensor(np.asarray(features[m], np.float32)) for m in self.modalities}
        count = next(iter(new.values())).shape[0]
        z_known = torch.cat(
            [self.item_id.weight]
            + [proj(table) for proj, table in zip(self.item_projections, self.item_tables)],
            dim=1,
        )
        z_own = torch.cat(
            [torch.zeros(count, self.dim, device=device)]
            + [proj(new[m].to(device)) for m, proj in zip(self.modalities, self.item_projections)],
            dim=1,
        )
        if self.item_homograph_layers > 0:
            arguments = self.graph_arguments(
                SimpleNamespace(features=dict(known_features), source=None), hyperparameters
            )
            if arguments["item_cooccurrence_weight"] < 1:
                rows, own = cold_item_graph(
                    new,
                    known_features,
                    arguments["item_knn_k"],
                    arguments["item_modality_weights"],
                )
            else:  # co-occurrence only: a new item has no neighbour at all
                rows = None
                own = np.ones(count, dtype=np.float32)
            rows = None if rows is None else to_torch(rows).to(device)
            own = torch.from_numpy(own).to(device)[:, None]
            for _ in range(self.item_homograph_layers):
                step = own * z_own
                z_own = step if rows is None else csr_dense_mm(rows, z_known) + step
                z_known = csr_dense_mm(self.item_homograph, z_known)
        parts = normalize_rows(z_own).split(self.dim, dim=1)
        views = self.attention(list(parts[1:]))
        rows = torch.cat(views + [parts[0]], dim=1) / (self.num_layers + 1)
        side_meta = None
        if meta is not None:
            fused = len(self.modalities) * self.dim
            w1, _, w2, _ = self.item_meta.logits(rows[:, :fused])
            _, w1_mean, _, w2_mean = meta[1]
            side_meta = (w1, w1_mean, w2, w2_mean)
        return self.represent(rows, side_meta, getattr(self, "item_meta", None))

    # ----------------------------------------------------------------------------------------
    @classmethod
    def validate(cls, hyperparameters: Mapping[str, Any], where: str = "config") -> None:
        """Relations between keys: the two single-graph ablations exclude each other, the
        meta-network's rank is at most embedding_dim, and explicit modality weights sum to 1
        (their names are checked against the data later)."""
        from rearm.errors import ConfigError

        if hyperparameters["cooccurrence_only"] and hyperparameters["semantic_only"]:
            raise ConfigError(f"{where}: cooccurrence_only and semantic_only exclude each other")
        if hyperparameters["rank"] > hyperparameters["embedding_dim"]:
            raise ConfigError(
                f"{where}: rank must be <= embedding_dim (a low-rank transform), got rank "
                f"{hyperparameters['rank']} > embedding_dim {hyperparameters['embedding_dim']}"
            )
        for side in ("user", "item"):
            key = f"{side}_modality_weights"
            check_weights(hyperparameters[key], f"{where}: {key}")

    @classmethod
    def graph_arguments(cls, dataset, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The `build_graphs` keywords (all but seed / cache / progress) that REARM's
        hyperparameters ask for on `dataset`; ablations that drop a homograph leave its graphs
        out (`homographs`), and cooccurrence_only / semantic_only set the co-occurrence weights
        to 1 / 0 (so the other part is not built).

        Args:
            dataset: the data set (its modalities decide the modality weights).
            hyperparameters: from_dataset keywords; only the graph ones are read, missing ones
                take from_dataset's defaults.

        Raises:
            ConfigError: no modality, or both cooccurrence_only and semantic_only.
        """
        from rearm.errors import ConfigError
        from rearm.graphs import modality_weights

        if not dataset.features:
            raise ConfigError(
                f"{dataset.source or 'dataset'}: REARM needs at least one item modality "
                "(no <name>_feat.npy found)"
            )
        h = {name: default for name, (_, default) in cls.hyperparameters().items()}
        h.update({name: value for name, value in hyperparameters.items() if name in h})
        if h["cooccurrence_only"] and h["semantic_only"]:
            raise ConfigError("cooccurrence_only and semantic_only exclude each other")
        modalities = list(dataset.features)

        def alpha(weight: float) -> float:
            return 1.0 if h["cooccurrence_only"] else 0.0 if h["semantic_only"] else weight

        return {
            "user_knn_k": h["user_knn_k"],
            "item_knn_k": h["item_knn_k"],
            "user_modality_weights": h["user_modality_weights"]
            or modality_weights(modalities, h["user_image_weight"]),
            "item_modality_weights": h["item_modality_weights"]
            or modality_weights(modalities, h["item_image_weight"]),
            "user_cooccurrence_weight": alpha(h["user_cooccurrence_weight"]),
            "item_cooccurrence_weight": alpha(h["item_cooccurrence_weight"]),
            "cooccurrence_weighting": h["cooccurrence_weighting"],
            "cooccurrence_pad": h["cooccurrence_pad"],
            "knn_method": h["knn_method"],
            "homographs": tuple(
                side
                for side in ("user", "item")
                if not (h["no_homographs"] or h[f"no_{side}_graph"])
            ),
        }

    @classmethod
    def from_dataset(
        cls,
        dataset,
        *,
        graph_cache=None,
        seed: int = 2025,
        progress: ProgressFn | None = None,
        embedding_dim: Annotated[
            int, Range(ge=1), "size of every ID embedding and modality view"
        ] = 64,
        num_layers: Annotated[
            int, Range(ge=0, le=64), "LightGCN layers on the user-item graph [num_layer]"
        ] = 4,
        user_homograph_layers: Annotated[
            int, Range(ge=0, le=64), "propagation layers on the user homograph [n_uu_layers]"
        ] = 1,
        item_homograph_layers: Annotated[
            int, Range(ge=0, le=64), "propagation layers on the item homograph [n_ii_layers]"
        ] = 1,
        rank: Annotated[int, Range(ge=1), "rank of the meta-network transform"] = 3,
        self_attention_dropout: Annotated[
            float, Range(ge=0, le=1), "dropout on self-attention weights [s_drop]"
        ] = 0.4,
        cross_attention_dropout: Annotated[
            float, Range(ge=0, le=1), "dropout on cross-attention weights [m_drop]"
        ] = 0.6,
        contrastive_temperature: Annotated[
            float, Range(gt=0), "InfoNCE temperature [cl_tmp]"
        ] = 0.6,
        contrastive_weight: Annotated[
            float, Range(ge=0), "weight of the contrastive term [cl_loss]"
        ] = 5e-6,
        orthogonal_weight: Annotated[
            float, Range(ge=0), "weight of the orthogonality term [diff_loss_weight]"
        ] = 5e-5,
        user_knn_k: Annotated[
            int, Range(ge=1, le=10_000), "neighbours per user in the user graphs"
        ] = 40,
        item_knn_k: Annotated[
            int, Range(ge=1, le=10_000), "neighbours per item in the item graphs"
        ] = 10,
        user_image_weight: Annotated[
            float,
            Range(ge=0, le=1),
            "weight of the image modality in the user interest graph [u_mm_image_weight]",
        ] = 0.2,
        item_image_weight: Annotated[
            float,
            Range(ge=0, le=1),
            "weight of the image modality in the item semantic graph [i_mm_image_weight]",
        ] = 0.0,
        user_modality_weights: Annotated[
            dict[str, Annotated[float, Range(ge=0, le=1)]] | None,
            "per-modality weights of the user graph, summing to 1 (overrides user_image_weight)",
        ] = None,
        item_modality_weights: Annotated[
            dict[str, Annotated[float, Range(ge=0, le=1)]] | None,
            "per-modality weights of the item graph, summing to 1 (overrides item_image_weight)",
        ] = None,
        user_cooccurrence_weight: Annotated[
            float, Range(ge=0, le=1), "share of co-occurrence in the user homograph [uu_co_weight]"
        ] = 0.4,
        item_cooccurrence_weight: Annotated[
            float, Range(ge=0, le=1), "share of co-occurrence in the item homograph [ii_co_weight]"
        ] = 0.2,
        cooccurrence_weighting: Annotated[
            Literal["softmax", "normalized"],
            "co-occurrence values: softmax of counts (reference) or counts / row sum",
        ] = "softmax",
        cooccurrence_pad: Annotated[
            Literal["resample", "none"],
            "pad short co-occurrence rows by resampling (reference) or not",
        ] = "resample",
        knn_method: Annotated[
            Literal["exact", "faiss"], "kNN search: exact or faiss IVF"
        ] = "exact",
        train_feature_tables: Annotated[
            bool, "fine-tune the raw feature tables (reference)"
        ] = True,
        detach_knowledge: Annotated[
            bool, "no gradient into the meta knowledge Linear (reference)"
        ] = True,
        no_homographs: Annotated[bool, "ablation: no homograph propagation"] = False,
        no_user_graph: Annotated[bool, "ablation: no user homograph"] = False,
        no_item_graph: Annotated[bool, "ablation: no item homograph"] = False,
        cooccurrence_only: Annotated[bool, "ablation: homograph = co-occurrence graph"] = False,
        semantic_only: Annotated[bool, "ablation: homograph = similarity graph"] = False,
        no_attention: Annotated[bool, "ablation: no item attention"] = False,
        no_meta: Annotated[bool, "ablation: no meta-network block"] = False,
        no_contrastive: Annotated[bool, "ablation: no contrastive term"] = False,
        no_orthogonal: Annotated[bool, "ablation: no orthogonality term"] = False,
    ) -> REARM:
        """Build the graphs REARM needs from `dataset` and construct the model.

        Hyperparameter names follow the paper in full words (reference names in brackets):
        num_layers [num_layer], user/item_homograph_layers [n_uu/n_ii_layers],
        self/cross_attention_dropout [s_drop/m_drop], contrastive_temperature [cl_tmp],
        contrastive_weight [cl_loss_weight], orthogonal_weight [diff_loss_weight],
        user/item_image_weight [u/i_mm_image_weight], user/item_cooccurrence_weight
        [uu/ii_co_weight]. Ablations (paper section 11): no_homographs, no_meta, no_orthogonal,
        no_user_graph, no_item_graph, cooccurrence_only, semantic_only, no_attention,
        no_contrastive.
        """
        from rearm.graphs import build_graphs

        hyperparameters = dict(locals())  # the keyword arguments above, by name
        modalities = list(dataset.features)
        graphs = build_graphs(
            dataset,
            **cls.graph_arguments(dataset, hyperparameters),
            seed=seed,
            cache=graph_cache,
            progress=progress,
        )
        return cls(
            {
                m: torch.from_numpy(np.asarray(x, dtype=np.float32))
                for m, x in dataset.features.items()
            },
            {m: torch.from_numpy(graphs.user_interest_features[m]) for m in modalities},
            graphs.bipartite,
            graphs.item_homograph,  # None under no_item_graph / no_homographs: not built
            graphs.user_homograph,
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            user_homograph_layers=user_homograph_layers,
            item_homograph_layers=item_homograph_layers,
            rank=rank,
            self_attention_dropout=self_attention_dropout,
            cross_attention_dropout=cross_attention_dropout,
            contrastive_temperature=contrastive_temperature,
            contrastive_weight=contrastive_weight,
            orthogonal_weight=orthogonal_weight,
            train_feature_tables=train_feature_tables,
            detach_knowledge=detach_knowledge,
            use_attention=not no_attention,
            use_meta=not no_meta,
            use_contrastive=not no_contrastive,
            use_orthogonal=not no_orthogonal,
        )
