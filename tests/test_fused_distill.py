"""fused_linear_distill_loss (and the CORD loss's return_per_token): values and gradients
against reverse_kl / forward_kl / jsd on the projected logits, with and without token_weights,
a teacher head of another hidden size, return_per_token; the GEMM count per divergence; one
operand dtype under autocast; bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from torch.utils._python_dispatch import TorchDispatchMode

from cord_kernels import (
    FusedLinearCordTokenLoss,
    FusedLinearDistillLoss,
    forward_kl,
    fused_linear_cord_token_loss,
    fused_linear_distill_loss,
    jsd,
    reverse_kl,
)
from cord_kernels import reference as ref
from cord_kernels.core.reduction import reduce_weighted

DIVERGENCES = [
    pytest.param("reverse_kl", 0.5, id="rkl"),
    pytest.param("forward_kl", 0.5, id="fkl"),
    pytest.param("jsd", 0.5, id="jsd0.5"),
    pytest.param("jsd", 0.1, id="jsd0.1"),
]


def _div(s, u, divergence, beta, temperature):
    """The logits-in divergence the fused loss must equal (impl="torch", the oracle)."""
    if divergence == "reverse_kl":
        return reverse_kl(s, u, temperature=temperature, impl="torch")
    if divergence == "forward_kl":
        return forward_kl(s, u, temperature=temperature, impl="torch")
    return jsd(s, u, beta=beta, temperature=temperature, impl="torch")


def _problem(B=3, T=7, H=16, H_t=16, V=131, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, H, generator=g)
    ht = torch.randn(B, T, H_t, generator=g)
    W = torch.randn(V, H, generator=g) / H**0.5 * 3
    Wt = torch.randn(V, H_t, generator=g) / H_t**0.5 * 3
    b = torch.randn(V, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, :] = True
    w = torch.rand(B, T, generator=g) * 2
    return tuple(x.to(device) for x in (hs, ht, W, Wt, b, mask, w))


def _run(divergence, beta, *, impl, reduction, with_weights, other_teacher, rows=None,
         temperature=1.0, device="cpu"):
    hs, ht, W, Wt, b, mask, w = _problem(H_t=24 if other_teacher else 16, device=device)
    V = W.shape[0]
    leaves = [t.clone().requires_grad_() for t in (hs, W, b)]
    teacher = dict(teacher_weight=Wt) if other_teacher else {}
    chunk = None if rows is None else rows * 2 * 4 * V
    loss, per_tok = fused_linear_distill_loss(
        leaves[0], ht, leaves[1], mask, divergence=divergence, jsd_beta=beta, bias=leaves[2],
        token_weights=w if with_weights else None, temperature=temperature,
        reduction=reduction, return_per_token=True, chunk_bytes=chunk, impl=impl, **teacher)
    cot = torch.randn_like(loss)
    grads = torch.autograd.grad(loss, leaves, cot)

    x = [t.clone().requires_grad_() for t in (hs, W, b)]
    s = x[0] @ x[1].T + x[2]
    u = ht @ (Wt if other_teacher else W).T + (0 if other_teacher else b)
    d = torch.where(mask, _div(s, u.detach(), divergence, beta, temperature), 0.0)
    weights = torch.where(mask, w if with_weights else 1.0, 0.0)
    expect = reduce_weighted(weights * d, mask, reduction)
    expect_grads = torch.autograd.grad(expect, x, cot)
    return (loss, per_tok, grads), (expect, d.detach(), expect_grads), mask


@pytest.mark.parametrize("divergence, beta", DIVERGENCES)
@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("reduction, with_weights, other_teacher, rows", [
    pytest.param("batchmean", False, False, None, id="batchmean-uniform"),
    pytest.param("sum", True, False, 5, id="sum-weights-5rows"),  # chunks cut sequences
    pytest.param("mean", True, True, None, id="mean-weights-teacherH24"),
    pytest.param("none", True, True, 4, id="none-weights-teacherH24-4rows"),
])
def test_matches_logits_in_losses(divergence, beta, impl, reduction, with_weights,
                                  other_teacher, rows, device, interpret, nan_poison):
    (loss, per_tok, grads), (expect, d, expect_grads), mask = _run(
        divergence, beta, impl=impl, reduction=reduction, with_weights=with_weights,
        other_teacher=other_teacher, rows=rows, temperature=1.3, device=device)
    assert loss.shape == expect.shape and loss.dtype == torch.float32
    assert rel_err(loss, expect) < 1e-5
    assert per_tok.shape == mask.shape and not per_tok.requires_grad
    assert rel_err(per_tok, d) < 1e-5 and (per_tok[~mask] == 0).all()
    for g, e in zip(grads, expect_grads):
        assert rel_err(g, e) < 2e-5, rel_err(g, e)


@pytest.mark.parametrize("divergence, beta", DIVERGENCES[:3])
def test_fp64_reference_and_jsd_endpoints(divergence, beta):
    """In float64 against the fp64 reference formulas; jsd_beta 0 / 1 is forward / reverse KL."""
    hs, ht, W, _, b, mask, _ = _problem(seed=1)
    hs, ht, W, b = (t.double() for t in (hs, ht, W, b))
    out = fused_linear_distill_loss(hs, ht, W, mask, divergence=divergence, jsd_beta=beta,
                                    bias=b, reduction="none", impl="torch")
    s, u = ref._project(hs, W, b), ref._project(ht, W, b)
    fn = {"reverse_kl": ref.reverse_kl, "forward_kl": ref.forward_kl}.get(divergence)
    d = fn(s, u) if fn else ref.jsd(s, u, beta=beta)
    assert rel_err(out, torch.where(mask, d, 0.0)) < 1e-6  # fp64 math, fp32 output
    for name, b_end in (("forward_kl", 0.0), ("reverse_kl", 1.0)):
        end = fused_linear_distill_loss(hs, ht, W, mask, divergence="jsd", jsd_beta=b_end,
                                        bias=b, impl="torch")
        assert torch.equal(end, fused_linear_distill_loss(hs, ht, W, mask, divergence=name,
                                                          bias=b, impl="torch"))


def test_cord_return_per_token(device, interpret):
    hs, ht, W, _, b, mask, _ = _problem(seed=2, device=device)
    loss, D = fused_linear_cord_token_loss(hs.requires_grad_(), ht, W, mask, bias=b, top_k=2,
                                           return_per_token=True, impl="triton")
    assert torch.equal(loss, fused_linear_cord_token_loss(hs, ht, W, mask, bias=b, top_k=2,
                                                          impl="triton"))
    expect = torch.where(mask, reverse_kl(hs @ W.T + b, ht @ W.T + b, impl="torch"), 0.0)
    assert not D.requires_grad and rel_err(D, expect) < 1e-5


class _GemmCount(TorchDispatchMode):
    """Counts the flops of matrix products with the vocabulary and a hidden size among their
    dimensions (the LM-head GEMMs; not the torch path's (r, V) @ (V, r) row dot products)."""

    def __init__(self, V, hidden_sizes):
        super().__init__()
        self.V, self.hidden_sizes, self.flops = V, set(hidden_sizes), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in {"mm", "addmm", "addmm_", "matmul", "bmm"}:
            mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2][-2:]
            (m, k), (_, n) = mats[0].shape[-2:], mats[1].shape[-2:]
            if self.V in (m, k, n) and self.hidden_sizes & {m, k, n}:
                self.flops += 2 * m * k * n
        return out


