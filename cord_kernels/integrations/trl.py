"""TRL's distillation loss through the fused-linear path: one line to switch, same numbers.

    from cord_kernels.integrations import trl as cord_trl
    cord_trl.enable()          # TRL's DistillationTrainer now computes its loss here

TRL 1.16's ``DistillationTrainer`` calls one module-level function,
``trl.trainer.distillation_trainer._chunked_divergence_loss`` (6 GEMMs: its
``ChunkedDivergenceFunction`` recomputes both projections in backward).
:func:`chunked_divergence_loss` has its signature, defaults, semantics and return value and runs
``fused/distill.py``'s chunk driver (4 GEMMs, the gradients formed in forward while the logits
tiles are live); the student entropy TRL logs comes from the same tiles, with no extra GEMM.

:func:`enable` / :func:`disable` / :func:`patched` swap that module attribute and restore TRL's
own function object. Before patching, :func:`enable` compares TRL's signature with the one this
module was written for (:data:`TRL_SIGNATURE`) and refuses with one line naming both when they
differ. :func:`cord_loss` gives a loss of the same signature whose per-token weights are the
CORD weights (top-K divergent tokens x positional decay, ``cord_weights``) computed from the
divergence of the same pass: ``enable(cord_loss())``. See ``docs/integrations.md``.

Nothing here imports TRL until :func:`enable` runs; the losses need torch only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect

import torch

from cord_kernels.core.dispatch import resolve_impl
from cord_kernels.core.options import ALPHA, BETA, TOP_K, LossOptions
from cord_kernels.core.validation import check_token_weights
from cord_kernels.fused import chunked_head as ch
from cord_kernels.fused.cord_token_loss import CordWeighting
from cord_kernels.fused.distill import (
    DistillProblem,
    FixedWeights,
    TokenWeighting,
    check_distill_inputs,
    weighted_sum,
)

# The TRL versions this module was written for and tested with (pyproject's [trl] extra).
TESTED_TRL = ">=1.16,<1.17"
# The module and attribute :func:`enable` patches.
TRL_MODULE = "trl.trainer.distillation_trainer"
TRL_FUNCTION = "_chunked_divergence_loss"


# --------------------------------------------------------------------- the autograd Function


class _TRLDivergenceFunction(torch.autograd.Function):
    """(sum_t w_t Div_t, sum_t H(p_t)) over the valid rows, gradients formed in forward (4
    GEMMs) and scaled by the cotangent in backward, as ``FusedDistillSumFunction``."""

    @staticmethod
    def forward(ctx, student_hidden, teacher_hidden, weight, bias, teacher_weight, teacher_bias,
                mask, weighting: TokenWeighting, params: ch.HeadParams):
        with ch.no_autocast(student_hidden.device):
            problem = DistillProblem(student_hidden, teacher_hidden, weight, bias,
                                     teacher_weight, teacher_bias, mask, params)
            grads = problem.grads(ctx.needs_input_grad[0], ctx.needs_input_grad[2],
                                  ctx.needs_input_grad[3])
            total, _, _ = weighted_sum(problem, weighting, grads)
        ch.stash_grads(ctx, grads, problem.index, student_hidden, weight, bias)
        entropy = problem.entropy.sum()
        ctx.mark_non_differentiable(entropy)
        return total, entropy

    @staticmethod
    def backward(ctx, grad_total, _grad_entropy):
        gh, gw, gb = ch.scaled_grads(ctx, grad_total)
        return gh, None, gw, gb, None, None, None, None, None


def _full(weight, bias, dtype):
    """TRL's DTensor handling: a sharded (FSDP2) head is gathered once per call with
    ``full_tensor()`` (its backward is the one reduce-scatter) and the weight cast to the hidden
    states' dtype; plain tensors pass through."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return weight, bias
    if isinstance(weight, DTensor):
        weight = weight.full_tensor().to(dtype)
        if bias is not None:
            bias = bias.full_tensor()
    return weight, bias


