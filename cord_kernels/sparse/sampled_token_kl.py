"""TRL SDPO's ``"sampled_token"`` estimator of the reverse KL, on the sampled tokens alone.

    per token  (log p_s(y_t) - log p_t(y_t)).detach() * log p_s(y_t)

Its gradient, (log p_s - log p_t) grad log p_s, is the score-function estimate of the reverse
KL's gradient for y_t ~ p_s; its value is not the KL. The log-probs come from the token log-prob
ops: ``token_logprobs(logits, ids)`` or, without logits, ``fused_linear_token_logprobs(hidden,
weight, ids)`` (both streamed); the teacher's from the same ops under ``torch.no_grad()``.
"""

from __future__ import annotations

import torch

from cord_kernels.core.options import REDUCTION, LossOptions
from cord_kernels.core.validation import (
    check_float,
    check_mask,
    check_tensor,
    check_token_weights,
)


# Spelled out on purpose, as docs/api.md "Sparse teachers" lists it (tests/test_options.py reads
# it with inspect); LossOptions.check holds its rules and defaults (`duplicates` pairs these).
def sampled_token_reverse_kl(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    token_weights: torch.Tensor | None = None,
    reduction: str = REDUCTION,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """TRL's sampled-token reverse-KL loss, masked, weighted and reduced.

        L_t = (lp_s - lp_t).detach() * lp_s  at valid positions (0 elsewhere, no NaN leak)
        "batchmean": sum_valid w_t L_t / B, "sum", "mean": / sum mask, "none": (B, T);
        num_items_in_batch=n: sum_valid w_t L_t / n

    Args:
        student_logprobs: (B, T) log p_s of the sampled tokens (differentiable).
        teacher_logprobs: (B, T) log p_t of the same tokens (detached here).
        mask: (B, T) bool (or 0/1 integer).
        token_weights: None or (B, T) float >= 0 without grad.

    Example:
        >>> lp_s = fused_linear_token_logprobs(h_s, student.lm_head.weight, completion_ids)
        >>> with torch.no_grad():
        ...     lp_t = fused_linear_token_logprobs(h_t, teacher.lm_head.weight, completion_ids)
        >>> loss = sampled_token_reverse_kl(lp_s, lp_t, completion_mask, reduction="mean")
    """
    check_tensor("student_logprobs", student_logprobs, ndim=2)
    check_float("student_logprobs", student_logprobs)
    check_tensor("teacher_logprobs", teacher_logprobs, ndim=2)
    check_float("teacher_logprobs", teacher_logprobs)
    if teacher_logprobs.shape != student_logprobs.shape:
        raise ValueError(f"teacher_logprobs must have the shape of student_logprobs, "
                         f"{tuple(student_logprobs.shape)}, got {tuple(teacher_logprobs.shape)}")
    mask = check_mask(mask, tuple(student_logprobs.shape), like="student_logprobs")
    opts = LossOptions.check(reduction=reduction, num_items_in_batch=num_items_in_batch)
    token_weights = check_token_weights(token_weights, mask)
    lp_s = torch.where(mask, student_logprobs.float(), 0.0)
    lp_t = torch.where(mask, teacher_logprobs.detach().float(), 0.0)
    w = mask.float() if token_weights is None else torch.where(mask, token_weights.float(), 0.0)
    per_token = w * (lp_s - lp_t).detach() * lp_s
    return opts.reduce(per_token, mask)
