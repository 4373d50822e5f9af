"""The model adapter: everything the trainer needs to know about one audio language model.

The trainer never touches a processor or a model's forward signature directly. It asks an adapter
to

1. build prompts: ``audio_prompts(audios)`` (the audio-conditioned student input x^a) and
   ``text_prompts(texts)`` (the text-conditioned teacher input x^t), both as a left-padded
   :class:`PromptBatch`;
2. ``generate(prompts, ...)`` completions (token ids of the new tokens only);
3. score a completion under a prompt: ``completion_logits`` returns (B, T, V) logits where
   position t predicts completion token t, so the student's and the teacher's logits line up
   token for token whatever the prompt lengths; ``completion_hidden`` returns the final hidden
   states (B, T, H) and the LM head (weight (V, H), bias) for the fused-linear losses, without
   ever materialising the (B, T, V) logits.

Adding another model
--------------------
The families the loader (``cord.models.families.build_adapter``) builds are registered by
``config.model_type`` in ``cord.models.loading`` (one module each under
``cord.models.families``; ``docs/models.md`` has the protocol). A family's adapter subclasses
:class:`ChatAdapter` (``cord.models.chat``; or is any class with the same methods, see
:class:`ModelAdapter`) and overrides what differs; ``Qwen2AudioAdapter``
(``cord.models.families.qwen2_audio``) is the reference:

- ``audio_message(instruction)`` / ``text_message(text, instruction)``: the user turn in the
  model's chat format (the audio placeholder its chat template expects);
- ``_encode(texts, audios)``: runs the processor; must return left-padded ``input_ids`` and
  ``attention_mask`` plus any per-example tensors (mel features, their masks) the model's
  ``forward`` and ``generate`` take as keyword arguments;
- ``lm_head(model)``: the output projection, if it is not ``model.lm_head``;
- ``module_groups``: the submodules behind the ``audio`` and ``projector`` parameter groups
  (what ``trainable=audio|projector`` trains).

The forward pass always gets ``position_ids = cumsum(attention_mask) - 1``, the same positions
``generate`` uses for left-padded prompts, so logits scored here are the ones that were sampled.

Example:
    >>> model, processor = build_tiny_qwen2_audio()            # cord.models.tiny
    >>> adapter = Qwen2AudioAdapter(model, processor)
    >>> x_a = adapter.audio_prompts([wave], sampling_rate=16000)
    >>> ids = adapter.generate(x_a, max_new_tokens=20, temperature=1.0)
    >>> logits = adapter.completion_logits(x_a, ids, ids != adapter.pad_token_id)  # (1, T, V)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

# What the trainer and the demos use of an adapter, importable from this one module:
from cord.models.chat import ChatAdapter, CompletionHidden, PromptBatch, unwrap_model
from cord.models.families.qwen2_audio import Qwen2AudioAdapter

__all__ = ["ChatAdapter", "CompletionHidden", "ModelAdapter", "PromptBatch", "Qwen2AudioAdapter",
           "train_only", "unwrap_model"]


@runtime_checkable
class ModelAdapter(Protocol):
    """What the trainer needs from an audio language model (see the module docstring)."""

    model: nn.Module
    pad_token_id: int
    eos_token_ids: list[int]

    def audio_prompts(
        self, audios: Sequence, *, sampling_rate: int, instruction: str | None = None
    ) -> PromptBatch: ...

    def text_prompts(self, texts: Sequence[str], *, instruction: str | None = None) -> PromptBatch:
        ...

    def generate(
        self, prompts: PromptBatch, *, max_new_tokens: int, temperature: float,
        num_return_sequences: int = 1,
    ) -> torch.Tensor: ...

    def completion_logits(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor: ...

    def completion_hidden(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> CompletionHidden: ...

    def decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        ...

    def with_model(self, model: nn.Module) -> ModelAdapter: ...

    def parameter_group(self, group: str) -> list[tuple[str, nn.Parameter]]: ...


def train_only(adapter: ModelAdapter, group: str) -> tuple[int, int]:
    """Freezes every parameter of ``adapter.model`` outside ``group`` (``requires_grad``
    False) and unfreezes the group; returns ``(trained, total)`` parameter counts."""
    chosen = {id(q) for _, q in adapter.parameter_group(group)}
    trained = total = 0
    for q in unwrap_model(adapter.model).parameters():
        q.requires_grad_(id(q) in chosen)
        total += q.numel()
        trained += q.numel() if id(q) in chosen else 0
    if trained == 0:
        raise ValueError(f"trainable={group!r} selects no parameter")
    return trained, total
