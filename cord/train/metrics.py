"""Per-step training metrics as pure functions (no model, no state).

    kl_mean, kl_p80   mean and 80th percentile (``cord.divergence.HIGH_KL_PERCENTILE``) of
                      the per-token reverse KL D_t over the generated tokens (the paper reports
                      the 80th percentile: 0.23 on MMSU)
    fkl_mean, fkl_p80 the same for the forward KL the fkl objective minimises (its own loss)
    reward            mean judge reward of the GRPO rollouts as the loss sees it: unjudged ones
                      count 0 (``unjudged_reward="zero"``) or are left out ("skip")
    judged_fraction   share of the GRPO rollouts the judge could score
    agreement         share of the rollouts whose answer the judge finds equal to the text
                      reference, over ALL rollouts (an unjudged one does not agree), so it is
                      defined for every batch; on the token-loss rollouts (cord, opd,
                      grpo_opd) or, for grpo, on the GRPO rollouts
    agreement_judged_fraction  share of those rollouts the judge could score
    tokens_per_second generated completion tokens per wall-clock second
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from cord.config import UNJUDGED_REWARDS
from cord.divergence import HIGH_KL_PERCENTILE


def kl_stats(kl: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and :data:`~cord.divergence.HIGH_KL_PERCENTILE`-th percentile of D over the valid
    tokens.

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
    high = float(torch.quantile(d, HIGH_KL_PERCENTILE / 100))
    return {"kl_mean": float(d.mean()), "kl_p80": high}


def _rewards(rewards: torch.Tensor | Iterable[float]) -> torch.Tensor:
    return torch.as_tensor(list(rewards) if not isinstance(rewards, torch.Tensor) else rewards,
                           dtype=torch.float32).detach().cpu().flatten()


def reward_stats(rewards: torch.Tensor | Iterable[float], *,
                 unjudged: str = "zero") -> dict[str, float]:
    """Mean reward as the loss sees it and the judged fraction.

    Args:
        rewards: judge rewards, NaN where the judge could not score a rollout.
        unjudged: ``"zero"``: an unjudged rollout counts as reward 0 (the mean is over all);
            ``"skip"``: it is left out (the mean is over the judged ones, NaN when none is).
    """
    if unjudged not in UNJUDGED_REWARDS:
        raise ValueError(f"unjudged must be one of {list(UNJUDGED_REWARDS)}, got {unjudged!r}")
    r = _rewards(rewards)
    judged = ~torch.isnan(r)
    n = int(judged.sum())
    if unjudged == "zero":
        mean = float(torch.nan_to_num(r, nan=0.0).mean()) if r.numel() else math.nan
    else:
        mean = float(r[judged].mean()) if n else math.nan
    return {"reward": mean, "judged_fraction": n / r.numel() if r.numel() else math.nan}


def agreement_stats(verdicts: torch.Tensor | Iterable[float]) -> dict[str, float]:
    """Share of rollouts judged to agree with their reference, over all rollouts (unjudged =
    does not agree), and the share the judge could score. Both are defined for any non-empty
    batch: over judged items only, a batch the judge cannot score at all would give 0/0.

    Args:
        verdicts: 1.0 agree, 0.0 disagree, NaN unjudged.
    """
    r = _rewards(verdicts)
    if r.numel() == 0:
        raise ValueError("verdicts must hold at least one rollout")
    judged = ~torch.isnan(r)
    return {"agreement": float((r == 1.0).float().mean()),
            "agreement_judged_fraction": float(judged.float().mean())}


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
