"""Row views, launch configuration and the launch device shared by the streaming kernels.

The kernels index a row ``i`` of a ``(..., V)`` tensor through two strides: ``i = a * R + b``
with ``offset = a * stride_a + b * stride_b``. That covers contiguous tensors and the sliced
views people actually pass (``logits[:, :-1]`` of a (B, T, V) tensor) without a copy.

Launch config (one per kernel family; each program streams one row in BLOCK_V chunks):
4096 lanes over 8 warps = 16 elements per thread: for bf16 that is two 16-byte loads per
operand per iteration, for fp32 four, and it keeps every streaming kernel under ~64 registers
with no spills on sm_80/sm_90 (tests/test_gpu_build.py checks both). Smaller vocabularies use
the next power of two so tiny V does not waste lanes. Two settings override it, for measuring
other configs (``scripts/gpu_check.sh`` tries BLOCK_V 8192 with 16 warps): ``block_v`` and
``num_warps`` of :mod:`cord_kernels.settings` (``CORD_BLOCK_V``, ``CORD_NUM_WARPS``).

Vectorised loads need 16-byte aligned rows: Triton specialises ``V`` and the row strides as
multiples of 16 only when they are, so a vocabulary with V % 8 != 0 in bf16 (V % 4 != 0 in
fp32), e.g. Qwen2's unpadded 151,643, is read with scalar loads. Models pad their heads to a
multiple of 64 or 128 (Qwen2: 151,936) for this reason; the GPU check measures both.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from cord_kernels import settings
from cord_kernels.core.interpreter import fix_scalar_index_for_numpy

if settings.get().interpret:  # the kernels are being decorated for it
    fix_scalar_index_for_numpy()


def block_v(vocab: int) -> int:
    """The BLOCK_V a launcher uses for rows of ``vocab`` logits."""
    return max(16, min(settings.get().block_v, 1 << max(vocab - 1, 0).bit_length()))


def num_warps() -> int:
    """The warps per program of the streaming kernels (setting ``num_warps``, default 8)."""
    return settings.get().num_warps


def launch_device(x: torch.Tensor):
    """Launch on ``x``'s GPU, not on whichever GPU is current: Triton launches on the current
    CUDA device, so a tensor on cuda:1 under current device 0 would be read by a kernel
    running on the wrong GPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


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


def _as_rows(x: torch.Tensor) -> torch.Tensor | None:
    """x as (A, R, V) sharing its storage, or None when no such view exists (a non-unit
    last stride, or >= 4 leading dims whose strides do not merge)."""
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        return None
    if x.dim() == 1:
        return x.view(1, 1, -1)
    if x.dim() == 2:
        return x.unsqueeze(0)
    try:
        return x.view(math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1])
    except RuntimeError:  # dims >= 4 interleaved: only a copy has this shape
        return None


def rows_writable(x: torch.Tensor) -> bool:
    """Whether a kernel can write x's rows in place (``inplace_backward`` needs it)."""
    return _as_rows(x) is not None


def row_view(x: torch.Tensor, *, writable: bool = False) -> RowView:
    """x as (A, R, V) rows. Read-only inputs that have no such view are copied; an output
    (``writable=True``) cannot be, since the kernel's writes would land in the copy."""
    lead = tuple(x.shape[:-1])
    v = _as_rows(x)
    if v is None:
        if writable:
            raise ValueError(
                f"a kernel output of shape {tuple(x.shape)} and strides {x.stride()} has no "
                "(rows, V) view with a unit last stride; writing it would only fill a copy"
            )
        x = x.contiguous()
        v = x.view(math.prod(x.shape[:-2]), x.shape[-2] if x.dim() > 1 else 1, x.shape[-1])
    return RowView(v, lead)


