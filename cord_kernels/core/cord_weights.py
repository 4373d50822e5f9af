"""CORD token weights (paper eqs. 4-6): top-K divergence emphasis times positional decay.

For one sequence with T valid positions, counted t = 1..T over valid positions only:

    w_t^KL  = alpha if t is among the K valid positions with the largest D_t else 1
              (all alpha when T <= K; ties go to the earlier position)
    w_t^pos = beta - (beta - 1) (t - 1) / (T - 1)        (beta when T = 1)
    w_t     = w_t^KL * w_t^pos, and 0 at masked positions

Everything is batched tensor math: no Python loop over sequences and no host sync, so it runs
inside a CUDA graph or ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import torch

from cord_kernels.core.options import ALPHA, BETA, TOP_K, LossOptions
from cord_kernels.core.validation import check_float, check_mask, check_same_device, check_tensor


# Spelled out on purpose, as docs/api.md's "Logits in" table fixes it
# (tests/test_options.py reads it with inspect); LossOptions.check holds its rules and
# defaults. (`duplicates` pairs such signatures.)
def cord_weights(
    kl: torch.Tensor,
    mask: torch.Tensor,
    *,
    top_k: int = TOP_K,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> torch.Tensor:
    """CORD per-token weights from per-token divergences.

    Args:
        kl: (B, T) per-token divergences D_t (any float dtype; only their order matters).
        mask: (B, T) bool, True at generated (valid) positions. Left or right padding both work:
            positions are counted over valid entries only.
        top_k: K, how many valid positions per sequence get ``alpha``.
        alpha: weight of the top-K positions (1 disables the top-K emphasis).
        beta: weight of the first valid position, decaying linearly to 1 at the last.

    Returns:
        (B, T) float32 weights, detached, exactly 0 where ``mask`` is False.

    Example:
        >>> kl = torch.tensor([[0.1, 0.5, 0.3]]); mask = torch.ones(1, 3, dtype=torch.bool)
        >>> cord_weights(kl, mask, top_k=1, alpha=2.0, beta=2.0)
        tensor([[2.0000, 3.0000, 1.0000]])
    """
    check_tensor("kl", kl, ndim=2)
    check_float("kl", kl)
    mask = check_mask(mask, tuple(kl.shape), like="kl")
    check_same_device(("kl", kl), ("mask", mask))
    opts = LossOptions.check(top_k=top_k, alpha=alpha, beta=beta)
    return checked_cord_weights(kl, mask, opts.top_k, opts.alpha, opts.beta)


def checked_cord_weights(kl: torch.Tensor, mask: torch.Tensor, top_k: int, alpha: float,
                         beta: float) -> torch.Tensor:
    """:func:`cord_weights` on arguments the caller has checked (the CORD losses)."""
    with torch.no_grad():
        d = kl.detach().float()
        # Rank valid positions by D, largest first. Masked positions sort last (-inf; a valid
        # D is >= 0) and a stable sort keeps equal values in position order, so ties go to the
        # earlier position as the spec requires.
        key = torch.where(mask, d, torch.full_like(d, float("-inf")))
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices
        rank = order.argsort(dim=-1)  # the inverse permutation: rank of each position
        w_kl = torch.where(rank < top_k, alpha, 1.0)

        # Position t (1-based) among valid tokens, and the valid length T of each sequence.
        t = torch.cumsum(mask.to(torch.int32), dim=-1).float()
        length = t[:, -1:] if t.shape[-1] > 0 else t
        w_pos = beta - (beta - 1.0) * (t - 1.0) / (length - 1.0).clamp_min(1.0)

        return torch.where(mask, w_kl * w_pos, 0.0).to(torch.float32)
