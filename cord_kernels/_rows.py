"""Row views and launch configuration shared by the streaming (one program per row) kernels.

The kernels index a row ``i`` of a ``(..., V)`` tensor through two strides: ``i = a * R + b``
with ``offset = a * stride_a + b * stride_b``. That covers contiguous tensors and the sliced
views people actually pass (``logits[:, :-1]`` of a (B, T, V) tensor) without a copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# One launch config per kernel family. Each program streams one row in BLOCK_V chunks.
# 4096 lanes over 8 warps = 16 elements per thread: for bf16 that is two 16-byte loads per
# operand per iteration, for fp32 four, and it keeps every streaming kernel under ~64
# registers with no spills on sm_80/sm_90 (tests/test_gpu_build.py checks both). Smaller
# vocabularies use the next power of two so tiny V does not waste lanes.
MAX_BLOCK_V = 4096
NUM_WARPS = 8


def block_v(vocab: int) -> int:
    override = os.environ.get("CORD_BLOCK_V")
    cap = int(override) if override else MAX_BLOCK_V
    return max(16, min(cap, 1 << max(vocab - 1, 0).bit_length()))


@dataclass(frozen=True)
class RowView:
    """A (A, R, V) view of a (..., V) tensor whose last dimension has unit stride."""

    tensor: torch.Tensor  # (A, R, V)
    lead_shape: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return self.tensor.shape[0] * self.tensor.shape[1]

    @property
    def rows_per_a(self) -> int:
        return self.tensor.shape[1]

    def strides(self) -> tuple[int, int]:
        return self.tensor.stride(0), self.tensor.stride(1)


def row_view(x: torch.Tensor) -> RowView:
    lead = tuple(x.shape[:-1])
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 1:
        v = x.view(1, 1, -1)
    elif x.dim() == 2:
        v = x.unsqueeze(0)
    else:
        v = x.reshape(-1, x.shape[-2], x.shape[-1])  # a view unless dims >= 4 are interleaved
    return RowView(v, lead)