def pair_backward_views(x: torch.Tensor, y: torch.Tensor, dx: torch.Tensor | None,
                        dy: torch.Tensor | None):
    """Row views ``(vx, vy, vdx, vdy)`` of a two-operand backward (student x, teacher y) and of
    its gradient outputs, or None when there is nothing to write. Outputs must be written where
    they live: ``row_view`` raises rather than copy them; a missing output aliases its input's
    view (the kernel never writes it)."""
    vx, vy = row_view(x), row_view(y)
    if vx.n_rows == 0 or (dx is None and dy is None):
        return None
    vdx = row_view(dx, writable=True) if dx is not None else vx
    vdy = row_view(dy, writable=True) if dy is not None else vy
    return vx, vy, vdx, vdy


def launch_pair_forward(kernel, x: torch.Tensor, y: torch.Tensor, n_stats: int,
                        entropy: torch.Tensor | None, scalars: tuple
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocates (d (n_rows,), stats (n_rows, ``n_stats``)), both fp32, and launches a
    two-operand streaming forward, one program per row, with the arguments the base-2
    divergences' ``_<name>_fwd_kernel`` take in this order: X, Y, D, Stats, Ent (``entropy``,
    or D as a placeholder), the (a, b) strides of x and y, R, V, ``*scalars``, HAS_ENTROPY,
    BLOCK_V."""
    vx, vy = row_view(x), row_view(y)
    n, V = vx.n_rows, x.shape[-1]
    d = torch.empty(n, device=x.device, dtype=torch.float32)
    stats = torch.empty(n, n_stats, device=x.device, dtype=torch.float32)
    if n == 0:
        return d, stats
    with launch_device(x):
        kernel[(n,)](
            vx.tensor, vy.tensor, d, stats, d if entropy is None else entropy,
            *vx.strides(), *vy.strides(),
            vx.rows_per_a, V, *scalars,
            HAS_ENTROPY=entropy is not None,
            BLOCK_V=block_v(V),
            num_warps=num_warps(),
        )
    return d, stats


def launch_pair_backward(kernel, x: torch.Tensor, y: torch.Tensor, saved: tuple,
                         grad_rows: torch.Tensor, dx: torch.Tensor | None,
                         dy: torch.Tensor | None, scalars: tuple, *, has_dy: bool = True) -> None:
    """Launches a two-operand streaming backward, one program per row, with the arguments
    every divergence's ``_<name>_bwd_kernel`` takes in this order: X, Y, ``*saved`` (the
    forward's per-row statistics), G (``grad_rows`` as fp32), DX[, DY], the (a, b) strides of
    each, R, V, ``*scalars``, then HAS_DX / HAS_DY (only when ``has_dy``), BLOCK_V. Nothing
    is launched when there is nothing to write (``pair_backward_views``)."""
    views = pair_backward_views(x, y, dx, dy if has_dy else None)
    if views is None:
        return
    vx, vy, vdx, vdy = views
    outs = (vdx, vdy) if has_dy else (vdx,)
    flags = {"HAS_DX": dx is not None, "HAS_DY": dy is not None} if has_dy else {}
    V = x.shape[-1]
    with launch_device(x):
        kernel[(vx.n_rows,)](
            vx.tensor, vy.tensor, *saved, grad_rows.reshape(-1).float().contiguous(),
            *(o.tensor for o in outs),
            *vx.strides(), *vy.strides(), *(st for o in outs for st in o.strides()),
            vx.rows_per_a, V, *scalars,
            **flags,
            BLOCK_V=block_v(V),
            num_warps=num_warps(),
        )


def check_inplace_backward(name: str, logits: torch.Tensor, inplace_backward: bool) -> None:
    """``inplace_backward=True`` writes the gradient into ``logits``' own storage, which needs
    rows the kernel can address in place."""
    if inplace_backward and not rows_writable(logits):
        raise ValueError(
            f"inplace_backward=True needs {name} with a unit last stride whose leading dims "
            f"form one (rows, V) view, got shape {tuple(logits.shape)} and strides "
            f"{logits.stride()}; pass a contiguous tensor or inplace_backward=False"
        )
