"""Thin ``nn.Module`` wrappers of the sparse-teacher losses: they hold the options, checked at
construction; per-batch tensors (token weights, num_items_in_batch) go to ``forward``."""

from __future__ import annotations

from torch import nn

from cord_kernels.chunked_head import check_transform
from cord_kernels.fused_sparse_teacher import fused_linear_sparse_teacher_loss
from cord_kernels.sparse_options import check_sparse_options
from cord_kernels.sparse_teacher import sparse_teacher_loss


class _SparseLossOptions(nn.Module):
    def __init__(self, *, divergence: str = "forward_kl", jsd_beta: float = 0.5,
                 tail: str = "bucket", temperature: float = 1.0, reduction: str = "batchmean",
                 return_per_token: bool = False, impl: str | None = None):
        super().__init__()
        check_sparse_options(divergence, jsd_beta, tail, temperature, reduction,
                             return_per_token, None)  # fail at construction, not at step 1
        self.opts = dict(divergence=divergence, jsd_beta=jsd_beta, tail=tail,
                         temperature=temperature, reduction=reduction,
                         return_per_token=return_per_token, impl=impl)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.opts.items())


class SparseTeacherLoss(_SparseLossOptions):
    """:func:`cord_kernels.sparse_teacher_loss` with its options held.

    Example:
        >>> loss_fn = SparseTeacherLoss(divergence="jsd", jsd_beta=0.5, reduction="mean")
        >>> loss = loss_fn(student_logits, batch["topk_logprobs"], batch["topk_token_ids"],
        ...                completion_mask)
    """

    def forward(self, student_logits, teacher_topk_logprobs, teacher_topk_ids, mask,
                token_weights=None, num_items_in_batch=None):
        return sparse_teacher_loss(student_logits, teacher_topk_logprobs, teacher_topk_ids,
                                   mask, token_weights=token_weights,
                                   num_items_in_batch=num_items_in_batch, **self.opts)


class FusedLinearSparseTeacherLoss(_SparseLossOptions):
    """:func:`cord_kernels.fused_linear_sparse_teacher_loss` with its options held, the logit
    transform included (pass a Gemma 2 config's ``final_logit_softcapping`` as ``softcap``).

    Example:
        >>> loss_fn = FusedLinearSparseTeacherLoss(softcap=cfg.final_logit_softcapping)
        >>> loss = loss_fn(hidden, lm_head.weight, batch["topk_logprobs"],
        ...                batch["topk_token_ids"], completion_mask)
    """

    def __init__(self, *, softcap: float | None = None, logit_scale: float = 1.0,
                 chunk_bytes: int | None = None, **options):
        super().__init__(**options)
        check_transform(softcap, logit_scale)
        self.opts.update(softcap=softcap, logit_scale=logit_scale, chunk_bytes=chunk_bytes)

    def forward(self, student_hidden, weight, teacher_topk_logprobs, teacher_topk_ids, mask,
                bias=None, token_weights=None, num_items_in_batch=None):
        return fused_linear_sparse_teacher_loss(
            student_hidden, weight, teacher_topk_logprobs, teacher_topk_ids, mask, bias=bias,
            token_weights=token_weights, num_items_in_batch=num_items_in_batch, **self.opts)
