"""Checks and the reduction shared by the sparse-teacher losses (``sparse_teacher.py``,
``fused_sparse_teacher.py``, ``student_topk.py``, ``sampled_token_kl.py``).

``num_items_in_batch`` is TRL's gradient-accumulation convention (TRL issue #4719): the loss is
sum_valid w_t Div_t / n with n the number of valid tokens over the whole accumulated batch, so
that summing the micro-batches' losses gives the full batch's "mean".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cord_kernels._validation import (
    check_bool,
    check_float,
    check_reduction,
    check_same_device,
    check_temperature,
    check_tensor,
    check_unit,
)
from cord_kernels.reduction import reduce_weighted
from cord_kernels.support_divergence import TAILS, Tail
from cord_kernels.tile_divergence import DIVERGENCES, Divergence, resolve_divergence

INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


@dataclass(frozen=True)
class SparseOptions:
    """The checked options of a sparse loss: the divergence actually computed (the JSD at beta 0
    / 1 is the forward / reverse KL), its beta, the tail treatment and the reduction."""

    divergence: Divergence
    jsd_beta: float
    tail: Tail
    temperature: float
    reduction: str
    return_per_token: bool
    num_items_in_batch: int | torch.Tensor | None


def check_num_items(num_items_in_batch, reduction: str):
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError("num_items_in_batch must be an int or a one-element tensor, got "
                             f"shape {tuple(num_items_in_batch.shape)}")
    elif isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, int):
        raise TypeError("num_items_in_batch must be an int or a tensor, got "
                        f"{type(num_items_in_batch).__name__}")
    elif num_items_in_batch < 1:
        raise ValueError(f"num_items_in_batch must be >= 1, got {num_items_in_batch}")
    if reduction == "none":
        raise ValueError("num_items_in_batch divides the summed loss: it needs a scalar "
                         "reduction, got reduction='none'")
    return num_items_in_batch


def check_k(k, vocab: int) -> int:
    """A support size: an int in [1, V]."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, V] = [1, {vocab}], got {k}")
    return k


def check_sparse_options(divergence, jsd_beta, tail, temperature, reduction, return_per_token,
                         num_items_in_batch) -> SparseOptions:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    jsd_beta = check_unit("jsd_beta", jsd_beta)
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    reduction = check_reduction(reduction)
    return SparseOptions(resolve_divergence(divergence, jsd_beta), jsd_beta, Tail(tail),
                         check_temperature(temperature), reduction,
                         check_bool("return_per_token", return_per_token),
                         check_num_items(num_items_in_batch, reduction))


def check_topk_pair(logprobs, ids, lead_shape: tuple[int, ...], vocab: int, mask: torch.Tensor,
                    names=("teacher_topk_logprobs", "teacher_topk_ids")) -> torch.Tensor:
    """Checks a (B, T, k) log-probs / ids pair; returns the slot validity (B, T, k): a log-prob
    other than -inf (and not NaN) at a valid position. Ids at used slots must lie in [0, V):
    one host sync, skipped inside ``torch.compile`` (an id out of range then reads NaN on the
    Triton path)."""
    lp_name, id_name = names
    check_tensor(lp_name, logprobs, ndim=len(lead_shape) + 1)
    check_float(lp_name, logprobs)
    check_tensor(id_name, ids, ndim=len(lead_shape) + 1)
    if ids.dtype not in INT_DTYPES:
        raise TypeError(f"{id_name} must be an integer tensor, got {ids.dtype}")
    if tuple(logprobs.shape[:-1]) != tuple(lead_shape):
        raise ValueError(f"{lp_name} must have shape {tuple(lead_shape)} + (k,), got "
                         f"{tuple(logprobs.shape)}")
    if logprobs.shape[-1] < 1:
        raise ValueError(f"{lp_name} must have k >= 1 slots, got shape {tuple(logprobs.shape)}")
    if ids.shape != logprobs.shape:
        raise ValueError(f"{id_name} must have the shape of {lp_name}, {tuple(logprobs.shape)} "
                         f"(the same k), got {tuple(ids.shape)}")
    check_same_device((lp_name, logprobs), (id_name, ids), ("mask", mask))
    valid = (logprobs > float("-inf")) & mask.unsqueeze(-1)
    if torch.compiler.is_compiling():  # no host sync inside a compiled graph: unchecked there
        return valid
    bad = valid & ((ids < 0) | (ids >= vocab))
    if bool(bad.any()):
        raise ValueError(f"{id_name} must lie in [0, {vocab}) (the vocabulary) at every used "
                         "slot of a valid position")
    return valid


def reduce_sparse(d: torch.Tensor, mask: torch.Tensor, token_weights, opts: SparseOptions):
    """(loss, per_token) from the per-token Div ``d`` (B, T): masked positions count 0, the
    weights multiply, then the reduction (or / num_items_in_batch)."""
    d = torch.where(mask, d, 0.0).float()
    w = mask.float() if token_weights is None else torch.where(mask, token_weights.float(), 0.0)
    weighted = w * d
    n = opts.num_items_in_batch
    if n is not None:
        n = n.to(weighted.device) if isinstance(n, torch.Tensor) else n
        loss = weighted.sum() / n
    else:
        loss = reduce_weighted(weighted, mask, opts.reduction)
    return (loss, d.detach()) if opts.return_per_token else loss
