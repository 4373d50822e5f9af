"""Pure-torch reference of every loss: the tests' oracle, in float64.

Nothing in the library imports this module (``tests/test_torch_path.py`` checks it): the CPU
path (``impl="torch"``) is ``core/torch_path.py``, which computes the same values the way the
kernels do. This one is written for clarity, not memory: it materialises the log-softmax of
both branches and lets autograd differentiate it. Math runs in float64 when the inputs are
float64 (how the tests call it; results then stay float64) and in float32 otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cord_kernels.core.cord_weights import cord_weights
from cord_kernels.core.reduction import reduce_weighted


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


def tvd(student_logits, teacher_logits, *, temperature=1.0):
    """1/2 sum_v |p_v - q_v| per row (the teacher detached; autograd's sign(0) = 0 at p = q)."""
    dt = _compute_dtype(student_logits)
    p = F.softmax(student_logits.to(dt) / temperature, dim=-1)
    q = F.softmax(teacher_logits.detach().to(dt) / temperature, dim=-1)
    return 0.5 * (p - q).abs().sum(-1)


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


# ------------------------------------------------------------------- sparse teachers (2c)


def _sparse_divergence(a, b, valid, *, divergence, beta, tail):
    """Div per row on the slots (written in probabilities, apart from the library's log-space
    support_divergence.py): a, b student / teacher log-probs at the slots, valid (..., k)."""
    p = torch.where(valid, a, float("-inf")).exp()
    q = torch.where(valid, b, float("-inf")).exp()
    any_valid = valid.any(-1, keepdim=True)
    if tail == "bucket":  # TRL's _add_tail_bucket: the mass is capped at exp(-1e-7)
        cap = math.exp(-1e-7)
        p = torch.cat([p, 1 - p.sum(-1, keepdim=True).clamp(max=cap)], dim=-1)
        q = torch.cat([q, 1 - q.sum(-1, keepdim=True).clamp(max=cap)], dim=-1)
        support = torch.cat([valid, any_valid], dim=-1)
    else:
        p = p / torch.where(any_valid, p.sum(-1, keepdim=True), 1.0)
        q = q / torch.where(any_valid, q.sum(-1, keepdim=True), 1.0)
        support = valid
    p, q = torch.where(support, p, 0.0), torch.where(support, q, 0.0)

    def kl(x, y):
        return torch.where(x > 0, x * (torch.where(x > 0, x, 1.0) / y).log(), 0.0).sum(-1)

    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0):
        return kl(q, p)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1):
        return kl(p, q)
    m = (1 - beta) * p + beta * q
    return beta * kl(q, m) + (1 - beta) * kl(p, m)


def _reduce_sparse(d, mask, token_weights, reduction, num_items_in_batch):
    w = mask.to(d.dtype) if token_weights is None else torch.where(mask, token_weights.to(
        d.dtype), 0.0)
    per_token = w * torch.where(mask, d, 0.0)
    if num_items_in_batch is not None:
        return per_token.sum() / num_items_in_batch
    return reduce_weighted(per_token, mask, reduction)


def sparse_teacher_loss(student_logits, teacher_topk_logprobs, teacher_topk_ids, mask, *,
                        divergence="forward_kl", jsd_beta=0.5, tail="bucket",
                        token_weights=None, temperature=1.0, reduction="batchmean",
                        num_items_in_batch=None):
    """The sparse-teacher loss on the materialised student log-softmax (the oracle)."""
    dt = _compute_dtype(student_logits)
    s = torch.where(mask.unsqueeze(-1), student_logits.to(dt), 0.0)  # padding may be NaN
    log_p = F.log_softmax(s / temperature, dim=-1)
    valid = (teacher_topk_logprobs > float("-inf")) & mask.unsqueeze(-1)
    a = log_p.gather(-1, torch.where(valid, teacher_topk_ids, 0).long())
    d = _sparse_divergence(a, teacher_topk_logprobs.to(dt).detach(), valid,
                           divergence=divergence, beta=jsd_beta, tail=tail)
    return _reduce_sparse(d, mask, token_weights, reduction, num_items_in_batch)


def fused_linear_sparse_teacher_loss(student_hidden, weight, teacher_topk_logprobs,
                                     teacher_topk_ids, mask, *, bias=None, softcap=None,
                                     logit_scale=1.0, **kw):
    """``sparse_teacher_loss`` on materialised logits, after the model's logit transform:
    t = logit_scale * (h @ W.T + b), then softcap * tanh(t / softcap) (Gemma 2's order)."""
    logits = _project(student_hidden, weight, bias) * logit_scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return sparse_teacher_loss(logits, teacher_topk_logprobs, teacher_topk_ids, mask, **kw)


def student_topk_distill_loss(student_logits, teacher_logits, mask, *, k,
                              divergence="reverse_kl", jsd_beta=0.5, tail="bucket",
                              token_weights=None, temperature=1.0, reduction="batchmean",
                              num_items_in_batch=None):
    """SDPO's top-k mode on materialised log-softmaxes: the student's top-k is the support."""
    dt = _compute_dtype(student_logits)
    keep = mask.unsqueeze(-1)
    s = torch.where(keep, student_logits.to(dt), 0.0)
    u = torch.where(keep, teacher_logits.to(dt), 0.0).detach()
    log_p = F.log_softmax(s / temperature, dim=-1)
    log_q = F.log_softmax(u / temperature, dim=-1)
    ids = s.detach().topk(k, dim=-1).indices
    valid = keep.expand(ids.shape)
    d = _sparse_divergence(log_p.gather(-1, ids), log_q.gather(-1, ids), valid,
                           divergence=divergence, beta=jsd_beta, tail=tail)
    return _reduce_sparse(d, mask, token_weights, reduction, num_items_in_batch)


def teacher_topk(logits, k, *, temperature=1.0):
    """(top-k log-probs, ids) of log_softmax(logits / tau)."""
    return F.log_softmax(logits.to(_compute_dtype(logits)) / temperature, dim=-1).topk(k, dim=-1)


def sampled_token_reverse_kl(student_logprobs, teacher_logprobs, mask, *, token_weights=None,
                             reduction="batchmean", num_items_in_batch=None):
    """TRL SDPO's estimator (lp_s - lp_t).detach() * lp_s per token."""
    lp_s = torch.where(mask, student_logprobs, 0.0)
    lp_t = torch.where(mask, teacher_logprobs, 0.0)
    d = (lp_s - lp_t).detach() * lp_s
    return _reduce_sparse(d, mask, token_weights, reduction, num_items_in_batch)
