"""cord_kernels: fused losses for on-policy distillation (CORD, OPD, GKD-style JSD).

Logits in (..., V); per-row results are (...) float32:
    reverse_kl(s, u)              KL(p || q) per row; p = softmax(s/tau) student, q teacher
    forward_kl(s, u)              KL(q || p) per row
    jsd(s, u, beta=0.5)           generalized JSD per row (TRL's and Liger's beta)
    tvd(s, u)                     total variation distance per row, 1/2 sum |p - q|
    token_logprobs(logits, labels)              log p(label) per row (SFT, GRPO)
    cord_weights(kl, mask)                      CORD token weights (B, T), no grad
    cord_token_loss(s, u, mask | labels=)       the CORD weighted reverse-KL loss (eq. 7)
    grpo_loss(token_logprobs, mask, rewards, group_size=N)    GRPO sequence loss (eqs. 8-10)

Hidden states in, the LM-head logits never held:
    fused_linear_distill_loss(h_s, h_t, W, mask | labels=, divergence=, token_weights=)
    fused_linear_cord_token_loss(h_s, h_t, W, mask | labels=)
    fused_linear_token_logprobs(hidden, W, labels)

Sparse teachers (a teacher known by its top-k log-probs, e.g. from a vLLM server):
    sparse_teacher_loss(s, topk_logprobs, topk_ids, mask, divergence=, tail=)
    fused_linear_sparse_teacher_loss(h_s, W, topk_logprobs, topk_ids, mask, softcap=)
    student_topk_distill_loss(s, u, mask, k=)          SDPO's top-k mode (student's top-k)
    fused_linear_student_topk_distill_loss(h_s, h_t, W, mask, k=)
    teacher_topk(logits | (hidden, W), k)             -> (topk_logprobs, topk_ids), streamed
    sampled_token_reverse_kl(lp_s, lp_t, mask)         SDPO's sampled-token estimator

nn.Module wrappers holding the options (importable from here; left out of ``__all__`` so
that ``help(cord_kernels)`` stays a page instead of 10,000 lines of nn.Module methods):
    ReverseKL, ForwardKL, JSD, TVD, TokenLogprobs, CordTokenLoss, FusedLinearDistillLoss,
    FusedLinearCordTokenLoss, FusedLinearTokenLogprobs, GRPOLoss, SparseTeacherLoss,
    FusedLinearSparseTeacherLoss

Conventions:
    Options are keyword-only. ``impl="triton" | "torch" | None``: None runs the Triton kernels
    on CUDA tensors (or under TRITON_INTERPRET=1) and the torch path otherwise; without
    triton (macOS, Windows) everything runs on the torch path.
    mask: bool, or int/float holding only 0 and 1 (anything else is a ValueError); or
    TRL-style ``labels=`` with ``ignore_index=-100``.
    reduction: "batchmean" = sum / B sequences (the paper's), "mean" = sum / valid tokens
    (what TRL's and Liger's losses return), "sum", "none"; batchmean = mean * mask.sum() / B.
    num_items_in_batch=n: sum / n under every scalar reduction (an error with "none"), n the
    valid tokens of all micro-batches of an optimizer step, so that gradient accumulation
    gives the full batch's "mean" (TRL's convention).
    Every option is checked once per call by one object, ``core.options.LossOptions``, which
    also holds every default.

Layout: ``logits/`` (logits in), ``fused/`` (hidden states in), ``sparse/`` (sparse
teachers), ``core/`` (what they share: options, checks, dispatch, reductions, the CORD
weights, the eager torch path), ``modules.py`` (the nn.Module wrappers), ``reference.py``
(the pure-torch oracle of the tests).

Example:
    >>> from cord_kernels import cord_token_loss
    >>> loss = cord_token_loss(student_logits, teacher_logits.detach(), labels=labels)
    >>> loss.backward()

help(cord_kernels.cord_token_loss) and the others give shapes, formulas and examples.
Importing this package never touches a GPU.
"""

from cord_kernels.core.cord_weights import cord_weights
from cord_kernels.fused.cord_token_loss import fused_linear_cord_token_loss
from cord_kernels.fused.distill import fused_linear_distill_loss
from cord_kernels.fused.token_logprobs import fused_linear_token_logprobs
from cord_kernels.logits.cord_token_loss import cord_token_loss
from cord_kernels.logits.grpo import grpo_loss
from cord_kernels.logits.jsd import jsd
from cord_kernels.logits.kl import forward_kl, reverse_kl
from cord_kernels.logits.token_logprobs import token_logprobs
from cord_kernels.logits.tvd import tvd
from cord_kernels.modules import (  # re-exported outside __all__: see the docstring
    JSD,
    TVD,
    CordTokenLoss,
    ForwardKL,
    FusedLinearCordTokenLoss,
    FusedLinearDistillLoss,
    FusedLinearSparseTeacherLoss,
    FusedLinearTokenLogprobs,
    GRPOLoss,
    ReverseKL,
    SparseTeacherLoss,
    TokenLogprobs,
)
from cord_kernels.sparse.fused_student_topk import fused_linear_student_topk_distill_loss
from cord_kernels.sparse.fused_teacher_loss import fused_linear_sparse_teacher_loss
from cord_kernels.sparse.sampled_token_kl import sampled_token_reverse_kl
from cord_kernels.sparse.student_topk import student_topk_distill_loss
from cord_kernels.sparse.teacher_loss import sparse_teacher_loss
from cord_kernels.sparse.teacher_topk import teacher_topk

__version__ = "0.1.0"

# The functions; the nn.Module wrappers are importable too (see the docstring).
__all__ = [
    "reverse_kl",
    "forward_kl",
    "jsd",
    "tvd",
    "token_logprobs",
    "cord_weights",
    "cord_token_loss",
    "fused_linear_distill_loss",
    "fused_linear_cord_token_loss",
    "fused_linear_token_logprobs",
    "grpo_loss",
    "sparse_teacher_loss",
    "fused_linear_sparse_teacher_loss",
    "student_topk_distill_loss",
    "fused_linear_student_topk_distill_loss",
    "teacher_topk",
    "sampled_token_reverse_kl",
]
