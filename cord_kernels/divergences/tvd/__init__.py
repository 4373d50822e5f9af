"""Total variation distance, TVD = 1/2 sum_v |p_v - q_v| (in [0, 1]; the teacher gets no
gradient).

    triton_ops.py   kernels (two streaming passes, then the gradient pass), launchers, custom
                    ops, ``TritonTVDFunction``, Triton tiles
    torch_ops.py    ``TorchTVDFunction``, torch tiles
    parallel.py     vocabulary-parallel statistics, Function and tiles (torch row math)
"""

from __future__ import annotations

from cord_kernels.divergences.common import DivergenceParts, pick_tile
from cord_kernels.divergences.tvd.parallel import TorchVocabParallelTileTVD, parallel_tvd_rows
from cord_kernels.divergences.tvd.torch_ops import TorchTileTVD, torch_tvd_rows
from cord_kernels.divergences.tvd.triton_ops import TritonTileTVD, triton_tvd_rows

# Each divergence's registry record written out field by field, on purpose (the same shape).
TVD = DivergenceParts(
    triton_rows=triton_tvd_rows,
    torch_rows=torch_tvd_rows,
    parallel_rows=parallel_tvd_rows,
    tile=pick_tile(TritonTileTVD, TorchTileTVD),
    parallel_tile=lambda impl, params, group: TorchVocabParallelTileTVD(params, group),
)
