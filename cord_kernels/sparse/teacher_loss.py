"""Distillation from a sparse teacher: its top-k log-probs per token (TRL's server and async
distillation trainers, a vLLM teacher's ``topk_logprobs`` / ``topk_token_ids``).

The student's log-probs are needed on the k ids only, but over the whole vocabulary's
normaliser. On the Triton path ``support_loss.py``'s forward kernel streams lse and works out
the divergence on the k (+1 tail) slots and its gradient terms in its epilogue, in one read of
each row; its backward writes the dense gradient in one more, the k sparse terms included (the
student's (B, T, V) log-softmax never exists, and no (B, T, k) work is left to torch). The torch
path (the CPU fallback) gathers with ``support_logprobs`` and differentiates
``support_divergence.py``'s (B, T, k) math.
"""

from __future__ import annotations

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import resolve_impl
from cord_kernels.core.doc import shared_doc
from cord_kernels.core.options import JSD_BETA, REDUCTION, TAIL, TEMPERATURE, LossOptions
from cord_kernels.core.rows import check_inplace_backward
from cord_kernels.core.validation import check_logits, check_mask, check_token_weights
from cord_kernels.sparse.inputs import (
    check_topk_pair,
    check_topk_shapes,
    raise_on_bad_ids,
    raise_pending,
    reduce_rows,
    reduce_sparse,
)
from cord_kernels.sparse.support_divergence import support_divergence
from cord_kernels.sparse.support_logprobs import support_logprobs
from cord_kernels.sparse.support_loss import SparseLossParams, sparse_support_loss


# Spelled out on purpose, as docs/api.md "Sparse teachers" lists it (tests/test_options.py reads
# it with inspect); LossOptions.check holds its rules and defaults (`duplicates` pairs these).
@shared_doc
def sparse_teacher_loss(
    student_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    jsd_beta: float = JSD_BETA,
    tail: str = TAIL,
    token_weights: torch.Tensor | None = None,
    temperature: float = TEMPERATURE,
    reduction: str = REDUCTION,
    return_per_token: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
    inplace_backward: bool = False,
    impl: str | None = None,
    process_group=None,
    vocab_offset: int | None = None,
):
    """A distillation loss against a teacher known only by its top-k log-probs per token.

        log p = log_softmax(s / tau) over the whole vocabulary (streamed), read at the ids
        S = the valid slots (teacher log-prob > -inf) of the position
        tail="bucket": P, Q on S plus one bucket 1 - sum_S (TRL's _add_tail_bucket)
        tail="renormalize": P, Q = p, q renormalised on S
        Div_t = KL(Q || P) (forward_kl) | KL(P || Q) (reverse_kl)
                | beta KL(Q || M) + (1 - beta) KL(P || M), M = (1 - beta) P + beta Q (jsd)
        "batchmean": sum_valid w_t Div_t / B, "sum", "mean": / sum mask, "none": (B, T)
        num_items_in_batch=n: sum_valid w_t Div_t / n (TRL's gradient accumulation)

    The teacher's log-probs are used as given (temperature divides the student's logits only,
    as TRL's server trainer does). A valid position without any valid slot has Div 0.

    Args:
        student_logits: (B, T, V) fp32/bf16/fp16 (gets the gradient).
        teacher_topk_logprobs: (B, T, k) float, -inf at unused slots (no gradient).
        teacher_topk_ids: (B, T, k) integer ids in [0, V) (checked at used slots: a
            ValueError; on a GPU's Triton path the kernel checks them without a host sync,
            the row's loss turns NaN and a later call raises the ValueError, once the
            flag's copy has landed: ``sparse.inputs.raise_pending``).
        mask: (B, T) bool (or 0/1 integer), True at the positions that count.
        divergence: "forward_kl" (TRL's beta 0, the default) | "reverse_kl" | "jsd".
        jsd_beta: beta in [0, 1] (TRL's: 0 is forward KL, 1 reverse KL).
        tail: "bucket" | "renormalize".
        token_weights: None or (B, T) float >= 0 without grad.
        temperature: tau > 0 on the student's logits.
        {reduction}
        return_per_token: also return the detached (B, T) fp32 Div_t (0 where masked).
        {num_items_in_batch}
        {inplace_backward}
        {impl}
        {process_group}
            The ids stay global: a rank reads the ids in its slice. ``vocab_offset``: the
            slice's first id (default: one all-gather of the slice sizes). 2 all-reduces of
            (rows, 1 + k) stats.

    Returns:
        the fp32 loss (scalar, or (B, T) for "none"), or ``(loss, per_token)``.

    Example:
        >>> out = teacher_server.get_topk(ids)        # (B, T, k) logprobs and token ids
        >>> loss = sparse_teacher_loss(student_logits, out["topk_logprobs"],
        ...                            out["topk_token_ids"], completion_mask)
        >>> loss.backward()
    """
    check_logits("student_logits", student_logits)
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, T, V), got {tuple(student_logits.shape)}")
    B, T, V = student_logits.shape
    mask = check_mask(mask, (B, T), like="student_logits")
    opts = LossOptions.check(divergence=divergence, jsd_beta=jsd_beta, tail=tail,
                             temperature=temperature, reduction=reduction,
                             return_per_token=return_per_token,
                             num_items_in_batch=num_items_in_batch,
                             inplace_backward=inplace_backward, impl=impl,
                             process_group=process_group, vocab_offset=vocab_offset)
    shard = None
    if vp.is_parallel(process_group, student_logits):
        local, shard = vp.logits_slices(process_group, vocab_offset, True,
                                        {"s": student_logits})
        student_logits = local["s"]
        V = shard.vocab or vp.UNKNOWN_VOCAB  # unknown with vocab_offset=
    mask = mask.to(student_logits.device)
    token_weights = check_token_weights(token_weights, mask)
    impl = resolve_impl(impl, student_logits)
    if shard is None and impl == "triton":
        # Div and its gradient terms in the kernels; the ids are checked there (no host sync).
        raise_pending()
        check_topk_shapes(teacher_topk_logprobs, teacher_topk_ids, (B, T), mask)
        check_inplace_backward("student_logits", student_logits, inplace_backward)
        d, flag = sparse_support_loss(
            student_logits, teacher_topk_logprobs, teacher_topk_ids, mask,
            SparseLossParams(opts.divergence, opts.jsd_beta, opts.tail, opts.temperature,
                             inplace_backward=inplace_backward))
        raise_on_bad_ids(flag, "teacher_topk_ids", V)
        return reduce_rows(d, mask, token_weights, opts)
    valid = check_topk_pair(teacher_topk_logprobs, teacher_topk_ids, (B, T), V, mask)
    if shard is not None:
        a = vp.VocabParallelSupportLogprobsFunction.apply(
            student_logits, teacher_topk_ids, valid, opts.temperature, shard.offset,
            shard.group).float()
    else:
        a = support_logprobs(student_logits, teacher_topk_ids, valid,
                             temperature=opts.temperature, impl=impl,
                             inplace_backward=inplace_backward)
    b = teacher_topk_logprobs.detach().to(a.dtype)
    d = support_divergence(a, b, valid, divergence=opts.divergence, jsd_beta=opts.jsd_beta,
                           tail=opts.tail)
    return reduce_sparse(d, mask, token_weights, opts)
