"""The reductions every token loss shares (``cord_token_loss``, the fused-linear losses and
the reference oracle all import them from here).

    "batchmean": sum_t w_t D_t / B   (the paper's: summed over tokens, averaged over sequences)
    "sum":       sum_t w_t D_t
    "mean":      sum_t w_t D_t / (number of valid tokens)
    "none":      the (B, T) tensor of w_t D_t itself

TRL's distillation losses (``generalized_jsd_loss``, GKD, ``chunked_divergence``) and Liger's
divide by valid tokens: that is our "mean", and ``"batchmean" = "mean" * sum(mask) / B``.
``num_items_in_batch=n`` gives sum_t w_t D_t / n instead (TRL's gradient-accumulation
convention: n counts the valid tokens of every micro-batch of the optimizer step, so the
accumulated gradient is the full batch's "mean").
"""

from __future__ import annotations

import torch


def nonnegative(d: torch.Tensor) -> torch.Tensor:
    """``d`` with its entries below 0 read as 0, the gradient passing through unchanged.

    A divergence (KL, JSD, on the full vocabulary or a support) is >= 0 in exact arithmetic;
    where p = q to fp32 precision its rounding can land at about -1e-6, and a caller checking
    the sign (``cord analyze``'s rollouts) would stop there, after hours of training. Every
    per-row divergence a loss returns goes through this where it is produced; the gradients
    are formed from the unclamped statistics."""
    # where() rather than d + (clamp(d) - d).detach(): an infinite KL (teacher -inf where the
    # student has mass) must stay inf, and inf - inf would make it NaN
    return torch.where(d < 0, d - d.detach(), d)


def reduce_total(total: torch.Tensor, mask: torch.Tensor, reduction: str,
                 num_items=None) -> torch.Tensor:
    """Reduces the scalar ``total`` = sum_t w_t D_t over a (B, T) ``mask`` (not "none");
    ``num_items`` (checked by ``check_num_items``), when given, is the divisor instead."""
    if num_items is not None:
        if isinstance(num_items, torch.Tensor):
            num_items = num_items.to(device=total.device, dtype=total.dtype)
        return total / num_items
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(mask.shape[0], 1)
    if reduction == "mean":  # over valid tokens; an all-masked batch gives 0, not NaN
        return total / mask.sum().clamp_min(1)
    raise ValueError(f"reduce_total handles 'batchmean', 'sum' and 'mean', got {reduction!r}")


def reduce_weighted(per_token: torch.Tensor, mask: torch.Tensor, reduction: str,
                    num_items=None) -> torch.Tensor:
    """Reduces a (B, T) tensor of w_t D_t (0 where masked) as ``reduction`` says."""
    if reduction == "none":
        return per_token
    return reduce_total(per_token.sum(), mask, reduction, num_items)
