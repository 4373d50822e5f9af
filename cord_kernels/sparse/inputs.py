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


def check_topk_shapes(logprobs, ids, lead_shape: tuple[int, ...], mask: torch.Tensor,
                      names=("teacher_topk_logprobs", "teacher_topk_ids")) -> None:
    """Checks a (B, T, k) log-probs / ids pair's types, shapes and devices (no tensor op)."""
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


def _ids_message(name: str, vocab: int) -> str:
    return (f"{name} must lie in [0, {vocab}) (the vocabulary) at every used slot of a valid "
            "position")


def check_topk_pair(logprobs, ids, lead_shape: tuple[int, ...], vocab: int, mask: torch.Tensor,
                    names=("teacher_topk_logprobs", "teacher_topk_ids"), *,
                    check_ids: bool = True) -> torch.Tensor:
    """Checks a (B, T, k) log-probs / ids pair; returns the slot validity (B, T, k): a log-prob
    other than -inf (and not NaN) at a valid position. Ids at used slots must lie in [0, V):
    one host sync (the torch paths; the Triton paths check them in their kernels instead,
    ``check_ids=False``, then ``raise_on_bad_ids``), skipped inside ``torch.compile``."""
    check_topk_shapes(logprobs, ids, lead_shape, mask, names)
    valid = (logprobs > float("-inf")) & mask.unsqueeze(-1)
    if not check_ids or torch.compiler.is_compiling():  # no host sync in a compiled graph
        return valid
    bad = valid & ((ids < 0) | (ids >= vocab))
    if bool(bad.any()):
        raise ValueError(_ids_message(names[1], vocab))
    return valid


# Error flags of kernels still running on a GPU: (pinned host copy, event, message).
_PENDING: list[tuple[torch.Tensor, object, str]] = []
# More pending flags than this and the oldest is waited for (a GPU that far behind the host).
MAX_PENDING = 64


def raise_pending(wait: bool = False) -> None:
    """Raises the ValueError of an earlier call whose kernel found a bad id, for every flag
    whose copy has landed (all of them, waiting, with ``wait``); never syncs otherwise.
    Not inside ``torch.compile`` (the queue is host state: no guard on it)."""
    if torch.compiler.is_compiling():
        return
    while _PENDING:
        host, event, message = _PENDING[0]
        if event is not None and not event.query():
            if not wait:
                return
            event.synchronize()
        _PENDING.pop(0)
        if int(host[0]):
            raise ValueError(message + " (found by the kernel of an earlier call, whose loss "
                             "and gradient are NaN on the affected rows)")


def raise_on_bad_ids(flag: torch.Tensor, name: str, vocab: int) -> None:
    """The id range check of the Triton path, from its kernel's 1-element error flag (set where
    a used slot's id lies outside [0, vocab); those rows' Div and gradient are NaN). On the
    CPU it raises the ValueError at once. On a GPU reading the flag would wait for the kernel:
    its copy goes to pinned memory without a sync, and the error is raised by a later sparse
    loss call once the copy has landed (``raise_pending(wait=True)`` forces it). Inside
    ``torch.compile`` or a CUDA graph capture only the NaN remains."""
    if torch.compiler.is_compiling():
        return
    if not flag.is_cuda:  # the CPU (the interpreter): reading it costs no wait
        if flag.item():
            raise ValueError(_ids_message(name, vocab))
        return
    with torch.cuda.device(flag.device):
        if torch.cuda.is_current_stream_capturing():
            return
        host = torch.empty(1, dtype=flag.dtype, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()  # on the stream that copies, the flag's device's current one
    defer_flag(host, event, _ids_message(name, vocab))


def defer_flag(host: torch.Tensor, event, message: str) -> None:
    """Queues a flag's host copy (``event`` None: already landed) for ``raise_pending``."""
    _PENDING.append((host, event, message))
    if len(_PENDING) > MAX_PENDING:
        raise_pending(wait=True)


def reduce_sparse(d: torch.Tensor, mask: torch.Tensor, token_weights, opts: LossOptions):
    """(loss, per_token) from the per-token Div ``d`` (B, T): masked positions count 0, the
    weights multiply, then the reduction (or / num_items_in_batch)."""
    d = torch.where(mask, d, 0.0).float()
    w = mask.float() if token_weights is None else torch.where(mask, token_weights.float(), 0.0)
    loss = opts.reduce(w * d, mask)
    return (loss, d.detach()) if opts.return_per_token else loss


def reduce_rows(d: torch.Tensor, mask: torch.Tensor, token_weights, opts: LossOptions):
    """``reduce_sparse`` for a fp32 ``d`` already 0 at masked positions (the kernels' Div):
    one op for the weights, none for the mask."""
    weighted = d if token_weights is None else d * torch.where(mask, token_weights, 0.0)
    loss = opts.reduce(weighted, mask)
    return (loss, d.detach()) if opts.return_per_token else loss
