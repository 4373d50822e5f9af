"""Self-distillation on the student's own top-k (TRL SDPO / SDFT ``distillation_mode=
"topk_logits"``): the student's k largest logits per row define the support, and the teacher
(no gradient) is projected onto the same ids.

The ids come from ``torch.topk`` of the student's logits (one read of each row; the same call
TRL makes, so ties break the same way). Both sides' log-probs on the ids then come from
``support_logprobs`` (the teacher's) and ``support_loss.py``'s kernels (the student's: lse
streamed over the vocabulary plus a k-gather, the divergence and its gradient terms in the
epilogue, a streamed dense gradient). Neither (B, T, V) log-softmax exists.
"""

from __future__ import annotations

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import resolve_impl
from cord_kernels.core.options import (
    JSD_BETA,
    REDUCTION,
    TAIL,
    TEMPERATURE,
    LossOptions,
    check_k,
)
from cord_kernels.core.rows import check_inplace_backward
from cord_kernels.core.validation import check_logits_pair, check_mask, check_token_weights
from cord_kernels.sparse.inputs import reduce_rows, reduce_sparse
from cord_kernels.sparse.support_divergence import support_divergence
from cord_kernels.sparse.support_logprobs import support_logprobs
from cord_kernels.sparse.support_loss import SparseLossParams, sparse_support_loss


# Spelled out on purpose, as docs/api.md "Sparse teachers" lists it (tests/test_options.py reads
# it with inspect); LossOptions.check holds its rules and defaults (`duplicates` pairs these).
def student_topk_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    k: int,
    divergence: str = "reverse_kl",
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
    """The divergence on the student's top-k support (TRL SDPO's top-k mode).

        S_t = the ids of the k largest student logits at t
        p = softmax(s / tau), q = softmax(u / tau) read on S_t (both over the whole vocabulary)
        then tail / divergence / reductions exactly as :func:`sparse_teacher_loss`

    TRL's ``compute_topk_self_distillation_loss(s, u, distillation_topk=k,
    distillation_alpha=beta, distillation_add_tail=tail == "bucket")`` is our per-token value
    (reduction="none") at tau = 1 with ``divergence="jsd", jsd_beta=alpha``.

    Args:
        student_logits: (B, T, V) (gets the gradient); teacher_logits: (B, T, V) same dtype
            (never gets a gradient).
        k: support size, 1 <= k <= V.
        divergence: "reverse_kl" (the default, SDPO's alpha 1) | "forward_kl" | "jsd".
        jsd_beta, tail, token_weights, reduction, return_per_token, num_items_in_batch,
        inplace_backward, impl: as :func:`sparse_teacher_loss`.
        temperature: tau > 0 on both sides' logits.
        process_group, vocab_offset: vocabulary parallel, as :func:`sparse_teacher_loss`;
            the top-k is global (one all-gather of each rank's top-k), then 4 all-reduces.

    Example:
        >>> loss = student_topk_distill_loss(student_logits, teacher_logits, mask, k=20)
    """
    check_logits_pair(student_logits, teacher_logits)
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, T, V), got {tuple(student_logits.shape)}")
    B, T, V = student_logits.shape
    mask = check_mask(mask, (B, T), like="student_logits").to(student_logits.device)
    parallel = vp.is_parallel(process_group, student_logits, teacher_logits)
    if not parallel:  # a vocabulary slice may be smaller than k
        check_k(k, V)
    opts = LossOptions.check(divergence=divergence, jsd_beta=jsd_beta, tail=tail,
                             temperature=temperature, reduction=reduction,
                             return_per_token=return_per_token,
                             num_items_in_batch=num_items_in_batch,
                             inplace_backward=inplace_backward, impl=impl,
                             process_group=process_group, vocab_offset=vocab_offset)
    token_weights = check_token_weights(token_weights, mask)
    if parallel:
        local, shard = vp.logits_slices(process_group, vocab_offset, True,
                                        {"s": student_logits, "u": teacher_logits.detach()})
        s_l, u_l = local["s"], local["u"]
        check_k(k, shard.vocab or k)
        with torch.no_grad():
            _, ids = vp.global_topk(s_l.detach().reshape(B * T, -1).float(), k, shard.offset,
                                    shard.group)
        ids, valid = ids.view(B, T, k), mask.unsqueeze(-1).expand(B, T, k)
        a = vp.VocabParallelSupportLogprobsFunction.apply(s_l, ids, valid, opts.temperature,
                                                          shard.offset, shard.group).float()
        with torch.no_grad():
            b = vp.VocabParallelSupportLogprobsFunction.apply(
                u_l, ids, valid, opts.temperature, shard.offset, shard.group).float()
        d = support_divergence(a, b, valid, divergence=opts.divergence,
                               jsd_beta=opts.jsd_beta, tail=opts.tail)
        return reduce_sparse(d, mask, token_weights, opts)
    impl = resolve_impl(impl, student_logits, teacher_logits)
    if impl == "triton":
        check_inplace_backward("student_logits", student_logits, inplace_backward)
    ids = torch.topk(student_logits.detach(), k, dim=-1, sorted=False).indices
    valid = mask.unsqueeze(-1).expand(B, T, k)
    with torch.no_grad():
        b = support_logprobs(teacher_logits.detach(), ids, valid,
                             temperature=opts.temperature, impl=impl)
    if impl == "triton":
        # Div and its gradient terms in the kernels (every slot of a valid row is on the
        # support); the ids come from topk, so the kernel's id flag cannot be set.
        d, _ = sparse_support_loss(
            student_logits, b, ids, mask,
            SparseLossParams(opts.divergence, opts.jsd_beta, opts.tail, opts.temperature,
                             all_slots=True, inplace_backward=inplace_backward))
        return reduce_rows(d, mask, token_weights, opts)
    a = support_logprobs(student_logits, ids, valid, temperature=opts.temperature, impl=impl)
    d = support_divergence(a, b, valid, divergence=opts.divergence, jsd_beta=opts.jsd_beta,
                           tail=opts.tail)
    return reduce_sparse(d, mask, token_weights, opts)
