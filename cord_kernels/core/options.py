"""The options contract of every loss: each default written once, each rule checked once.

Every public loss builds one :class:`LossOptions` per call with :meth:`LossOptions.check`,
passing the options it has by name (CCE builds its ``CCEParams`` the same way); the kernels and
drivers below then read checked, typed values from it. The ``nn.Module`` wrappers call the same
check at construction, so a bad option fails before the first step.

The rules, one place each:

- ``reduction``: "batchmean" (sum / B), "sum", "mean" (sum / valid tokens) or "none".
- ``num_items_in_batch=n`` (an int >= 1 or a one-element tensor): the loss is sum / n, whatever
  the scalar reduction (TRL's and transformers' gradient-accumulation convention: the trainer
  passes the valid tokens of the whole optimizer step and the loss sums, then divides by it;
  ``"mean"`` with n is the accumulated batch's mean). With ``reduction="none"`` there is no
  sum to divide: a ValueError. The one division is :func:`reduction.reduce_total`'s.
- ``divergence`` / ``jsd_beta``: the JSD at beta 0 / 1 is exactly the forward / reverse KL
  (TRL's special case), so :attr:`LossOptions.divergence` holds the divergence computed;
  ``jsd_beta`` away from its default with another divergence would be silently unused: an error.
- ``inplace_backward=True`` with ``impl="torch"`` would be silently unused: an error.
- ``ignore_index`` is an option of ``labels=`` only (see ``validation.check_mask_or_labels``).
- ``top_k >= 0`` (0: no token is up-weighted), ``alpha, beta >= 0``; ``temperature``,
  ``softcap`` and ``logit_scale`` finite and > 0 (``softcap=None``: none, held as 0.0).
- ``process_group`` (vocabulary parallel, ``core/vocab_parallel.py``): None (the whole
  vocabulary on this rank) or a ``torch.distributed`` group; ``vocab_offset`` (an int >= 0,
  this rank's first global id) needs one; ``reduce_hidden_grad`` (hidden-states-in losses:
  all-reduce the hidden-state gradient inside the loss) is a bool.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

import torch

from cord_kernels.core.reduction import reduce_total, reduce_weighted
from cord_kernels.core.validation import (
    check_bool,
    check_nonneg_number,
    check_positive,
    check_positive_int,
    check_temperature,
    check_unit,
)

# ---------------------------------------------------------------------------- defaults
# The public signatures, the nn.Module wrappers and this module read these names.

TEMPERATURE = 1.0
REDUCTION = "batchmean"
IGNORE_INDEX = -100  # TRL's, Liger's and PyTorch's
TOP_K = 20  # CORD: tokens per sequence whose weight grows (paper section 3.2)
ALPHA = 2.0  # CORD: the top-K up-weighting
BETA = 2.0  # CORD: the position decay
JSD_BETA = 0.5
TAIL = "bucket"  # TRL's _add_tail_bucket
LOGIT_SCALE = 1.0
# Budget for the fp32 logits tiles of one chunk of the fused-linear losses, in bytes (both
# branches together for the distillation losses). 1 GiB holds ~880 tokens at V=152k: enough
# rows for full-speed GEMMs on a CPU or a GPU, and far below the (N, V) logits it replaces
# (10 GB per branch at N=16k).
DEFAULT_CHUNK_BYTES = 1 << 30

REDUCTIONS = ("batchmean", "sum", "mean", "none")
IMPLS = (None, "triton", "torch")


class Divergence(str, enum.Enum):
    """The per-token divergence of a distillation loss (p: student, q: teacher)."""

    REVERSE_KL = "reverse_kl"  # KL(p || q)
    FORWARD_KL = "forward_kl"  # KL(q || p)
    JSD = "jsd"  # b KL(q || m) + (1 - b) KL(p || m), m = (1 - b) p + b q, b = jsd_beta
    TVD = "tvd"  # 1/2 sum_v |p_v - q_v|


DIVERGENCES = tuple(d.value for d in Divergence)


class Tail(str, enum.Enum):
    """What a sparse loss does with the probability mass off the top-k support."""

    BUCKET = "bucket"
    RENORMALIZE = "renormalize"


TAILS = tuple(t.value for t in Tail)


def resolve_divergence(divergence: str, jsd_beta: float) -> Divergence:
    """The divergence actually computed: the JSD at beta = 0 / 1 is forward / reverse KL."""
    div = Divergence(divergence)
    if div is Divergence.JSD and jsd_beta in (0.0, 1.0):
        return Divergence.FORWARD_KL if jsd_beta == 0.0 else Divergence.REVERSE_KL
    return div


# ------------------------------------------------------------------------- the checks


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_impl(impl) -> str | None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def check_num_items(num_items_in_batch):
    """None, an int >= 1, or a one-element tensor (reshaped to a scalar)."""
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError("num_items_in_batch must be an int or a one-element tensor, got "
                             f"shape {tuple(num_items_in_batch.shape)}")
        return num_items_in_batch.reshape(())
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, int):
        raise TypeError("num_items_in_batch must be an int or a tensor, got "
                        f"{type(num_items_in_batch).__name__}")
    if num_items_in_batch < 1:
        raise ValueError(f"num_items_in_batch must be >= 1, got {num_items_in_batch}")
    return num_items_in_batch


def check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    return top_k


def check_k(k, vocab: int) -> int:
    """A support size: an int in [1, V] (it needs the vocabulary, so it is not a field)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, V] = [1, {vocab}], got {k}")
    return k


def check_softcap(softcap) -> float:
    """A finite number > 0, or None (held as 0.0: no cap)."""
    return 0.0 if softcap is None else check_positive("softcap", softcap)


