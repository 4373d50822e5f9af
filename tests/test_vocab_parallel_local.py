"""Vocabulary-parallel options without a group: ``process_group=None`` is today's path to the
bit, and a vocabulary offset without a group is refused (the spawned groups are in
``test_vocab_parallel.py``)."""

from __future__ import annotations

import pytest
import torch
import vocab_parallel_inputs as inputs

import cord_kernels as ck


def test_process_group_none_is_bit_identical(monkeypatch):
    """``process_group=None`` takes today's path: equal bits to a call without it, and no
    vocabulary-parallel collective (patched to fail) is ever reached."""
    from cord_kernels.core import vocab_parallel as vp

    def no_collective(*a, **kw):
        raise AssertionError("a collective with process_group=None")

    monkeypatch.setattr(vp, "all_reduce_", no_collective)
    monkeypatch.setattr(vp, "all_gather_", no_collective)
    s = inputs.logits(1, inputs.B, inputs.T, inputs.V).requires_grad_()
    u = inputs.spread_teacher(s.detach(), [7, 6])
    mask = inputs.ragged_mask()
    a = ck.cord_token_loss(s, u, mask, top_k=2, impl="torch")
    b = ck.cord_token_loss(s, u, mask, top_k=2, impl="torch", process_group=None)
    assert torch.equal(a, b)
    ga, = torch.autograd.grad(a, s)
    gb, = torch.autograd.grad(b, s)
    assert torch.equal(ga, gb)
    for fn in (ck.reverse_kl, ck.forward_kl, ck.jsd):
        assert torch.equal(fn(s, u, impl="torch"), fn(s, u, impl="torch", process_group=None))
    labels = torch.randint(0, inputs.V, (inputs.B, inputs.T), generator=inputs.gen(4))
    assert torch.equal(ck.token_logprobs(s, labels, impl="torch"),
                       ck.token_logprobs(s, labels, impl="torch", process_group=None))
    lp, ids = inputs.topk_targets()
    calls = [
        lambda **kw: ck.sparse_teacher_loss(s, lp, ids, mask, impl="torch", **kw),
        lambda **kw: ck.student_topk_distill_loss(s, u, mask, k=3, impl="torch", **kw),
        lambda **kw: ck.teacher_topk(u, 3, **kw)[0],
    ]
    h_s, h_t, w, b, w_t, b_t = inputs.heads()
    calls += [
        lambda **kw: ck.fused_linear_distill_loss(h_s, h_t, w, mask, bias=b, teacher_weight=w_t,
                                                  teacher_bias=b_t, impl="torch", **kw),
        lambda **kw: ck.fused_linear_cord_token_loss(h_s, h_s, w, mask, top_k=2, impl="torch",
                                                     **kw),
        lambda **kw: ck.fused_linear_token_logprobs(h_s, w, labels, impl="torch", **kw),
        lambda **kw: ck.fused_linear_sparse_teacher_loss(h_s, w, lp, ids, mask, impl="torch",
                                                         **kw),
    ]
    for call in calls:
        assert torch.equal(call(), call(process_group=None))


def test_vocab_offset_needs_a_group():
    with pytest.raises(ValueError, match="vocab_offset"):
        ck.token_logprobs(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), vocab_offset=3)
    with pytest.raises(TypeError, match="process_group"):
        ck.reverse_kl(torch.randn(2, 5), torch.randn(2, 5), process_group="world")
