"""The fused CPU kernels behind a REARM training step give what the plain torch expressions give:
the in-place row softmax and the InfoNCE built on it, and the single-slope PReLU (values and both
gradients, also on column slices). The graph kernels are in tests/test_graph_product.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rearm.models.kernels import HAVE_NUMBA, softmax_rows_
from rearm.models.layers import PReLU, info_nce

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (7, 7), (40, 65), (300, 300)])
def test_softmax_rows_in_place(rows, cols):
    logits = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows)) * 8
    original = logits.clone()
    lse, diagonal = softmax_rows_(logits)
    torch.testing.assert_close(logits, torch.softmax(original, dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lse, torch.logsumexp(original, dim=1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(diagonal, original.diagonal())


def test_softmax_rows_survives_extreme_logits():
    logits = torch.tensor([[1000.0, -1000.0, 999.0], [-500.0, -500.0, -500.0]])
    original = logits.clone()
    lse, _ = softmax_rows_(logits)
    assert torch.isfinite(logits).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(logits, torch.softmax(original, dim=1))
    torch.testing.assert_close(lse, torch.logsumexp(original, dim=1))


@pytest.mark.parametrize("rows", [1, 2, 33, 500])
def test_fused_info_nce_equals_log_softmax_diagonal(rows):
    generator = torch.Generator().manual_seed(rows)
    anchor = torch.randn(rows, 16, generator=generator, requires_grad=True)
    candidate = torch.randn(rows, 16, generator=generator, requires_grad=True)
    loss = info_nce(anchor, candidate, 0.2)
    loss.backward()
    got = (loss.detach(), anchor.grad.clone(), candidate.grad.clone())
    anchor.grad = candidate.grad = None
    logits = F.normalize(anchor, dim=1) @ F.normalize(candidate, dim=1).T / 0.2
    want = -torch.log_softmax(logits, dim=1).diagonal().mean()
    want.backward()
    torch.testing.assert_close(got[0], want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], anchor.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], candidate.grad, rtol=1e-4, atol=1e-6)


def test_fused_prelu_equals_torch_prelu_on_slices_with_both_gradients():
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(64, 30, generator=generator)
    base[0, :5] = 0.0  # zeros take the negative branch's slope gradient of 0
    grad = torch.randn(30, 64, generator=generator).T  # non-contiguous
    results = []
    for module in (PReLU(), torch.nn.PReLU()):
        module.weight.data.fill_(0.3)
        leaf = base.clone().requires_grad_()
        out = module(leaf[:, 10:20])  # a column slice, as REARM's per-modality views are
        out.backward(grad[:, 10:20])
        results.append((out.detach(), leaf.grad, module.weight.grad))
    for got, want in zip(results[0], results[1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # same parameter and state-dict key as nn.PReLU
    assert list(PReLU().state_dict()) == ["weight"]


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("0", "0")])
def test_importing_rearm_turns_on_huge_pages_for_torch_unless_told_otherwise(given, expected):
    """rearm sets THP_MEM_ALLOC_ENABLE=1 (torch's allocator then madvises its large CPU
    blocks) when the environment does not say otherwise."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if given is not None:
        env["THP_MEM_ALLOC_ENABLE"] = given
    code = "import os, rearm; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == expected
