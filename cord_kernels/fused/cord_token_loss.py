"""LM head + CORD token loss (paper eq. 7) without (N, V) logits: the distillation driver of
``fused/distill.py`` with reverse KL and the CORD weights.

CORD's weights need every D of a sequence (top-K), so chunks hold WHOLE sequences (docs/api.md,
"Hidden states in"): each chunk computes its D, the weights of its sequences and the weighted
gradient while its logits tiles are live. A sequence with more valid tokens than a chunk holds
is cut into pieces; each piece is done in one go with the positional weight alone (w^pos needs
only the mask, so the weight is exact for every row outside the top-K), and once all the
sequence's D are known the driver gives its top-K rows the missing ``(alpha - 1) w^pos dD/ds``
from a recompute of just those <= K rows (4 small GEMMs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cord_kernels.core.cord_weights import checked_cord_weights
from cord_kernels.core.doc import shared_doc
from cord_kernels.core.options import (
    ALPHA,
    BETA,
    IGNORE_INDEX,
    LOGIT_SCALE,
    REDUCTION,
    TEMPERATURE,
    TOP_K,
    LossOptions,
)
from cord_kernels.fused.chunked_head import Chunk, plan_chunks
from cord_kernels.fused.distill import DistillProblem, check_distill_inputs, run_distill


@dataclass(frozen=True)
class CordWeighting:
    """The CORD weights w = w^KL w^pos of each sequence, from its D (a ``TokenWeighting``)."""

    top_k: int = TOP_K
    alpha: float = ALPHA
    position_beta: float = BETA

    def plan(self, problem: DistillProblem) -> list[Chunk]:
        return plan_chunks(problem.counts, problem.max_rows)

    def _weights(self, problem, d, seq_lo, seq_hi, pos_lo, pos_hi, top_k, alpha):
        dense = problem.dense(d, seq_lo, seq_hi, pos_lo, pos_hi)
        w = checked_cord_weights(dense, problem.mask[seq_lo:seq_hi], top_k, alpha,
                                 self.position_beta)
        return w.view(-1)[problem.index[pos_lo:pos_hi] - seq_lo * problem.T]

    def chunk_weights(self, problem, d, chunk: Chunk) -> torch.Tensor:
        # A piece of a long sequence gets w^pos alone; the driver corrects its top-K rows.
        top_k, alpha = (self.top_k, self.alpha) if chunk.whole else (0, 1.0)
        return self._weights(problem, d, chunk.seq_lo, chunk.seq_hi, chunk.row_lo,
                             chunk.row_hi, top_k, alpha)

    def final_weights(self, problem, d_all) -> torch.Tensor:
        return self._weights(problem, d_all, 0, problem.B, 0, problem.n_valid, self.top_k,
                             self.alpha)


# Spelled out on purpose, as docs/api.md's "Hidden states in" table fixes it
# (tests/test_options.py reads it with inspect); LossOptions.check holds its rules and
# defaults. (`duplicates` pairs such signatures.)
@shared_doc
def fused_linear_cord_token_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    bias: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    top_k: int = TOP_K,
    alpha: float = ALPHA,
    beta: float = BETA,
    temperature: float = TEMPERATURE,
    softcap: float | None = None,
    logit_scale: float = LOGIT_SCALE,
    reduction: str = REDUCTION,
    num_items_in_batch: int | torch.Tensor | None = None,
    return_per_token: bool = False,
    chunk_bytes: int | None = None,
    impl: str | None = None,
    process_group=None,
    reduce_hidden_grad: bool = True,
):
    """CORD token loss from hidden states and the LM head, never holding (B*T, V) logits.

    Equals ``cord_token_loss(student_hidden @ weight.T + bias, teacher_hidden @ W_t.T + b_t,
    mask, ...)`` with W_t, b_t = ``teacher_weight``, ``teacher_bias`` (default: the student's
    head, detached):

        D_t = KL(softmax(s_t/tau) || softmax(u_t/tau)),   w = cord_weights(D, mask)
        "batchmean": sum w D / B (the paper's), "sum": sum w D, "mean": sum w D / sum mask,
        "none": (B, T) w D

    Cost: 4 GEMMs of (valid tokens) x H x V for the scalar reductions, all run in forward
    (backward only scales the stored gradients, so the graph can be backpropagated once);
    3 when ``weight`` needs no gradient (a frozen head), 2 under ``torch.no_grad()``, 6 for
    ``reduction="none"``, whose backward recomputes both projections. Rows with ``mask``
    False are never projected. Memory: the fp32 gradient of ``weight`` and at most
    ``chunk_bytes`` of logits tiles. See ``fused/distill.py`` for the algorithm.

    Args:
        student_hidden: (B, T, H) audio-conditioned final hidden states (gets the gradient).
        teacher_hidden: (B, T, H_t) text-conditioned hidden states on the same tokens (never
            gets a gradient).
        weight: (V, H) LM head (gets a gradient, accumulated in fp32).
        mask: (B, T) bool (or 0/1 int/float), True at generated positions.
        {labels}
        bias: optional (V,) LM-head bias (gets a gradient).
        teacher_weight, teacher_bias: optional separate teacher head, (V, H_t) and (V,).
        top_k, alpha, beta: CORD weights (``alpha = beta = 1`` is uniform on-policy
            distillation).
        temperature: tau > 0, applied to both branches.
        {logit_transform}
            Both branches get it.
        {reduction}
        {num_items_in_batch}
        return_per_token: also return D, the detached (B, T) fp32 reverse KL, 0 where masked.
        chunk_bytes: budget for the two fp32 logits tiles of a chunk (default 1 GiB; on a GPU
            with room, a quarter of its free memory up to 8 GiB): a chunk holds
            ``chunk_bytes // (8 V)`` tokens. Sequences longer than that still work.
        impl: "triton" (the streaming kernels on each chunk), "torch" or None (Triton on CUDA
            or under TRITON_INTERPRET=1).
        {process_group_head}
            D is all-reduced before the weights: the top-K sees the full divergence.

    Returns:
        fp32 scalar, or (B, T) fp32 for ``reduction="none"``; ``(loss, D)`` with
        ``return_per_token=True``.

    Example:
        >>> h_a = model(audio_inputs).hidden_states[-1][:, P:-1]     # (B, T, H)
        >>> h_t = model(text_inputs).hidden_states[-1][:, P2:-1].detach()
        >>> loss = fused_linear_cord_token_loss(h_a, h_t, model.lm_head.weight, mask)
        >>> loss.backward()
    """
    opts = LossOptions.check(ignore_index=ignore_index, top_k=top_k, alpha=alpha, beta=beta,
                             temperature=temperature, softcap=softcap, logit_scale=logit_scale,
                             reduction=reduction, num_items_in_batch=num_items_in_batch,
                             return_per_token=return_per_token, chunk_bytes=chunk_bytes,
                             impl=impl, process_group=process_group,
                             reduce_hidden_grad=reduce_hidden_grad)
    mask = check_distill_inputs(student_hidden, teacher_hidden, weight, bias, teacher_weight,
                                teacher_bias, mask, labels, opts.ignore_index)
    return run_distill(student_hidden, teacher_hidden, weight, mask, bias, teacher_weight,
                       teacher_bias, CordWeighting(opts.top_k, opts.alpha, opts.beta), opts)
