"""Pure-torch reference of every loss: the test oracle and the CPU fallback (``impl="torch"``).

Written for clarity, not memory: it materialises log-softmax of both branches. Math runs in
float64 when the inputs are float64 (the tests' oracle, whose results then stay float64) and in
float32 otherwise; the public functions cast what they return to float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cord_kernels.reduction import reduce_weighted
from cord_kernels.weights import cord_weights


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _kl_rows(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(x/tau) || softmax(y/tau)) per row. Entries where softmax(x) is 0 contribute 0
    (so -inf logits on both sides are fine); a -inf in y where x is finite gives +inf."""
    dt = _compute_dtype(x)
    log_px = F.log_softmax(x.to(dt) / temperature, dim=-1)
    log_py = F.log_softmax(y.to(dt) / temperature, dim=-1)
    px = log_px.exp()
    diff = torch.where(px > 0, log_px - log_py, 0.0)
    return (px * diff).sum(-1)


def reverse_kl(student_logits, teacher_logits, *, temperature=1.0, teacher_grad=False):
    """KL(p || q) per row, p = softmax(s/tau) (student), q = softmax(u/tau) (teacher)."""
    u = teacher_logits if teacher_grad else teacher_logits.detach()
    return _kl_rows(student_logits, u, temperature)


def forward_kl(student_logits, teacher_logits, *, temperature=1.0, teacher_grad=False):
    """KL(q || p) per row."""
    u = teacher_logits if teacher_grad else teacher_logits.detach()
    return _kl_rows(u, student_logits, temperature)


def jsd(student_logits, teacher_logits, *, beta=0.5, temperature=1.0, teacher_grad=False):
    """beta KL(q || m) + (1 - beta) KL(p || m), m = (1 - beta) p + beta q, per row; beta = 0
    is forward_kl and beta = 1 reverse_kl (TRL's special cases)."""
    if beta == 0:
        return forward_kl(student_logits, teacher_logits, temperature=temperature,
                          teacher_grad=teacher_grad)
    if beta == 1:
        return reverse_kl(student_logits, teacher_logits, temperature=temperature,
                          teacher_grad=teacher_grad)
    u = teacher_logits if teacher_grad else teacher_logits.detach()
    dt = _compute_dtype(student_logits)
    log_p = F.log_softmax(student_logits.to(dt) / temperature, dim=-1)
    log_q = F.log_softmax(u.to(dt) / temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    # Where p = q = 0 the mixture's log is -inf and logaddexp's gradient NaN: feed it zeros
    # there (those entries are dropped below anyway).
    both = (p == 0) & (q == 0)
    log_m = torch.logaddexp(torch.where(both, 0.0, log_p) + math.log1p(-beta),
                            torch.where(both, 0.0, log_q) + math.log(beta))
    kl_pm = (p * torch.where(p > 0, log_p - log_m, 0.0)).sum(-1)
    kl_qm = (q * torch.where(q > 0, log_q - log_m, 0.0)).sum(-1)
    return beta * kl_qm + (1 - beta) * kl_pm


def token_logprobs(logits, labels, *, temperature=1.0, ignore_index=-100):
    """log softmax(logits/tau)[label] per row; 0 (and no gradient) where label == ignore_index."""
    dt = _compute_dtype(logits)
    logp = F.log_softmax(logits.to(dt) / temperature, dim=-1)
    ignored = labels == ignore_index
    safe = torch.where(ignored, 0, labels).long()
    out = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(ignored, 0.0, out)


def cord_token_loss(
    student_logits,
    teacher_logits,
    mask,
    *,
    top_k=20,
    alpha=2.0,
    beta=2.0,
    temperature=1.0,
    reduction="batchmean",
    teacher_grad=False,
):
    """sum_t w_t D_t with CORD weights, reduced as requested."""
    keep = mask.unsqueeze(-1)
    # Masked rows may hold anything (padding, -inf); zero them so they cannot leak NaN into
    # the loss or its gradient.
    s = torch.where(keep, student_logits, 0)
    u = torch.where(keep, teacher_logits, 0)
    d = reverse_kl(s, u, temperature=temperature, teacher_grad=teacher_grad)
    d = torch.where(mask, d, 0.0)
    w = cord_weights(d, mask, top_k=top_k, alpha=alpha, beta=beta)
    return reduce_weighted(w * d, mask, reduction)


def _project(hidden, weight, bias):
    logits = hidden.to(_compute_dtype(hidden)) @ weight.to(_compute_dtype(hidden)).T
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return logits


def fused_linear_cord_token_loss(
    student_hidden,
    teacher_hidden,
    weight,
    mask,
    *,
    bias=None,
    teacher_weight=None,
    teacher_bias=None,
    top_k=20,
    alpha=2.0,
    beta=2.0,
    temperature=1.0,
    reduction="batchmean",
):
    """``cord_token_loss`` on materialised logits ``hidden @ weight.T + bias`` (the oracle)."""
    tw = weight if teacher_weight is None else teacher_weight
    tb = bias if teacher_weight is None else teacher_bias
    s = _project(student_hidden, weight, bias)
    with torch.no_grad():
        u = _project(teacher_hidden, tw, tb)
    return cord_token_loss(
        s, u, mask, top_k=top_k, alpha=alpha, beta=beta, temperature=temperature,
        reduction=reduction,
    )


def fused_linear_token_logprobs(hidden, weight, labels, *, bias=None, temperature=1.0,
                                ignore_index=-100):
    """``token_logprobs`` on materialised logits (the oracle)."""
    return token_logprobs(_project(hidden, weight, bias), labels, temperature=temperature,
                          ignore_index=ignore_index)
