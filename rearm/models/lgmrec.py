"""LGMRec (Guo, Li, Li, Wang, Shi & Ruan, AAAI 2024): Local and Global Graph Learning for
Multimodal Recommendation.

Notation: U users, I items, d the embedding size, A the number of hyperedges, R [U, I] the binary
train interactions, A^ = D^-1/2 [[0, R], [R^T, 0]] D^-1/2, X_m [I, D_m] the feature table of
modality m.

Local graph embedding (LGE):
  * collaborative graph embedding: E^c = mean(E^(0), ..., E^(L)) with E^(l+1) = A^ E^(l) from
    the ID embeddings E^(0) = [E_u; E_i] (LightGCN);
  * modality graph embedding: items E_i^m = X_m W_m (W_m [D_m, d], no bias), users start from
    the mean of their items, E_u^m = D_u^-1 R E_i^m; E^m = A^^K [E_u^m; E_i^m] (K layers, last
    kept);
  * E^lge = E^c + sum_m NORM(E^m), NORM the row-wise L2 normalisation.

Global hypergraph embedding (GHE), per modality m with learnable hyperedge embeddings V_m
[D_m, A]:
  * dependencies: items H_i^m = X_m V_m [I, A], users H_u^m = R H_i^m [U, A];
  * Gumbel-softmax relaxation over the hyperedges, as published:
    H~ = softmax((H + log(delta) - log(1 - delta)) / tau_g), delta ~ U(0, 1) elementwise, and
    dropout with keep probability `keep_rate` on H~_i^m and H~_u^m. Outside training (embed(),
    evaluation, bundles) no noise and no dropout: H~ = softmax(H / tau_g), so recommendations
    are a function of the parameters;
  * message passing from the collaborative item embeddings E_i^(m,0) = E^c_i, H_hyp layers:
    E_i^(m,h+1) = H~_i^m (H~_i^m^T E_i^(m,h)), E_u^(m,h+1) = H~_u^m (H~_i^m^T E_i^(m,h));
  * E^ghe = sum_m [E_u^(m,H); E_i^(m,H)].

Fusion: E* = E^lge + alpha NORM(E^ghe); score(u, i) = <e*_u, e*_i>.

Loss: L = L_BPR + lambda_1 L_HCL + lambda_2 ||Theta||^2.
  * L_HCL, the hypergraph contrastive term between the global embeddings of two modalities
    (image vs text in the paper; with more modalities every pair m < m' contributes; with one
    modality there is none): for the batch's users, InfoNCE of E_u^(m,H) against all users'
    E_u^(m',H) (cosine, temperature tau_c, the user itself as positive), and the same for the
    batch's positive items against all items, summed over the batch (the authors' scale:
    `contrastive_weight` 1e-4 multiplies a sum over ~2 x 2048 terms);
  * ||Theta||^2: `batch_l2` over the ID embeddings the batch touches (as this package's
    LightGCN).

Settings and the source of each default: d 64 (feat_embed_dim 64), `num_layers` (n_ui_layers) 2,
`modality_layers` (n_mm_layers) 2, `hyperedges` (hyper_num) 4, `hypergraph_layers`
(n_hyper_layer) 1, `keep_rate` 0.5, `global_weight` (alpha) 0.3, `contrastive_weight`
(cl_weight) 1e-4, `reg_weight` 1e-6, Adam lr 1e-3, batch 2048: the authors' published
configuration for Baby (Sports: 1 / 4 / 0.4 / 0.6 and Clothing: 2 / 64 / 0.2 / 0.2 for
n_hyper_layer / hyper_num / keep_rate / alpha, as presets `sports` / `clothing`).
`gumbel_temperature` and `contrastive_temperature` 0.2: not among the published configuration
values; 0.2 is the value commonly used in the MMRec line of work (tuning candidates). Feature
tables are trainable (`train_feature_tables`), as FREEDOM's here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
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


@dataclass
class HypergraphSample:
    """The randomness of one training step of one modality: relaxation noise
    log(delta) - log(1 - delta) for the item [I, A] and user [U, A] dependencies, and their
    dropout multipliers (0 or 1 / keep_rate), same shapes."""

    item_noise: Tensor
    user_noise: Tensor
    item_mask: Tensor
    user_mask: Tensor


class LGMRec(Recommender):
    """LGMRec over pre-built graphs.

    Args:
        bipartite: sparse [(U+I), (U+I)] normalised user-item graph A^ of the train split.
        interactions: sparse [U, I] binary train interactions R.
        item_features: {modality: [I, D_m]} initial feature tables X_m.
        embedding_dim: d (also the modality embedding size).
        num_layers: L, collaborative propagation layers (layer mean).
        modality_layers: K, modality propagation layers (last layer).
        hyperedges: A, hyperedges per modality.
        hypergraph_layers: H_hyp, hypergraph message-passing layers.
        keep_rate: keep probability of the dependency dropout (1 disables it).
        global_weight: alpha, weight of the normalised global embeddings.
        contrastive_weight: lambda_1 (0 leaves L_HCL out).
        reg_weight: lambda_2.
        gumbel_temperature, contrastive_temperature: tau_g, tau_c.
        train_feature_tables: fine-tune the feature tables X_m.
    """

    name = "lgmrec"
    training_defaults = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 2048}

    def __init__(
        self,
        bipartite: Tensor,
        interactions: Tensor,
        item_features: Mapping[str, Tensor],
        *,
        embedding_dim: int = 64,
        num_layers: int = 2,
        modality_layers: int = 2,
        hyperedges: int = 4,
        hypergraph_layers: int = 1,
        keep_rate: float = 0.5,
        global_weight: float = 0.3,
        contrastive_weight: float = 1e-4,
        reg_weight: float = 1e-6,
        gumbel_temperature: float = 0.2,
        contrastive_temperature: float = 0.2,
        train_feature_tables: bool = True,
    ) -> None:
        super().__init__()
        if not item_features:
            raise ValueError("LGMRec needs at least one modality")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
        self.modalities = list(item_features)
        self.num_users, self.num_items = interactions.shape
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        self.modality_layers = modality_layers
        self.hyperedges = hyperedges
        self.hypergraph_layers = hypergraph_layers
        self.keep_rate = keep_rate
        self.global_weight = global_weight
        self.contrastive_weight = contrastive_weight
        self.reg_weight = reg_weight
        self.gumbel_temperature = gumbel_temperature
        self.contrastive_temperature = contrastive_temperature

        from rearm.graphs import to_scipy, to_torch

        self.register_buffer("bipartite", bipartite, persistent=False)
        self.register_buffer("interactions", interactions, persistent=False)
        self.register_buffer(
            "interactions_transpose", sparse_transpose(interactions), persistent=False
        )
        # D_u^-1 R: users start from the mean of their items' modality embeddings
        binary = to_scipy(interactions).tocsr()
        degree = np.diff(binary.indptr).astype(np.float64)
        inverse = np.zeros_like(degree)
        np.divide(1.0, degree, out=inverse, where=degree > 0)
        user_mean = to_torch(sp.diags(inverse.astype(np.float32)) @ binary)
        self.register_buffer("user_mean", user_mean, persistent=False)
        self.register_buffer("user_mean_transpose", sparse_transpose(user_mean), persistent=False)

        self.user_embedding = nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.feature_tables = feature_tables(item_features, self.modalities, train_feature_tables)
        # [W_m | V_m] in one product, so each (large) table is read once per step
        self.projections = nn.ModuleList(
            TableProjection(table.shape[1], embedding_dim + hyperedges, bias=False)
            for table in self.feature_tables
        )
        with torch.no_grad():
            for projection in self.projections:
                nn.init.xavier_normal_(projection.weight[:embedding_dim])
                nn.init.xavier_normal_(projection.weight[embedding_dim:])

    # ----------------------------------------------------------------------------------------
    def draw_sample(self, generator: torch.Generator | None = None) -> list[HypergraphSample]:
        """Fresh relaxation noise and dropout masks, one HypergraphSample per modality."""
        device = self.item_embedding.weight.device
        shapes = ((self.num_items, self.hyperedges), (self.num_users, self.hyperedges))
        samples = []
        for _ in self.modalities:
            noises, masks = [], []
            for shape in shapes:
                delta = torch.rand(shape, generator=generator).clamp(1e-12, 1 - 1e-7)
                noises.append((torch.log(delta) - torch.log1p(-delta)).to(device))
                if self.keep_rate < 1.0:
                    keep = torch.rand(shape, generator=generator) < self.keep_rate
                    masks.append((keep.float() / self.keep_rate).to(device))
                else:
                    masks.append(torch.ones(shape, device=device))
            samples.append(HypergraphSample(noises[0], noises[1], masks[0], masks[1]))
        return samples

    def representations(self, sample: list[HypergraphSample] | None = None) -> dict:
        """The parts of the model, nodes users first: {"collaborative": E^c [(U+I), d],
        "local": E^lge, "global": {modality: [(U+I), d]}, "final": E*}.

        sample: the training randomness (draw_sample); None means none (deterministic)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        collaborative = propagate(
            self.bipartite, ego, self.num_layers, combine="mean", transpose=self.bipartite
        )
        items_in = collaborative[self.num_users :]
        local = collaborative
        global_parts = {}
        d = self.embedding_dim
        for index, (name, table, projection) in enumerate(
            zip(self.modalities, self.feature_tables, self.projections)
        ):
            projected = projection(table)
            item_modal, item_dependency = projected[:, :d], projected[:, d:]
            user_modal = propagate(
                self.user_mean, item_modal, 1, combine="last", transpose=self.user_mean_transpose
            )
            modal = propagate(
                self.bipartite,
                torch.cat([user_modal, item_modal], dim=0),
                self.modality_layers,
                combine="last",
                transpose=self.bipartite,
            )
            local = local + F.normalize(modal, dim=1)

            user_dependency = propagate(
                self.interactions,
                item_dependency,
                1,
                combine="last",
                transpose=self.interactions_transpose,
            )
            drawn = sample[index] if sample is not None else None
            item_hyper = self._relax(item_dependency, drawn, "item")
            user_hyper = self._relax(user_dependency, drawn, "user")
            items = items_in
            users = None
            for _ in range(self.hypergraph_layers):
                edges = item_hyper.T @ items  # [A, d]
                items = item_hyper @ edges
                users = user_hyper @ edges
            global_parts[name] = torch.cat([users, items], dim=0)
        total = torch.stack(list(global_parts.values())).sum(0)
        final = local + self.global_weight * F.normalize(total, dim=1)
        return {
            "collaborative": collaborative,
            "local": local,
            "global": global_parts,
            "final": final,
        }

    def _relax(self, logits: Tensor, sample: HypergraphSample | None, side: str) -> Tensor:
        if sample is None:
            return torch.softmax(logits / self.gumbel_temperature, dim=1)
        noise = sample.item_noise if side == "item" else sample.user_noise
        mask = sample.item_mask if side == "item" else sample.user_mask
        return torch.softmax((logits + noise) / self.gumbel_temperature, dim=1) * mask

    def embed(self) -> tuple[Tensor, Tensor]:
        """-> (user [U, d], item [I, d]), deterministic (no relaxation noise, no dropout)."""
        final = self.representations()["final"]
        return final[: self.num_users], final[self.num_users :]

    def loss(
        self,
        users: Tensor,
        pos_items: Tensor,
        neg_items: Tensor,
        sample: list[HypergraphSample] | None = None,
    ) -> dict[str, Tensor]:
        """users, pos_items, neg_items: LongTensor [B] -> {"bpr", "reg", "contrastive"}.

        sample: the step's randomness; drawn from torch's global generator when None in
        training mode (tests pass their own for exact comparisons)."""
        if sample is None and self.training:
            sample = self.draw_sample()
        parts = self.representations(sample)
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
        views = list(parts["global"].values())
        if self.contrastive_weight > 0 and len(views) > 1:
            tau = self.contrastive_temperature
            total = users.new_zeros((), dtype=final.dtype)
            for first in range(len(views)):
                for second in range(first + 1, len(views)):
                    a, b = views[first], views[second]
                    user_term = info_nce(a[users], b[: self.num_users], tau, positives=users) * len(
                        users
                    )
                    item_term = info_nce(
                        a[pos_nodes], b[self.num_users :], tau, positives=pos_items
                    ) * len(pos_items)
                    total = total + user_term + item_term
            terms["contrastive"] = self.contrastive_weight * total
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
        modality_layers: Annotated[int, Range(ge=0, le=64)] = 2,
        hyperedges: Annotated[int, Range(ge=1, le=10_000)] = 4,
        hypergraph_layers: Annotated[int, Range(ge=1, le=64)] = 1,
        keep_rate: Annotated[float, Range(gt=0, le=1)] = 0.5,
        global_weight: Annotated[float, Range(ge=0)] = 0.3,
        contrastive_weight: Annotated[float, Range(ge=0)] = 1e-4,
        reg_weight: Annotated[float, Range(ge=0)] = 1e-6,
        gumbel_temperature: Annotated[float, Range(gt=0)] = 0.2,
        contrastive_temperature: Annotated[float, Range(gt=0)] = 0.2,
        train_feature_tables: bool = True,
    ) -> LGMRec:
        """Build the bipartite graph and the interaction matrix; the hypergraph is learned."""
        from rearm.errors import ConfigError
        from rearm.graphs import bipartite_graph, to_torch
        from rearm.graphs.sparse import as_binary_csr

        if not dataset.features:
            raise ConfigError(
                f"{dataset.source or 'dataset'}: LGMRec needs at least one item modality "
                "(no <name>_feat.npy found)"
            )
        if progress is not None:
            progress("lgmrec: bipartite graph")
        return cls(
            bipartite_graph(dataset.train),
            to_torch(as_binary_csr(dataset.train, "train")),
            {name: torch.from_numpy(np.asarray(x)) for name, x in dataset.features.items()},
            embedding_dim=embedding_dim,
            num_layers=num_layers,
            modality_layers=modality_layers,
            hyperedges=hyperedges,
            hypergraph_layers=hypergraph_layers,
            keep_rate=keep_rate,
            global_weight=global_weight,
            contrastive_weight=contrastive_weight,
            reg_weight=reg_weight,
            gumbel_temperature=gumbel_temperature,
            contrastive_temperature=contrastive_temperature,
            train_feature_tables=train_feature_tables,
        )
