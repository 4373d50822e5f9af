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
from dataclasses import dataclass

import torch

from cord_kernels.core.dispatch import resolve_impl
from cord_kernels.core.options import ALPHA, BETA, TOP_K, LossOptions
from cord_kernels.core.validation import check_token_weights
from cord_kernels.fused import chunked_head as ch
from cord_kernels.fused.cord_token_loss import CordWeighting
from cord_kernels.fused.distill import FixedWeights, check_distill_inputs, distill_sums
from cord_kernels.logits.jsd import jsd
from cord_kernels.sparse.student_topk import student_topk_distill_loss

# The TRL versions this module was written for and tested with (pyproject's [trl] extra).
TESTED_TRL = ">=1.16,<1.17"
# The module and attribute :func:`enable` patches.
TRL_MODULE = "trl.trainer.distillation_trainer"
TRL_FUNCTION = "_chunked_divergence_loss"


# ---------------------------------------------------------------------- the shared driver


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
    # TRL's reduction: sum / num_items_in_batch, else the mean over valid positions (an
    # all-masked rank gives 0, not 0 / 0), as LossOptions reduces every loss.
    opts = LossOptions.check(
        **_beta_divergence(beta), temperature=temperature,
        softcap=student_final_logit_softcapping, logit_scale=student_logit_scale,
        reduction="mean", num_items_in_batch=num_items_in_batch)
    teacher_opts = LossOptions.check(softcap=teacher_final_logit_softcapping,
                                     logit_scale=teacher_logit_scale)
    valid = completion_mask != 0
    mask = check_distill_inputs(student_hidden_states, teacher_hidden_states, w_s, b_s, w_t,
                                b_t, valid)
    impl = resolve_impl(opts.impl, student_hidden_states, w_s)
    h_t, w_t = teacher_hidden_states.detach(), w_t.detach()
    b_t = None if b_t is None else b_t.detach()
    params = ch.HeadParams(
        opts, impl, (ch.operand_dtype(student_hidden_states, w_s), ch.operand_dtype(h_t, w_t)),
        teacher_logits=ch.LogitTransform(teacher_opts.logit_scale, teacher_opts.softcap),
        want_entropy=True)
    tensors = (student_hidden_states, h_t, w_s, b_s, w_t, b_t, mask)
    total, _, entropy_sum = distill_sums(tensors, weighting_of(mask), params)
    loss = opts.reduce_total(total, mask)
    n_valid = valid.sum()
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


# -------------------------------------------------------- the other trainers (logits in)


def _beta_divergence(beta: float) -> dict:
    """TRL's beta (0 forward KL, 1 reverse KL, else the generalized JSD) as our options."""
    beta = float(beta)
    if beta == 0.0:
        return {"divergence": "forward_kl"}
    if beta == 1.0:
        return {"divergence": "reverse_kl"}
    return {"divergence": "jsd", "jsd_beta": beta}


def generalized_jsd_loss(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0,
                         reduction="batchmean", num_items_in_batch=None):
    """TRL's ``GKDTrainer.generalized_jsd_loss`` (a staticmethod, logits in) through
    ``cord_kernels.jsd``: the per-row generalized JSD streamed over the vocabulary instead of
    TRL's log-softmaxes, mixture and (B, T, V) ``kl_div`` terms; then TRL's reductions. Its
    ``reduction="none"`` (the (n, V) terms themselves) and a teacher needing a gradient are
    left to TRL's own function, which :func:`enable` keeps for them."""
    if (reduction == "none" and num_items_in_batch is None) or teacher_logits.requires_grad:
        return _original("gkd", "generalized_jsd_loss")(
            student_logits, teacher_logits, labels, beta, temperature, reduction,
            num_items_in_batch)
    d = jsd(student_logits, teacher_logits, beta=float(beta), temperature=temperature)
    mask = None if labels is None else labels != -100
    total = (d if mask is None else torch.where(mask, d, 0.0)).sum()
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    if reduction == "batchmean":
        return total / (mask.sum().clamp_min(1) if mask is not None else max(d.shape[0], 1))
    if reduction == "sum":
        return total
    # "mean": TRL's mean over the (rows, V) terms
    rows = mask.sum() if mask is not None else d.numel()
    return total / (rows * student_logits.shape[-1])


