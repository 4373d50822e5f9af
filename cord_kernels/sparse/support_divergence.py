"""The divergence between student and teacher on a sparse support of k slots per row.

Input: log-probs over the whole vocabulary, read at k slots: ``a`` (student, differentiable)
and ``b`` (teacher), each (..., k), and ``valid`` (..., k) bool (TRL: a teacher log-prob of
-inf marks an unused slot). The support S is the valid slots, then

    tail="bucket":      S plus one bucket holding 1 - sum_S (each side), the sum clamped to
                        exp(-1e-7) as TRL's ``_add_tail_bucket`` does (no gradient past it)
    tail="renormalize": both sides renormalised on S

and on the resulting distributions P (student), Q (teacher), with TRL's beta convention:

    forward_kl  KL(Q || P)      reverse_kl  KL(P || Q)
    jsd         beta KL(Q || M) + (1 - beta) KL(P || M),  M = (1 - beta) P + beta Q

A row without a valid slot has Div 0 and no gradient. All of this is (N, k) work in plain torch
(k <= a few hundred): autograd differentiates it, and the dense gradient over the vocabulary
comes from ``support_logprobs``' streamed backward.
"""

from __future__ import annotations

import torch

from cord_kernels.core.options import Tail
from cord_kernels.core.reduction import nonnegative

# TRL's _add_tail_bucket: log(sum) is clamped to this, so the tail is >= 1 - exp(-1e-7).
TAIL_LOG_SUM_MAX = -1e-7




def _masked_lse(x: torch.Tensor, valid: torch.Tensor, any_valid: torch.Tensor) -> torch.Tensor:
    """logsumexp over the valid slots, (..., 1); 0 for rows without one. Such rows feed zeros to
    logsumexp so that its backward (exp(x - lse)) cannot produce NaN."""
    x = torch.where(valid, x, float("-inf"))
    x = torch.where(any_valid, x, 0.0)
    return torch.where(any_valid, torch.logsumexp(x, dim=-1, keepdim=True), 0.0)


def _with_tail(x: torch.Tensor, valid: torch.Tensor, any_valid: torch.Tensor) -> torch.Tensor:
    """x (-inf at invalid slots) with one more slot: log(1 - sum_valid exp(x))."""
    log_sum = torch.where(any_valid, _masked_lse(x, valid, any_valid), float("-inf"))
    log_sum = log_sum.clamp(max=TAIL_LOG_SUM_MAX)
    return torch.cat([x, torch.log(-torch.expm1(log_sum))], dim=-1)


def support_distributions(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, tail: Tail):
    """(log P, log Q, support) on the support (k slots, +1 for the bucket); -inf off it."""
    any_valid = valid.any(-1, keepdim=True)
    a = torch.where(valid, a, float("-inf"))
    b = torch.where(valid, b, float("-inf"))
    if tail is Tail.BUCKET:
        ones = torch.ones_like(valid[..., :1])
        return (_with_tail(a, valid, any_valid), _with_tail(b, valid, any_valid),
                torch.cat([valid, ones & any_valid], dim=-1))
    return a - _masked_lse(a, valid, any_valid), b - _masked_lse(b, valid, any_valid), valid


def _kl_terms(log_x: torch.Tensor, x: torch.Tensor, log_y: torch.Tensor) -> torch.Tensor:
    """sum x (log x - log y) over entries with x > 0 (0 log 0 = 0)."""
    return torch.where(x > 0, x * (log_x - log_y), 0.0).sum(-1)


def support_divergence(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, *,
                       divergence: str, jsd_beta: float, tail: Tail) -> torch.Tensor:
    """(...) Div between the student's and the teacher's distributions on the support.

    ``divergence``: "forward_kl" | "reverse_kl" | "jsd" (``jsd_beta`` in (0, 1)); pass the JSD
    at jsd_beta 0 / 1 as the KLs (``core/options.resolve_divergence``)."""
    log_p, log_q, support = support_distributions(a, b, valid, tail)
    # Off the support every term is 0: zeros there keep inf - inf out of values and gradients.
    log_p = torch.where(support, log_p, 0.0)
    log_q = torch.where(support, log_q, 0.0)
    p = torch.where(support, log_p.exp(), 0.0)
    q = torch.where(support, log_q.exp(), 0.0)
    if divergence == "forward_kl":
        return nonnegative(_kl_terms(log_q, q, log_p))
    if divergence == "reverse_kl":
        return nonnegative(_kl_terms(log_p, p, log_q))
    m = (1.0 - jsd_beta) * p + jsd_beta * q
    # TRL's server path takes log M of M clamped to the smallest normal (M > 0 on the support
    # unless both sides underflow).
    log_m = torch.where(support, m.clamp_min(torch.finfo(m.dtype).tiny).log(), 0.0)
    return nonnegative(jsd_beta * _kl_terms(log_q, q, log_m)
                       + (1.0 - jsd_beta) * _kl_terms(log_p, p, log_m))
