"""fused_linear_sparse_teacher_loss: values and gradients (hidden, weight, bias) against
sparse_teacher_loss on the projected logits for each divergence, tail and reduction, chunks
that cut sequences; the fp64 reference; softcap / logit_scale against a real Gemma 2 and Cohere
model's own logits; its GEMM count (3, 1 without grad, 4 for "none"); bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from test_fused_distill import _GemmCount

from cord_kernels import (
    FusedLinearSparseTeacherLoss,
    SparseTeacherLoss,
    fused_linear_sparse_teacher_loss,
    sparse_teacher_loss,
)
from cord_kernels import reference as ref


def _problem(B=3, T=6, H=16, V=97, k=5, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, H, generator=g)
    W = torch.randn(V, H, generator=g) / H**0.5 * 3
    b = torch.randn(V, generator=g)
    lp, ids = torch.log_softmax(torch.randn(B, T, V, generator=g) * 3, -1).topk(k)
    lp = lp.masked_fill(torch.rand(B, T, k, generator=g) < 0.25, float("-inf"))
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0] = True
    lp[~mask] = float("nan")
    w = torch.rand(B, T, generator=g) * 2
    return tuple(x.to(device) for x in (hs, W, b, lp, ids, mask, w))


@pytest.mark.parametrize("divergence, beta, tail", [
    pytest.param("forward_kl", 0.5, "bucket", id="fkl-bucket"),
    pytest.param("reverse_kl", 0.5, "renormalize", id="rkl-renorm"),
    pytest.param("jsd", 0.3, "bucket", id="jsd0.3-bucket"),
])
@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("reduction, with_weights, rows, n_items", [
    pytest.param("batchmean", False, None, None, id="batchmean"),
    pytest.param("sum", True, 4, None, id="sum-weights-4rows"),  # chunks cut sequences
    pytest.param("mean", True, None, 17, id="items17-weights"),
    pytest.param("none", True, 5, None, id="none-weights-5rows"),
])
@pytest.mark.parametrize("transform", [{}, dict(softcap=5.0, logit_scale=0.7)],
                         ids=["plain", "softcap5-scale0.7"])
def test_matches_logits_in_loss(divergence, beta, tail, impl, reduction, with_weights, rows,
                                n_items, transform, device, interpret, nan_poison):
    hs, W, b, lp, ids, mask, w = _problem(device=device)
    V = W.shape[0]
    kw = dict(divergence=divergence, jsd_beta=beta, tail=tail, temperature=1.3,
              token_weights=w if with_weights else None, reduction=reduction,
              num_items_in_batch=n_items)
    leaves = [t.clone().requires_grad_() for t in (hs, W, b)]
    loss, d = fused_linear_sparse_teacher_loss(
        leaves[0], leaves[1], lp, ids, mask, bias=leaves[2], return_per_token=True,
        chunk_bytes=None if rows is None else rows * 4 * V, impl=impl, **transform, **kw)
    cot = torch.randn_like(loss)
    grads = torch.autograd.grad(loss, leaves, cot)

    x = [t.clone().requires_grad_() for t in (hs, W, b)]
    logits = (x[0] @ x[1].T + x[2]) * transform.get("logit_scale", 1.0)
    if transform:
        logits = transform["softcap"] * torch.tanh(logits / transform["softcap"])
    expect, d_ref = sparse_teacher_loss(logits, lp, ids, mask, impl="torch",
                                        return_per_token=True, **kw)
    expect_grads = torch.autograd.grad(expect, x, cot)
    assert loss.shape == expect.shape and loss.dtype == torch.float32
    assert rel_err(loss, expect) < 1e-5 and rel_err(d, d_ref) < 1e-5
    assert not d.requires_grad and (d[~mask] == 0).all()
    for g, e in zip(grads, expect_grads):
        assert rel_err(g, e) < 2e-5, rel_err(g, e)


def test_fp64_reference():
    hs, W, b, lp, ids, mask, w = _problem(seed=1)
    hs, W, b, lp = (t.double() for t in (hs, W, b, lp))
    for div in ("forward_kl", "reverse_kl", "jsd"):
        kw = dict(divergence=div, tail="bucket", token_weights=w, reduction="none")
        out = fused_linear_sparse_teacher_loss(hs, W, lp, ids, mask, bias=b, impl="torch",
                                               softcap=4.0, logit_scale=1.5, **kw)
        expect = ref.fused_linear_sparse_teacher_loss(hs, W, lp, ids, mask, bias=b,
                                                      softcap=4.0, logit_scale=1.5, **kw)
        assert rel_err(out, expect) < 1e-6  # fp64 math, fp32 output


def _tiny(config_cls, model_cls, **extra):
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                     max_position_embeddings=64, **extra)
    return model_cls(cfg).eval()


@pytest.mark.parametrize("family", ["gemma2", "cohere"])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_logit_transforms_match_the_models_own_logits(family, impl, interpret, one_torch_thread):
    """Gemma 2 caps its logits (final_logit_softcapping), Cohere scales them (logit_scale):
    with the config's value passed, the fused loss on hidden states equals the logits-in loss
    on the model's own logits, and differs from it without (never silently right by luck)."""
    transformers = pytest.importorskip("transformers")
    if family == "gemma2":
        model = _tiny(transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                      final_logit_softcapping=2.0)
        transform = dict(softcap=model.config.final_logit_softcapping)
        head = model.lm_head
    else:
        model = _tiny(transformers.CohereConfig, transformers.CohereForCausalLM,
                      logit_scale=0.25)
        transform = dict(logit_scale=model.config.logit_scale)
        head = model.lm_head
    ids_in = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head.weight.mul_(40)  # a random init's logits are too small for the cap to bite
        out = model(ids_in, output_hidden_states=True)
    logits, hidden = out.logits, out.hidden_states[-1]
    lp, ids = torch.log_softmax(torch.randn_like(logits) * 2, -1).topk(6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    expect = sparse_teacher_loss(logits, lp, ids, mask, impl="torch")
    got = fused_linear_sparse_teacher_loss(hidden, head.weight, lp, ids, mask, impl=impl,
                                           **transform)
    plain = fused_linear_sparse_teacher_loss(hidden, head.weight, lp, ids, mask, impl=impl)
    assert rel_err(got, expect) < 1e-5 and rel_err(plain, expect) > 1e-3


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gemm_count(impl, device, interpret):
    """Student projection, grad wrt hidden, grad wrt weight: 3 GEMMs in forward and none in
    backward for a scalar loss; 1 without grad; 1 + 3 for reduction="none". Only valid rows
    with a used slot are projected."""
    hs, W, _, lp, ids, mask, w = _problem(B=4, T=7, seed=3, device=device)
    lp[0, 0] = float("-inf")  # a valid row with no used slot: not projected
    V, H = W.shape
    n = int(((lp > float("-inf")).any(-1) & mask).sum())
    x = [t.clone().requires_grad_() for t in (hs, W)]
    call = lambda **kw: fused_linear_sparse_teacher_loss(  # noqa: E731
        x[0], x[1], lp, ids, mask, token_weights=w, impl=impl, chunk_bytes=5 * 4 * V, **kw)
    with _GemmCount(V, [H]) as fwd:
        loss = call()
    with _GemmCount(V, [H]) as bwd:
        loss.backward()
    assert fwd.flops == 3 * 2 * n * H * V and bwd.flops == 0
    with torch.no_grad(), _GemmCount(V, [H]) as ev:
        call()
    assert ev.flops == 2 * n * H * V
    with _GemmCount(V, [H]) as fwd:
        per_tok = call(reduction="none")
    with _GemmCount(V, [H]) as bwd:
        per_tok.sum().backward()
    assert fwd.flops == 2 * n * H * V and bwd.flops == 3 * 2 * n * H * V


def test_bad_input():
    hs, W, b, lp, ids, mask, _ = _problem(seed=4)
    call = lambda **kw: fused_linear_sparse_teacher_loss(hs, W, lp, ids, mask, **kw)  # noqa
    cases = [
        (dict(softcap=-1.0), ValueError, "softcap must be a finite number > 0"),
        (dict(logit_scale=0.0), ValueError, "logit_scale must be a finite number > 0"),
        (dict(softcap="30"), TypeError, "softcap must be a number"),
        (dict(tail="none"), ValueError, "tail must be one of"),
        (dict(bias=b[:3]), ValueError, "bias must have shape"),
        (dict(chunk_bytes=0), ValueError, "chunk_bytes must be >= 1"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            call(**kw)
    with pytest.raises(ValueError, match="teacher_topk_ids must lie in"):
        fused_linear_sparse_teacher_loss(hs, W[:50], lp, ids, mask)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_bf16_inputs(impl, device, interpret):
    """bf16 hidden states and head: gradients come back in bf16, within bf16 tolerance of the
    fp64 reference on the same (bf16-valued) inputs."""
    hs, W, _, lp, ids, mask, w = _problem(seed=5, device=device)
    hs, W = hs.bfloat16(), W.bfloat16()
    x = [t.clone().requires_grad_() for t in (hs, W)]
    loss = fused_linear_sparse_teacher_loss(x[0], x[1], lp, ids, mask, token_weights=w,
                                            divergence="jsd", impl=impl)
    grads = torch.autograd.grad(loss, x)
    y = [t.double().requires_grad_() for t in (hs, W)]
    expect = ref.fused_linear_sparse_teacher_loss(y[0], y[1], lp.double(), ids, mask,
                                                  token_weights=w, divergence="jsd")
    expect_grads = torch.autograd.grad(expect, y)
    assert rel_err(loss, expect) < 1e-2
    for g, e in zip(grads, expect_grads):
        assert g.dtype == torch.bfloat16 and rel_err(g, e) < 2e-2


def test_modules():
    hs, W, b, lp, ids, mask, w = _problem(seed=6)
    fn = FusedLinearSparseTeacherLoss(divergence="jsd", jsd_beta=0.3, tail="renormalize",
                                      softcap=4.0, impl="torch")
    assert torch.equal(
        fn(hs, W, lp, ids, mask, bias=b, token_weights=w, num_items_in_batch=9),
        fused_linear_sparse_teacher_loss(hs, W, lp, ids, mask, bias=b, token_weights=w,
                                         num_items_in_batch=9, divergence="jsd", jsd_beta=0.3,
                                         tail="renormalize", softcap=4.0, impl="torch"))
    s = hs @ W.T
    assert torch.equal(SparseTeacherLoss(reduction="mean", impl="torch")(s, lp, ids, mask),
                       sparse_teacher_loss(s, lp, ids, mask, reduction="mean", impl="torch"))
    for bad, msg in ((dict(tail="x"), "tail must be one of"),
                     (dict(softcap=0.0), "softcap must be a finite number > 0")):
        with pytest.raises(ValueError, match=msg):
            FusedLinearSparseTeacherLoss(**bad)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_all_masked_batch_is_zero_with_zero_gradients(impl, device, interpret):
    """No valid position at all: every loss is exactly 0 for every reduction (mean included,
    not 0/0), the gradients exist and are 0, and nothing is projected."""
    from cord_kernels import fused_linear_student_topk_distill_loss, student_topk_distill_loss

    hs, W, b, lp, ids, mask, w = _problem(seed=7, device=device)
    mask = torch.zeros_like(mask)
    s = torch.full((*mask.shape, W.shape[0]), float("nan"), device=device)
    for reduction in ("batchmean", "sum", "mean", "none"):
        x = [t.clone().requires_grad_() for t in (hs, W, b, s)]
        losses = [
            fused_linear_sparse_teacher_loss(x[0], x[1], lp, ids, mask, bias=x[2], impl=impl,
                                             reduction=reduction),
            fused_linear_student_topk_distill_loss(x[0], hs, x[1], mask, k=3, bias=x[2],
                                                   impl=impl, reduction=reduction),
            sparse_teacher_loss(x[3], lp, ids, mask, impl=impl, reduction=reduction),
            student_topk_distill_loss(x[3], s, mask, k=3, impl=impl, reduction=reduction),
        ]
        for loss in losses:
            assert (loss == 0).all()
            grads = torch.autograd.grad(loss.sum(), x, allow_unused=True)
            assert all(g is None or (g == 0).all() for g in grads)
