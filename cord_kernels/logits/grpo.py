"""GRPO sequence loss with a judge reward (paper eqs. 8-10), plain torch over per-token log-probs.

    A_i   = r_i - mean_{j in group(i)} r_j        (no std scaling, no KL penalty)
    L_seq = -(1 / (B N)) sum_i A_i * sum_t mask_it * log p(y_it | y_i<t, x^a)

i.e. -(1/N) sum_i A_i log p(y_i | x) per prompt, averaged over the B prompts. Rollouts of one
prompt are ``group_size`` consecutive rows. A NaN reward marks a rollout the judge could not
score: it gets advantage 0 and is left out of its group's mean.
"""

from __future__ import annotations

import torch

from cord_kernels.core.validation import (
    check_float,
    check_mask,
    check_positive_int,
    check_same_device,
    check_tensor,
)


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A_i = r_i - mean of the judged rewards of its group; 0 for unjudged (NaN) rewards."""
    r = rewards.detach().float().view(-1, group_size)
    judged = ~torch.isnan(r)
    r0 = torch.where(judged, r, 0.0)
    mean = r0.sum(-1, keepdim=True) / judged.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(judged, r0 - mean, 0.0).view(-1)


def grpo_loss(
    token_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    *,
    group_size: int,
) -> torch.Tensor:
    """GRPO sequence loss L_seq.

    Args:
        token_logprobs: (B*N, T) log p of each sampled token (differentiable).
        mask: (B*N, T) bool, True at generated tokens.
        rewards: (B*N,) judge rewards (NaN = could not judge).
        group_size: N, rollouts per prompt; consecutive rows form a group.

    Returns:
        Scalar float32 loss.

    Example:
        >>> lp = token_logprobs(logits, completion_ids)          # (8, T)
        >>> loss = grpo_loss(lp, mask, rewards, group_size=4)    # 2 prompts x 4 rollouts
    """
    check_tensor("token_logprobs", token_logprobs, ndim=2)
    check_float("token_logprobs", token_logprobs)
    mask = check_mask(mask, tuple(token_logprobs.shape), like="token_logprobs")
    check_tensor("rewards", rewards, ndim=1)
    if not rewards.dtype.is_floating_point:
        rewards = rewards.float()  # 0/1 judge verdicts as int or bool
    if rewards.shape[0] != token_logprobs.shape[0]:
        raise ValueError(
            f"rewards must have shape ({token_logprobs.shape[0]},) (one per rollout), "
            f"got {tuple(rewards.shape)}"
        )
    check_same_device(("token_logprobs", token_logprobs), ("mask", mask), ("rewards", rewards))
    group_size = check_positive_int("group_size", group_size)
    if token_logprobs.shape[0] % group_size != 0:
        raise ValueError(
            f"the number of rollouts ({token_logprobs.shape[0]}) must be a multiple of "
            f"group_size={group_size}"
        )
    adv = group_advantages(rewards.float(), group_size)
    seq_logp = torch.where(mask, token_logprobs.float(), 0.0).sum(-1)
    return -(adv * seq_logp).sum() / max(token_logprobs.shape[0], 1)
