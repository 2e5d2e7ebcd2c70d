"""Fused CPU kernel for REARM's scalar-token attention (`MultiheadAttention(embed_dim=1)` over the
d coordinates of each row, with dropout on the attention weights).

The plain tensor version materialises several [n, d, d] tensors per attention (scores, softmax,
dropout mask, dropped weights) and keeps them for backward: for Baby that is 29M entries each, four
attentions per step, and most of a training step's time goes to drawing dropout masks and streaming
those tensors through memory. This kernel instead works row by row: the forward pass keeps only
[n, d] outputs, and the backward pass recomputes each row's softmax. The dropout mask comes from a
counter-based hash of (seed, row, query token, key token), so backward regenerates exactly the
mask forward used without storing it. The mathematics is that of the tensor version (tested
against it and against nn.MultiheadAttention); only the random stream of the dropout mask differs.

Used on CPU tensors when numba is importable; GPU tensors use the tensor version.

Also here, each tested against the plain torch expression (tests/test_kernels.py,
tests/test_graph_product.py): `csr_dense_mm`, the CPU product of a sparse CSR graph and a dense
matrix that every graph propagation uses; `csr_dense_mm_add`, the same product with a base added
and a scale applied as the output is written (LightGCN's layer mean in Horner form);
`softmax_rows_`, an in-place row softmax that also returns the rows' logsumexp and the diagonal
(REARM's InfoNCE); `FusedPReLU`, PReLU with a one-pass backward.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
    from numba import prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; the tensor path still works
    HAVE_NUMBA = False


if HAVE_NUMBA:
    _LOG2E = np.float32(1.4426950408889634)
    _LN2 = np.float32(0.6931471805599453)

    @numba.njit(inline="always")
    def _mix32(h):
        # murmur3's 32-bit finaliser: a bijective avalanche mix. numba widens small-integer
        # arithmetic, so every step is truncated back to 32 bits explicitly.
        h = np.uint32(h)
        h = np.uint32(h ^ (h >> np.uint32(16)))
        h = np.uint32(h * np.uint32(0x85EBCA6B))
        h = np.uint32(h ^ (h >> np.uint32(13)))
        h = np.uint32(h * np.uint32(0xC2B2AE35))
        return np.uint32(h ^ (h >> np.uint32(16)))

    @numba.njit(inline="always", fastmath=True)
    def _row_exp(qa, k, shift, out, bits):
        """out[b] = exp(qa * k[b] - shift) for arguments <= 0, float32, vectorisable:
        2^n * 2^f with n = round(x log2 e), |f| <= 1/2, and 2^f from its degree-6 Taylor series
        (relative error < 2e-7, float32 rounding level); arguments below -87 give ~1e-38."""
        for b in range(k.shape[0]):
            y = max((qa * k[b] - shift) * _LOG2E, np.float32(-126.0))
            n = np.floor(y + np.float32(0.5))
            t = (y - n) * _LN2
            out[b] = np.float32(1.0) + t * (
                np.float32(1.0)
                + t
                * (
                    np.float32(0.5)
                    + t
                    * (
                        np.float32(1.0 / 6.0)
                        + t
                        * (
                            np.float32(1.0 / 24.0)
                            + t * (np.float32(1.0 / 120.0) + t * np.float32(1.0 / 720.0))
                        )
                    )
                )
            )
            bits[b] = (np.int32(n) + np.int32(127)) << np.int32(23)
        scale = bits.view(np.float32)
        for b in range(k.shape[0]):
            out[b] *= scale[b]

    @numba.njit(inline="always", fastmath=True)
    def _row_mask(salt, a, d, p, scale, out):
        """out[b] = scale where the hash of (row salt, a, b) keeps the weight, else 0."""
        threshold = np.uint32(min(p, 1.0) * 16777216.0)
        base = np.uint32(a * d)
        for b in range(d):
            h = _mix32(np.uint32(salt + np.uint32((base + np.uint32(b)) * np.uint32(0x9E3779B1))))
            out[b] = scale if (h >> np.uint32(8)) >= threshold else np.float32(0.0)

    @numba.njit(inline="always")
    def _row_keys(row, wk, bk, wv, bv, k, v):
        """Keys and values of one row's tokens into k, v; returns (max key, min key), whose
        product with the query bounds the row's scores (the softmax shift)."""
        kmax, kmin = np.float32(-np.inf), np.float32(np.inf)
        for b in range(row.shape[0]):
            k[b] = wk * row[b] + bk
            v[b] = wv * row[b] + bv
            kmax = max(kmax, k[b])
            kmin = min(kmin, k[b])
        return kmax, kmin

    @numba.njit(inline="always")
    def _token_weights(qa, k, kmax, kmin, salt, a, p, scale, e, kept, bits):
        """For query token a (value qa): e[b] = exp(qa k[b] - max_b qa k[b]) (unnormalised
        softmax) and kept[b] = its dropout factor (scale or 0; 1 without dropout)."""
        shift = qa * kmax if qa >= 0 else qa * kmin
        _row_exp(qa, k, shift, e, bits)
        if p > 0.0:
            _row_mask(salt, a, k.shape[0], p, scale, kept)
        else:
            kept[:] = np.float32(1.0)

    @numba.njit(inline="always")
    def _row_salt(r, seed_lo, seed_hi):
        return _mix32(np.uint32(_mix32(np.uint32(r) ^ np.uint32(seed_lo)) + np.uint32(seed_hi)))

    @numba.njit(cache=True)
    def _mask_kernel(n, d, p, seed_lo, seed_hi, out):
        for r in range(n):
            salt = _row_salt(r, seed_lo, seed_hi)
            for a in range(d):
                _row_mask(salt, a, d, p, np.float32(1.0), out[r, a])

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _forward_kernel(query, key, params, p, seed_lo, seed_hi, out, pre):
        n, d = query.shape
        wq, wk, wv, bq, bk, bv, wo, bo = params
        scale = np.float32(1.0 / (1.0 - p)) if p < 1.0 else np.float32(0.0)
        for r in prange(n):
            k = np.empty(d, np.float32)
            v = np.empty(d, np.float32)
            e = np.empty(d, np.float32)
            kept = np.empty(d, np.float32)
            bits = np.empty(d, np.int32)
            kmax, kmin = _row_keys(key[r], wk, bk, wv, bv, k, v)
            salt = _row_salt(r, seed_lo, seed_hi)
            for a in range(d):
                _token_weights(
                    wq * query[r, a] + bq, k, kmax, kmin, salt, a, p, scale, e, kept, bits
                )
                z = np.float32(0.0)
                acc = np.float32(0.0)
                for b in range(d):
                    z += e[b]
                    acc += e[b] * v[b] * kept[b]
                o = acc / z
                pre[r, a] = o
                out[r, a] = wo * o + bo

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _backward_kernel(
        query, key, params, p, seed_lo, seed_hi, grad_out, pre, dquery, dkey, dparams
    ):
        n, d = query.shape
        wq, wk, wv, bq, bk, bv, wo, bo = params
        scale = np.float32(1.0 / (1.0 - p)) if p < 1.0 else np.float32(0.0)
        for r in prange(n):
            k = np.empty(d, np.float32)
            v = np.empty(d, np.float32)
            prob = np.empty(d, np.float32)
            kept = np.empty(d, np.float32)
            bits = np.empty(d, np.int32)
            dk = np.zeros(d, np.float32)
            dv = np.zeros(d, np.float32)
            kmax, kmin = _row_keys(key[r], wk, bk, wv, bv, k, v)
            salt = _row_salt(r, seed_lo, seed_hi)
            g_wq = g_bq = g_wo = g_bo = np.float32(0.0)
            for a in range(d):
                qa = wq * query[r, a] + bq
                _token_weights(qa, k, kmax, kmin, salt, a, p, scale, prob, kept, bits)
                z = np.float32(0.0)
                for b in range(d):
                    z += prob[b]
                inverse = np.float32(1.0) / z
                g = grad_out[r, a]
                g_wo += g * pre[r, a]
                g_bo += g
                go = g * wo
                dot = np.float32(0.0)
                for b in range(d):
                    prob[b] *= inverse
                    dot += prob[b] * v[b] * kept[b]
                dot *= go
                dq = np.float32(0.0)
                for b in range(d):
                    dv[b] += go * prob[b] * kept[b]
                    ds = prob[b] * (go * v[b] * kept[b] - dot)
                    dq += ds * k[b]
                    dk[b] += ds * qa
                dquery[r, a] = dq * wq
                g_wq += dq * query[r, a]
                g_bq += dq
            g_wk = g_bk = g_wv = g_bv = np.float32(0.0)
            for b in range(d):
                dkey[r, b] = dk[b] * wk + dv[b] * wv
                g_wk += dk[b] * key[r, b]
                g_bk += dk[b]
                g_wv += dv[b] * key[r, b]
                g_bv += dv[b]
            dparams[r, 0] = g_wq
            dparams[r, 1] = g_wk
            dparams[r, 2] = g_wv
            dparams[r, 3] = g_bq
            dparams[r, 4] = g_bk
            dparams[r, 5] = g_bv
            dparams[r, 6] = g_wo
            dparams[r, 7] = g_bo


