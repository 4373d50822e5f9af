"""tvd: the Triton kernels (interpreted on cpu, compiled on cuda) and the torch path against
the float64 reference in value and gradient, logits in and fused linear (token weights, a
teacher head of its own); its invariants and bad input. The 2-rank uneven vocabulary split is
a case of tests/test_vocab_parallel.py (``case_tvd``)."""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, rel_err

from cord_kernels import TVD, fused_linear_distill_loss, sparse_teacher_loss, tvd
from cord_kernels import reference as ref
from cord_kernels.core.reduction import reduce_weighted

# Each shape is here for a reason.
CASES = [
    pytest.param((3, 5), 123, torch.float32, 1.0, id="N15-V123-fp32"),  # V not a power of two
    pytest.param((2, 3), 1, torch.float32, 1.0, id="N6-V1-fp32"),  # V=1: TVD is exactly 0
    pytest.param((2,), 4500, torch.float32, 0.7, id="N2-V4500-fp32-tau0.7"),  # V > BLOCK_V
    pytest.param((2, 4), 257, torch.bfloat16, 1.0, id="N8-V257-bf16"),  # one past a block
    pytest.param((2, 4), 200, torch.float16, 2.0, id="N8-V200-fp16-tau2"),
]


def _inputs(lead, V, dtype, seed=0, scale=3.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(*lead, V, generator=g) * scale).to(device, dtype)
    u = (torch.randn(*lead, V, generator=g) * scale).to(device, dtype)
    return s, u


def _value_and_grad(fn, s, u, cot, **kw):
    s = s.clone().requires_grad_()
    out = fn(s, u, **kw)
    return out, torch.autograd.grad(out, s, cot)[0]


@pytest.mark.parametrize("lead, V, dtype, temperature", CASES)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_matches_fp64_reference(lead, V, dtype, temperature, impl, device, interpret,
                                nan_poison):
    s, u = _inputs(lead, V, dtype, device=device)
    cot = torch.randn(lead, generator=torch.Generator().manual_seed(1)).to(device)
    out, grad = _value_and_grad(tvd, s, u, cot, temperature=temperature, impl=impl)
    expect, grad64 = _value_and_grad(ref.tvd, s.double(), u.double(), cot.double(),
                                     temperature=temperature)
    assert out.dtype == torch.float32 and out.shape == lead
    assert grad.dtype == dtype
    if V == 1:  # p = q = 1: exactly 0, and so is the gradient
        assert torch.equal(out, torch.zeros_like(out)) and not grad.any()
        return
    assert rel_err(out, expect) < TOL[dtype], rel_err(out, expect)
    # sign(p - q) flips at the entries where p and q agree to fp32 rounding: the gradient there
    # jumps by p_j. fp32 gradients get max(tol, 2x the error of the reference evaluated in
    # fp32, which flips the same way); measured 8e-5 at V = 4500.
    grad_tol = TOL[dtype]
    if dtype == torch.float32:
        _, grad32 = _value_and_grad(ref.tvd, s, u, cot, temperature=temperature)
        grad_tol = max(grad_tol, 2 * rel_err(grad32, grad64))
    assert rel_err(grad, grad64) < grad_tol, (rel_err(grad, grad64), grad_tol)
    assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_invariants(impl, device, interpret):
    """Equal distributions give 0 (shifted logits too); disjoint ones give ~1; -inf teacher
    entries and huge logits stay finite; the teacher gets no gradient."""
    s, _ = _inputs((4,), 50, torch.float32, device=device)
    assert tvd(s, s + 3.0, impl=impl).abs().max() < 1e-6
    far = torch.full((2, 50), -1e4, device=device)
    near = far.clone()
    far[:, 0], near[:, 1] = 1e4, 1e4
    assert torch.allclose(tvd(far, near, impl=impl), torch.ones(2, device=device))
    u = s.clone()
    u[:, :10] = float("-inf")
    s_leaf = s.clone().requires_grad_()
    u_leaf = u.clone().requires_grad_()
    out = tvd(s_leaf, u_leaf, impl=impl)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(s_leaf.grad).all()
    assert u_leaf.grad is None
    assert rel_err(out, ref.tvd(s.double(), u.double())) < 1e-5


def test_module_and_bad_input():
    s, u = _inputs((2, 3), 17, torch.float32)
    assert torch.equal(TVD(temperature=0.5, impl="torch")(s, u),
                       tvd(s, u, temperature=0.5, impl="torch"))
    with pytest.raises(ValueError, match="temperature"):
        TVD(temperature=0.0)
    with pytest.raises(ValueError):
        tvd(s, u[..., :16])
    with pytest.raises(ValueError, match="dense only"):
        sparse_teacher_loss(s, torch.zeros(2, 3, 2), torch.zeros(2, 3, 2, dtype=torch.long),
                            torch.ones(2, 3, dtype=torch.bool), divergence="tvd")


@pytest.mark.parametrize("reduction", ["batchmean", "none"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fused_linear_matches_fp64_reference(impl, reduction, interpret):
    """divergence="tvd" with token weights and a teacher head of another hidden size, in
    chunks of 4 rows, against the float64 reference on the projected logits."""
    g = torch.Generator().manual_seed(0)
    B, T, H, H_t, V = 3, 7, 16, 24, 131
    hs, ht = torch.randn(B, T, H, generator=g), torch.randn(B, T, H_t, generator=g)
    W, Wt = torch.randn(V, H, generator=g) * 0.8, torch.randn(V, H_t, generator=g) * 0.6
    b = torch.randn(V, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    w = torch.rand(B, T, generator=g) * 2
    leaves = [t.clone().requires_grad_() for t in (hs, W, b)]
    loss, per_tok = fused_linear_distill_loss(
        *leaves[:1], ht, leaves[1], mask, divergence="tvd", bias=leaves[2], token_weights=w,
        teacher_weight=Wt, temperature=0.9, reduction=reduction, return_per_token=True,
        chunk_bytes=4 * 2 * 4 * V, impl=impl)
    cot = torch.randn(loss.shape, generator=g)
    grads = torch.autograd.grad(loss, leaves, cot)

    x = [t.double().requires_grad_() for t in (hs, W, b)]
    d = ref.tvd(x[0] @ x[1].T + x[2], ht.double() @ Wt.double().T, temperature=0.9)
    d = torch.where(mask, d, 0.0)
    expect = reduce_weighted(torch.where(mask, w.double(), 0.0) * d, mask, reduction)
    grads64 = torch.autograd.grad(expect, x, cot.double())
    assert rel_err(loss, expect) < 1e-5
    assert rel_err(per_tok, d) < 1e-5
    for got, want in zip(grads, grads64):
        assert rel_err(got, want) < 1e-5, rel_err(got, want)
