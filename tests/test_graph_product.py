"""`csr_dense_mm`, the CPU product of a sparse CSR graph and a dense matrix behind every graph
propagation: equal to torch.sparse.mm (values and, through propagate, gradients), with the
fallbacks it promises; `csr_dense_mm_add` and the LightGCN layer mean (Horner form, both passes)
built on it, against the dense sum."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from rearm.graphs.sparse import to_torch
from rearm.models.kernels import HAVE_NUMBA, csr_dense_mm, csr_dense_mm_add
from rearm.models.layers import propagate, sparse_transpose


def random_csr(rows: int, cols: int, density: float, seed: int) -> torch.Tensor:
    matrix = sp.random(rows, cols, density=density, format="csr", dtype=np.float32, rng=seed)
    if rows > 3:  # a few long rows and some empty ones, as in a user-item graph
        matrix = sp.lil_matrix(matrix)
        matrix[1, :] = np.random.default_rng(seed).random(cols, dtype=np.float32)
        matrix[2, :] = 0
        matrix = sp.csr_matrix(matrix)
    return to_torch(matrix)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize(
    ("rows", "cols", "width"), [(1, 1, 1), (5, 7, 3), (300, 200, 64), (2000, 900, 17)]
)
def test_equal_to_torch_sparse_mm(rows, cols, width):
    # equal up to the order of float32 sums, which differs by CPU: on an Intel Xeon the
    # 900-term row 1 (values up to about 20) differed from torch's by 4.1e-6, a few units in
    # the last place; a missing or doubled term would be off by about 0.1 or more
    tolerance = {"rtol": 1e-5, "atol": 1e-5}
    graph = random_csr(rows, cols, 0.05, rows)
    x = torch.randn(cols, width, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(csr_dense_mm(graph, x), torch.sparse.mm(graph, x), **tolerance)
    # a non-contiguous x (a column slice) gives the same
    wide = torch.randn(cols, width + 5)
    torch.testing.assert_close(
        csr_dense_mm(graph, wide[:, 2 : 2 + width]),
        torch.sparse.mm(graph, wide[:, 2 : 2 + width].contiguous()),
        **tolerance,
    )


def test_fallbacks_are_torch_sparse_mm():
    graph = random_csr(40, 30, 0.1, 1)
    x = torch.randn(30, 4)
    coordinate = graph.to_sparse_coo()
    torch.testing.assert_close(csr_dense_mm(coordinate, x), torch.sparse.mm(coordinate, x))
    double = graph.to(torch.float64)
    result = csr_dense_mm(double, x.double())
    assert result.dtype == torch.float64
    torch.testing.assert_close(result, torch.sparse.mm(double, x.double()))
    # x that needs a gradient outside an autograd Function: torch's differentiable product
    leaf = x.clone().requires_grad_()
    assert csr_dense_mm(graph, leaf).requires_grad


@pytest.mark.parametrize("combine", ["mean", "last"])
def test_propagation_values_and_gradients_match_torch(combine):
    graph = random_csr(120, 120, 0.05, 3)
    start = torch.randn(120, 8, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(120, 8, generator=torch.Generator().manual_seed(2))

    def run(use_transpose: bool):
        x = start.clone().requires_grad_()
        transpose = sparse_transpose(graph) if use_transpose else None
        out = propagate(graph, x, 3, combine=combine, transpose=transpose)
        (out * weights).sum().backward()
        return out.detach(), x.grad

    fast, reference = run(True), run(False)  # kernel path vs torch's generic sparse backward
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], reference[1], rtol=1e-5, atol=1e-6)


def test_csr_dense_mm_add_is_scaled_base_plus_product():
    graph = random_csr(70, 50, 0.1, 0)
    x, base = torch.randn(50, 6), torch.randn(70, 6)
    want = 0.25 * (base + torch.sparse.mm(graph, x))
    torch.testing.assert_close(csr_dense_mm_add(graph, x, base, 0.25), want)
    # a column slice as x, and the torch fallback for another layout
    wide = torch.randn(50, 9)
    torch.testing.assert_close(
        csr_dense_mm_add(graph, wide[:, 2:8], base),
        base + torch.sparse.mm(graph, wide[:, 2:8].contiguous()),
    )
    coordinate = graph.to_sparse_coo()
    torch.testing.assert_close(csr_dense_mm_add(coordinate, x, base, 0.25), want)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_layer_mean_values_and_gradients_equal_the_dense_sum(layers):
    graph = random_csr(90, 90, 0.06, layers)
    dense = graph.to_dense().double()
    start = torch.randn(90, 5, generator=torch.Generator().manual_seed(layers))
    weights = torch.randn(90, 5, generator=torch.Generator().manual_seed(7))
    x = start.clone().requires_grad_()
    out = propagate(graph, x, layers, combine="mean", transpose=sparse_transpose(graph))
    (out * weights).sum().backward()
    powers = [torch.linalg.matrix_power(dense, k) for k in range(layers + 1)]
    want = sum(p @ start.double() for p in powers) / (layers + 1)
    want_grad = sum(p.T @ weights.double() for p in powers) / (layers + 1)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), want_grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # evaluation takes the same form without autograd
        torch.testing.assert_close(propagate(graph, x, layers).double(), want, rtol=1e-5, atol=1e-5)
