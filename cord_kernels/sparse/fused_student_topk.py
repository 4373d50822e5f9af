"""LM heads + SDPO's top-k loss (the student's top-k is the support), without (N, V) logits.

The chunk driver of ``sparse/fused_teacher_loss.py`` with other targets: for each chunk of valid
rows the student tile is projected (and transformed) first, its top-k ids are read off it, then
the teacher's rows are projected into a second tile and read on those ids. 4 GEMMs in all for
the scalar reductions (student and teacher projections, grad wrt hidden and weight); the tiles
take ``chunk_bytes`` together.
"""

from __future__ import annotations

import torch

from cord_kernels.core.dispatch import resolve_impl
from cord_kernels.core.options import (
    JSD_BETA,
    LOGIT_SCALE,
    REDUCTION,
    TAIL,
    TEMPERATURE,
    LossOptions,
    check_k,
)
from cord_kernels.core.validation import check_token_weights
from cord_kernels.fused.chunked_head import HeadParams, LMHead, operand_dtype
from cord_kernels.fused.distill import check_distill_inputs
from cord_kernels.sparse.fused_teacher_loss import (
    SparseHeadProblem,
    run_sparse_head,
    support_stats,
)


class StudentTopK:
    """Targets: the student tile's own top-k ids; the teacher's log-probs on them from its own
    projection (same transform). Every valid position is projected."""

    n_tiles = 2
    all_slots = True  # the support: every one of the student's k ids

    def __init__(self, teacher_hidden, teacher_weight, teacher_bias, mask, k: int):
        self.ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
        self.weight, self.bias = teacher_weight.detach(), teacher_bias
        self.mask, self.k = mask.reshape(-1), k

    def projected_rows(self) -> torch.Tensor:
        return self.mask

    def select(self, problem: SparseHeadProblem) -> None:
        self.head = LMHead(self.weight, None if self.bias is None else self.bias.detach(),
                           operand_dtype(self.ht, self.weight), problem.dtype)
        self._tile = None

    def chunk(self, problem: SparseHeadProblem, lo: int, hi: int, tile: torch.Tensor):
        ids = torch.topk(tile, self.k, dim=1, sorted=False).indices  # (n, k) of the student
        valid = torch.ones_like(ids, dtype=torch.bool)
        if self._tile is None:
            self._tile = torch.empty_like(problem.tile(hi - lo))
        u = self._tile[:hi - lo]
        self.head.project(self.head.rows(self.ht, problem.index[lo:hi]), u)
        b, _, _ = support_stats(problem.transform(u), ids, valid,
                                problem.params.opts.temperature, problem.params.impl)
        return ids, valid, b


# Spelled out on purpose, as docs/api.md "Sparse teachers" lists it (tests/test_options.py reads
# it with inspect); LossOptions.check holds its rules and defaults (`duplicates` pairs these).
def fused_linear_student_topk_distill_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    k: int,
    bias: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    divergence: str = "reverse_kl",
    jsd_beta: float = JSD_BETA,
    tail: str = TAIL,
    token_weights: torch.Tensor | None = None,
    temperature: float = TEMPERATURE,
    softcap: float | None = None,
    logit_scale: float = LOGIT_SCALE,
    reduction: str = REDUCTION,
    return_per_token: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_bytes: int | None = None,
    impl: str | None = None,
):
    """:func:`student_topk_distill_loss` from hidden states and LM heads (SDPO's top-k mode).

    Equals ``student_topk_distill_loss(s, u, mask, k=k, ...)`` with s = transform(student_hidden
    @ weight.T (+ bias)) and u = transform(teacher_hidden @ W_t.T (+ b_t)), W_t = teacher_weight
    (default: ``weight``, detached, as in self-distillation), the transform (``logit_scale``,
    then ``softcap``) applied to both. 4 GEMMs for the scalar reductions; only valid positions
    are projected. Gradients to student_hidden, weight and bias; none to the teacher.

    Example:
        >>> loss = fused_linear_student_topk_distill_loss(h_audio, h_text, lm_head.weight, mask,
        ...                                               k=20)
    """
    mask = check_distill_inputs(student_hidden, teacher_hidden, weight, bias, teacher_weight,
                                teacher_bias, mask)
    V = weight.shape[0]
    check_k(k, V)
    opts = LossOptions.check(divergence=divergence, jsd_beta=jsd_beta, tail=tail,
                             temperature=temperature, softcap=softcap, logit_scale=logit_scale,
                             reduction=reduction, return_per_token=return_per_token,
                             num_items_in_batch=num_items_in_batch, chunk_bytes=chunk_bytes,
                             impl=impl)
    token_weights = check_token_weights(token_weights, mask)
    params = HeadParams(opts, resolve_impl(impl, student_hidden, weight),
                        (operand_dtype(student_hidden, weight),))
    t_weight, t_bias = (weight, bias) if teacher_weight is None else (teacher_weight,
                                                                      teacher_bias)
    targets = StudentTopK(teacher_hidden, t_weight, t_bias, mask, k)
    return run_sparse_head(student_hidden, weight, bias, token_weights, targets, mask, params)