def _divergence_loss(student_hidden_states, teacher_hidden_states, student_lm_head_weight,
                     teacher_lm_head_weight, completion_mask, beta, num_items_in_batch,
                     student_lm_head_bias, teacher_lm_head_bias, student_logit_scale,
                     teacher_logit_scale, student_final_logit_softcapping,
                     teacher_final_logit_softcapping, temperature, weighting_of):
    """The body of both public losses; ``weighting_of(mask)`` gives the TokenWeighting."""
    w_s, b_s = _full(student_lm_head_weight, student_lm_head_bias, student_hidden_states.dtype)
    w_t, b_t = _full(teacher_lm_head_weight, teacher_lm_head_bias, teacher_hidden_states.dtype)
    beta = float(beta)
    divergence = "forward_kl" if beta == 0.0 else "reverse_kl" if beta == 1.0 else "jsd"
    opts = LossOptions.check(
        divergence=divergence, **({"jsd_beta": beta} if divergence == "jsd" else {}),
        temperature=temperature, softcap=student_final_logit_softcapping,
        logit_scale=student_logit_scale, reduction="sum")
    teacher_opts = LossOptions.check(softcap=teacher_final_logit_softcapping,
                                     logit_scale=teacher_logit_scale)
    valid = completion_mask != 0
    mask = check_distill_inputs(student_hidden_states, teacher_hidden_states, w_s, b_s, w_t,
                                b_t, valid)
    n_valid = valid.sum()
    impl = resolve_impl(opts.impl, student_hidden_states, w_s)
    h_t, w_t = teacher_hidden_states.detach(), w_t.detach()
    b_t = None if b_t is None else b_t.detach()
    params = ch.HeadParams(
        opts, impl, (ch.operand_dtype(student_hidden_states, w_s), ch.operand_dtype(h_t, w_t)),
        teacher_logits=ch.LogitTransform(teacher_opts.logit_scale, teacher_opts.softcap),
        want_entropy=True)
    weighting = weighting_of(mask)
    tensors = (student_hidden_states, h_t, w_s, b_s, w_t, b_t, mask)
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (student_hidden_states, w_s, b_s)):
        loss, entropy_sum = _TRLDivergenceFunction.apply(*tensors, weighting, params)
    else:  # evaluation: the 2 projection GEMMs only
        with ch.no_autocast(student_hidden_states.device):
            problem = DistillProblem(*tensors, params)
            loss, _, _ = weighted_sum(problem, weighting, None)
        entropy_sum = problem.entropy.sum()
    if num_items_in_batch is None:
        # Clamped so a fully-masked rank reduces to a finite zero rather than 0 / 0 (TRL's).
        loss = loss / n_valid.clamp(min=1)
    else:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss, entropy_sum, n_valid


# ------------------------------------------------------------------------------ the losses


