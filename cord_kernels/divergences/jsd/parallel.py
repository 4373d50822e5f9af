"""The generalized JSD over a vocabulary-parallel group (``core/vocab_parallel.py``): the
global lse of both sides first (2 all-reduces), then K_p = sum_v p_v (log p_v - log m_v) and
K_q, which need it (a third). The backward needs those and the local slices only. Torch row
math on any device (the Triton JSD kernels read whole rows).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cord_kernels.core.dispatch import Impl
from cord_kernels.core.vocab_parallel import (
    all_reduce_,
    flat,
    global_lse,
    grad_like,
    new_rows,
    row_blocks,
    scaled,
)
from cord_kernels.divergences.common import DivParams, TileStats, masked_rows, no_entropy
from cord_kernels.divergences.jsd.torch_ops import log_mixture


def jsd_stats(x, y, beta: float, temperature: float, group):
    """JSD_beta per row (3 all-reduces) and what the gradient needs: (d, (lse_x, lse_y, k_p,
    k_q))."""
    lse_x, lse_y = global_lse(group, temperature, x, y)
    k_p, k_q = new_rows(x, 2)
    for b in row_blocks(x):
        log_p = scaled(x[b], temperature) - lse_x[b, None]
        log_q = scaled(y[b], temperature) - lse_y[b, None]
        log_m = log_mixture(log_p, log_q, beta)
        p, q = log_p.exp(), log_q.exp()
        k_p[b] = torch.where(p > 0, p * (log_p - log_m), 0.0).sum(-1)
        k_q[b] = torch.where(q > 0, q * (log_q - log_m), 0.0).sum(-1)
    k_p, k_q = all_reduce_(torch.stack([k_p, k_q]), dist.ReduceOp.SUM, group).unbind(0)
    return beta * k_q + (1.0 - beta) * k_p, (lse_x, lse_y, k_p, k_q)


def jsd_grads(x, y, temperature: float, stats, beta: float, g, out_x=None, out_y=None):
    lse_x, lse_y, k_p, k_q = stats
    for b in row_blocks(x):
        log_p = scaled(x[b], temperature) - lse_x[b, None]
        log_q = scaled(y[b], temperature) - lse_y[b, None]
        log_m = log_mixture(log_p, log_q, beta)
        dy = None
        if out_y is not None:
            # dJSD/dy_v = (1/tau) beta q_v (log q_v - log m_v - K_q)
            q = log_q.exp()
            dy = torch.where(q > 0, q * (log_q - log_m - k_q[b, None]), 0.0) \
                * (g[b] * beta)[:, None]
        if out_x is not None:
            # dJSD/dx_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
            p = log_p.exp()
            out_x[b] = torch.where(p > 0, p * (log_p - log_m - k_p[b, None]), 0.0) \
                * (g[b] * (1.0 - beta))[:, None]
        if dy is not None:
            out_y[b] = dy


class TorchVocabParallelJSDFunction(torch.autograd.Function):
    """Per-row generalized JSD (0 < beta < 1) of vocabulary slices (x: the student)."""

    @staticmethod
    def forward(ctx, x, y, beta: float, temperature: float, group):
        with torch.no_grad():
            d, stats = jsd_stats(flat(x), flat(y), beta, temperature, group)
        ctx.save_for_backward(x, y, *stats)
        ctx.beta, ctx.temperature = beta, temperature
        return d.view(x.shape[:-1])

    @staticmethod
    def backward(ctx, grad_d):
        x, y, *stats = ctx.saved_tensors
        tau = ctx.temperature
        g = grad_d.reshape(-1).to(stats[0].dtype) / tau
        dx = grad_like(x) if ctx.needs_input_grad[0] else None
        dy = grad_like(y) if ctx.needs_input_grad[1] else None
        jsd_grads(flat(x), flat(y), tau, stats, ctx.beta, g, dx, dy)
        dx = None if dx is None else dx.to(x.dtype).view(x.shape)
        dy = None if dy is None else dy.to(y.dtype).view(y.shape)
        return dx, dy, None, None, None


def parallel_jsd_rows(s, u, row_mask, params: DivParams, group, impl: Impl):
    d = TorchVocabParallelJSDFunction.apply(s, u, params.jsd_beta, params.temperature, group)
    return masked_rows(d.float(), row_mask)


class TorchVocabParallelTileJSD:
    """The chunk driver's JSD row math on (n, V_r) tiles of this rank's head rows (3
    all-reduces per chunk); ``write_grad`` leaves the slice of g dJSD/ds in the tile."""

    grad_into = False

    def __init__(self, params: DivParams, group):
        self.params, self.group = params, group

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        no_entropy(want_entropy)
        d, extra = jsd_stats(s, u, self.params.jsd_beta, self.params.temperature, self.group)
        return TileStats(d, extra)

    def write_grad(self, s, u, state, g) -> None:
        tau = self.params.temperature
        jsd_grads(s, u, tau, state.extra, self.params.jsd_beta, g.to(state.d.dtype) / tau,
                  out_x=s)
        return None
