"""Seeded benchmark inputs shaped like CORD batches: ragged rollouts with a per-token mask.

Rows are grouped into sequences of T <= 256 positions (B = N // T). Each sequence keeps a
random length between 60% and 100% of T (right padding) and drops a further ~10% of its
positions at random, so about 200 tokens per sequence are valid, as in the paper's rollouts.
Logits are drawn with a spread (std 4) that gives peaked, LM-like softmaxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_SEQ_LEN = 256
IGNORE_INDEX = -100


def batch_layout(n_tokens: int) -> tuple[int, int]:
    """(B, T) with B * T == n_tokens when n_tokens <= 256 or is a multiple of 256."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    batch = max(1, n_tokens // MAX_SEQ_LEN)
    return batch, n_tokens // batch


def ragged_mask(batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) bool: a random valid length per sequence, then ~10% of positions dropped."""
    lengths = torch.randint(max(1, int(0.6 * seq_len)), seq_len + 1, (batch,), generator=generator)
    positions = torch.arange(seq_len).expand(batch, seq_len)
    keep = torch.rand(batch, seq_len, generator=generator) > 0.1
    mask = (positions < lengths[:, None]) & keep
    mask[:, 0] = True  # every sequence has at least one valid token
    return mask


def case_mask(n_tokens: int, seed: int = 0) -> torch.Tensor:
    """The (B, T) mask of the cases below: the first draw of their seeded CPU generator (so
    ``bench.floors`` counts the valid rows of a committed run without drawing its logits)."""
    return _mask_and_generator(n_tokens, seed)[0]


def _mask_and_generator(n_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return ragged_mask(*batch_layout(n_tokens), g), g


@dataclass
class LogitsCase:
    """Inputs of the logits-in losses. ``student`` is the leaf that receives the gradient."""

    student: torch.Tensor  # (B, T, V), requires_grad
    teacher: torch.Tensor  # (B, T, V), no grad
    mask: torch.Tensor  # (B, T) bool
    labels: torch.Tensor  # (B, T) int64, IGNORE_INDEX where mask is False

    def leaves(self) -> tuple[torch.Tensor, ...]:
        return (self.student,)


@dataclass
class HiddenCase:
    """Inputs of the hidden-states-in (fused-linear) losses; one LM head shared by both
    branches, as in CORD where student and teacher are the same model."""

    student_hidden: torch.Tensor  # (B, T, H), requires_grad
    teacher_hidden: torch.Tensor  # (B, T, H), no grad
    weight: torch.Tensor  # (V, H), requires_grad
    mask: torch.Tensor  # (B, T) bool
    labels: torch.Tensor  # (B, T) int64, IGNORE_INDEX where mask is False

    def leaves(self) -> tuple[torch.Tensor, ...]:
        return (self.student_hidden, self.weight)


def _labels(mask: torch.Tensor, vocab: int, generator: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, vocab, mask.shape, generator=generator)
    return labels.masked_fill(~mask, IGNORE_INDEX)


def make_logits_case(n_tokens: int, vocab: int, *, dtype: torch.dtype, device: torch.device,
                     seed: int = 0) -> LogitsCase:
    mask, g = _mask_and_generator(n_tokens, seed)
    B, T = mask.shape
    labels = _labels(mask, vocab, g)
    # Drawn on the target device (a host copy of a 16k x 262k tensor would be 17 GB).
    gd = torch.Generator(device=device).manual_seed(seed)
    student = torch.randn(B, T, vocab, generator=gd, device=device).mul_(4)
    teacher = torch.randn(B, T, vocab, generator=gd, device=device).mul_(2).add_(student)
    student, teacher = student.to(dtype), teacher.to(dtype)
    return LogitsCase(student.requires_grad_(), teacher, mask.to(device), labels.to(device))


def make_hidden_case(n_tokens: int, vocab: int, hidden: int, *, dtype: torch.dtype,
                     device: torch.device, seed: int = 0) -> HiddenCase:
    mask, g = _mask_and_generator(n_tokens, seed)
    B, T = mask.shape
    labels = _labels(mask, vocab, g)
    # Scaled so logits = h @ W.T have std ~4, like the logits-in inputs.
    h_s = torch.randn(B, T, hidden, generator=g)
    h_t = h_s + 0.5 * torch.randn(B, T, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * (4 / hidden**0.5)
    to = dict(device=device, dtype=dtype)
    return HiddenCase(h_s.to(**to).requires_grad_(), h_t.to(**to), w.to(**to).requires_grad_(),
                      mask.to(device), labels.to(device))
