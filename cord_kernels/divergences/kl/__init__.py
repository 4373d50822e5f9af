"""Reverse KL, KL(p || q), and forward KL, KL(q || p): one kernel pair computes KL(P_x || P_y)
and the two divergences run it with the roles of student and teacher swapped.

    triton_ops.py   kernels, launchers, custom ops, ``TritonKLFunction``, Triton tiles
    torch_ops.py    ``TorchKLFunction``, torch tiles
    parallel.py     vocabulary-parallel statistics, Functions and tiles (torch and Triton)
"""

from __future__ import annotations

from cord_kernels.divergences.common import DivergenceParts, pick_tile
from cord_kernels.divergences.kl.parallel import (
    parallel_forward_kl_rows,
    parallel_kl_tile,
    parallel_reverse_kl_rows,
)
from cord_kernels.divergences.kl.torch_ops import (
    TorchTileForwardKL,
    TorchTileReverseKL,
    torch_forward_kl_rows,
    torch_reverse_kl_rows,
)
from cord_kernels.divergences.kl.triton_ops import (
    TritonTileForwardKL,
    TritonTileReverseKL,
    triton_forward_kl_rows,
    triton_reverse_kl_rows,
)

# Each divergence's registry record written out field by field, on purpose (the same shape).
REVERSE_KL = DivergenceParts(
    triton_rows=triton_reverse_kl_rows,
    torch_rows=torch_reverse_kl_rows,
    parallel_rows=parallel_reverse_kl_rows,
    tile=pick_tile(TritonTileReverseKL, TorchTileReverseKL),
    parallel_tile=lambda impl, params, group: parallel_kl_tile(params, group, impl, False),
)

FORWARD_KL = DivergenceParts(
    triton_rows=triton_forward_kl_rows,
    torch_rows=torch_forward_kl_rows,
    parallel_rows=parallel_forward_kl_rows,
    tile=pick_tile(TritonTileForwardKL, TorchTileForwardKL),
    parallel_tile=lambda impl, params, group: parallel_kl_tile(params, group, impl, True),
)