if HAVE_NUMBA:

    @numba.njit(inline="always")
    def _row_product(r, indptr, indices, data, x, row):
        # row = (graph @ x)[r], summed in the stored order
        width = x.shape[1]
        for c in range(width):
            row[c] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            value = data[p]
            source = x[indices[p]]
            for c in range(width):
                row[c] += value * source[c]

    @numba.njit(parallel=True, cache=True)
    def _csr_dense_kernel(bounds, indptr, indices, data, x, out):
        # rows [bounds[c], bounds[c + 1]) per chunk, chunks of about equal nonzeros
        for chunk in prange(bounds.shape[0] - 1):
            for r in range(bounds[chunk], bounds[chunk + 1]):
                _row_product(r, indptr, indices, data, x, out[r])

    @numba.njit(parallel=True, cache=True)
    def _csr_dense_add_kernel(bounds, indptr, indices, data, x, base, scale, out):
        # out = scale * (base + graph @ x), one pass over each output row
        for chunk in prange(bounds.shape[0] - 1):
            for r in range(bounds[chunk], bounds[chunk + 1]):
                row = out[r]
                _row_product(r, indptr, indices, data, x, row)
                start = base[r]
                for c in range(x.shape[1]):
                    row[c] = scale * (start[c] + row[c])

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _softmax_rows_kernel(logits, lse, diagonal):
        # per row: lse = logsumexp(row), diagonal = row[r]; the row becomes softmax(row)
        n, m = logits.shape
        for r in prange(n):
            row = logits[r]
            e = np.empty(m, np.float32)
            bits = np.empty(m, np.int32)
            top = np.float32(-np.inf)
            for b in range(m):
                top = max(top, row[b])
            diagonal[r] = row[r] if r < m else np.float32(0.0)
            _row_exp(np.float32(1.0), row, top, e, bits)
            total = np.float32(0.0)
            for b in range(m):
                total += e[b]
            inverse = np.float32(1.0) / total
            for b in range(m):
                row[b] = e[b] * inverse
            lse[r] = top + np.log(total)