@pytest.mark.parametrize("divergence, beta", DIVERGENCES[:3])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_four_gemms_per_divergence(divergence, beta, impl, device, interpret):
    """Projection of both sides, grad wrt hidden, grad wrt weight: 4 GEMMs with a live head
    and fixed token weights, all in forward, whatever the chunking."""
    hs, ht, W, _, _, mask, w = _problem(B=4, T=9, seed=3, device=device)
    V, H, n = W.shape[0], W.shape[1], int(mask.sum())
    x = [t.clone().requires_grad_() for t in (hs, W)]
    with _GemmCount(V, [H]) as fwd:
        loss = fused_linear_distill_loss(x[0], ht, x[1], mask, divergence=divergence,
                                         jsd_beta=beta, token_weights=w, impl=impl,
                                         chunk_bytes=7 * 2 * 4 * V)
    with _GemmCount(V, [H]) as bwd:
        loss.backward()
    assert fwd.flops == 4 * 2 * n * H * V and bwd.flops == 0


def test_one_operand_dtype_under_autocast():
    """Under bf16 autocast with fp32 parameters every GEMM sees bf16-rounded operands (the
    out= ones included), accumulating in fp32: the same as passing bf16-rounded fp32 inputs
    without autocast. Gradients keep the parameters' dtype."""
    hs, ht, W, _, _, mask, _ = _problem(seed=4)
    leaves = [t.clone().requires_grad_() for t in (hs, W)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_distill_loss(leaves[0], ht, leaves[1], mask, impl="torch")
    grads = torch.autograd.grad(loss, leaves)
    rounded = [t.bfloat16().float().requires_grad_() for t in (hs, W)]
    expect = fused_linear_distill_loss(rounded[0], ht.bfloat16().float(), rounded[1], mask,
                                       impl="torch")
    expect_grads = torch.autograd.grad(expect, rounded)
    assert rel_err(loss, expect) < 1e-6
    for g, e in zip(grads, expect_grads):
        assert g.dtype == torch.float32 and rel_err(g, e) < 1e-5


def test_module():
    hs, ht, W, Wt, _, mask, w = _problem(H_t=24, seed=5)
    loss, D = FusedLinearCordTokenLoss(top_k=2, return_per_token=True, impl="torch")(
        hs, ht, W, mask, teacher_weight=Wt)
    assert D.shape == mask.shape and torch.equal(loss, fused_linear_cord_token_loss(
        hs, ht, W, mask, teacher_weight=Wt, top_k=2, impl="torch"))
    fn = FusedLinearDistillLoss(divergence="jsd", jsd_beta=0.3, impl="torch")
    assert torch.equal(
        fn(hs, ht, W, mask, token_weights=w, teacher_weight=Wt),
        fused_linear_distill_loss(hs, ht, W, mask, divergence="jsd", jsd_beta=0.3,
                                  token_weights=w, teacher_weight=Wt, impl="torch"))
    with pytest.raises(ValueError, match="divergence must be one of"):
        FusedLinearDistillLoss(divergence="kl")


def test_bad_input():
    hs, ht, W, Wt, _, mask, w = _problem(seed=6)
    call = lambda **kw: fused_linear_distill_loss(hs, ht, W, mask, **kw)  # noqa: E731
    cases = [
        (dict(jsd_beta=1.5), ValueError, r"jsd_beta must be in \[0, 1\]"),
        (dict(jsd_beta=-0.1, divergence="jsd"), ValueError, "jsd_beta"),
        (dict(divergence="hellinger"), ValueError, "divergence must be one of"),
        (dict(token_weights=w[:, :3]), ValueError, r"token_weights must have shape \(3, 7\)"),
        (dict(token_weights=-w), ValueError, "token_weights must be finite and >= 0"),
        (dict(token_weights=w.clone().requires_grad_()), ValueError,
         "token_weights must not require grad"),
        (dict(token_weights=mask.long()), TypeError, "token_weights must be a float tensor"),
        (dict(return_per_token=1), TypeError, "return_per_token must be a bool"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(teacher_weight=Wt[:, :5]), ValueError, "teacher_hidden has hidden size"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            call(**kw)
    # A negative weight at a masked position is ignored (it never counts).
    w2 = w.clone()
    w2[~mask] = -1.0
    assert torch.isfinite(call(token_weights=w2, impl="torch"))
