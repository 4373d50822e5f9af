"""What the sparse-teacher losses share besides their options (``core/options.py``): the
check of a teacher's top-k log-probs / ids pair, and the masked, weighted reduction of a
per-token Div (``teacher_loss.py``, ``student_topk.py``; the fused-linear forms reduce the
same way from a sum).
"""

from __future__ import annotations

import torch

from cord_kernels.core.options import LossOptions
from cord_kernels.core.validation import (
    INT_DTYPES,
    check_float,
    check_same_device,
    check_tensor,
)


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


def reduce_sparse(d: torch.Tensor, mask: torch.Tensor, token_weights, opts: LossOptions):
    """(loss, per_token) from the per-token Div ``d`` (B, T): masked positions count 0, the
    weights multiply, then the reduction (or / num_items_in_batch)."""
    d = torch.where(mask, d, 0.0).float()
    w = mask.float() if token_weights is None else torch.where(mask, token_weights.float(), 0.0)
    loss = opts.reduce(w * d, mask)
    return (loss, d.detach()) if opts.return_per_token else loss
