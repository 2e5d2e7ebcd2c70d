"""Small building blocks shared by every model: graph propagation, the REARM attention block, the
meta-network and the loss terms. Models compose these; none of them knows about data files."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rearm.models.kernels import (
    HAVE_NUMBA,
    FusedPReLU,
    FusedScalarTokenAttention,
    csr_dense_mm,
    csr_dense_mm_add,
    softmax_rows_,
)


class _GraphProduct(torch.autograd.Function):
    """y = graph @ x with the backward product taken with a transpose built once, instead of the
    generic sparse backward, which re-derives the transposed pattern at every step."""

    @staticmethod
    def forward(ctx, x: Tensor, graph: Tensor, transpose: Tensor) -> Tensor:
        ctx.transpose = transpose
        return csr_dense_mm(graph, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return csr_dense_mm(ctx.transpose, grad.to(ctx.transpose.dtype)), None, None


def _layer_mean(graph: Tensor, x: Tensor, num_layers: int) -> Tensor:
    """(x + graph x + ... + graph^L x) / (L + 1), Horner style: y <- x + graph y, L times, each
    layer one fused pass (`csr_dense_mm_add`), the division folded into the last."""
    y = x
    for layer in range(num_layers):
        scale = 1.0 / (num_layers + 1) if layer == num_layers - 1 else 1.0
        y = csr_dense_mm_add(graph, y, x, scale)
    return y


class _LayerMean(torch.autograd.Function):
    """LightGCN's layer mean with the backward in the same form over the transpose:
    d x = (g + graph^T (g + graph^T (...))) / (L + 1). Neither pass keeps anything but the
    graphs, and no layer's output or sum is materialised for autograd."""

    @staticmethod
    def forward(ctx, x: Tensor, graph: Tensor, transpose: Tensor, num_layers: int) -> Tensor:
        ctx.transpose, ctx.num_layers = transpose, num_layers
        return _layer_mean(graph, x, num_layers)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.to(ctx.transpose.dtype).contiguous()
        return _layer_mean(ctx.transpose, grad, ctx.num_layers), None, None, None