def compute_full_logit_self_distillation_loss(student_logits, teacher_logits, *,
                                              distillation_alpha):
    """TRL SDPO's / SDFT's full-vocabulary self-distillation loss (``loss_utils``): (B, T) per
    token divergence with TRL's beta convention (``distillation_alpha``), via ``jsd``."""
    return jsd(student_logits, teacher_logits, beta=float(distillation_alpha),
               teacher_grad=teacher_logits.requires_grad)


def compute_topk_self_distillation_loss(student_logits, teacher_logits, *, distillation_topk,
                                        distillation_alpha, distillation_add_tail):
    """TRL SDPO's / SDFT's top-k self-distillation loss: the divergence on the student's top-k
    support (a tail bucket, or both sides renormalised), via ``student_topk_distill_loss``.
    A teacher needing a gradient is left to TRL's own function."""
    if teacher_logits.requires_grad:
        # TRL's own (the trainers' modules hold patched names; loss_utils keeps the original)
        trl_topk = importlib.import_module(
            "trl.experimental.sdpo.loss_utils").compute_topk_self_distillation_loss
        return trl_topk(
            student_logits, teacher_logits, distillation_topk=distillation_topk,
            distillation_alpha=distillation_alpha, distillation_add_tail=distillation_add_tail)
    mask = torch.ones(student_logits.shape[:-1], dtype=torch.bool, device=student_logits.device)
    return student_topk_distill_loss(
        student_logits, teacher_logits, mask, k=distillation_topk,
        tail="bucket" if distillation_add_tail else "renormalize", reduction="none",
        **_beta_divergence(distillation_alpha))


# ------------------------------------------------------------------------ enable / disable


@dataclass(frozen=True)
class Patch:
    """One TRL object :func:`enable` replaces: ``module.owner.attr`` (``owner`` None: a module
    attribute; else a class whose staticmethod it is) by ``replacement``, whose signature must
    equal TRL's less the keyword-only ``extras`` this module adds."""

    trainer: str
    module: str
    owner: str | None
    attr: str
    replacement: object
    extras: tuple[str, ...] = ()

    def holder(self):
        module = importlib.import_module(self.module)
        return module if self.owner is None else getattr(module, self.owner)

    def read(self, holder):
        """TRL's raw object (the staticmethod object itself for a class attribute)."""
        if self.owner is None:
            return getattr(holder, self.attr, None)
        return holder.__dict__.get(self.attr)


# What enable() covers (docs/integrations.md says what each replaces and what is left, why).
PATCHES = (
    Patch("distillation", TRL_MODULE, None, TRL_FUNCTION, chunked_divergence_loss,
          ("token_weights",)),
    Patch("gkd", "trl.experimental.gkd.gkd_trainer", "GKDTrainer", "generalized_jsd_loss",
          generalized_jsd_loss),
    *(Patch(name, f"trl.experimental.{name}.{name}_trainer", None, fn.__name__, fn)
      for name in ("sdpo", "sdft")
      for fn in (compute_full_logit_self_distillation_loss, compute_topk_self_distillation_loss)),
)
TRAINERS = tuple(dict.fromkeys(p.trainer for p in PATCHES))


def _params(fn, extras=()) -> list[tuple[str, object, object]]:
    """(name, kind, default) of a function's parameters, less ``extras``."""
    fn = fn.__func__ if isinstance(fn, staticmethod) else fn
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()
            if p.name not in extras]


def _signature_text(fn, extras=()) -> str:
    fn = fn.__func__ if isinstance(fn, staticmethod) else fn
    params = [p.replace(annotation=inspect.Parameter.empty)
              for p in inspect.signature(fn).parameters.values() if p.name not in extras]
    return str(inspect.Signature(params))


