"""Total variation distance over a vocabulary-parallel group (``core/vocab_parallel.py``): the
global lse of both sides first (2 all-reduces: the max, then the sums), then sum |p - q| and
c = sum sigma p, which need it (a third). The backward needs the lse and c and the local
slices only. Torch row math on any device (the Triton TVD kernels read whole rows).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import Impl
from cord_kernels.divergences.common import DivParams, TileStats, masked_rows, no_entropy


def tvd_stats(x, y, temperature: float, group):
    """TVD per row of the slices (3 all-reduces) and what the gradient needs: (d, (lse_x,
    lse_y, c))."""
    lse_x, lse_y = vp.global_lse(group, temperature, x, y)
    t, c = vp.new_rows(x, 2)
    for b in vp.row_blocks(x):
        p = (vp.scaled(x[b], temperature) - lse_x[b, None]).exp_()
        diff = p - (vp.scaled(y[b], temperature) - lse_y[b, None]).exp_()
        t[b] = diff.abs().sum(-1)
        c[b] = (diff.sign_() * p).sum(-1)
    t, c = vp.all_reduce_(torch.stack([t, c]), dist.ReduceOp.SUM, group).unbind(0)
    return 0.5 * t, (lse_x, lse_y, c)


def tvd_grads(x, y, temperature: float, stats, g, out_x) -> None:
    """g dTVD/dx into ``out_x`` (may be x) on the local slice; g: (n,), 1/tau included."""
    lse_x, lse_y, c = stats
    for b in vp.row_blocks(x):
        p = (vp.scaled(x[b], temperature) - lse_x[b, None]).exp_()
        sigma = (p - (vp.scaled(y[b], temperature) - lse_y[b, None]).exp_()).sign_()
        # dTVD/dx_j = (1/tau) p_j (sigma_j - c) / 2
        out_x[b] = (sigma - c[b, None]).mul_(p).mul_((0.5 * g[b])[:, None])


class TorchVocabParallelTVDFunction(torch.autograd.Function):
    """Per-row TVD of vocabulary slices (x: the student, the only input with a gradient)."""

    @staticmethod
    def forward(ctx, x, y, temperature: float, group):
        with torch.no_grad():
            d, stats = tvd_stats(vp.flat(x), vp.flat(y), temperature, group)
        ctx.save_for_backward(x, y, *stats)
        ctx.temperature = temperature
        return d.view(x.shape[:-1])

    @staticmethod
    def backward(ctx, grad_d):
        x, y, *stats = ctx.saved_tensors
        g = grad_d.reshape(-1).to(stats[0].dtype) / ctx.temperature
        dx = vp.grad_like(x)
        tvd_grads(vp.flat(x), vp.flat(y), ctx.temperature, stats, g, dx)
        return dx.to(x.dtype).view(x.shape), None, None, None


def parallel_tvd_rows(s, u, row_mask, params: DivParams, group, impl: Impl):
    d = TorchVocabParallelTVDFunction.apply(s, u.detach(), params.temperature, group)
    return masked_rows(d.float(), row_mask)


class TorchVocabParallelTileTVD:
    """The chunk driver's TVD row math on (n, V_r) tiles of this rank's head rows (3
    all-reduces per chunk); ``write_grad`` leaves the slice of g dTVD/ds in the tile."""

    grad_into = False

    def __init__(self, params: DivParams, group):
        self.temperature, self.group = params.temperature, group

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        no_entropy(want_entropy)
        d, extra = tvd_stats(s, u, self.temperature, self.group)
        return TileStats(d, extra)

    def write_grad(self, s, u, state, g) -> None:
        tvd_grads(s, u, self.temperature, state.extra, g.to(state.d.dtype) / self.temperature,
                  out_x=s)
        return None
