"""Total variation distance in eager torch (``impl="torch"``).

    TorchTVDFunction   per-row TVD of logits; saves p and sign(p - q) of the student: two
                       (N, V) fp32 tensors (the teacher gets no gradient)
    TorchTileTVD       the fused-linear driver's row math on a chunk's (n, V) tiles

    TVD = 1/2 sum_v |p_v - q_v|,  dTVD/ds_j = (1/tau) p_j (sigma_j - c) / 2,
    sigma = sign(p - q), c = sum_v sigma_v p_v
"""

from __future__ import annotations

import torch

from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.torch_path import scaled
from cord_kernels.divergences.common import (
    DivParams,
    TorchTileDivergence,
    masked_rows,
    row_dots,
)


class TorchTVDFunction(torch.autograd.Function):
    """Per-row TVD(P_x, P_y) (x: the student, the only input that gets a gradient)."""

    @staticmethod
    def forward(ctx, x, y, temperature: float):
        with torch.no_grad():
            p = torch.softmax(scaled(x, temperature), dim=-1)
            sigma = p - torch.softmax(scaled(y, temperature), dim=-1)
            d = 0.5 * sigma.abs().sum(-1)
            sigma.sign_()
            c = torch.linalg.vecdot(p, sigma)  # (..., V) . (..., V) -> (...)
        ctx.save_for_backward(p, sigma, c)
        ctx.temperature = temperature
        return nonnegative(d)

    @staticmethod
    def backward(ctx, grad_d):
        p, sigma, c = ctx.saved_tensors
        # dTVD/dx_j = (1/tau) p_j (sigma_j - c) / 2
        g = (grad_d * (0.5 / ctx.temperature)).unsqueeze(-1)
        return (sigma - c.unsqueeze(-1)).mul_(p).mul_(g), None, None


def torch_tvd_rows(s, u, row_mask, params: DivParams):
    return masked_rows(TorchTVDFunction.apply(s, u.detach(), params.temperature).float(),
                       row_mask)


# ------------------------------------------------------------------------------ tiles


class TorchTileTVD(TorchTileDivergence):
    """1/2 sum |p - q|; s becomes p (sigma - c) / 2 = tau dTVD/ds, u becomes sigma."""

    def _block(self, b_s, b_u, want_grad, ent=None):
        log_p = torch.log_softmax(b_s, dim=-1)
        p = torch.exp(log_p, out=b_s)
        if ent is not None:  # H(p) = -sum_v p_v log p_v
            ent.copy_(row_dots(p, log_p).neg_())
        sigma = torch.softmax(b_u, dim=-1).neg_().add_(p)  # p - q
        b_d = 0.5 * sigma.abs().sum(-1)
        b_u.copy_(sigma.sign_())
        if want_grad:
            # dTVD/ds_j = (1/tau) p_j (sigma_j - c) / 2; the 1/tau goes to row_scale
            c = row_dots(p, b_u)
            p.mul_(b_u.sub_(c[:, None])).mul_(0.5)
        return b_d