class _RowNormalize(torch.autograd.Function):
    """F.normalize(x, dim=1) with a fused backward: (g - y (g . y)) / max(|x|, eps) per row
    (g / eps where |x| < eps). Autograd's backward of F.normalize takes a dozen passes over the
    [n, d] tensors (div, neg, mul, sum, where, masked_fill, ...); this takes three."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        raw = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        norm = raw.clamp_min(eps)
        y = x / norm
        ctx.save_for_backward(y, norm, raw < eps)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, norm, clamped = ctx.saved_tensors
        dot = torch.linalg.vecdot(grad, y, dim=1).unsqueeze(1).masked_fill_(clamped, 0)
        return torch.addcmul(grad, y, dot, value=-1).div_(norm), None


def normalize_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """L2-normalise the rows of a 2-d x: equal to F.normalize(x, dim=1) in value and gradient,
    with a cheaper backward (used over all nodes at every step)."""
    if x.dim() != 2 or not x.requires_grad:
        return F.normalize(x, dim=-1, eps=eps)
    return _RowNormalize.apply(x, eps)


def sparse_transpose(graph: Tensor) -> Tensor:
    """The transpose of a sparse matrix in the same layout (CSR stays CSR, coordinate stays coordinate)."""
    if graph.layout == torch.sparse_csr:
        return graph.t().to_sparse_csr()
    return graph.t().coalesce()


def propagate(
    graph: Tensor,
    x: Tensor,
    num_layers: int,
    combine: str = "mean",
    transpose: Tensor | None = None,
) -> Tensor:
    """Apply `x <- graph @ x` num_layers times.

    Args:
        graph: sparse [n, n] (torch sparse CSR or coordinate format).
        x: dense [n, dim].
        combine: "mean" averages x, graph x, ..., graph^L x (LightGCN); "last" keeps graph^L x
            (REARM's homograph propagation).
        transpose: graph^T, built once by the caller (`sparse_transpose`), for a cheaper backward;
            without it the generic sparse backward is used.
    Returns: dense [n, dim].
    """
    if combine not in ("mean", "last"):
        raise ValueError(f"combine must be 'mean' or 'last', got {combine!r}")
    if num_layers == 0:
        return x
    # graph products run in the graph's precision, autocast or not (sparse kernels have no
    # bfloat16 version)
    x = x.to(graph.dtype)
    if combine == "mean" and (
        transpose is not None or not (x.requires_grad and torch.is_grad_enabled())
    ):
        with torch.autocast(x.device.type, enabled=False):
            if x.requires_grad and torch.is_grad_enabled():
                return _LayerMean.apply(x, graph, transpose, num_layers)
            return _layer_mean(graph, x, num_layers)
    total = x if combine == "mean" else None
    with torch.autocast(x.device.type, enabled=False):
        for _ in range(num_layers):
            if transpose is not None and x.requires_grad:
                x = _GraphProduct.apply(x, graph, transpose)
            else:
                x = csr_dense_mm(graph, x)
            if total is not None:
                total = total + x
    return total / (num_layers + 1) if total is not None else x


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, initialisation and state-dict key) whose single-slope case runs
    a fused CPU kernel on 2-d float32 inputs (`kernels.FusedPReLU`): REARM applies it to every
    node's views and the meta-network's [n, d r] activations at each step."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            HAVE_NUMBA
            and self.num_parameters == 1
            and x.dim() == 2
            and x.device.type == "cpu"
            and x.dtype == self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        ):
            return FusedPReLU.apply(x, self.weight)
        return super().forward(x)


class ScalarTokenAttention(nn.Module):
    """`nn.MultiheadAttention(embed_dim=1, num_heads=1)` applied to a batch of length-d sequences
    whose tokens are the d coordinates of an embedding (REARM section 4), written with batched
    matrix products. Parameters, initialisation and the dropout on attention weights match
    nn.MultiheadAttention; it is tested against it."""

    def __init__(self, dropout: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        # fused: on CPU use the row-wise kernel of rearm.models.kernels (same mathematics,
        # O(n d) memory); False keeps the tensor version everywhere
        self.fused = fused
        self.in_proj_weight = nn.Parameter(torch.empty(3, 1))
        self.in_proj_bias = nn.Parameter(torch.zeros(3))
        self.out_proj = nn.Linear(1, 1)
        self.dropout = dropout
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key_value: Tensor) -> Tensor:
        """query, key_value: [n, d] -> [n, d] (each row is one sequence of d scalar tokens)."""
        if (
            self.fused
            and HAVE_NUMBA
            and query.device.type == "cpu"
            and query.dtype in (torch.float32, torch.float64)
        ):
            p = self.dropout if self.training else 0.0
            seed = int(torch.randint(0, 2**62, (1,)).item()) if p > 0 else 0
            return FusedScalarTokenAttention.apply(
                query,
                key_value,
                self.in_proj_weight,
                self.in_proj_bias,
                self.out_proj.weight,
                self.out_proj.bias,
                p,
                seed,
            )
        w = self.in_proj_weight[:, 0]
        b = self.in_proj_bias
        q = query * w[0] + b[0]
        k = key_value * w[1] + b[1]
        v = key_value * w[2] + b[2]
        # scale 1/sqrt(head_dim) with head_dim = 1
        weights = torch.softmax(q.unsqueeze(2) * k.unsqueeze(1), dim=-1)  # [n, d, d]
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = torch.bmm(weights, v.unsqueeze(2)).squeeze(2)
        return self.out_proj.weight[0, 0] * out + self.out_proj.bias[0]


class ModalityAttention(nn.Module):
    """REARM's item attention block over any number of modality views (section 4).

    a_m = act(LN(f_m + SelfAttn_m(f_m))); with two or more modalities
    c_m = act(LN(a_m + mean_{m' != m} CrossAttn_m(query=a_m', key=value=a_m))), which for image +
    text is exactly the paper's c_v (query a_t) and c_t (query a_v). With one modality c = a.
    """

    def __init__(
        self,
        num_modalities: int,
        dim: int,
        self_dropout: float,
        cross_dropout: float,
        norm: nn.LayerNorm,
        activation: nn.Module,
        use_attention: bool = True,
    ) -> None:
        super().__init__()
        self.norm = norm
        self.activation = activation
        self.use_attention = use_attention
        self.self_attention = nn.ModuleList(
            ScalarTokenAttention(self_dropout) for _ in range(num_modalities)
        )
        self.cross_attention = nn.ModuleList(
            ScalarTokenAttention(cross_dropout)
            for _ in range(num_modalities if num_modalities > 1 else 0)
        )

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        if not self.use_attention:
            return [self.activation(view) for view in views]
        attended = [
            self.activation(self.norm(view + attention(view, view)))
            for view, attention in zip(views, self.self_attention)
        ]
        if len(attended) == 1:
            return attended
        crossed = []
        for m, (view, attention) in enumerate(zip(attended, self.cross_attention)):
            others = [attention(other, view) for j, other in enumerate(attended) if j != m]
            crossed.append(self.activation(self.norm(view + torch.stack(others).mean(0))))
        return crossed


class LowRankMLP(nn.Module):
    """Linear(d -> d r) -> PReLU -> Linear(d r -> d r) -> L2-normalise (section 6)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.first = nn.Linear(dim, dim * rank)
        self.activation = PReLU()
        self.second = nn.Linear(dim * rank, dim * rank)

    def forward(self, x: Tensor) -> Tensor:
        return normalize_rows(self.second(self.activation(self.first(x))))


class MetaNetwork(nn.Module):
    """Per-node low-rank transform of the ID embedding from modal-shared knowledge (section 6).

    knowledge k_n = Linear(M d -> d)(F[n]); W1_n = MLP1(k_n) as d x r, W2_n = MLP2(k_n) as r x d;
    L1_n = softmax_d(W1_n + mean_n W1), L2_n = softmax_r(W2_n + mean_n W2); s_n = E[n] L1_n L2_n.
    """

    def __init__(self, in_dim: int, dim: int, rank: int, detach_knowledge: bool = True) -> None:
        super().__init__()
        self.dim, self.rank = dim, rank
        self.knowledge = nn.Linear(in_dim, dim)
        self.first = LowRankMLP(dim, rank)
        self.second = LowRankMLP(dim, rank)
        self.detach_knowledge = detach_knowledge

    def logits(self, modal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """modal: [n, M d] -> (W1 [n, d r], mean_n W1 [d r], W2 [n, r d], mean_n W2 [r d]); the
        means run over all n nodes, so they are taken before any row is selected."""
        if self.detach_knowledge:
            # [quirk] the reference detaches the knowledge vector, so `self.knowledge` never
            # trains; computed without autograd, nothing is kept for a backward that never runs
            with torch.no_grad():
                knowledge = self.knowledge(modal)
        else:
            knowledge = self.knowledge(modal)
        w1 = self.first(knowledge)
        w2 = self.second(knowledge)
        return w1, w1.mean(0), w2, w2.mean(0)

    def transform(self, ids: Tensor, w1: Tensor, w1_mean: Tensor, w2: Tensor, w2_mean: Tensor):
        """s = E L1 L2 for the rows of ids [n, d] and their W1 / W2 rows (`logits`) -> [n, d]."""
        l1 = torch.softmax((w1 + w1_mean).view(-1, self.dim, self.rank), dim=1)
        l2 = torch.softmax((w2 + w2_mean).view(-1, self.rank, self.dim), dim=1)
        low = torch.bmm(ids.unsqueeze(1), l1)  # [n, 1, r]
        return torch.bmm(low, l2).squeeze(1)

    def forward(self, modal: Tensor, ids: Tensor) -> Tensor:
        """modal: [n, M d] fused modality views; ids: [n, d] -> s: [n, d]."""
        return self.transform(ids, *self.logits(modal))


def bpr_loss(positive: Tensor, negative: Tensor) -> Tensor:
    """Mean of -log sigmoid(score(u, i+) - score(u, i-)); both [B]."""
    return F.softplus(negative - positive).mean()


class _DiagonalInfoNCE(torch.autograd.Function):
    """mean_n [logsumexp_m (a_n . c_m) - a_n . c_n] for float32 CPU a, c [n, d], with the [n, n]
    logits computed by one product and turned into softmax probabilities P in place, in one pass
    (`kernels.softmax_rows_`); backward is two products with P:
    d a = w (P c - c), d c = w (P^T a - a), w = grad / n. Autograd's logsumexp takes about six
    passes over the [n, n] logits forward and backward; on Baby that was 3 s of an epoch."""

    @staticmethod
    def forward(ctx, anchor: Tensor, candidate: Tensor) -> Tensor:
        probabilities = anchor @ candidate.T
        lse, positive = softmax_rows_(probabilities)
        ctx.save_for_backward(anchor, candidate, probabilities)
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        anchor, candidate, probabilities = ctx.saved_tensors
        weight = grad / anchor.shape[0]
        grad_anchor = (probabilities @ candidate).sub_(candidate).mul_(weight)
        grad_candidate = (probabilities.T @ anchor).sub_(anchor).mul_(weight)
        return grad_anchor, grad_candidate


def info_nce(
    anchor: Tensor,
    candidate: Tensor,
    temperature: float,
    keep: Tensor | None = None,
    positives: Tensor | None = None,
) -> Tensor:
    """InfoNCE between two views of the same nodes: rows are L2-normalised; the positive of row n
    is row n of `candidate`, its negatives the other rows. anchor, candidate: [n, d].

    keep: optional bool [n]; only the kept rows take part (as anchors and as negatives), exactly
    as if the others were removed first, but with shapes that do not depend on the data (what a
    CUDA graph needs; REARM keeps the first occurrence of each node of a batch).
    positives: optional LongTensor [n]; then every row of `candidate` ([N, d], e.g. a whole
    embedding table) is a candidate and the positive of anchor row n is candidate row
    positives[n]. Returns the mean over the (kept) anchor rows.
    """
    # -log softmax(logits)[n, p] = logsumexp(logits[n]) - logits[n, p], with 1/temperature
    # folded into the [n, d] anchor instead of the [n, N] logits
    anchor = F.normalize(anchor, dim=1) / temperature
    candidate = F.normalize(candidate, dim=1)
    if (
        keep is None
        and positives is None
        and HAVE_NUMBA
        and anchor.device.type == "cpu"
        and anchor.dtype == candidate.dtype == torch.float32
        and anchor.shape == candidate.shape
        and not torch.is_autocast_enabled("cpu")
    ):
        return _DiagonalInfoNCE.apply(anchor, candidate)
    logits = anchor @ candidate.T
    if positives is not None:
        if keep is not None:
            raise ValueError("info_nce: give keep or positives, not both")
        positive = (anchor * candidate[positives]).sum(1)
        return (torch.logsumexp(logits, dim=1) - positive).mean()
    positive = (anchor * candidate).sum(1)
    if keep is None:
        return (torch.logsumexp(logits, dim=1) - positive).mean()
    logits = logits.masked_fill(~keep.unsqueeze(0), float("-inf"))
    per_row = torch.where(keep, torch.logsumexp(logits, dim=1) - positive, 0.0)
    return per_row.sum() / keep.sum()


def first_occurrence(ids: Tensor) -> Tensor:
    """bool [n]: True at the first position of each distinct value of ids [n] (fixed shapes, no
    host synchronisation)."""
    order = torch.argsort(ids, stable=True)
    ordered = ids[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return torch.empty_like(first).scatter_(0, order, first)


def orthogonal_loss(first: Tensor, second: Tensor) -> Tensor:
    """REARM's "diff" loss: centre both views over the batch, divide each row by its detached L2
    norm, return the mean squared entry of first^T second ([d, d]). first, second: [B, d]."""
    first = first - first.mean(0, keepdim=True)
    second = second - second.mean(0, keepdim=True)
    first = first / (first.norm(dim=1, keepdim=True).detach().clamp_min(1e-12))
    second = second / (second.norm(dim=1, keepdim=True).detach().clamp_min(1e-12))
    return (first.T @ second).pow(2).mean()


class _TableProjection(torch.autograd.Function):
    """table @ weight^T + bias whose backward writes the table's gradient straight into a
    persistent buffer (becoming `table.grad`) instead of a fresh [rows, dim] tensor: for the
    4096-d feature tables that is hundreds of MB of new pages per step otherwise. Under autocast
    the three products run in the autocast dtype; gradients come back in float32."""

    @staticmethod
    def forward(ctx, table, weight, bias, owner):
        kind = table.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else table.dtype
        with torch.autocast(kind, enabled=False):
            low_table, low_weight = table.to(dtype), weight.to(dtype)
            if bias is None:
                out = low_table @ low_weight.t()
            else:
                out = torch.addmm(bias.to(dtype), low_table, low_weight.t())
        ctx.save_for_backward(table, low_table, low_weight)
        ctx.owner = owner
        return out

    @staticmethod
    def backward(ctx, grad):
        table, low_table, low_weight = ctx.saved_tensors
        grad = grad.to(low_table.dtype)
        grad_weight = (grad.t() @ low_table).float() if ctx.needs_input_grad[1] else None
        grad_bias = grad.float().sum(0) if ctx.needs_input_grad[2] else None
        if ctx.needs_input_grad[0]:
            if table.grad is None:
                buffer = ctx.owner.table_grad_buffer(table)
                if low_weight.dtype == buffer.dtype:
                    torch.mm(grad, low_weight, out=buffer)
                else:
                    buffer.copy_(grad @ low_weight)
                table.grad = buffer
            elif grad.dtype == table.dtype:  # accumulate like autograd would
                table.grad.addmm_(grad, low_weight)
            else:
                table.grad.add_(grad @ low_weight)
        return None, grad_weight, grad_bias, None


class TableProjection(nn.Module):
    """Linear(in_dim -> out_dim), Xavier-normal weight, zero bias (or none with bias=False),
    applied to a whole trainable feature table (REARM's W_m X_m); same values and gradients as
    nn.Linear, cheaper backward."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None
        nn.init.xavier_normal_(self.weight)
        self._buffer: Tensor | None = None

    def table_grad_buffer(self, table: Tensor) -> Tensor:
        if (
            self._buffer is None
            or self._buffer.shape != table.shape
            or self._buffer.device != table.device
        ):
            self._buffer = torch.empty_like(table)
        return self._buffer

    def forward(self, table: Tensor) -> Tensor:
        if table.requires_grad and table.is_leaf and torch.is_grad_enabled():
            return _TableProjection.apply(table, self.weight, self.bias, self)
        return F.linear(table, self.weight, self.bias)


def feature_tables(
    features: Mapping[str, Tensor], modalities: list[str], trainable: bool
) -> nn.ParameterList:
    """One float32 Parameter per modality, copied from `features[m]` in `modalities` order,
    trained (fine-tuned) when `trainable`, else frozen (no gradient)."""
    return nn.ParameterList(
        nn.Parameter(
            torch.as_tensor(features[m], dtype=torch.float32).clone(), requires_grad=trainable
        )
        for m in modalities
    )


def xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def normal_embedding(num: int, dim: int, std: float = 0.1) -> nn.Embedding:
    table = nn.Embedding(num, dim)
    nn.init.normal_(table.weight, std=std)
    return table


__all__ = [
    "LowRankMLP",
    "MetaNetwork",
    "ModalityAttention",
    "PReLU",
    "ScalarTokenAttention",
    "TableProjection",
    "bpr_loss",
    "feature_tables",
    "first_occurrence",
    "info_nce",
    "normal_embedding",
    "orthogonal_loss",
    "propagate",
    "sparse_transpose",
    "xavier_linear",
]
