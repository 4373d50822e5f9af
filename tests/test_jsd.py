"""jsd: the Triton kernels (interpreted on cpu, compiled on cuda) and the torch path against a
float64 reference for beta in {0, 0.1, 0.5, 0.9, 1}, SPEC section 4's edge cases, equality with
TRL's generalized_jsd_loss, and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import LOGIT_CASES, TOL, logit_pair, rel_err

from cord_kernels import JSD, forward_kl, jsd, reverse_kl
from cord_kernels import reference as ref

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]

CASES = [
    *LOGIT_CASES,
    pytest.param((29,), 37, torch.float32, 1.0, id="N29-V37-fp32"),  # many rows, odd count
    pytest.param((2,), 4500, torch.float32, 0.7, id="N2-V4500-fp32-tau0.7"),  # V > BLOCK_V
]


def _grads(fn, s, u, cot, teacher_grad, **kw):
    s = s.clone().requires_grad_()
    u = u.clone().requires_grad_(teacher_grad)
    out = fn(s, u, teacher_grad=teacher_grad, **kw)
    wrt = [s, u] if teacher_grad else [s]
    return out, torch.autograd.grad(out, wrt, cot)


def _check(s, u, *, beta, temperature, teacher_grad, impl, tol):
    """Value and gradients (random cotangent) against the float64 reference. fp32 gradients
    get max(tol, 2x the error of the reference formula itself evaluated in fp32): the JSD's
    gradient p (log p - log m - K_p) is a small difference of logs, so fp32 loses more of it
    than of the KL's (measured: up to 1e-4 for the fp32 oracle at |logit| ~ 15)."""
    cot = torch.randn(s.shape[:-1], generator=torch.Generator().manual_seed(1)).to(s.device)
    out, grads = _grads(jsd, s, u, cot, teacher_grad, beta=beta, temperature=temperature,
                        impl=impl)
    assert out.dtype == torch.float32 and out.shape == s.shape[:-1]
    expect, grads64 = _grads(ref.jsd, s.double(), u.double(), cot.double(), teacher_grad,
                             beta=beta, temperature=temperature)
    if s.shape[-1] == 1:  # one token: p = q = m = 1 and the divergence is exactly 0, which
        expect = torch.zeros_like(expect)  # the fp64 formula misses by ~1e-17 (rel_err: inf)
    assert rel_err(out, expect) < tol, rel_err(out, expect)
    grad_tol = tol
    if s.dtype == torch.float32:
        _, grads32 = _grads(ref.jsd, s, u, cot, teacher_grad, beta=beta,
                            temperature=temperature)
        grad_tol = max(tol, 2 * max(rel_err(g, g64) for g, g64 in zip(grads32, grads64)))
    for g, g64 in zip(grads, grads64):
        assert g.dtype == s.dtype
        assert rel_err(g, g64) < grad_tol, (rel_err(g, g64), grad_tol)
    return out


@pytest.mark.parametrize("lead, V, dtype, temperature", CASES)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_matches_fp64_reference(lead, V, dtype, temperature, beta, impl, device, interpret,
                                nan_poison):
    s, u = logit_pair(lead, V, dtype, device=device)
    out = _check(s, u, beta=beta, temperature=temperature, teacher_grad=False, impl=impl,
                 tol=TOL[dtype])
    assert (out >= -1e-6).all()


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_teacher_grad(beta, impl, device, interpret, nan_poison):
    s, u = logit_pair((5,), 300, torch.float32, seed=2, device=device)
    _check(s, u, beta=beta, temperature=1.3, teacher_grad=True, impl=impl, tol=1e-5)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_neg_inf_and_extreme_logits(beta, impl, device, interpret, nan_poison):
    """-inf in both rows at the same entries, in the student alone where the divergence stays
    finite (beta > 0: p = 0 is covered by m or is reverse KL's 0 log 0), in the teacher alone
    likewise (beta < 1), and logits near +-1e4."""
    s, u = logit_pair((4, 3), 150, torch.float32, seed=3, device=device)
    s[0, 1, :4] = u[0, 1, :4] = float("-inf")  # both zero at the same entries
    if beta > 0.0:
        s[0, 0, :5] = float("-inf")  # student zeros
    if beta < 1.0:
        u[2, 0, 7:12] = float("-inf")  # teacher zeros
    s[1, 0, :3] = 1e4  # extreme logits
    u[1, 1, :3] = -1e4
    out = _check(s, u, beta=beta, temperature=1.0, teacher_grad=False, impl=impl, tol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_zero_cotangent_rows_get_exact_zero_gradient(impl, device, interpret):
    """A masked row (cotangent 0) gets exactly 0; the Triton kernel does not even read it,
    so NaN there stays out of the gradient (the torch path gets finite garbage)."""
    s, u = logit_pair((6,), 90, torch.float32, seed=4, device=device)
    s[2] = float("nan") if impl == "triton" else 1e4
    s.requires_grad_()
    mask = torch.ones(6, dtype=torch.bool, device=device)
    mask[2] = False
    d = jsd(s, u, beta=0.5, impl=impl)
    (g,) = torch.autograd.grad(torch.where(mask, d, 0.0).sum(), s)
    assert torch.equal(g[2], torch.zeros(90, device=device)) and torch.isfinite(g).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_beta_endpoints_are_exactly_the_kls(impl, device, interpret):
    s, u = logit_pair((3, 4), 77, torch.float32, seed=5, device=device)
    assert torch.equal(jsd(s, u, beta=0, impl=impl), forward_kl(s, u, impl=impl))
    assert torch.equal(jsd(s, u, beta=1, impl=impl), reverse_kl(s, u, impl=impl))
    mid = jsd(s, u, beta=1e-6, impl=impl)  # the formula tends to 0, not to the KL
    assert mid.abs().max() < 1e-3 < forward_kl(s, u, impl=impl).min()


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_equals_trl_generalized_jsd_loss(beta, impl, interpret):
    """TRL's GKDTrainer.generalized_jsd_loss: per valid token (reduction "none" gives the
    (n_valid, V) terms) and its batchmean (sum over valid tokens / their number)."""
    gkd = pytest.importorskip("trl.experimental.gkd")
    s, u = logit_pair((3, 6), 211, torch.float32, seed=6)
    labels = torch.randint(0, 211, (3, 6))
    labels[0, :2] = labels[2, 4:] = -100
    valid = labels != -100
    trl_terms = gkd.GKDTrainer.generalized_jsd_loss(s, u, labels=labels, beta=beta,
                                                    temperature=1.3, reduction="none")
    ours = jsd(s, u, beta=beta, temperature=1.3, impl=impl)
    assert rel_err(ours[valid], trl_terms.sum(-1)) < 1e-5
    trl_mean = gkd.GKDTrainer.generalized_jsd_loss(s, u, labels=labels, beta=beta,
                                                   temperature=1.3)
    assert rel_err(ours[valid].sum() / valid.sum(), trl_mean) < 1e-5


def test_module_and_bad_input():
    s, u = logit_pair((2,), 10, torch.float32)
    assert torch.equal(JSD(beta=0.3, impl="torch")(s, u), jsd(s, u, beta=0.3, impl="torch"))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
            jsd(s, u, beta=bad)
        with pytest.raises(ValueError, match="beta"):
            JSD(beta=bad)
    with pytest.raises(TypeError, match="beta must be a number"):
        jsd(s, u, beta="0.5")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        jsd(s, u[:, :5])
    with pytest.raises(ValueError, match="temperature"):
        jsd(s, u, temperature=0.0)