# The signature this module was written for: chunked_divergence_loss's, less token_weights.
TRL_SIGNATURE = _signature_text(chunked_divergence_loss, ("token_weights",))

_originals: dict[Patch, object] = {}  # what enable() replaced -> TRL's own object


def _original(trainer: str, attr: str):
    """TRL's own function behind a patch (the live attribute when not patched)."""
    for p, raw in _originals.items():
        if p.trainer == trainer and p.attr == attr:
            return raw.__func__ if isinstance(raw, staticmethod) else raw
    patch = next(p for p in PATCHES if p.trainer == trainer and p.attr == attr)
    raw = patch.read(patch.holder())
    return raw.__func__ if isinstance(raw, staticmethod) else raw


def _checked(patch: Patch):
    """(holder, TRL's raw object) of a patch, or RuntimeError naming both signatures."""
    holder = patch.holder()
    original = _originals.get(patch, patch.read(holder))
    name = patch.attr if patch.owner is None else f"{patch.owner}.{patch.attr}"
    where = f"{patch.module}.{name}"
    if original is None:
        raise RuntimeError(f"{where} not found (the installed TRL is not {TESTED_TRL}); "
                           "cord_kernels.integrations.trl did not patch it")
    if _params(original) != _params(patch.replacement, patch.extras):
        raise RuntimeError(
            f"TRL's {patch.attr}{_signature_text(original)} differs from "
            f"{patch.attr}{_signature_text(patch.replacement, patch.extras)} that "
            f"cord_kernels.integrations.trl was written for (TRL {TESTED_TRL}); not patched")
    return holder, original


def enable(loss=None, *, trainers=None) -> None:
    """Routes TRL's trainers through this project's losses, replacing TRL's objects (see
    :data:`PATCHES`): ``DistillationTrainer``'s ``_chunked_divergence_loss`` by ``loss``
    (default :func:`chunked_divergence_loss`; :func:`cord_loss` gives CORD's weights), GKD's
    ``generalized_jsd_loss``, SDPO's and SDFT's full-logit and top-k losses. ``trainers``: a
    subset of :data:`TRAINERS` (default: every one whose module imports; the experimental
    ones are skipped when they do not). Checks every signature before patching anything and
    refuses (RuntimeError, one line naming both signatures) when TRL's differs. Calling it
    again swaps ``loss``; :func:`disable` restores TRL's own objects."""
    wanted = TRAINERS if trainers is None else tuple(trainers)
    unknown = sorted(set(wanted) - set(TRAINERS))
    if unknown:
        raise ValueError(f"trainers must be among {TRAINERS}, got {unknown}")
    plan = []
    for patch in PATCHES:
        if patch.trainer not in wanted:
            continue
        try:
            holder, original = _checked(patch)
        except ImportError:
            if trainers is not None or patch.trainer == "distillation":
                raise
            continue
        plan.append((patch, holder, original))
    for patch, holder, original in plan:
        _originals.setdefault(patch, original)
        new = patch.replacement
        if patch.trainer == "distillation" and loss is not None:
            new = loss
        setattr(holder, patch.attr, staticmethod(new) if patch.owner else new)


def disable() -> None:
    """Restores every TRL object :func:`enable` replaced (a no-op when none is)."""
    while _originals:
        patch, original = _originals.popitem()
        setattr(patch.holder(), patch.attr, original)


def is_enabled() -> bool:
    return bool(_originals)


@contextlib.contextmanager
def patched(loss=None, *, trainers=None):
    """``with patched(): trainer.train()``: :func:`enable` for a block, then TRL's own objects
    again (or what was enabled before the block)."""
    before = {p: p.read(p.holder()) for p in _originals}
    enable(loss, trainers=trainers)
    try:
        yield
    finally:
        for patch in list(_originals):
            if patch in before:
                setattr(patch.holder(), patch.attr, before[patch])
            else:
                setattr(patch.holder(), patch.attr, _originals.pop(patch))