def check_chunk_bytes(chunk_bytes) -> int:
    return DEFAULT_CHUNK_BYTES if chunk_bytes is None else check_positive_int(
        "chunk_bytes", chunk_bytes)


def check_ignore_index(ignore_index) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return ignore_index


def check_divergence(divergence) -> str:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    return divergence


def check_tail(tail) -> Tail:
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    return Tail(tail)


def check_process_group(group):
    """None or a ``torch.distributed`` process group."""
    if group is None:
        return None
    import torch.distributed as dist
    if not dist.is_available() or not isinstance(group, dist.ProcessGroup):
        raise TypeError("process_group must be a torch.distributed ProcessGroup or None, got "
                        f"{type(group).__name__}")
    return group


def check_vocab_offset(offset):
    if offset is None:
        return None
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"vocab_offset must be an int or None, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"vocab_offset must be >= 0, got {offset}")
    return offset


def _checker(check):
    """The dataclass field metadata that names a field's check."""
    return {"check": check}


# ------------------------------------------------------------------------- the object


@dataclass(frozen=True)
class LossOptions:
    """The checked non-tensor options of one loss call (fields a loss does not take keep their
    defaults). Build it with :meth:`check`; it travels to the drivers as one object."""

    temperature: float = field(default=TEMPERATURE, metadata=_checker(check_temperature))
    reduction: str = field(default=REDUCTION, metadata=_checker(check_reduction))
    num_items_in_batch: int | torch.Tensor | None = field(
        default=None, metadata=_checker(check_num_items))
    return_per_token: bool = field(
        default=False, metadata=_checker(lambda v: check_bool("return_per_token", v)))
    divergence: Divergence = field(default=Divergence.REVERSE_KL,
                                   metadata=_checker(check_divergence))
    jsd_beta: float = field(default=JSD_BETA,
                            metadata=_checker(lambda v: check_unit("jsd_beta", v)))
    tail: Tail = field(default=Tail(TAIL), metadata=_checker(check_tail))
    top_k: int = field(default=TOP_K, metadata=_checker(check_top_k))
    alpha: float = field(default=ALPHA,
                         metadata=_checker(lambda v: check_nonneg_number("alpha", v)))
    beta: float = field(default=BETA, metadata=_checker(lambda v: check_nonneg_number("beta", v)))
    softcap: float = field(default=0.0, metadata=_checker(check_softcap))  # 0.0: none
    logit_scale: float = field(default=LOGIT_SCALE,
                               metadata=_checker(lambda v: check_positive("logit_scale", v)))
    chunk_bytes: int = field(default=DEFAULT_CHUNK_BYTES, metadata=_checker(check_chunk_bytes))
    ignore_index: int = field(default=IGNORE_INDEX, metadata=_checker(check_ignore_index))
    teacher_grad: bool = field(
        default=False, metadata=_checker(lambda v: check_bool("teacher_grad", v)))
    inplace_backward: bool = field(
        default=False, metadata=_checker(lambda v: check_bool("inplace_backward", v)))
    impl: str | None = field(default=None, metadata=_checker(check_impl))
    process_group: object = field(default=None, metadata=_checker(check_process_group))
    vocab_offset: int | None = field(default=None, metadata=_checker(check_vocab_offset))
    reduce_hidden_grad: bool = field(
        default=True, metadata=_checker(lambda v: check_bool("reduce_hidden_grad", v)))

    @classmethod
    def check(cls, **given) -> LossOptions:
        """Checks the options a loss was given (by their public names) and the rules between
        them; raises ``TypeError`` / ``ValueError`` with a one-line message naming the
        argument."""
        values = {}
        for name, value in given.items():
            if name not in _CHECKS:  # a programming error inside the library
                raise TypeError(f"LossOptions has no option {name!r}")
            values[name] = _CHECKS[name](value)
        if "divergence" in values:
            jsd_beta = values.get("jsd_beta", JSD_BETA)
            if values["divergence"] != "jsd" and jsd_beta != JSD_BETA:
                raise ValueError(f"jsd_beta={jsd_beta!r} is used by divergence='jsd' only, "
                                 f"got divergence={values['divergence']!r}; pass "
                                 "divergence='jsd' or drop jsd_beta")
            values["divergence"] = resolve_divergence(values["divergence"], jsd_beta)
            if values["divergence"] is Divergence.TVD and "tail" in values:
                sparse = tuple(d for d in DIVERGENCES if d != Divergence.TVD.value)
                raise ValueError(f"divergence must be one of {sparse} with a sparse teacher "
                                 "(the TVD is dense only), got 'tvd'")
        opts = cls(**values)
        if opts.num_items_in_batch is not None and opts.reduction == "none":
            raise ValueError("num_items_in_batch divides the summed loss: it needs a scalar "
                             "reduction, got reduction='none'")
        if opts.vocab_offset is not None and opts.process_group is None:
            raise ValueError("vocab_offset is this rank's first id in a process_group's "
                             "vocabulary: pass process_group too, or drop vocab_offset")
        if opts.impl == "torch" and opts.inplace_backward:
            raise ValueError("inplace_backward=True is a Triton-path option, but impl='torch' "
                             "was asked for; drop one of them")
        return opts

    def reduce(self, weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss from the (B, T) w_t Div_t (0 where masked): the reduction, or / n."""
        return reduce_weighted(weighted, mask, self.reduction, self.num_items_in_batch)

    def reduce_total(self, total: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss from the scalar sum_t w_t Div_t (a scalar reduction)."""
        return reduce_total(total, mask, self.reduction, self.num_items_in_batch)


# Each field's check, read once here: ``check`` runs inside torch.compile'd steps, where
# dynamo cannot trace ``dataclasses.fields``.
_CHECKS = {f.name: f.metadata["check"] for f in fields(LossOptions)}
