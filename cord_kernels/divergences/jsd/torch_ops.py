"""The generalized JSD in eager torch (``impl="torch"``).

    TorchJSDFunction   per-row JSD of logits; saves P and (log P - log m) of each input that
                       needs a gradient: two (N, V) fp32 tensors for the student alone
    TorchTileJSD       the fused-linear driver's row math on a chunk's (n, V) tiles
"""

from __future__ import annotations

import math

import torch

from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.torch_path import scaled
from cord_kernels.divergences.common import (
    DivParams,
    TorchTileDivergence,
    masked_rows,
    row_dots,
)


def log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log((1 - beta) p + beta q) for 0 < beta < 1; -inf where p = q = 0."""
    return torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))


class TorchJSDFunction(torch.autograd.Function):
    """Per-row generalized JSD, m = (1 - beta) P_x + beta P_y, 0 < beta < 1 (x: the student):
    beta KL(P_y || m) + (1 - beta) KL(P_x || m). Saves P and (log P - log m) of each input that
    needs a gradient: two (N, V) fp32 tensors for the student alone."""

    @staticmethod
    def forward(ctx, x, y, beta: float, temperature: float):
        with torch.no_grad():
            log_p = torch.log_softmax(scaled(x, temperature), dim=-1)
            log_q = torch.log_softmax(scaled(y, temperature), dim=-1)
            log_m = log_mixture(log_p, log_q, beta)
            p, q = log_p.exp(), log_q.exp()
            # log P - log m, in log P's buffer; entries with P = 0 contribute nothing
            # (0 log 0 = 0, and -inf - -inf where both sides are 0).
            diff_p = log_p.sub_(log_m).masked_fill_(p == 0, 0.0)
            diff_q = log_q.sub_(log_m).masked_fill_(q == 0, 0.0)
            k_p = torch.linalg.vecdot(p, diff_p)  # KL(P_x || m): (..., V) . (..., V) -> (...)
            k_q = torch.linalg.vecdot(q, diff_q)  # KL(P_y || m)
            d = beta * k_q + (1.0 - beta) * k_p
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(p if need_x else None, diff_p if need_x else None, k_p,
                              q if need_y else None, diff_q if need_y else None, k_q)
        ctx.beta, ctx.temperature = beta, temperature
        return nonnegative(d)

    @staticmethod
    def backward(ctx, grad_d):
        p, diff_p, k_p, q, diff_q, k_q = ctx.saved_tensors
        g = (grad_d / ctx.temperature).unsqueeze(-1)
        dx = dy = None
        if ctx.needs_input_grad[0]:
            # dJSD/dx_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
            dx = (diff_p - k_p.unsqueeze(-1)).mul_(p).mul_(g * (1.0 - ctx.beta))
        if ctx.needs_input_grad[1]:
            # dJSD/dy_v = (1/tau) beta q_v (log q_v - log m_v - K_q)
            dy = (diff_q - k_q.unsqueeze(-1)).mul_(q).mul_(g * ctx.beta)
        return dx, dy, None, None

def torch_jsd_rows(s, u, row_mask, params: DivParams):
    return masked_rows(TorchJSDFunction.apply(s, u, params.jsd_beta, params.temperature)
                       .float(), row_mask)


# ------------------------------------------------------------------------------ tiles


class TorchTileJSD(TorchTileDivergence):
    """beta KL(q || m) + (1 - beta) KL(p || m), 0 < beta < 1; s becomes
    (1 - beta) p (log p - log m - K_p) = tau dJSD/ds, K_p = KL(p || m)."""

    def __init__(self, params: DivParams):
        super().__init__(params)
        if not 0.0 < params.jsd_beta < 1.0:
            raise ValueError(f"TorchTileJSD needs 0 < jsd_beta < 1, got {params.jsd_beta}")
        self.jsd_beta = params.jsd_beta

    def _block(self, b_s, b_u, want_grad, ent=None):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        log_m = log_mixture(log_p, log_q, self.jsd_beta)
        p = torch.exp(log_p, out=b_s)
        if ent is not None:  # H(p) = -sum_v p_v log p_v
            ent.copy_(row_dots(p, log_p).neg_())
        q = torch.exp(log_q, out=b_u)
        diff_p = log_p.sub_(log_m)
        diff_q = log_q.sub_(log_m)
        k_p = row_dots(p, diff_p)
        b_d = self.jsd_beta * row_dots(q, diff_q) + (1.0 - self.jsd_beta) * k_p
        if want_grad:
            # dJSD/ds_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
            p.mul_(diff_p.sub_(k_p[:, None])).mul_(1.0 - self.jsd_beta)
        return b_d