SPMM_CHUNKS = 64  # row chunks per product: balances threads when rows differ in length


def csr_dense_mm(graph: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """graph @ x for a float32 CPU sparse CSR graph [n, m] and a dense float32 x [m, w] -> [n, w],
    equal to `torch.sparse.mm` (each output row sums its entries in the stored order, as MKL's
    kernel does). Row chunks of equal nonzeros run in parallel and write the output once:
    torch's CPU path zero-fills its result and then copies it, two extra passes over [n, w]
    that took more than half of each product on Baby's [26,495 x 192] LightGCN layers. No
    autograd: callers wrap it (`layers._GraphProduct`). Falls back to `torch.sparse.mm`
    for other layouts, dtypes and devices, or without numba."""
    if not _fast_path(graph, x):
        return torch.sparse.mm(graph, x)
    out = torch.empty(graph.shape[0], x.shape[1], dtype=torch.float32)
    _csr_dense_kernel(*_graph_arrays(graph), x.detach().contiguous().numpy(), out.numpy())
    return out


if HAVE_NUMBA:

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _prelu_backward_kernel(x, grad, weight, out, partial):
        n, m = x.shape
        for r in prange(n):
            total = np.float32(0.0)
            for c in range(m):
                value = x[r, c]
                g = grad[r, c]
                positive = value > 0
                out[r, c] = g if positive else weight * g
                total += np.float32(0.0) if positive else value * g
            partial[r] = total


def _prelu_arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    # numba takes strided 2-d arrays as they are: column slices need no copy
    return [t.detach().numpy() for t in tensors]


class FusedPReLU(torch.autograd.Function):
    """PReLU with one shared slope on a 2-d float32 CPU tensor. Forward is torch's; backward is
    one pass that writes the input's gradient and sums the slope's (torch's backward
    materialises a per-element slope gradient and then reduces it, 4-10x slower on REARM's
    [n, 64] and [n, 192] activations)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.slope = np.float32(weight.detach().reshape(-1)[0].item())
        return torch.nn.functional.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        out = torch.empty(x.shape, dtype=torch.float32)
        partial = np.empty(x.shape[0], dtype=np.float32)
        _prelu_backward_kernel(*_prelu_arrays(x, grad), ctx.slope, out.numpy(), partial)
        grad_weight = torch.tensor([partial.sum(dtype=np.float64)], dtype=torch.float32)
        return out, grad_weight


def _graph_arrays(graph: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The CSR kernels' graph arguments: row-chunk bounds of about equal nonzeros, then the
    graph's row pointers, column indices and values."""
    indptr = graph.crow_indices().numpy()
    chunks = min(SPMM_CHUNKS, max(1, graph.shape[0]))
    bounds = np.searchsorted(indptr, np.linspace(0, indptr[-1], chunks + 1), side="left")
    bounds[0], bounds[-1] = 0, graph.shape[0]
    return (
        bounds.astype(np.int64),
        indptr,
        graph.col_indices().numpy(),
        graph.values().detach().numpy(),
    )


def _fast_path(graph: torch.Tensor, *dense: torch.Tensor) -> bool:
    return (
        HAVE_NUMBA
        and graph.layout == torch.sparse_csr
        and graph.device.type == "cpu"
        and graph.dtype == torch.float32
        and all(x.dtype == torch.float32 and x.dim() == 2 and x.device.type == "cpu" for x in dense)
        and not (torch.is_grad_enabled() and any(x.requires_grad for x in dense))
    )


def csr_dense_mm_add(
    graph: torch.Tensor, x: torch.Tensor, base: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """scale * (base + graph @ x) for a sparse graph [n, m], dense x [m, w] and base [n, w],
    written in one pass over the output on the CPU (the LightGCN layer sum, Horner style:
    `propagate`). Elsewhere it is the same expression in torch. No autograd."""
    if not _fast_path(graph, x, base):
        out = base + torch.sparse.mm(graph, x)
        return out if scale == 1.0 else out * scale
    out = torch.empty(graph.shape[0], x.shape[1], dtype=torch.float32)
    _csr_dense_add_kernel(
        *_graph_arrays(graph),
        x.detach().contiguous().numpy(),
        base.detach().contiguous().numpy(),
        np.float32(scale),
        out.numpy(),
    )
    return out


def softmax_rows_(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: each row of a float32 CPU [n, m] tensor becomes its softmax, in one pass over
    memory (max, exp, sum and scale run on the row while it is in cache). Returns (logsumexp of
    every row [n], the diagonal logits[r, r] [n], 0 past column m) as they were before."""
    n = logits.shape[0]
    lse = torch.empty(n, dtype=torch.float32)
    diagonal = torch.empty(n, dtype=torch.float32)
    _softmax_rows_kernel(logits.numpy(), lse.numpy(), diagonal.numpy())
    return lse, diagonal


def dropout_keep_mask(n: int, d: int, p: float, seed: int) -> np.ndarray:
    """The [n, d, d] keep mask (1 kept, 0 dropped) the kernel uses for `seed`; for tests."""
    out = np.empty((n, d, d), dtype=np.float32)
    _mask_kernel(n, d, float(p), seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, out)
    return out


def _params(in_weight, in_bias, out_weight, out_bias) -> np.ndarray:
    flat = torch.cat([in_weight.reshape(3), in_bias.reshape(3), out_weight.reshape(1), out_bias])
    return flat.detach().float().cpu().numpy()


class FusedScalarTokenAttention(torch.autograd.Function):
    """Autograd function for the fused kernel; see the module docstring."""

    @staticmethod
    def forward(ctx, query, key, in_weight, in_bias, out_weight, out_bias, p: float, seed: int):
        q = query.detach().float().contiguous().numpy()
        kv = key.detach().float().contiguous().numpy()
        params = _params(in_weight, in_bias, out_weight, out_bias)
        out = np.empty_like(q)
        pre = np.empty_like(q)
        seed_lo, seed_hi = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
        _forward_kernel(q, kv, params, float(p), seed_lo, seed_hi, out, pre)
        ctx.save_for_backward(query, key)
        ctx.params, ctx.p, ctx.seeds, ctx.pre = params, float(p), (seed_lo, seed_hi), pre
        return torch.from_numpy(out).to(query.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        query, key = ctx.saved_tensors
        q = query.detach().float().contiguous().numpy()
        kv = key.detach().float().contiguous().numpy()
        grad = grad_out.detach().float().contiguous().numpy()
        dquery = np.empty_like(q)
        dkey = np.empty_like(q)
        dparams = np.empty((q.shape[0], 8), dtype=np.float32)
        _backward_kernel(q, kv, ctx.params, ctx.p, *ctx.seeds, grad, ctx.pre, dquery, dkey, dparams)
        total = torch.from_numpy(dparams.sum(0, dtype=np.float64)).to(query.dtype)
        return (
            torch.from_numpy(dquery).to(query.dtype),
            torch.from_numpy(dkey).to(query.dtype),
            total[0:3].reshape(3, 1),
            total[3:6].clone(),
            total[6:7].reshape(1, 1),
            total[7:8].clone(),
            None,
            None,
        )
