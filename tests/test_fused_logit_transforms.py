"""softcap / logit_scale in the fused-linear losses that project both branches or the labels:
fused_linear_distill_loss, fused_linear_cord_token_loss, fused_linear_token_logprobs.

Gemma 2 / 3n cap their logits (``final_logit_softcapping``: t = c tanh(z / c)) and Cohere
scales them (``logit_scale``). With the config's value passed, each fused loss on the hidden
states equals its logits-in loss on the tiny model's own logits, and its gradients (hidden,
weight) equal autograd through the transform; without it the value is visibly different.
Both impls (Triton through the interpreter); chunks small enough that sequences are cut.
"""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

import cord_kernels as ck
from cord_kernels import (
    cord_token_loss,
    fused_linear_cord_token_loss,
    fused_linear_distill_loss,
    fused_linear_token_logprobs,
    jsd,
    token_logprobs,
)

V = 101


def _tiny(transformers, family):
    """A one-layer model of the family and the transform options its config asks for."""
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                  max_position_embeddings=64)
    if family == "gemma2":
        model = transformers.Gemma2ForCausalLM(
            transformers.Gemma2Config(final_logit_softcapping=2.0, **common))
        transform = dict(softcap=model.config.final_logit_softcapping)
    else:
        model = transformers.CohereForCausalLM(
            transformers.CohereConfig(logit_scale=0.25, **common))
        transform = dict(logit_scale=model.config.logit_scale)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # a random init's logits are too small for the cap to bite
    return model.eval(), transform


def _explicit(z, softcap=None, logit_scale=1.0):
    """The transform written out, for autograd's gradients."""
    t = z * logit_scale
    return softcap * torch.tanh(t / softcap) if softcap else t


# (name, fused loss of (h, W, **transform), logits-in loss of the logits). chunk_bytes: 4 rows
# of 3 fp32 tiles, so the 9-token sequences are cut (CORD's correction path included).
CHUNK = 4 * 3 * 4 * V


def _cases(ht, teacher_logits, mask, labels, cot):
    B = mask.shape[0]
    return [
        ("distill-jsd",
         lambda h, w, **kw: fused_linear_distill_loss(h, ht, w, mask, divergence="jsd",
                                                      jsd_beta=0.3, temperature=0.8,
                                                      chunk_bytes=CHUNK, **kw),
         lambda s: torch.where(mask, jsd(s, teacher_logits.to(s.dtype), beta=0.3, temperature=0.8,
                                         impl="torch"), 0.0).sum() / B),
        ("distill-rkl-none",
         lambda h, w, **kw: (fused_linear_distill_loss(h, ht, w, mask, reduction="none",
                                                       chunk_bytes=CHUNK, **kw) * cot).sum(),
         lambda s: (cord_token_loss(s, teacher_logits.to(s.dtype), mask, alpha=1.0, beta=1.0,
                                    reduction="none", impl="torch") * cot).sum()),
        ("cord",
         lambda h, w, **kw: fused_linear_cord_token_loss(h, ht, w, mask, top_k=3,
                                                         chunk_bytes=CHUNK, **kw),
         lambda s: cord_token_loss(s, teacher_logits.to(s.dtype), mask, top_k=3, impl="torch")),
        ("token-logprobs",
         lambda h, w, **kw: (fused_linear_token_logprobs(h, w, labels, temperature=0.8,
                                                         chunk_bytes=CHUNK, **kw) * cot).sum(),
         lambda s: (token_logprobs(s, labels, temperature=0.8, impl="torch") * cot).sum()),
    ]


