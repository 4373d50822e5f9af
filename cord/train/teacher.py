"""The text-conditioned teacher: the same completion scored under the TEXT prompt, no gradient.

CORD's teacher is the model itself seeing the text prompt x^t instead of the audio x^a. Its pass
runs the text prompt plus the SAME completion tokens the student was scored on, so teacher
position t and student position t predict the same token (``completion_logits`` aligns both).

The teacher also answers the text prompts: those answers are the judge's references for L_seq
(paper eq. 8), so L_tok and the GRPO reward pull towards the same text side whatever the kind.

Kinds:
    ``live``: the current weights (the paper): a second no-grad forward of the trained model.
    ``base``: a frozen copy of the initial weights (a fixed target, as in classic distillation).
    ``ema``:  an exponential moving average of the student, ``ema = d * ema + (1 - d) * theta``
              after every optimizer step (``decay`` d).

Frozen copies live on the student's device in the student's dtype and are part of the checkpoint
(``state_dict``/``load_state_dict``), so a resumed run continues with the same teacher.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cord.config import TEACHERS
from cord.models.adapter import CompletionHidden, ModelAdapter, PromptBatch, unwrap_model
from cord.train.distributed import full_tensor


class Teacher(nn.Module):
    """Scores completions under text prompts without gradient.

    Args:
        kind: "live", "base" or "ema".
        adapter: the student's adapter (its model may be wrapped for DDP).
        ema_decay: d in [0, 1) for ``kind="ema"``.
    """

    def __init__(self, kind: str, adapter: ModelAdapter, *, ema_decay: float = 0.99):
        super().__init__()
        if kind not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {kind!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"teacher_ema_decay must be in [0, 1), got {ema_decay}")
        self.kind = kind
        self.ema_decay = float(ema_decay)
        self._student = adapter
        self.frozen: nn.Module | None = None
        if kind != "live":
            frozen = copy.deepcopy(unwrap_model(adapter.model))
            frozen.requires_grad_(False)
            frozen.eval()
            self.frozen = frozen  # registered as a submodule: saved with state_dict

    def set_student(self, adapter: ModelAdapter) -> None:
        """Points the live teacher at the (accelerate-prepared) student."""
        self._student = adapter

    @property
    def adapter(self) -> ModelAdapter:
        if self.frozen is None:
            return self._student
        return self._student.with_model(self.frozen)

    @torch.no_grad()
    def completion_logits(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, V) detached text-conditioned logits on the given completion."""
        return self.adapter.completion_logits(prompts, completion_ids, completion_mask).detach()

    @torch.no_grad()
    def completion_hidden(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> CompletionHidden:
        """Detached (B, T, H) hidden states + LM head of the teacher."""
        h, w, b = self.adapter.completion_hidden(prompts, completion_ids, completion_mask)
        return CompletionHidden(h.detach(), w.detach(), None if b is None else b.detach())

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step: moves the EMA towards the student (no-op for other kinds)."""
        if self.kind != "ema":
            return
        student = unwrap_model(self._student.model)
        d = self.ema_decay
        for t, s in zip(self.frozen.parameters(), student.parameters(), strict=True):
            # A sharded (FSDP2) student parameter is gathered: the EMA copy is whole.
            t.lerp_(full_tensor(s.detach()).to(t.device, t.dtype), 1.0 - d)
        for t, s in zip(self.frozen.buffers(), student.buffers(), strict=True):
            t.copy_(s)
