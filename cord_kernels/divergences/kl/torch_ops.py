"""Reverse and forward KL in eager torch (``impl="torch"``): the kernels' algorithm for CPUs.

    TorchKLFunction      per-row KL(P_x || P_y) of logits, statistics in forward and the
                         gradient formula written out in backward; saves p and
                         (log p - log q), two (N, V) fp32 tensors (``CORD_TORCH_COMPILE=1``:
                         the compiled form of ``core/torch_path.py``, nothing of size (N, V)
                         saved)
    TorchTileReverseKL, TorchTileForwardKL
                         the fused-linear driver's row math on a chunk's (n, V) tiles

Tiles come out of a GEMM, so every logit is finite: the tile versions skip the -inf guards of
the logits-in path (a probability that underflows to 0 still has a finite log).
"""

from __future__ import annotations

import torch

from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.torch_path import compile_enabled, compiled, scaled
from cord_kernels.divergences.common import DivParams, TorchTileDivergence, row_dots


def _kl_stats(x, y, row_mask, temperature: float):
    """D = KL(P_x || P_y) and lse of both per row (compiled: one fused loop per row)."""
    xs, ys = scaled(x, temperature), scaled(y, temperature)
    lse_x = torch.logsumexp(xs, dim=-1, keepdim=True)
    lse_y = torch.logsumexp(ys, dim=-1, keepdim=True)
    log_px = xs - lse_x
    px = log_px.exp()
    # Entries with p_x = 0 (-inf logits) contribute nothing, even against -inf in y.
    d = torch.where(px > 0, px * (log_px - (ys - lse_y)), 0.0).sum(-1)
    if row_mask is not None:
        d = torch.where(row_mask, d, 0.0)
    return d, lse_x, lse_y


def _kl_grads(x, y, row_mask, lse_x, lse_y, d, grad_d, temperature: float, need_dx: bool,
              need_dy: bool):
    """dD/dx and dD/dy scaled by grad_d, recomputing softmax from the logits."""
    g = (grad_d / temperature).unsqueeze(-1)
    if row_mask is not None:
        g = torch.where(row_mask.unsqueeze(-1), g, 0.0)
    log_px = scaled(x, temperature) - lse_x
    px = log_px.exp()
    dx = dy = None
    if need_dx:
        # dD/dx_v = (1/tau) p_v (log p_v - log q_v - D)
        log_py = scaled(y, temperature) - lse_y
        dx = torch.where(px > 0, g * px * (log_px - log_py - d.unsqueeze(-1)), 0.0)
        dx = dx.to(x.dtype)
    if need_dy:
        # dD/dy_v = (1/tau) (q_v - p_v)
        dy = (g * ((scaled(y, temperature) - lse_y).exp() - px)).to(y.dtype)
    if row_mask is not None:  # garbage (NaN) in masked rows must not leak through 0 * x
        keep = row_mask.unsqueeze(-1)
        dx = None if dx is None else torch.where(keep, dx, 0.0)
        dy = None if dy is None else torch.where(keep, dy, 0.0)
    return dx, dy


class TorchKLFunction(torch.autograd.Function):
    """Per-row KL(P_x || P_y), P = softmax(logits / tau), gradients to whichever input needs
    them. ``row_mask``: bool over the leading dims, or None."""

    @staticmethod
    def forward(ctx, x, y, row_mask, temperature: float):
        ctx.temperature = temperature
        ctx.compiled = compile_enabled()
        if ctx.compiled:
            with torch.no_grad():
                d, lse_x, lse_y = compiled(_kl_stats)(x, y, row_mask, temperature)
            ctx.save_for_backward(x, y, row_mask, lse_x, lse_y, d)
            return nonnegative(d)
        with torch.no_grad():
            log_px = torch.log_softmax(scaled(x, temperature), dim=-1)
            log_py = torch.log_softmax(scaled(y, temperature), dim=-1)
            py = log_py.exp() if ctx.needs_input_grad[1] else None
            diff = log_py.neg_().add_(log_px)  # log p_x - log p_y, in log_py's buffer
            px = log_px.exp_()
            # Entries with p_x = 0 (-inf logits) contribute nothing, even against -inf in y.
            diff.masked_fill_(px == 0, 0.0)
            d = torch.linalg.vecdot(px, diff)  # (..., V) . (..., V) -> (...)
            if row_mask is not None:
                d = torch.where(row_mask, d, 0.0)
        ctx.save_for_backward(px, diff, d, py, row_mask)
        return nonnegative(d)

    @staticmethod
    def backward(ctx, grad_d):
        if ctx.compiled:
            x, y, row_mask, lse_x, lse_y, d = ctx.saved_tensors
            dx, dy = compiled(_kl_grads)(x, y, row_mask, lse_x, lse_y, d, grad_d,
                                          ctx.temperature, ctx.needs_input_grad[0],
                                          ctx.needs_input_grad[1])
            return dx, dy, None, None
        px, diff, d, py, row_mask = ctx.saved_tensors
        g = (grad_d / ctx.temperature).unsqueeze(-1)
        if row_mask is not None:
            g = torch.where(row_mask.unsqueeze(-1), g, 0.0)
        dx = dy = None
        if ctx.needs_input_grad[0]:
            # dD/dx_v = (1/tau) p_v (log p_v - log q_v - D)
            dx = (diff - d.unsqueeze(-1)).mul_(px).mul_(g)
            if row_mask is not None:  # garbage (NaN) in masked rows must not leak through 0 * x
                dx.masked_fill_(~row_mask.unsqueeze(-1), 0.0)
        if ctx.needs_input_grad[1]:
            # dD/dy_v = (1/tau) (q_v - p_v)
            dy = (py - px).mul_(g)
            if row_mask is not None:
                dy.masked_fill_(~row_mask.unsqueeze(-1), 0.0)
        # fp32 gradients of bf16/fp16 inputs are cast to the input dtype by autograd.
        return dx, dy, None, None

def torch_reverse_kl_rows(s, u, row_mask, params: DivParams):
    return TorchKLFunction.apply(s, u, row_mask, params.temperature).float()


def torch_forward_kl_rows(s, u, row_mask, params: DivParams):
    return TorchKLFunction.apply(u, s, row_mask, params.temperature).float()


# ------------------------------------------------------------------------------ tiles


class TorchTileReverseKL(TorchTileDivergence):
    """KL(p || q); s becomes p (log p - log q - D) = tau dD/ds, u becomes log p - log q."""

    def _block(self, b_s, b_u, want_grad, ent=None):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        torch.sub(log_p, log_q, out=b_u)
        torch.exp(log_p, out=b_s)
        if ent is not None:  # H(p) = -sum_v p_v log p_v
            ent.copy_(row_dots(b_s, log_p).neg_())
        b_d = row_dots(b_s, b_u)
        if want_grad:
            # dD/ds_v = (1/tau) p_v (log p_v - log q_v - D); the 1/tau goes to row_scale
            b_s.mul_(b_u.sub_(b_d[:, None]))
        return b_d


class TorchTileForwardKL(TorchTileDivergence):
    """KL(q || p); s becomes p - q = tau dD/ds."""

    def _block(self, b_s, b_u, want_grad, ent=None):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        q = log_q.exp()
        diff = log_q.sub_(log_p)  # log q - log p
        b_d = row_dots(q, diff)
        if want_grad or ent is not None:
            torch.exp(log_p, out=b_s)
            if ent is not None:  # H(p) = -sum_v p_v log p_v
                ent.copy_(row_dots(b_s, log_p).neg_())
            if want_grad:
                # dD/ds_v = (1/tau) (p_v - q_v)
                b_s.sub_(q)
        return b_d