def chunked_divergence_loss(
    student_hidden_states: torch.Tensor,
    teacher_hidden_states: torch.Tensor,
    student_lm_head_weight: torch.Tensor,
    teacher_lm_head_weight: torch.Tensor,
    completion_mask: torch.Tensor,
    beta: float,
    num_items_in_batch: torch.Tensor | int | None = None,
    student_lm_head_bias: torch.Tensor | None = None,
    teacher_lm_head_bias: torch.Tensor | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_final_logit_softcapping: float | None = None,
    teacher_final_logit_softcapping: float | None = None,
    temperature: float = 1.0,
    *,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL 1.16's ``trl.trainer.distillation_trainer._chunked_divergence_loss``, in 4 GEMMs.

    Per valid position t (``completion_mask != 0``), with s = h_s W_s^T (+ b_s) and
    u = h_t W_t^T (+ b_t) scaled, then softcapped, then divided by ``temperature``,
    p = softmax(s), q = softmax(u):

        Div_t = KL(q || p) (beta = 0) | KL(p || q) (beta = 1) |
                beta KL(q || m) + (1 - beta) KL(p || m), m = (1 - beta) p + beta q
        loss = sum_t w_t Div_t / num_items_in_batch   (or / max(valid positions, 1))

    with w_t = ``token_weights`` (1 when None; the one addition to TRL's signature).

    Args:
        student_hidden_states: (B, K, H_s) the student's final hidden states on the
            completion tokens (gets the gradient).
        teacher_hidden_states: (B, K, H_t) the teacher's (H_t may differ; no gradient).
        student_lm_head_weight, teacher_lm_head_weight: (V, H_s), (V, H_t); DTensors (FSDP2)
            are gathered once per call, as TRL does.
        completion_mask: (B, K), non-zero at the positions in the loss.
        beta: TRL's beta in [0, 1].
        num_items_in_batch: the valid tokens of the accumulated batch (int or tensor), or None.
        student_lm_head_bias, teacher_lm_head_bias: optional (V,) biases.
        student_logit_scale, teacher_logit_scale: multipliers before the softcap.
        student_final_logit_softcapping, teacher_final_logit_softcapping: softcap or None.
        temperature: tau > 0, after the scale and the softcap.
        token_weights: optional (B, K) float weights >= 0 without grad per token's divergence.

    Returns:
        ``(loss, entropy_sum, n_valid)``: the scalar loss, the student's entropy (nats) summed
        over the valid positions (no gradient), and the number of valid positions (int64).

    Example:
        >>> loss, ent, n = chunked_divergence_loss(h_s, h_t, student.lm_head.weight,
        ...     teacher.lm_head.weight, mask, 0.5)
        >>> loss.backward()
    """
    def weighting_of(mask):
        return FixedWeights(check_token_weights(token_weights, mask))

    return _divergence_loss(
        student_hidden_states, teacher_hidden_states, student_lm_head_weight,
        teacher_lm_head_weight, completion_mask, beta, num_items_in_batch,
        student_lm_head_bias, teacher_lm_head_bias, student_logit_scale, teacher_logit_scale,
        student_final_logit_softcapping, teacher_final_logit_softcapping, temperature,
        weighting_of)


def cord_divergence_loss(*args, top_k: int = TOP_K, alpha: float = ALPHA,
                         position_beta: float = BETA, **kwargs):
    """:func:`chunked_divergence_loss` (TRL's arguments, positional or by name; no
    ``token_weights``) with the CORD token weights: w_t = w^KL_t w^pos_t (``cord_weights``:
    ``alpha`` on each sequence's ``top_k`` positions of largest Div, a linear decay from
    ``position_beta`` at its first valid position to 1 at its last), computed from the Div of
    the same pass: chunks hold whole sequences, and a sequence longer than a chunk has its
    top-K rows corrected by a recompute of those rows alone (``fused/cord_token_loss.py``).
    Still TRL's reduction (sum / num_items_in_batch or / valid positions). beta = 1 is the
    paper's reverse KL."""
    if "token_weights" in kwargs:
        raise TypeError("cord_divergence_loss computes its own token weights; token_weights= "
                        "is chunked_divergence_loss's option")
    bound = inspect.signature(chunked_divergence_loss).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    opts = LossOptions.check(top_k=top_k, alpha=alpha, beta=position_beta)
    weighting = CordWeighting(opts.top_k, opts.alpha, opts.beta)
    return _divergence_loss(
        a["student_hidden_states"], a["teacher_hidden_states"], a["student_lm_head_weight"],
        a["teacher_lm_head_weight"], a["completion_mask"], a["beta"], a["num_items_in_batch"],
        a["student_lm_head_bias"], a["teacher_lm_head_bias"], a["student_logit_scale"],
        a["teacher_logit_scale"], a["student_final_logit_softcapping"],
        a["teacher_final_logit_softcapping"], a["temperature"], lambda mask: weighting)


def cord_loss(top_k: int = TOP_K, alpha: float = ALPHA, position_beta: float = BETA):
    """A loss with TRL's signature whose token weights are CORD's (see
    :func:`cord_divergence_loss`): ``enable(cord_loss(top_k=20, alpha=2, position_beta=2))``
    puts CORD's weights into TRL's ``DistillationTrainer``."""
    LossOptions.check(top_k=top_k, alpha=alpha, beta=position_beta)
    return functools.partial(cord_divergence_loss, top_k=top_k, alpha=alpha,
                             position_beta=position_beta)


# ------------------------------------------------------------------------ enable / disable


def _trl_parameters(fn) -> list[tuple[str, object, object]]:
    """(name, kind, default) of a function's positional-or-keyword parameters."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()
            if p.kind is not inspect.Parameter.KEYWORD_ONLY]


def _signature_text(fn) -> str:
    params = [p.replace(annotation=inspect.Parameter.empty)
              for p in inspect.signature(fn).parameters.values()
              if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    return str(inspect.Signature(params))


# The signature this module was written for: chunked_divergence_loss's, less token_weights.
TRL_SIGNATURE = _signature_text(chunked_divergence_loss)

_originals: dict[tuple[str, str], object] = {}  # (module, attribute) -> TRL's own object


def _target():
    module = importlib.import_module(TRL_MODULE)
    found = getattr(module, TRL_FUNCTION, None)
    original = _originals.get((TRL_MODULE, TRL_FUNCTION), found)
    if found is None or not callable(original):
        raise RuntimeError(f"{TRL_MODULE}.{TRL_FUNCTION} not found (the installed TRL is not "
                           f"{TESTED_TRL}); cord_kernels.integrations.trl did not patch it")
    if _trl_parameters(original) != _trl_parameters(chunked_divergence_loss):
        raise RuntimeError(
            f"TRL's {TRL_FUNCTION}{_signature_text(original)} differs from "
            f"{TRL_FUNCTION}{TRL_SIGNATURE} that cord_kernels.integrations.trl was written for "
            f"(TRL {TESTED_TRL}); not patched")
    return module, original


def enable(loss=None) -> None:
    """Routes TRL's ``DistillationTrainer`` loss through ``loss`` (default
    :func:`chunked_divergence_loss`; :func:`cord_loss` gives CORD's weights) by replacing
    ``trl.trainer.distillation_trainer._chunked_divergence_loss``. Calling it again swaps the
    loss; :func:`disable` restores TRL's own function. Refuses (RuntimeError, one line naming
    both signatures) when the installed TRL's function has another signature."""
    module, original = _target()
    _originals.setdefault((TRL_MODULE, TRL_FUNCTION), original)
    setattr(module, TRL_FUNCTION, chunked_divergence_loss if loss is None else loss)


def disable() -> None:
    """Restores every TRL object :func:`enable` replaced (a no-op when none is)."""
    while _originals:
        (module_name, attr), original = _originals.popitem()
        setattr(importlib.import_module(module_name), attr, original)


def is_enabled() -> bool:
    return bool(_originals)


@contextlib.contextmanager
def patched(loss=None):
    """``with patched(): trainer.train()``: :func:`enable` for a block, then TRL's own loss
    again (or the loss that was enabled before the block)."""
    before = getattr(importlib.import_module(TRL_MODULE), TRL_FUNCTION, None) \
        if is_enabled() else None
    enable(loss)
    try:
        yield
    finally:
        if before is None:
            disable()
        else:
            enable(before)
