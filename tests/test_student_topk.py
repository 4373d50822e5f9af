"""student_topk_distill_loss against TRL SDPO's compute_topk_self_distillation_loss (tail and
renormalised, alpha 0 / 0.5 / 1, k = 1 and k = V) and the fp64 reference (hypothesis shapes,
NaN padding, interpreted kernels); teacher_topk from logits and from (hidden, weight);
sampled_token_reverse_kl against TRL's sampled-token estimator."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cord_kernels import (
    fused_linear_student_topk_distill_loss,
    fused_linear_token_logprobs,
    sampled_token_reverse_kl,
    sparse_teacher_loss,
    student_topk_distill_loss,
    teacher_topk,
    token_logprobs,
)
from cord_kernels import reference as ref


def _batch(B, T, V, *, seed=0, masked=0.3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    u = (torch.randn(B, T, V, generator=g) * 2 + s.float()).to(dtype)
    mask = torch.rand(B, T, generator=g) >= masked
    s[~mask] = float("nan")
    u[~mask] = float("nan")
    return s, u, mask, torch.rand(B, T, generator=g) * 2


def _grad(fn, s, *args, cot=None, **kw):
    x = s.clone().requires_grad_()
    out = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out) if cot is None else cot)
    return out, g


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("add_tail", [True, False], ids=["tail", "renorm"])
@pytest.mark.parametrize("k", [1, 7, 60], ids=["k1", "k7", "kV"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_matches_trl_sdpo(alpha, add_tail, k, impl, interpret):
    """TRL's per-token loss is ours with reduction="none", divergence="jsd", jsd_beta=alpha
    (alpha 0 / 1 being its forward / reverse KL); gradients wrt the student logits to 1e-5."""
    pytest.importorskip("trl")
    from trl.experimental.sdpo.loss_utils import compute_topk_self_distillation_loss

    s, u, mask, _ = _batch(2, 5, 60, seed=k, masked=0.0)
    cot = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    ours, g = _grad(student_topk_distill_loss, s, u, mask, k=k, divergence="jsd",
                    jsd_beta=alpha, tail="bucket" if add_tail else "renormalize",
                    reduction="none", impl=impl, cot=cot)
    theirs, g_trl = _grad(compute_topk_self_distillation_loss, s, u, distillation_topk=k,
                          distillation_alpha=alpha, distillation_add_tail=add_tail, cot=cot)
    assert rel_err(ours, theirs) < 1e-5, (ours, theirs)
    assert rel_err(g, g_trl) < 1e-5, rel_err(g, g_trl)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(2, 260), seed=st.integers(0, 999),
       div=st.sampled_from([("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.3)]),
       tail=st.sampled_from(["bucket", "renormalize"]), impl=st.sampled_from(["triton", "torch"]),
       temperature=st.sampled_from([0.8, 1.0, 1.5]), data=st.data())
def test_matches_fp64_reference(B, T, V, seed, div, tail, impl, temperature, data, interpret,
                                nan_poison):
    k = data.draw(st.integers(1, min(V, 16)))
    s, u, mask, w = _batch(B, T, V, seed=seed)
    kw = dict(k=k, divergence=div[0], jsd_beta=div[1], tail=tail, temperature=temperature,
              token_weights=w, reduction="sum")
    out, g = _grad(student_topk_distill_loss, s, u, mask, impl=impl, **kw)
    expect, g64 = _grad(ref.student_topk_distill_loss, s.double(), u.double(), mask, **kw)
    out32, g32 = _grad(ref.student_topk_distill_loss, s, u, mask, **kw)  # the fp32 formula's
    tol = max(1e-5, 2 * rel_err(out32, expect))  # own error: see test_sparse_teacher.py's
    grad_tol = max(1e-5, 2 * rel_err(g32, g64))  # fp32_tolerances
    assert rel_err(out, expect) < tol
    assert torch.isfinite(g).all() and (g[~mask] == 0).all()
    assert rel_err(g, g64) < grad_tol


def test_inplace_backward_and_num_items(interpret):
    s, u, mask, _ = _batch(2, 4, 90, seed=3)
    _, g = _grad(student_topk_distill_loss, s, u, mask, k=5, impl="triton")
    y = s.clone().requires_grad_()
    loss = student_topk_distill_loss(y * 1.0, u, mask, k=5, impl="triton",
                                     inplace_backward=True)
    (g2,) = torch.autograd.grad(loss, y)
    assert torch.equal(g, g2)
    mean = student_topk_distill_loss(s, u, mask, k=5, reduction="mean", impl="torch")
    by_n = student_topk_distill_loss(s, u, mask, k=5, num_items_in_batch=int(mask.sum()),
                                     impl="torch")
    assert rel_err(mean, by_n) < 1e-7


def test_bad_input():
    s, u, mask, _ = _batch(2, 3, 20, masked=0.0)
    for k, err, msg in ((0, ValueError, r"k must be in \[1, V\]"), (21, ValueError, "k must be"),
                        (2.0, TypeError, "k must be an int")):
        with pytest.raises(err, match=msg):
            student_topk_distill_loss(s, u, mask, k=k)
    with pytest.raises(ValueError, match="tail must be one of"):
        student_topk_distill_loss(s, u, mask, k=2, tail="drop")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        student_topk_distill_loss(s, u[..., :5], mask, k=2)


# ------------------------------------------------------------------------------ teacher_topk


def test_teacher_topk_from_logits_and_from_hidden():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 7, 16, generator=g)
    W = torch.randn(131, 16, generator=g)
    b = torch.randn(131, generator=g)
    logits = h @ W.T + b
    for k in (1, 8, 131):
        expect_lp, expect_ids = ref.teacher_topk(logits.double(), k, temperature=1.5)
        lp, ids = teacher_topk(logits, k, temperature=1.5, chunk_bytes=3 * 8 * 131)
        assert torch.equal(ids, expect_ids) and rel_err(lp, expect_lp) < 1e-6
        lp_h, ids_h = teacher_topk((h, W), k, bias=b, temperature=1.5, chunk_bytes=5 * 8 * 131)
        assert torch.equal(ids_h, expect_ids) and rel_err(lp_h, expect_lp) < 1e-5
    capped = 2.0 * torch.tanh(0.5 * logits / 2.0)  # logit_scale 0.5, then softcap 2
    lp_c, _ = teacher_topk((h, W), 4, bias=b, softcap=2.0, logit_scale=0.5)
    assert rel_err(lp_c, ref.teacher_topk(capped.double(), 4).values) < 1e-5


def test_teacher_topk_round_trip_into_the_sparse_loss(interpret):
    """Full-vocabulary top-k with the bucket is the exact forward KL (the tail is empty)."""
    s, u, mask, _ = _batch(2, 3, 40, seed=5, masked=0.0)
    lp, ids = teacher_topk(u, 40)
    ours = sparse_teacher_loss(s, lp, ids, mask, reduction="none", impl="triton")
    full = ref.forward_kl(s.double(), u.double())
    assert rel_err(ours, full) < 1e-5


def test_teacher_topk_bad_input():
    x = torch.randn(3, 10)
    with pytest.raises(ValueError, match=r"k must be in \[1, V\]"):
        teacher_topk(x, 11)
    with pytest.raises(ValueError, match="apply to a \\(hidden, weight\\) input"):
        teacher_topk(x, 2, softcap=3.0)
    with pytest.raises(ValueError, match="hidden size"):
        teacher_topk((x, torch.randn(20, 4)), 2)
    with pytest.raises(ValueError, match="a sequence of 3"):
        teacher_topk((x, x, x), 2)


# ------------------------------------------------------------------ sampled_token_reverse_kl


def test_sampled_token_matches_trl(interpret):
    """TRL's compute_sampled_token_self_distillation_loss per token, its gradient, and our
    reductions; fed by the fused-linear log-probs as well as by the logits-in op."""
    pytest.importorskip("trl")
    from trl.experimental.sdpo.loss_utils import compute_sampled_token_self_distillation_loss

    s, u, mask, w = _batch(3, 6, 50, seed=7, masked=0.0)
    mask[0, :2] = False
    ids = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(1))
    x = s.clone().requires_grad_()
    theirs = compute_sampled_token_self_distillation_loss(x, u, ids, distillation_alpha=1.0)
    (g_trl,) = torch.autograd.grad((theirs * mask).sum() / mask.sum(), x)
    y = s.clone().requires_grad_()
    lp_s = token_logprobs(y, ids, impl="triton")
    lp_t = token_logprobs(u, ids, impl="triton")
    per_tok = sampled_token_reverse_kl(lp_s, lp_t, mask, reduction="none")
    assert rel_err(per_tok[mask], theirs[mask]) < 1e-5 and (per_tok[~mask] == 0).all()
    loss = sampled_token_reverse_kl(lp_s, lp_t, mask, reduction="mean")
    (g,) = torch.autograd.grad(loss, y)
    assert rel_err(g, g_trl) < 1e-5
    assert rel_err(sampled_token_reverse_kl(lp_s, lp_t, mask, num_items_in_batch=5),
                   per_tok.sum() / 5) < 1e-7
    weighted = sampled_token_reverse_kl(lp_s, lp_t, mask, token_weights=w, reduction="sum")
    assert rel_err(weighted, (w * per_tok).sum()) < 1e-6
    # The fused-linear path: log-probs straight from hidden states and the head.
    h = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(2))
    W = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    lp_h = fused_linear_token_logprobs(h, W, ids, impl="torch")
    expect = ref.sampled_token_reverse_kl(token_logprobs(h @ W.T, ids, impl="torch"), lp_t, mask)
    assert rel_err(sampled_token_reverse_kl(lp_h, lp_t, mask), expect) < 1e-5


def test_sampled_token_bad_input():
    lp = torch.randn(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="teacher_logprobs must have the shape"):
        sampled_token_reverse_kl(lp, lp[:, :2], mask)
    with pytest.raises(ValueError, match="scalar reduction"):
        sampled_token_reverse_kl(lp, lp, mask, reduction="none", num_items_in_batch=3)
    with pytest.raises(ValueError, match="reduction must be one of"):
        sampled_token_reverse_kl(lp, lp, mask, reduction="avg")


# ------------------------------------------------------- fused_linear_student_topk_distill_loss


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("reduction, rows, teacher_head", [
    pytest.param("batchmean", None, False, id="batchmean-shared-head"),
    pytest.param("sum", 4, True, id="sum-4rows-teacher-head"),  # chunks cut sequences
    pytest.param("none", 5, True, id="none-5rows-teacher-head"),
])
def test_fused_matches_logits_in(impl, reduction, rows, teacher_head, interpret, nan_poison):
    """The same value and gradients as student_topk_distill_loss on the projected (softcapped)
    logits; 4 GEMMs for a scalar loss."""
    from test_fused_distill import _GemmCount

    g = torch.Generator().manual_seed(4)
    B, T, H, V = 3, 6, 16, 97
    hs, ht = torch.randn(B, T, H, generator=g), torch.randn(B, T, 24 if teacher_head else H,
                                                             generator=g)
    W, b = torch.randn(V, H, generator=g) * 0.6, torch.randn(V, generator=g)
    Wt = torch.randn(V, ht.shape[-1], generator=g) * 0.6
    mask = torch.rand(B, T, generator=g) > 0.3
    w = torch.rand(B, T, generator=g)
    kw = dict(k=7, divergence="jsd", jsd_beta=0.4, tail="renormalize", temperature=1.2,
              token_weights=w, reduction=reduction)
    teacher = dict(teacher_weight=Wt) if teacher_head else {}
    leaves = [t.clone().requires_grad_() for t in (hs, W, b)]
    with _GemmCount(V, [H, ht.shape[-1]]) as count:
        loss = fused_linear_student_topk_distill_loss(
            leaves[0], ht, leaves[1], mask, bias=leaves[2], softcap=3.0, impl=impl,
            chunk_bytes=None if rows is None else rows * 2 * 4 * V, **teacher, **kw)
    cot = torch.randn_like(loss)
    grads = torch.autograd.grad(loss, leaves, cot)
    x = [t.clone().requires_grad_() for t in (hs, W, b)]
    s = 3.0 * torch.tanh((x[0] @ x[1].T + x[2]) / 3.0)
    u = 3.0 * torch.tanh((ht @ Wt.T if teacher_head else ht @ W.T + b) / 3.0)
    expect = student_topk_distill_loss(s, u.detach(), mask, impl="torch", **kw)
    expect_grads = torch.autograd.grad(expect, x, cot)
    assert rel_err(loss, expect) < 1e-5
    for got, e in zip(grads, expect_grads):
        assert rel_err(got, e) < 2e-5
    if reduction != "none":
        # student projection, grad wrt hidden and weight (H), teacher projection (H_t)
        assert count.flops == 2 * int(mask.sum()) * V * (3 * H + ht.shape[-1])
