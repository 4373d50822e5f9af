"""Per-step training metrics as pure functions (no model, no state).

    kl_mean, kl_p80   mean and 80th percentile of the per-token reverse KL D_t over the
                      generated tokens (the paper reports the 80th percentile: 0.23 on MMSU)
    reward            mean judge reward over judged rollouts (-1 = unjudged is left out)
    agreement         the same on the token-loss rollouts: how often the audio answer agrees
                      with the model's own text answer
    tokens_per_second generated completion tokens per wall-clock second
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


def kl_stats(kl: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and 80th percentile of D over the valid tokens.

    Args:
        kl: (B, T) per-token divergences.
        mask: (B, T) bool, True at generated tokens.

    Returns:
        ``{"kl_mean", "kl_p80"}``; NaN when no token is valid.
    """
    if kl.shape != mask.shape:
        raise ValueError(f"kl and mask must have the same shape, got {tuple(kl.shape)} and "
                         f"{tuple(mask.shape)}")
    d = kl.detach().float()[mask.bool()]
    if d.numel() == 0:
        return {"kl_mean": math.nan, "kl_p80": math.nan}
    return {"kl_mean": float(d.mean()), "kl_p80": float(torch.quantile(d, 0.8))}


def reward_stats(rewards: torch.Tensor | Iterable[float]) -> dict[str, float]:
    """Mean reward over judged rollouts (NaN rewards are unjudged) and the judged fraction."""
    r = torch.as_tensor(list(rewards) if not isinstance(rewards, torch.Tensor) else rewards,
                        dtype=torch.float32).flatten()
    judged = ~torch.isnan(r)
    n = int(judged.sum())
    return {
        "reward": float(r[judged].mean()) if n else math.nan,
        "judged_fraction": n / r.numel() if r.numel() else math.nan,
    }


def tokens_per_second(num_tokens: int, seconds: float) -> float:
    """Generated tokens per second (NaN for a zero-length interval)."""
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return num_tokens / seconds if seconds > 0 else math.nan


def mean_metrics(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise mean over micro-batches (or processes), ignoring NaN and missing entries."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                counts.setdefault(k, 0)
                continue
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: (sums[k] / counts[k] if counts[k] else math.nan) for k in counts}


def is_finite(value: float | torch.Tensor) -> bool:
    """True when a scalar (or every element of a tensor) is finite."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return math.isfinite(value)
