"""On-policy rollouts: completions sampled from the model and their masks.

A rollout for the token loss is one sample per audio prompt at temperature 1.0; for the sequence
loss (GRPO) a group of ``num_generations`` samples per audio prompt at temperature 1.5, the copies
of prompt i in consecutive rows. The completion mask keeps every token up to AND including the
first EOS (the EOS is a decision the model makes and is distilled too) and nothing after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cord.models.adapter import ModelAdapter, PromptBatch


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) bool mask: True up to and including the first EOS of each row (all of a row
    without EOS, i.e. a completion cut at the length limit).

    Args:
        completion_ids: (B, T) generated token ids.
        eos_token_ids: ids that end a completion.
    """
    if completion_ids.dim() != 2:
        raise ValueError(
            f"completion_ids must have shape (B, T), got {tuple(completion_ids.shape)}"
        )
    if len(eos_token_ids) == 0:
        raise ValueError("eos_token_ids must hold at least one id")
    eos = torch.as_tensor(list(eos_token_ids), device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos)
    # Number of EOS strictly before t: 0 means t is at or before the first EOS.
    before = is_eos.long().cumsum(-1) - is_eos.long()
    return before == 0


@dataclass
class Rollouts:
    """Completions of a batch of prompts.

    Attributes:
        prompts: the prompts each row was sampled from (already repeated per group).
        completion_ids: (B*N, T) long, ``pad_token_id`` after the EOS.
        completion_mask: (B*N, T) bool, see :func:`completion_mask`.
        group_size: N (rows ``i*N .. i*N+N-1`` come from prompt i).
        texts: the decoded completions.
    """

    prompts: PromptBatch
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    group_size: int
    texts: list[str]

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def sample(
    adapter: ModelAdapter,
    prompts: PromptBatch,
    *,
    num_generations: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 200,
    device: torch.device | str | None = None,
) -> Rollouts:
    """Samples ``num_generations`` completions per prompt (temperature 0 = greedy).

    Rows shorter than the longest are padded; completions that generated nothing at all get one
    pad column so every tensor stays (B*N, T>=1).
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    ids = adapter.generate(
        prompts, max_new_tokens=max_new_tokens, temperature=temperature,
        num_return_sequences=num_generations,
    )
    if device is not None:
        ids = ids.to(device)
    generated_nothing = ids.shape[1] == 0
    if generated_nothing:
        ids = ids.new_full((ids.shape[0], 1), adapter.pad_token_id)
    mask = completion_mask(ids, adapter.eos_token_ids)
    if generated_nothing:
        mask = torch.zeros_like(mask)
    ids = ids.masked_fill(~mask, adapter.pad_token_id)
    return Rollouts(
        prompts=prompts.repeat_interleave(num_generations).to(ids.device),
        completion_ids=ids,
        completion_mask=mask,
        group_size=num_generations,
        texts=adapter.decode(ids, mask),
    )


def text_references(
    adapter: ModelAdapter,
    texts: Sequence[str],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 200,
    instruction: str | None = None,
    device: torch.device | str | None = None,
) -> Rollouts:
    """The judge's references y_hat ~ p(.|x^t) (paper eq. 8): answers to the text prompts,
    sampled like every rollout (temperature 0 = greedy).

    Args:
        adapter: the TEACHER's adapter (``Teacher.adapter``): the current weights for the live
            teacher (the paper), the frozen or EMA copy otherwise, so the judge rewards
            agreement with the same text side that L_tok pulls towards.
    """
    prompts = adapter.text_prompts(list(texts), instruction=instruction)
    if device is not None:
        prompts = prompts.to(device)
    return sample(adapter, prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                  device=device)
