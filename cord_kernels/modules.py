"""Thin ``nn.Module`` wrappers that hold the options of the public loss functions.

Each checks its options at construction with the losses' own contract (``LossOptions.check``),
so a bad option fails before the first step; the defaults are the losses' (``core/options.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from cord_kernels.core.options import (
    ALPHA,
    BETA,
    IGNORE_INDEX,
    JSD_BETA,
    LOGIT_SCALE,
    REDUCTION,
    TAIL,
    TEMPERATURE,
    TOP_K,
    LossOptions,
)
from cord_kernels.core.validation import check_unit
from cord_kernels.fused.cord_token_loss import fused_linear_cord_token_loss
from cord_kernels.fused.distill import fused_linear_distill_loss
from cord_kernels.fused.token_logprobs import fused_linear_token_logprobs
from cord_kernels.logits.cord_token_loss import cord_token_loss
from cord_kernels.logits.grpo import grpo_loss
from cord_kernels.logits.jsd import jsd
from cord_kernels.logits.kl import forward_kl, reverse_kl
from cord_kernels.logits.token_logprobs import token_logprobs
from cord_kernels.logits.tvd import tvd
from cord_kernels.sparse.fused_teacher_loss import fused_linear_sparse_teacher_loss
from cord_kernels.sparse.teacher_loss import sparse_teacher_loss


class _KL(nn.Module):
    _fn = staticmethod(reverse_kl)

    def __init__(self, *, temperature: float = TEMPERATURE, teacher_grad: bool = False,
                 impl: str | None = None, process_group=None):
        super().__init__()
        self.temperature, self.teacher_grad, self.impl = temperature, teacher_grad, impl
        self.process_group = process_group

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return self._fn(student_logits, teacher_logits, temperature=self.temperature,
                        teacher_grad=self.teacher_grad, impl=self.impl,
                        process_group=self.process_group)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, teacher_grad={self.teacher_grad}"


class ReverseKL(_KL):
    """Per-row KL(p || q); see :func:`cord_kernels.reverse_kl`."""


class ForwardKL(_KL):
    """Per-row KL(q || p); see :func:`cord_kernels.forward_kl`."""

    _fn = staticmethod(forward_kl)


class JSD(nn.Module):
    """Per-row generalized JSD (TRL's and Liger's beta); see :func:`cord_kernels.jsd`.

    Example:
        >>> loss_fn = JSD(beta=0.5)
        >>> d = loss_fn(student_logits, teacher_logits)        # (B, T)
    """

    def __init__(self, *, beta: float = JSD_BETA, temperature: float = TEMPERATURE,
                 teacher_grad: bool = False, impl: str | None = None, process_group=None):
        super().__init__()
        check_unit("beta", beta)  # fail at construction, not at the first step
        self.beta, self.temperature, self.teacher_grad, self.impl = (
            beta, temperature, teacher_grad, impl)
        self.process_group = process_group

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return jsd(student_logits, teacher_logits, beta=self.beta, temperature=self.temperature,
                   teacher_grad=self.teacher_grad, impl=self.impl,
                   process_group=self.process_group)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, temperature={self.temperature}"


class TVD(nn.Module):
    """Per-row total variation distance; see :func:`cord_kernels.tvd`.

    Example:
        >>> loss_fn = TVD(temperature=1.0)
        >>> d = loss_fn(student_logits, teacher_logits)        # (B, T)
    """

    def __init__(self, *, temperature: float = TEMPERATURE, impl: str | None = None,
                 process_group=None):
        super().__init__()
        LossOptions.check(temperature=temperature, impl=impl)  # fail at construction
        self.temperature, self.impl, self.process_group = temperature, impl, process_group

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return tvd(student_logits, teacher_logits, temperature=self.temperature, impl=self.impl,
                   process_group=self.process_group)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class TokenLogprobs(nn.Module):
    """Per-token log p(label); see :func:`cord_kernels.token_logprobs`."""

    def __init__(self, *, temperature: float = TEMPERATURE, ignore_index: int = IGNORE_INDEX,
                 impl: str | None = None, process_group=None, vocab_offset: int | None = None):
        super().__init__()
        self.temperature, self.ignore_index, self.impl = temperature, ignore_index, impl
        self.process_group, self.vocab_offset = process_group, vocab_offset

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return token_logprobs(logits, labels, temperature=self.temperature,
                              ignore_index=self.ignore_index, impl=self.impl,
                              process_group=self.process_group, vocab_offset=self.vocab_offset)


class CordTokenLoss(nn.Module):
    """The CORD weighted reverse-KL token loss; see :func:`cord_kernels.cord_token_loss`.

    ``forward`` takes ``mask`` or TRL-style ``labels=`` (valid where ``labels !=
    ignore_index``), and ``num_items_in_batch=`` for gradient accumulation.

    Example:
        >>> loss_fn = CordTokenLoss(top_k=20, alpha=2.0, beta=2.0)
        >>> loss = loss_fn(student_logits, teacher_logits, completion_mask)
    """

    def __init__(self, *, top_k: int = TOP_K, alpha: float = ALPHA, beta: float = BETA,
                 temperature: float = TEMPERATURE, reduction: str = REDUCTION,
                 return_per_token: bool = False, ignore_index: int = IGNORE_INDEX,
                 impl: str | None = None, process_group=None):
        super().__init__()
        LossOptions.check(top_k=top_k, alpha=alpha, beta=beta, temperature=temperature,
                          reduction=reduction, return_per_token=return_per_token,
                          ignore_index=ignore_index, impl=impl, process_group=process_group)
        self.top_k, self.alpha, self.beta = top_k, alpha, beta
        self.temperature, self.reduction, self.impl = temperature, reduction, impl
        self.return_per_token = return_per_token
        self.ignore_index = ignore_index
        self.process_group = process_group

    def options(self) -> dict:
        opts = dict(top_k=self.top_k, alpha=self.alpha, beta=self.beta,
                    temperature=self.temperature, reduction=self.reduction, impl=self.impl)
        if self.process_group is not None:  # vocabulary parallel
            opts["process_group"] = self.process_group
        return opts

    def forward(self, student_logits, teacher_logits, mask=None, *, labels=None,
                num_items_in_batch=None):
        return cord_token_loss(student_logits, teacher_logits, mask, labels=labels,
                               ignore_index=self.ignore_index,
                               num_items_in_batch=num_items_in_batch,
                               return_per_token=self.return_per_token, **self.options())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())


class FusedLinearCordTokenLoss(CordTokenLoss):
    """The CORD token loss from hidden states and the LM head, never holding the logits; see
    :func:`cord_kernels.fused_linear_cord_token_loss`.

    Example:
        >>> loss_fn = FusedLinearCordTokenLoss(top_k=20)
        >>> loss = loss_fn(student_hidden, teacher_hidden, model.lm_head.weight, mask)
    """

    def __init__(self, *, top_k: int = TOP_K, alpha: float = ALPHA, beta: float = BETA,
                 temperature: float = TEMPERATURE, softcap: float | None = None,
                 logit_scale: float = LOGIT_SCALE, reduction: str = REDUCTION,
                 return_per_token: bool = False, chunk_bytes: int | None = None,
                 ignore_index: int = IGNORE_INDEX, impl: str | None = None,
                 process_group=None, reduce_hidden_grad: bool = True):
        super().__init__(top_k=top_k, alpha=alpha, beta=beta, temperature=temperature,
                         reduction=reduction, return_per_token=return_per_token,
                         ignore_index=ignore_index, impl=impl, process_group=process_group)
        LossOptions.check(softcap=softcap, logit_scale=logit_scale, chunk_bytes=chunk_bytes,
                          reduce_hidden_grad=reduce_hidden_grad)
        self.softcap, self.logit_scale = softcap, logit_scale
        self.chunk_bytes = chunk_bytes
        self.reduce_hidden_grad = reduce_hidden_grad

    def options(self) -> dict:
        opts = super().options()
        if self.process_group is not None:
            opts["reduce_hidden_grad"] = self.reduce_hidden_grad
        return opts

    def forward(self, student_hidden, teacher_hidden, weight, mask=None, bias=None,
                teacher_weight=None, teacher_bias=None, *, labels=None,
                num_items_in_batch=None):
        return fused_linear_cord_token_loss(
            student_hidden, teacher_hidden, weight, mask, labels=labels,
            ignore_index=self.ignore_index, num_items_in_batch=num_items_in_batch, bias=bias,
            teacher_weight=teacher_weight, teacher_bias=teacher_bias,
            return_per_token=self.return_per_token, chunk_bytes=self.chunk_bytes,
            softcap=self.softcap, logit_scale=self.logit_scale, **self.options(),
        )


class FusedLinearDistillLoss(nn.Module):
    """A weighted distillation loss (reverse KL, forward KL or JSD) from hidden states and LM
    heads; see :func:`cord_kernels.fused_linear_distill_loss`.

    Example:
        >>> loss_fn = FusedLinearDistillLoss(divergence="jsd", jsd_beta=0.5)
        >>> loss = loss_fn(h_s, h_t, student.lm_head.weight, mask,
        ...                teacher_weight=teacher.lm_head.weight, token_weights=w)
    """

    def __init__(self, *, divergence: str = "reverse_kl", jsd_beta: float = JSD_BETA,
                 temperature: float = TEMPERATURE, softcap: float | None = None,
                 logit_scale: float = LOGIT_SCALE, reduction: str = REDUCTION,
                 return_per_token: bool = False, chunk_bytes: int | None = None,
                 ignore_index: int = IGNORE_INDEX, impl: str | None = None,
                 process_group=None, reduce_hidden_grad: bool = True):
        super().__init__()
        LossOptions.check(divergence=divergence, jsd_beta=jsd_beta, temperature=temperature,
                          softcap=softcap, logit_scale=logit_scale, reduction=reduction,
                          return_per_token=return_per_token, chunk_bytes=chunk_bytes,
                          ignore_index=ignore_index, impl=impl, process_group=process_group,
                          reduce_hidden_grad=reduce_hidden_grad)
        self.process_group, self.reduce_hidden_grad = process_group, reduce_hidden_grad
        self.softcap, self.logit_scale = softcap, logit_scale
        self.divergence, self.jsd_beta, self.temperature = divergence, jsd_beta, temperature
        self.reduction, self.return_per_token = reduction, return_per_token
        self.chunk_bytes, self.impl, self.ignore_index = chunk_bytes, impl, ignore_index

    def options(self) -> dict:
        opts = dict(divergence=self.divergence, jsd_beta=self.jsd_beta,
                    temperature=self.temperature, softcap=self.softcap,
                    logit_scale=self.logit_scale, reduction=self.reduction,
                    return_per_token=self.return_per_token, chunk_bytes=self.chunk_bytes,
                    impl=self.impl)
        if self.process_group is not None:  # vocabulary parallel
            opts.update(process_group=self.process_group,
                        reduce_hidden_grad=self.reduce_hidden_grad)
        return opts

    def forward(self, student_hidden, teacher_hidden, weight, mask=None, token_weights=None,
                bias=None, teacher_weight=None, teacher_bias=None, *, labels=None,
                num_items_in_batch=None):
        return fused_linear_distill_loss(
            student_hidden, teacher_hidden, weight, mask, labels=labels,
            ignore_index=self.ignore_index, num_items_in_batch=num_items_in_batch,
            token_weights=token_weights,
            bias=bias, teacher_weight=teacher_weight, teacher_bias=teacher_bias,
            **self.options(),
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())


class FusedLinearTokenLogprobs(nn.Module):
    """Per-token log p(label) from hidden states and the LM head; see
    :func:`cord_kernels.fused_linear_token_logprobs`."""

    def __init__(self, *, temperature: float = TEMPERATURE, softcap: float | None = None,
                 logit_scale: float = LOGIT_SCALE, ignore_index: int = IGNORE_INDEX,
                 chunk_bytes: int | None = None, impl: str | None = None,
                 process_group=None, vocab_offset: int | None = None,
                 reduce_hidden_grad: bool = True):
        super().__init__()
        LossOptions.check(temperature=temperature, softcap=softcap, logit_scale=logit_scale,
                          ignore_index=ignore_index, chunk_bytes=chunk_bytes, impl=impl,
                          process_group=process_group, vocab_offset=vocab_offset,
                          reduce_hidden_grad=reduce_hidden_grad)
        self.vp = {} if process_group is None else dict(
            process_group=process_group, vocab_offset=vocab_offset,
            reduce_hidden_grad=reduce_hidden_grad)
        self.temperature, self.ignore_index = temperature, ignore_index
        self.softcap, self.logit_scale = softcap, logit_scale
        self.chunk_bytes, self.impl = chunk_bytes, impl

    def forward(self, hidden, weight, labels, bias=None):
        return fused_linear_token_logprobs(
            hidden, weight, labels, bias=bias, temperature=self.temperature,
            softcap=self.softcap, logit_scale=self.logit_scale, ignore_index=self.ignore_index,
            chunk_bytes=self.chunk_bytes, impl=self.impl, **self.vp,
        )


class GRPOLoss(nn.Module):
    """The GRPO sequence loss with group-mean advantages; see :func:`cord_kernels.grpo_loss`."""

    def __init__(self, *, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, token_logprobs, mask, rewards):
        return grpo_loss(token_logprobs, mask, rewards, group_size=self.group_size)


# ------------------------------------------------------------------ sparse teachers
class _SparseLossOptions(nn.Module):
    def __init__(self, *, divergence: str = "forward_kl", jsd_beta: float = JSD_BETA,
                 tail: str = TAIL, temperature: float = TEMPERATURE, reduction: str = REDUCTION,
                 return_per_token: bool = False, impl: str | None = None,
                 process_group=None, vocab_offset: int | None = None):
        super().__init__()
        LossOptions.check(divergence=divergence, jsd_beta=jsd_beta, tail=tail,
                          temperature=temperature, reduction=reduction,
                          return_per_token=return_per_token, impl=impl,
                          process_group=process_group, vocab_offset=vocab_offset)
        self.opts = dict(divergence=divergence, jsd_beta=jsd_beta, tail=tail,
                         temperature=temperature, reduction=reduction,
                         return_per_token=return_per_token, impl=impl)
        if process_group is not None:  # vocabulary parallel
            self.opts.update(process_group=process_group, vocab_offset=vocab_offset)

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

    def __init__(self, *, softcap: float | None = None, logit_scale: float = LOGIT_SCALE,
                 chunk_bytes: int | None = None, reduce_hidden_grad: bool = True, **options):
        super().__init__(**options)
        LossOptions.check(softcap=softcap, logit_scale=logit_scale, chunk_bytes=chunk_bytes,
                          reduce_hidden_grad=reduce_hidden_grad)
        self.opts.update(softcap=softcap, logit_scale=logit_scale, chunk_bytes=chunk_bytes)
        if "process_group" in self.opts:
            self.opts["reduce_hidden_grad"] = reduce_hidden_grad

    def forward(self, student_hidden, weight, teacher_topk_logprobs, teacher_topk_ids, mask,
                bias=None, token_weights=None, num_items_in_batch=None):
        return fused_linear_sparse_teacher_loss(
            student_hidden, weight, teacher_topk_logprobs, teacher_topk_ids, mask, bias=bias,
            token_weights=token_weights, num_items_in_batch=num_items_in_batch, **self.opts)
