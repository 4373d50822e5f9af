"""cord_token_loss: both impls against a float64 reference, masks, reductions, edge cases."""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, rel_err

from cord_kernels import cord_token_loss, cord_weights, reverse_kl
from cord_kernels import reference as ref

REDUCTIONS = ["batchmean", "sum", "mean", "none"]


def _batch(B, T, V, dtype=torch.float32, seed=0, p_mask=0.3, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g) * 2).to(device, dtype)
    u = (torch.randn(B, T, V, generator=g) * 2).to(device, dtype)
    mask = (torch.rand(B, T, generator=g) > p_mask).to(device)
    return s, u, mask


def _loss_and_grad(s, u, mask, impl, reduction, **kw):
    s = s.clone().requires_grad_()
    out = cord_token_loss(s, u, mask, impl=impl, reduction=reduction, **kw)
    cot = torch.randn_like(out)
    (gs,) = torch.autograd.grad(out, s, cot)
    s64 = s.detach().double().requires_grad_()
    expect = ref.cord_token_loss(s64, u.double(), mask, reduction=reduction, **kw)
    (g64,) = torch.autograd.grad(expect, s64, cot.double())
    return out, gs, expect, g64


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize(
    "B, T, V, dtype, top_k, alpha, beta, temperature",
    [
        pytest.param(3, 25, 97, torch.float32, 4, 2.0, 2.0, 1.0, id="B3-T25-V97-fp32-K4"),
        pytest.param(2, 6, 130, torch.bfloat16, 20, 2.0, 3.0, 0.8, id="B2-T6-V130-bf16-T<=K"),
        pytest.param(4, 1, 33, torch.float32, 1, 1.5, 2.0, 1.0, id="B4-T1-V33-fp32"),
        pytest.param(2, 12, 50, torch.float16, 3, 1.0, 1.0, 1.0, id="B2-T12-V50-fp16-opd"),
    ],
)
def test_matches_fp64_reference(B, T, V, dtype, top_k, alpha, beta, temperature, impl,
                                reduction, device, interpret, nan_poison):
    s, u, mask = _batch(B, T, V, dtype, device=device)
    mask[0] = False  # an all-masked sequence
    kw = dict(top_k=top_k, alpha=alpha, beta=beta, temperature=temperature)
    out, gs, expect, g64 = _loss_and_grad(s, u, mask, impl, reduction, **kw)
    assert out.dtype == torch.float32
    assert rel_err(out, expect) < TOL[dtype]
    assert rel_err(gs, g64) < TOL[dtype]
    # Masked positions contribute exactly nothing, to the value or the gradient.
    assert (gs[~mask] == 0).all()
    if reduction == "none":
        assert out.shape == (B, T) and (out[~mask] == 0).all()


def test_reductions_relate(device, interpret):
    s, u, mask = _batch(3, 10, 40, device=device)
    per_tok = cord_token_loss(s, u, mask, reduction="none", impl="triton")
    total = per_tok.sum()
    torch.testing.assert_close(cord_token_loss(s, u, mask, reduction="sum", impl="triton"), total)
    torch.testing.assert_close(cord_token_loss(s, u, mask, impl="triton"), total / 3)
    torch.testing.assert_close(cord_token_loss(s, u, mask, reduction="mean", impl="triton"),
                               total / mask.sum())


def test_is_weighted_sum_of_reverse_kl(device, interpret):
    s, u, mask = _batch(2, 30, 60, seed=5, device=device)
    d = reverse_kl(s, u, impl="triton")
    w = cord_weights(torch.where(mask, d, 0.0), mask, top_k=7)
    out = cord_token_loss(s, u, mask, top_k=7, reduction="none", impl="triton")
    torch.testing.assert_close(out, w * torch.where(mask, d, 0.0))


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_garbage_in_masked_rows_does_not_leak(impl, device, interpret):
    s, u, mask = _batch(2, 8, 30, seed=2, device=device)
    mask[:, -3:] = False
    s[:, -3:] = float("nan")
    u[:, -2:] = float("-inf")
    s = s.requires_grad_()
    loss = cord_token_loss(s, u, mask, impl=impl)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert (s.grad[:, -3:] == 0).all()


def test_all_masked_batch_gives_zero(device, interpret):
    s, u, _ = _batch(2, 4, 20, device=device)
    mask = torch.zeros(2, 4, dtype=torch.bool, device=device)
    s.requires_grad_()
    for reduction in ["batchmean", "sum", "mean"]:
        loss = cord_token_loss(s, u, mask, reduction=reduction, impl="triton")
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, s)
        assert (g == 0).all()


def test_teacher_gets_no_gradient(device, interpret):
    s, u, mask = _batch(2, 5, 20, device=device)
    u.requires_grad_()
    s.requires_grad_()
    cord_token_loss(s, u, mask, impl="triton").backward()
    assert u.grad is None and s.grad is not None


def test_extreme_logits(device, interpret):
    s, u, mask = _batch(2, 5, 64, seed=9, device=device)
    s[0, 0, :4] = 1e4
    u[1, 2, :] = -1e4
    u[1, 2, 7] = 1e4
    out, gs, expect, g64 = _loss_and_grad(s, u, mask, "triton", "batchmean", top_k=2)
    assert rel_err(out, expect) < 1e-5 and rel_err(gs, g64) < 1e-5


def test_inplace_backward(device, interpret):
    s, u, mask = _batch(2, 6, 40, device=device)
    leaf_ref = s.clone().requires_grad_()
    ref.cord_token_loss(leaf_ref, u, mask).backward()
    leaf = s.clone().requires_grad_()
    logits = leaf * 1.0
    cord_token_loss(logits, u, mask, impl="triton", inplace_backward=True).backward()
    assert rel_err(leaf.grad, leaf_ref.grad) < 1e-5


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_return_per_token_gives_the_detached_reverse_kl(impl, reduction, device, interpret):
    """(loss, D): the loss unchanged, D the fp64 reference's reverse KL, 0 where masked (NaN
    padding included), detached; the trainer logs it without reading the logits again."""
    s, u, mask = _batch(2, 9, 37, seed=3, device=device)
    mask[1, 5:] = False
    s[1, 5:] = float("nan")
    s = s.requires_grad_()
    kw = dict(top_k=3, temperature=0.7, reduction=reduction, impl=impl)
    loss, d = cord_token_loss(s, u, mask, return_per_token=True, **kw)
    torch.testing.assert_close(loss, cord_token_loss(s, u, mask, **kw))
    assert d.shape == (2, 9) and d.dtype == torch.float32 and not d.requires_grad
    assert (d[~mask] == 0).all()
    keep = mask.unsqueeze(-1)
    d64 = ref.reverse_kl(torch.where(keep, s.detach(), 0).double(),
                         torch.where(keep, u, 0).double(), temperature=0.7)
    assert rel_err(d[mask], d64[mask]) < TOL[torch.float32]
    with pytest.raises(TypeError, match="return_per_token"):
        cord_token_loss(s, u, mask, return_per_token="yes")
