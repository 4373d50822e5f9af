"""The options contract (issue 26): the public signatures of SPEC sections 2, 2b and 2c, read
with ``inspect``; one rule for ``num_items_in_batch`` in every loss; each default written once
(``cord_kernels/core/options.py``) and read by every signature."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import cord_kernels as ck
from cord_kernels.core.options import LossOptions

_ = inspect.Parameter.empty

#: SPEC's signatures: (positional names in order, keyword-only (name, default) in order).
#: A loss may take more keywords than SPEC lists (labels=, softcap=, ...), never fewer, and
#: SPEC's keywords keep their order and defaults. ``_`` marks a keyword without a default.
SPEC = {
    # section 2
    "reverse_kl": (("student_logits", "teacher_logits"),
                   (("temperature", 1.0), ("teacher_grad", False), ("impl", None))),
    "forward_kl": (("student_logits", "teacher_logits"),
                   (("temperature", 1.0), ("teacher_grad", False), ("impl", None))),
    "token_logprobs": (("logits", "labels"), (("temperature", 1.0), ("impl", None))),
    "cord_weights": (("kl", "mask"), (("top_k", 20), ("alpha", 2.0), ("beta", 2.0))),
    "cord_token_loss": (
        ("student_logits", "teacher_logits", "mask"),
        (("top_k", 20), ("alpha", 2.0), ("beta", 2.0), ("temperature", 1.0),
         ("reduction", "batchmean"), ("num_items_in_batch", None), ("impl", None))),
    "fused_linear_cord_token_loss": (
        ("student_hidden", "teacher_hidden", "weight", "mask"),
        (("bias", None), ("top_k", 20), ("alpha", 2.0), ("beta", 2.0), ("temperature", 1.0),
         ("reduction", "batchmean"), ("num_items_in_batch", None), ("return_per_token", False),
         ("impl", None))),
    "grpo_loss": (("token_logprobs", "mask", "rewards"), (("group_size", _),)),
    # section 2b
    "jsd": (("student_logits", "teacher_logits"),
            (("beta", 0.5), ("temperature", 1.0), ("teacher_grad", False), ("impl", None))),
    "fused_linear_distill_loss": (
        ("student_hidden", "teacher_hidden", "weight", "mask"),
        (("divergence", "reverse_kl"), ("jsd_beta", 0.5), ("token_weights", None),
         ("bias", None), ("teacher_weight", None), ("teacher_bias", None),
         ("temperature", 1.0), ("reduction", "batchmean"), ("num_items_in_batch", None),
         ("return_per_token", False), ("chunk_bytes", None), ("impl", None))),
    # section 2c
    "sparse_teacher_loss": (
        ("student_logits", "teacher_topk_logprobs", "teacher_topk_ids", "mask"),
        (("divergence", "forward_kl"), ("jsd_beta", 0.5), ("tail", "bucket"),
         ("token_weights", None), ("temperature", 1.0), ("reduction", "batchmean"),
         ("return_per_token", False), ("num_items_in_batch", None), ("impl", None))),
    "fused_linear_sparse_teacher_loss": (
        ("student_hidden", "weight", "teacher_topk_logprobs", "teacher_topk_ids", "mask"),
        (("bias", None), ("divergence", "forward_kl"), ("jsd_beta", 0.5), ("tail", "bucket"),
         ("token_weights", None), ("temperature", 1.0), ("reduction", "batchmean"),
         ("return_per_token", False), ("num_items_in_batch", None), ("impl", None))),
    "student_topk_distill_loss": (
        ("student_logits", "teacher_logits", "mask"),
        (("k", _), ("divergence", "reverse_kl"), ("jsd_beta", 0.5), ("tail", "bucket"),
         ("token_weights", None), ("temperature", 1.0), ("reduction", "batchmean"),
         ("return_per_token", False), ("num_items_in_batch", None), ("impl", None))),
    "teacher_topk": (("logits_or_hidden_weight", "k"), (("temperature", 1.0),)),
    "sampled_token_reverse_kl": (("student_logprobs", "teacher_logprobs", "mask"),
                                 (("reduction", "batchmean"), ("num_items_in_batch", None))),
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_public_signature_matches_the_spec(name):
    positional, keywords = SPEC[name]
    params = inspect.signature(getattr(ck, name)).parameters
    kinds = {p.name: p.kind for p in params.values()}
    got_positional = tuple(p.name for p in params.values()
                           if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert got_positional == positional, name
    assert not any(k in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                   for k in kinds.values()), name
    order = [p.name for p in params.values()]
    for kw, default in keywords:
        assert kw in params, f"{name} lacks {kw}"
        assert kinds[kw] is inspect.Parameter.KEYWORD_ONLY, f"{name}: {kw} is not keyword-only"
        assert params[kw].default == default or (params[kw].default is default), (
            f"{name}: {kw} defaults to {params[kw].default!r}, SPEC says {default!r}")
    spec_order = [kw for kw, _default in keywords]
    assert [kw for kw in order if kw in spec_order] == spec_order, name


def test_each_signature_default_is_the_options_default():
    """Every public function and nn.Module wrapper defaults an option exactly as LossOptions
    does (its defaults are the one place they are written); the divergence differs per
    family by design (SPEC: reverse KL for logits-vs-logits, forward KL for sparse teachers)
    and ``softcap=None`` is held as 0.0 (no cap)."""
    defaults = {f.name: f.default for f in dataclasses.fields(LossOptions)}
    defaults["softcap"] = None
    defaults["chunk_bytes"] = None  # None: the default budget
    skip = {"divergence", "beta"}  # beta: CORD's position decay, or the JSD's beta (jsd, JSD)
    objects = [getattr(ck, n) for n in ck.__all__] + [
        ck.ReverseKL, ck.ForwardKL, ck.JSD, ck.TokenLogprobs, ck.CordTokenLoss,
        ck.FusedLinearDistillLoss, ck.FusedLinearCordTokenLoss, ck.FusedLinearTokenLogprobs,
        ck.SparseTeacherLoss, ck.FusedLinearSparseTeacherLoss]
    for obj in objects:
        for p in inspect.signature(obj).parameters.values():
            if p.name in defaults and p.name not in skip and p.default is not _:
                assert p.default == defaults[p.name], (obj.__name__, p.name, p.default)


def _num_items_calls():
    """Every loss that takes num_items_in_batch, on small CPU inputs (impl="torch")."""
    g = torch.Generator().manual_seed(0)
    B, T, H, V, k = 2, 3, 8, 11, 4
    hs, ht = torch.randn(B, T, H, generator=g), torch.randn(B, T, H, generator=g)
    W = torch.randn(V, H, generator=g)
    s, u = hs @ W.T, ht @ W.T
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2] = False
    lp, ids = ck.teacher_topk(u, k)
    lps, lpt = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    return {
        "cord_token_loss": lambda **kw: ck.cord_token_loss(s, u, mask, impl="torch", **kw),
        "fused_linear_cord_token_loss": lambda **kw: ck.fused_linear_cord_token_loss(
            hs, ht, W, mask, impl="torch", **kw),
        "fused_linear_distill_loss": lambda **kw: ck.fused_linear_distill_loss(
            hs, ht, W, mask, impl="torch", **kw),
        "sparse_teacher_loss": lambda **kw: ck.sparse_teacher_loss(
            s, lp, ids, mask, impl="torch", **kw),
        "fused_linear_sparse_teacher_loss": lambda **kw: ck.fused_linear_sparse_teacher_loss(
            hs, W, lp, ids, mask, impl="torch", **kw),
        "student_topk_distill_loss": lambda **kw: ck.student_topk_distill_loss(
            s, u, mask, k=k, impl="torch", **kw),
        "fused_linear_student_topk_distill_loss":
            lambda **kw: ck.fused_linear_student_topk_distill_loss(
                hs, ht, W, mask, k=k, impl="torch", **kw),
        "sampled_token_reverse_kl": lambda **kw: ck.sampled_token_reverse_kl(
            lps, lpt, mask, **kw),
    }


@pytest.mark.parametrize("name", sorted(_num_items_calls()))
def test_num_items_in_batch_is_one_rule(name):
    """sum / n under every scalar reduction (TRL's and transformers' gradient-accumulation
    convention), the same error under "none", in every loss that takes it."""
    call = _num_items_calls()[name]
    total = call(reduction="sum")
    for reduction in ("batchmean", "sum", "mean"):
        for n in (7, torch.tensor(7), torch.tensor([7])):
            got = call(reduction=reduction, num_items_in_batch=n)
            assert got.shape == ()
            torch.testing.assert_close(got, total / 7, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^num_items_in_batch divides the summed loss: it "
                                         r"needs a scalar reduction, got reduction='none'$"):
        call(reduction="none", num_items_in_batch=7)
    with pytest.raises(ValueError, match="num_items_in_batch must be >= 1"):
        call(num_items_in_batch=0)
    with pytest.raises(TypeError, match="num_items_in_batch must be an int or a tensor"):
        call(num_items_in_batch=7.0)


@pytest.mark.parametrize("option, value, err, msg", [
    ("temperature", 0.0, ValueError, "temperature must be a finite number > 0"),
    ("reduction", "avg", ValueError, "reduction must be one of"),
    ("divergence", "hellinger", ValueError, "divergence must be one of"),
    ("jsd_beta", 1.5, ValueError, r"jsd_beta must be in \[0, 1\]"),
    ("tail", "drop", ValueError, "tail must be one of"),
    ("top_k", -1, ValueError, "top_k must be >= 0"),
    ("top_k", 2.0, TypeError, "top_k must be an int"),
    ("alpha", -1.0, ValueError, "alpha must be a finite number >= 0"),
    ("softcap", 0.0, ValueError, "softcap must be a finite number > 0"),
    ("logit_scale", float("inf"), ValueError, "logit_scale must be a finite number > 0"),
    ("chunk_bytes", 0, ValueError, "chunk_bytes must be >= 1"),
    ("ignore_index", 1.5, TypeError, "ignore_index must be an int"),
    ("return_per_token", 1, TypeError, "return_per_token must be a bool"),
    ("impl", "cuda", ValueError, "impl must be one of"),
])
def test_each_option_fails_with_one_line_naming_it(option, value, err, msg):
    with pytest.raises(err, match=msg) as info:
        LossOptions.check(**{option: value})
    assert "\n" not in str(info.value) and option in str(info.value)


def test_rules_between_options():
    opts = LossOptions.check(divergence="jsd", jsd_beta=0.0)
    assert opts.divergence == "forward_kl"  # the JSD at beta 0 is exactly the forward KL
    assert LossOptions.check(divergence="jsd", jsd_beta=1.0).divergence == "reverse_kl"
    with pytest.raises(ValueError, match="jsd_beta=0.3 is used by divergence='jsd' only"):
        LossOptions.check(divergence="reverse_kl", jsd_beta=0.3)
    with pytest.raises(ValueError, match="inplace_backward=True is a Triton-path option"):
        LossOptions.check(inplace_backward=True, impl="torch")
    assert LossOptions.check(softcap=None).softcap == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.temperature = 2.0
