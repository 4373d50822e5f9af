"""The generalized Jensen-Shannon divergence, TRL's and Liger's beta (0 < beta < 1 here: the
public functions send beta 0 and 1 to the KLs).

    triton_ops.py   kernels, launchers, custom ops, ``TritonJSDFunction``, Triton tiles
    torch_ops.py    ``TorchJSDFunction``, torch tiles
    parallel.py     vocabulary-parallel statistics, Function and tiles (torch row math)
"""

from __future__ import annotations

from cord_kernels.divergences.common import DivergenceParts, pick_tile
from cord_kernels.divergences.jsd.parallel import TorchVocabParallelTileJSD, parallel_jsd_rows
from cord_kernels.divergences.jsd.torch_ops import TorchTileJSD, torch_jsd_rows
from cord_kernels.divergences.jsd.triton_ops import TritonTileJSD, triton_jsd_rows

# Each divergence's registry record written out field by field, on purpose (the same shape).
JSD = DivergenceParts(
    triton_rows=triton_jsd_rows,
    torch_rows=torch_jsd_rows,
    parallel_rows=parallel_jsd_rows,
    tile=pick_tile(TritonTileJSD, TorchTileJSD),
    parallel_tile=lambda impl, params, group: TorchVocabParallelTileJSD(params, group),
)