@pytest.mark.parametrize("family", ["gemma2", "cohere"])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_transforms_match_the_models_own_logits(family, impl, interpret, one_torch_thread):
    transformers = pytest.importorskip("transformers")
    model, transform = _tiny(transformers, family)
    g = torch.Generator().manual_seed(0)
    ids_s, ids_t = torch.randint(0, V, (2, 2, 9), generator=g)
    with torch.no_grad():
        out_s = model(ids_s, output_hidden_states=True)
        out_t = model(ids_t, output_hidden_states=True)
    hs, ht = out_s.hidden_states[-1], out_t.hidden_states[-1]
    W = model.lm_head.weight.detach()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    labels = ids_t.masked_fill(~mask, -100)
    cot = torch.randn(2, 9, generator=g)
    for name, fused, logits_in in _cases(ht, out_t.logits, mask, labels, cot):
        h = hs.clone().requires_grad_()
        w = W.clone().requires_grad_()
        got = fused(h, w, impl=impl, **transform)
        gh, gw = torch.autograd.grad(got, [h, w])
        expect = logits_in(out_s.logits)  # the model's own logits, its transform included
        h64 = hs.double().requires_grad_()
        w64 = W.double().requires_grad_()
        ref = logits_in(_explicit(h64 @ w64.T, **transform))
        gh64, gw64 = torch.autograd.grad(ref, [h64, w64])
        assert rel_err(got, expect) < 1e-5, name
        assert rel_err(gh, gh64) < 1e-4 and rel_err(gw, gw64) < 1e-4, name
        with torch.no_grad():
            plain = fused(hs, W, impl=impl)
        assert rel_err(plain, expect) > 1e-3, name  # never right by luck


@pytest.mark.parametrize("call", [
    lambda h, w, **kw: fused_linear_distill_loss(h, h, w, None, labels=torch.zeros(1, 3,
                                                 dtype=torch.long), **kw),
    lambda h, w, **kw: fused_linear_cord_token_loss(h, h, w, torch.ones(1, 3, dtype=bool), **kw),
    lambda h, w, **kw: fused_linear_token_logprobs(h, w, torch.zeros(1, 3, dtype=torch.long),
                                                   **kw),
], ids=["distill", "cord", "token-logprobs"])
@pytest.mark.parametrize("bad, err, match", [
    (dict(softcap=-1.0), ValueError, "softcap must be a finite number > 0"),
    (dict(softcap=0.0), ValueError, "softcap must be a finite number > 0"),
    (dict(logit_scale=float("inf")), ValueError, "logit_scale must be a finite number > 0"),
    (dict(softcap="30"), TypeError, "softcap must be a number"),
])
def test_bad_transform_options(call, bad, err, match):
    h = torch.randn(1, 3, 8)
    w = torch.randn(11, 8)
    with pytest.raises(err, match=match):
        call(h, w, impl="torch", **bad)


def test_modules_hold_the_transform_and_return_per_token():
    """The nn.Module wrappers pass softcap / logit_scale (and CordTokenLoss return_per_token)
    to their functions."""
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(2, 2, 5, 8, generator=g)
    w = torch.randn(V, 8, generator=g) * 2
    mask = torch.ones(2, 5, dtype=torch.bool)
    labels = torch.randint(0, V, (2, 5), generator=g)
    cap = dict(softcap=1.5, logit_scale=0.8)
    pairs = [
        (ck.FusedLinearDistillLoss(divergence="jsd", impl="torch", **cap)(hs, ht, w, mask),
         fused_linear_distill_loss(hs, ht, w, mask, divergence="jsd", impl="torch", **cap)),
        (ck.FusedLinearCordTokenLoss(impl="torch", **cap)(hs, ht, w, mask),
         fused_linear_cord_token_loss(hs, ht, w, mask, impl="torch", **cap)),
        (ck.FusedLinearTokenLogprobs(impl="torch", **cap)(hs, w, labels),
         fused_linear_token_logprobs(hs, w, labels, impl="torch", **cap)),
    ]
    for got, expect in pairs:
        torch.testing.assert_close(got, expect)
    assert rel_err(pairs[1][0], fused_linear_cord_token_loss(hs, ht, w, mask, impl="torch")) > 1e-3
    s, u = hs @ w.T, ht @ w.T
    loss, d = ck.CordTokenLoss(return_per_token=True, impl="torch")(s, u, mask)
    torch.testing.assert_close(loss, cord_token_loss(s, u, mask, impl="torch"))
    torch.testing.assert_close(d, ck.reverse_kl(s, u, impl="torch"))
    with pytest.raises(ValueError, match="softcap must be a finite number > 0"):
        ck.FusedLinearTokenLogprobs(softcap=-2.0)
