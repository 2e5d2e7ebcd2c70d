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
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:
    import numba
    from numba import prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; the tensor path still works
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @numba.njit(inline="always")
    def _uniform(seed: np.uint64, counter: np.uint64) -> float:
        # splitmix64 finaliser of (seed + counter * golden ratio): a uniform in [0, 1), 24 bits
        z = seed + counter * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return float(z >> np.uint64(40)) * (1.0 / 16777216.0)

    @numba.njit(parallel=True, cache=True)
    def _forward_kernel(query, key, params, p, seed, out, pre):
        n, d = query.shape
        wq, wk, wv, bq, bk, bv, wo, bo = params
        scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
        seed = np.uint64(seed)
        for r in prange(n):
            k = np.empty(d)
            v = np.empty(d)
            kmax, kmin = -np.inf, np.inf
            for b in range(d):
                k[b] = wk * key[r, b] + bk
                v[b] = wv * key[r, b] + bv
                kmax = max(kmax, k[b])
                kmin = min(kmin, k[b])
            for a in range(d):
                qa = wq * query[r, a] + bq
                shift = qa * kmax if qa >= 0 else qa * kmin
                z = 0.0
                acc = 0.0
                base = np.uint64((r * d + a) * d)
                for b in range(d):
                    e = math.exp(qa * k[b] - shift)
                    z += e
                    if p > 0.0:
                        if _uniform(seed, base + np.uint64(b)) >= p:
                            acc += e * v[b]
                    else:
                        acc += e * v[b]
                o = acc / z * scale
                pre[r, a] = o
                out[r, a] = wo * o + bo

    @numba.njit(parallel=True, cache=True)
    def _backward_kernel(query, key, params, p, seed, grad_out, pre, dquery, dkey, dparams):
        n, d = query.shape
        wq, wk, wv, bq, bk, bv, wo, bo = params
        scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
        seed = np.uint64(seed)
        for r in prange(n):
            k = np.empty(d)
            v = np.empty(d)
            prob = np.empty(d)
            kept = np.empty(d)
            dk = np.zeros(d)
            dv = np.zeros(d)
            kmax, kmin = -np.inf, np.inf
            for b in range(d):
                k[b] = wk * key[r, b] + bk
                v[b] = wv * key[r, b] + bv
                kmax = max(kmax, k[b])
                kmin = min(kmin, k[b])
            g_wq = g_bq = g_wo = g_bo = 0.0
            for a in range(d):
                qa = wq * query[r, a] + bq
                shift = qa * kmax if qa >= 0 else qa * kmin
                z = 0.0
                base = np.uint64((r * d + a) * d)
                for b in range(d):
                    prob[b] = math.exp(qa * k[b] - shift)
                    z += prob[b]
                    if p > 0.0:
                        kept[b] = scale if _uniform(seed, base + np.uint64(b)) >= p else 0.0
                    else:
                        kept[b] = 1.0
                g = grad_out[r, a]
                g_wo += g * pre[r, a]
                g_bo += g
                go = g * wo
                dot = 0.0
                for b in range(d):
                    prob[b] /= z
                    dot += prob[b] * go * v[b] * kept[b]
                dq = 0.0
                for b in range(d):
                    dv[b] += go * prob[b] * kept[b]
                    ds = prob[b] * (go * v[b] * kept[b] - dot)
                    dq += ds * k[b]
                    dk[b] += ds * qa
                dquery[r, a] = dq * wq
                g_wq += dq * query[r, a]
                g_bq += dq
            g_wk = g_bk = g_wv = g_bv = 0.0
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


def _params(in_weight, in_bias, out_weight, out_bias) -> np.ndarray:
    flat = torch.cat([in_weight.reshape(3), in_bias.reshape(3), out_weight.reshape(1), out_bias])
    return flat.detach().double().cpu().numpy()


class FusedScalarTokenAttention(torch.autograd.Function):
    """Autograd function for the fused kernel; see the module docstring."""

    @staticmethod
    def forward(ctx, query, key, in_weight, in_bias, out_weight, out_bias, p: float, seed: int):
        q = query.detach().contiguous().numpy()
        kv = key.detach().contiguous().numpy()
        params = _params(in_weight, in_bias, out_weight, out_bias)
        out = np.empty_like(q)
        pre = np.empty_like(q)
        _forward_kernel(q, kv, params, float(p), seed, out, pre)
        ctx.save_for_backward(query, key)
        ctx.params, ctx.p, ctx.seed, ctx.pre = params, float(p), seed, pre
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        query, key = ctx.saved_tensors
        q = query.detach().contiguous().numpy()
        kv = key.detach().contiguous().numpy()
        grad = grad_out.detach().contiguous().numpy()
        dquery = np.empty_like(q)
        dkey = np.empty_like(q)
        dparams = np.empty((q.shape[0], 8))
        _backward_kernel(q, kv, ctx.params, ctx.p, ctx.seed, grad, ctx.pre, dquery, dkey, dparams)
        total = torch.from_numpy(dparams.sum(0)).to(query.dtype)
        return (
            torch.from_numpy(dquery),
            torch.from_numpy(dkey),
            total[0:3].reshape(3, 1),
            total[3:6].clone(),
            total[6:7].reshape(1, 1),
            total[7:8].clone(),
            None,
            None,
        )
