"""The CORD token loss (paper eq. 7): sum_t w_t D_t over audio rollouts.

Triton path: the streaming KL forward gives D per row (masked rows are not read), the weights
come from D with batched torch ops (no host sync), and autograd turns w * cotangent into the
per-row scale of the streaming backward, which writes the weighted gradient of the student
logits in one pass. Nothing of size (B, T, V) is allocated besides that gradient.
"""

from __future__ import annotations

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.cord_weights import checked_cord_weights
from cord_kernels.core.doc import shared_doc
from cord_kernels.core.options import (
    ALPHA,
    BETA,
    IGNORE_INDEX,
    REDUCTION,
    TEMPERATURE,
    TOP_K,
    Divergence,
    LossOptions,
)
from cord_kernels.core.validation import (
    check_logits_pair,
    check_mask_or_labels,
    check_same_device,
)
from cord_kernels.divergences.common import DivParams
from cord_kernels.divergences.registry import divergence_rows


# Spelled out on purpose, as docs/api.md's "Logits in" table fixes it (tests/test_options.py
# reads it with inspect); LossOptions.check holds its rules and defaults. (`duplicates` pairs
# such signatures.)
@shared_doc
def cord_token_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    top_k: int = TOP_K,
    alpha: float = ALPHA,
    beta: float = BETA,
    temperature: float = TEMPERATURE,
    reduction: str = REDUCTION,
    num_items_in_batch: int | torch.Tensor | None = None,
    return_per_token: bool = False,
    inplace_backward: bool = False,
    impl: str | None = None,
    process_group=None,
):
    """CORD weighted reverse-KL token loss.

        D_t = KL(softmax(s_t/tau) || softmax(u_t/tau)),  w = cord_weights(D, mask)
        "batchmean": sum w D / B (the paper's), "sum": sum w D, "mean": sum w D / sum mask,
        "none": (B, T) w D

    Args:
        student_logits: (B, T, V) audio-conditioned logits on the rollout (gets the gradient).
        teacher_logits: (B, T, V) text-conditioned logits on the same tokens (detached).
        mask: (B, T) bool (or 0/1 int/float), True at generated positions. Masked rows
            contribute exactly 0 and are never read by the Triton path.
        {labels}
        top_k, alpha, beta: the CORD weights (``alpha = beta = 1`` is uniform OPD).
        temperature: tau > 0.
        {reduction}
        {num_items_in_batch}
        return_per_token: also return D, the detached (B, T) fp32 reverse KL, 0 where masked
            (what a trainer logs, without reading the logits again).
        {inplace_backward}
        {impl}
        {process_group}

    Returns:
        fp32 scalar, or (B, T) fp32 for ``reduction="none"``; ``(loss, D)`` with
        ``return_per_token=True``.

    Example:
        >>> loss = cord_token_loss(student_logits, teacher_logits.detach(), completion_mask)
        >>> loss.backward()
    """
    check_logits_pair(student_logits, teacher_logits)
    if student_logits.dim() != 3:
        raise ValueError(
            f"student_logits must have shape (B, T, V), got {tuple(student_logits.shape)}"
        )
    opts = LossOptions.check(ignore_index=ignore_index, top_k=top_k, alpha=alpha, beta=beta,
                             temperature=temperature, reduction=reduction,
                             num_items_in_batch=num_items_in_batch,
                             return_per_token=return_per_token,
                             inplace_backward=inplace_backward, impl=impl,
                             process_group=process_group)
    mask = check_mask_or_labels(mask, labels, opts.ignore_index,
                                tuple(student_logits.shape[:2]), like="student_logits")
    check_same_device(("student_logits", student_logits), ("mask", mask))
    group = None
    if vp.is_parallel(process_group, student_logits, teacher_logits):
        # D all-reduced before the weights: the top-K below sees the full divergence.
        local, shard = vp.logits_slices(process_group, None, False,
                                        {"s": student_logits, "u": teacher_logits},
                                        {"mask": mask})
        student_logits, teacher_logits, mask = local["s"], local["u"], local["mask"]
        group = shard.group
    d = divergence_rows(Divergence.REVERSE_KL, student_logits, teacher_logits.detach(), mask,
                        DivParams(opts.temperature, inplace_backward=inplace_backward),
                        impl=impl, process_group=group)
    w = checked_cord_weights(d.detach(), mask, opts.top_k, opts.alpha, opts.beta)
    loss = opts.reduce(w * d, mask)
    if opts.return_per_token:
        return loss, torch.where(mask, d.detach(), 0.0)
    return loss
