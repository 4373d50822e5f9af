"""Reverse and forward KL over a vocabulary-parallel group (``core/vocab_parallel.py`` holds
the groups, DTensors and the collectives): each rank holds a contiguous slice of every row.

    max      m   = max_v x_v                          (all-reduce MAX)
    sum-exp  S   = sum_v e^{x_v - m}                  (all-reduce SUM, with A)
    KL       A   = sum_v e^{x_v - m} ((x_v - m) - (y_v - m_y)),  D = A / S - log S + log S_y

2 all-reduces of (rows, 3) statistics per call. The backward needs only the global lse and D
and the local slices: it communicates nothing. The Triton kernels take a slice as they take a
full row; :func:`combine_kl_rows` merges their per-slice (D, lse) into the group's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cord_kernels.core.dispatch import Impl
from cord_kernels.core.vocab_parallel import (
    all_reduce_,
    flat,
    global_max,
    grad_like,
    new_rows,
    row_blocks,
    scaled,
)
from cord_kernels.divergences.common import DivParams, TileStats, no_entropy
from cord_kernels.divergences.kl.triton_ops import (
    TritonTileForwardKL,
    TritonTileReverseKL,
    kl_bwd_op,
    kl_fwd_op,
)

# ----------------------------------------------------------------------- row statistics


def kl_stats(x, y, temperature: float, group):
    """D = KL(P_x || P_y) per row of the slices and the global lse of each (2 all-reduces)."""
    mx, my = global_max(group, temperature, x, y)
    s_x, s_y, a = new_rows(x, 3)
    for b in row_blocks(x):
        lx = scaled(x[b], temperature) - mx[b, None]
        ly = scaled(y[b], temperature) - my[b, None]
        ex = lx.exp()
        # Entries with p_x = 0 (-inf logits) contribute nothing, even against -inf in y.
        a[b] = torch.where(ex > 0, ex * (lx - ly), 0.0).sum(-1)
        s_x[b], s_y[b] = ex.sum(-1), ly.exp_().sum(-1)
    s_x, s_y, a = all_reduce_(torch.stack([s_x, s_y, a]), dist.ReduceOp.SUM, group).unbind(0)
    d = a / s_x - s_x.log() + s_y.log()
    return d, mx + s_x.log(), my + s_y.log()


def kl_grads(x, y, temperature: float, lse_x, lse_y, d, g, out_x=None, out_y=None):
    """g dD/dx into ``out_x`` and g dD/dy into ``out_y`` (either None: not wanted; either may
    be its own input) on the local slices; g: (n,), 1/tau included."""
    for b in row_blocks(x):
        log_px = scaled(x[b], temperature) - lse_x[b, None]
        px = log_px.exp()
        log_py = scaled(y[b], temperature) - lse_y[b, None]
        gb = g[b, None]
        if out_y is not None:
            # dD/dy_v = (1/tau) (q_v - p_v)
            dy = (log_py.exp() - px) * gb
        if out_x is not None:
            # dD/dx_v = (1/tau) p_v (log p_v - log q_v - D)
            out_x[b] = torch.where(px > 0, px * (log_px - log_py - d[b, None]), 0.0) * gb
        if out_y is not None:
            out_y[b] = dy


def combine_kl_rows(d_r, lse_x, lse_y, row_mask, group):
    """The group's (D, lse_x, lse_y) per row from each rank's KL(P_x || P_y) on its slice alone
    (the streaming kernel's output: ``d_r`` and (max, log-sum-exp) pairs): 2 all-reduces.

        w_r = e^{L_x^r - L_x}  (L: a log-sum-exp, r: over the slice, none: global)
        D = sum_r w_r (D_r + (L_x^r - L_x) - (L_y^r - L_y))

    Returns the pairs as (global max of the L^r, log of the rescaled sum), which sum to L."""
    lx, ly = lse_x.sum(1), lse_y.sum(1)
    if row_mask is not None:  # masked rows were not read: their statistics are garbage
        rm = row_mask.reshape(-1)
        lx, ly, d_r = (torch.where(rm, t, 0.0) for t in (lx, ly, d_r))
    g = all_reduce_(torch.stack([lx, ly]), dist.ReduceOp.MAX, group)
    gx, gy = torch.where(torch.isfinite(g), g, 0.0).unbind(0)
    ex, ey = (lx - gx).exp(), (ly - gy).exp()
    a = torch.where(ex > 0, ex * (d_r + (lx - gx) - (ly - gy)), 0.0)
    s_x, s_y, a = all_reduce_(torch.stack([ex, ey, a]), dist.ReduceOp.SUM, group).unbind(0)
    d = a / s_x - s_x.log() + s_y.log()
    if row_mask is not None:
        d = torch.where(rm, d, 0.0)
    return d, torch.stack([gx, s_x.log()], 1), torch.stack([gy, s_y.log()], 1)


# ---------------------------------------------------------------- autograd Functions


class TorchVocabParallelKLFunction(torch.autograd.Function):
    """Per-row KL(P_x || P_y) of vocabulary slices, the full-vocabulary value on every rank.
    Saves the inputs and three (rows,) statistics; backward recomputes softmax locally."""

    @staticmethod
    def forward(ctx, x, y, row_mask, temperature: float, group):
        with torch.no_grad():
            d, lse_x, lse_y = kl_stats(flat(x), flat(y), temperature, group)
            if row_mask is not None:
                d = torch.where(row_mask.reshape(-1), d, 0.0)
        ctx.save_for_backward(x, y, row_mask, lse_x, lse_y, d)
        ctx.temperature = temperature
        return d.view(x.shape[:-1])

    @staticmethod
    def backward(ctx, grad_d):
        x, y, row_mask, lse_x, lse_y, d = ctx.saved_tensors
        tau = ctx.temperature
        g = grad_d.reshape(-1).to(lse_x.dtype) / tau
        if row_mask is not None:
            g = torch.where(row_mask.reshape(-1), g, 0.0)
        dx = grad_like(x) if ctx.needs_input_grad[0] else None
        dy = grad_like(y) if ctx.needs_input_grad[1] else None
        kl_grads(flat(x), flat(y), tau, lse_x, lse_y, d, g, dx, dy)
        grads = []
        for t, inp in ((dx, x), (dy, y)):
            if t is not None and row_mask is not None:  # NaN padding in masked rows must not
                t.masked_fill_(~row_mask.reshape(-1, 1), 0.0)  # leak through 0 * x
            grads.append(None if t is None else t.to(inp.dtype).view(inp.shape))
        return grads[0], grads[1], None, None, None


class TritonVocabParallelKLFunction(torch.autograd.Function):
    """Per-row KL(P_x || P_y) of vocabulary slices through the streaming kernels: each rank's
    kernel gives D and lse of its slice, 2 all-reduces combine them (:func:`combine_kl_rows`),
    and the backward kernel, given the global lse and D, writes the local slice of the full
    gradient (no communication)."""

    @staticmethod
    def forward(ctx, x, y, row_mask, temperature: float, group):
        d_r, lse_x, lse_y = kl_fwd_op(x, y, row_mask, temperature)
        d, lse_x, lse_y = combine_kl_rows(d_r, lse_x, lse_y, row_mask, group)
        ctx.save_for_backward(x, y, lse_x, lse_y, d)
        ctx.temperature = temperature
        return d.view(x.shape[:-1])

    @staticmethod
    def backward(ctx, grad_d):
        x, y, lse_x, lse_y, d = ctx.saved_tensors
        dx = torch.empty_like(x, memory_format=torch.contiguous_format) \
            if ctx.needs_input_grad[0] else None
        dy = torch.empty_like(y, memory_format=torch.contiguous_format) \
            if ctx.needs_input_grad[1] else None
        kl_bwd_op(x, y, lse_x, lse_y, d, grad_d, ctx.temperature, dx, dy)
        return dx, dy, None, None, None


def _kl_rows(x, y, row_mask, temperature: float, group, impl: Impl):
    if impl is Impl.TORCH:
        return TorchVocabParallelKLFunction.apply(x, y, row_mask, temperature, group).float()
    return TritonVocabParallelKLFunction.apply(x, y, row_mask, temperature, group)


def parallel_reverse_kl_rows(s, u, row_mask, params: DivParams, group, impl: Impl):
    return _kl_rows(s, u, row_mask, params.temperature, group, impl)


def parallel_forward_kl_rows(s, u, row_mask, params: DivParams, group, impl: Impl):
    return _kl_rows(u, s, row_mask, params.temperature, group, impl)


# ------------------------------------------------------------------------------ tiles


class TorchVocabParallelTileKL:
    """The chunk driver's KL row math on (n, V_r) tiles of this rank's head rows, in torch:
    D over the whole vocabulary per row (2 all-reduces per chunk); ``write_grad`` turns the
    student tile into its slice of g dD/ds (1/tau included; no row scale left)."""

    grad_into = False

    def __init__(self, params: DivParams, group, forward: bool = False):
        self.temperature, self.group, self.forward = params.temperature, group, forward

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        no_entropy(want_entropy)
        if self.forward:  # KL(q || p)
            d, lse_u, lse_s = kl_stats(u, s, self.temperature, self.group)
        else:
            d, lse_s, lse_u = kl_stats(s, u, self.temperature, self.group)
        return TileStats(d, (lse_s, lse_u))

    def write_grad(self, s, u, state, g) -> None:
        g = g.to(state.d.dtype) / self.temperature
        lse_s, lse_u = state.extra
        if self.forward:
            kl_grads(u, s, self.temperature, lse_u, lse_s, state.d, g, out_y=s)
        else:
            kl_grads(s, u, self.temperature, lse_s, lse_u, state.d, g, out_x=s)
        return None


class TritonVocabParallelTileKL:
    """A KL's streaming kernels on a tile of this rank's vocabulary slice: the kernel's D and
    lse of the slice, combined over the group by 2 all-reduces (:func:`combine_kl_rows`); the
    backward kernel then gets the global statistics and writes the slice's part of the full
    gradient."""

    grad_into = True

    def __init__(self, inner: TritonTileReverseKL, group):
        self.inner, self.group = inner, group

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        no_entropy(want_entropy)
        state = self.inner.stats(s, u, want_grad)
        d, lse_1, lse_2 = combine_kl_rows(state.d, *state.extra, None, self.group)
        return TileStats(d, (lse_1, lse_2))

    def write_grad(self, s, u, state, g, out=None) -> None:
        return self.inner.write_grad(s, u, state, g, out)


def parallel_kl_tile(params: DivParams, group, impl: Impl, forward: bool):
    if impl is Impl.TORCH:
        return TorchVocabParallelTileKL(params, group, forward)
    inner = TritonTileForwardKL if forward else TritonTileReverseKL
    return TritonVocabParallelTileKL(inner(params), group)
