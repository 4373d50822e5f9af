"""The generalized Jensen-Shannon divergence (TRL's GKD, Liger) through the Triton kernels.

    p = softmax(s / tau) (student), q = softmax(u / tau) (teacher), m = (1 - beta) p + beta q
    JSD_beta = beta KL(q || m) + (1 - beta) KL(p || m)

``beta = 0`` is forward_kl and ``beta = 1`` is reverse_kl exactly (TRL's
``generalized_jsd_loss`` special-cases both; the formula itself tends to 0 there), so the
public function sends those two to the KL kernels and these kernels only ever see 0 < beta < 1.
Then every term is finite: p_v > 0 implies m_v >= (1 - beta) p_v > 0, and likewise for q.

Forward, one program per row: a read for lse(s), lse(u) (online max/sum), then a second read
for the divergence, because log m_v needs both normalizers before its first term is known
(log of a mixture does not rescale like the KL's sums do). It saves per row the two lse (as
max and log-sum, exact for logits near 1e4) and the two row constants K_p = KL(p || m) and
K_q = KL(q || m) the gradient needs. Backward: one read of both rows, writing

    dJSD/ds_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
    dJSD/du_v = (1/tau) beta q_v (log q_v - log m_v - K_q)       (teacher_grad=True)

(the softmax Jacobian applied to dJSD/dp_v = (1 - beta)(log p_v - log m_v), whose p-weighted
mean is (1 - beta) K_p). bf16 traffic: 3 reads + 1 write = 14 B per vocab entry (the KL's
10 B plus the second forward read); nothing of size (N, V) besides the gradient.

Layout: kernels, launchers (``jsd_fwd``, ``jsd_bwd``), custom ops, autograd Function, tiles.
"""

from __future__ import annotations

import math

import torch

from cord_kernels.core.dispatch import triton_available
from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.rows import (
    block_v,
    launch_device,
    num_warps,
    pair_backward_views,
    row_view,
)
from cord_kernels.divergences.common import DivParams, TileStats, masked_rows, new_entropy

# Per-row statistics saved by the forward: max and log-sum of s/tau and of u/tau, K_p, K_q.
N_STATS = 6

if triton_available():  # Triton is optional: without it only the torch path exists
    import triton
    import triton.language as tl

    from cord_kernels.divergences.streaming import pair_lse, row_start, scaled_blocks

    @triton.jit
    def _log_mixture(log_p, log_q, log_1mb, log_b):
        """log((1 - beta) p + beta q) elementwise, stable; -inf where p = q = 0."""
        a = log_p + log_1mb
        b = log_q + log_b
        hi = tl.maximum(a, b)
        lo = tl.minimum(a, b)
        gap = tl.where(hi == float("-inf"), 0.0, lo - hi)  # <= 0
        return tl.where(hi == float("-inf"), float("-inf"), hi + tl.log(1.0 + tl.exp(gap)))

    @triton.jit
    def _jsd_fwd_kernel(
        X, Y, D, Stats, Ent,
        stride_xa, stride_xb, stride_ya, stride_yb,
        R, V, inv_temp, beta, log_1mb, log_b,
        HAS_ENTROPY: tl.constexpr,  # H(p) per row into Ent (TRL's logged entropy)
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)

        # Read 1: lse of both rows.
        m_x, log_sx, m_y, log_sy = pair_lse(p_x, p_y, V, inv_temp, BLOCK_V)

        # Read 2: K_p = sum p (log p - log m), K_q = sum q (log q - log m); 0 log 0 = 0.
        k_p = 0.0
        k_q = 0.0
        ent = 0.0
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            b_x, b_y = scaled_blocks(p_x, p_y, o_v, o_v < V, inv_temp)
            log_p = (b_x - m_x) - log_sx
            log_q = (b_y - m_y) - log_sy
            log_m = _log_mixture(log_p, log_q, log_1mb, log_b)
            b_p = tl.exp(log_p)
            b_q = tl.exp(log_q)
            k_p += tl.sum(tl.where(b_p > 0, b_p * (log_p - log_m), 0.0), axis=0)  # -> scalar
            k_q += tl.sum(tl.where(b_q > 0, b_q * (log_q - log_m), 0.0), axis=0)
            if HAS_ENTROPY:  # H(p) = -sum_v p_v log p_v
                ent -= tl.sum(tl.where(b_p > 0, b_p * log_p, 0.0), axis=0)
        tl.store(D + i_row, beta * k_q + (1.0 - beta) * k_p)
        if HAS_ENTROPY:
            tl.store(Ent + i_row, ent)
        o_s = tl.arange(0, 8)
        b_stats = tl.where(o_s == 0, m_x, tl.where(o_s == 1, log_sx, tl.where(
            o_s == 2, m_y, tl.where(o_s == 3, log_sy, tl.where(o_s == 4, k_p, k_q)))))
        tl.store(Stats + 6 * i_row + o_s, b_stats, mask=o_s < 6)

    @triton.jit
    def _jsd_bwd_kernel(
        X, Y, Stats, G, DX, DY,
        stride_xa, stride_xb, stride_ya, stride_yb,
        stride_dxa, stride_dxb, stride_dya, stride_dyb,
        R, V, inv_temp, beta, log_1mb, log_b,
        HAS_DX: tl.constexpr,
        HAS_DY: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)
        p_dx = row_start(DX, i_row, R, stride_dxa, stride_dxb)
        p_dy = row_start(DY, i_row, R, stride_dya, stride_dyb)
        # A row whose cotangent is 0 reads nothing and writes exact zeros (masked positions).
        g = tl.load(G + i_row)
        v_read = tl.where(g != 0.0, V, 0)
        g = g * inv_temp
        m_x = tl.load(Stats + 6 * i_row)
        log_sx = tl.load(Stats + 6 * i_row + 1)
        m_y = tl.load(Stats + 6 * i_row + 2)
        log_sy = tl.load(Stats + 6 * i_row + 3)
        k_p = tl.load(Stats + 6 * i_row + 4)
        k_q = tl.load(Stats + 6 * i_row + 5)
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            m_v = o_v < V
            b_x, b_y = scaled_blocks(p_x, p_y, o_v, o_v < v_read, inv_temp)
            log_p = (b_x - m_x) - log_sx
            log_q = (b_y - m_y) - log_sy
            log_m = _log_mixture(log_p, log_q, log_1mb, log_b)
            if HAS_DX:
                # dJSD/ds_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
                b_p = tl.exp(log_p)
                b_dx = tl.where(b_p > 0, (g * (1.0 - beta)) * b_p * (log_p - log_m - k_p), 0.0)
                tl.store(p_dx + o_v, b_dx.to(DX.dtype.element_ty), mask=m_v)
            if HAS_DY:
                # dJSD/du_v = (1/tau) beta q_v (log q_v - log m_v - K_q)
                b_q = tl.exp(log_q)
                b_dy = tl.where(b_q > 0, (g * beta) * b_q * (log_q - log_m - k_q), 0.0)
                tl.store(p_dy + o_v, b_dy.to(DY.dtype.element_ty), mask=m_v)


# ----------------------------------------------------------------------------- launchers


def _beta_args(beta: float) -> tuple[float, float, float]:
    if not 0.0 < beta < 1.0:
        raise ValueError(f"the JSD kernels need 0 < beta < 1 (0 and 1 are the KLs), got {beta}")
    return beta, math.log1p(-beta), math.log(beta)


def jsd_fwd(x: torch.Tensor, y: torch.Tensor, beta: float, temperature: float,
            entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: JSD_beta of P_x (student) and P_y (teacher) as (n_rows,) fp32, and the
    (n_rows, 6) fp32 statistics the backward needs. ``x``/``y``: (..., V), unit last stride.
    ``entropy`` ((n_rows,) fp32, optional) gets H(P_x) per row, formed in the same pass."""
    vx, vy = row_view(x), row_view(y)
    n, V = vx.n_rows, x.shape[-1]
    d = torch.empty(n, device=x.device, dtype=torch.float32)
    stats = torch.empty(n, N_STATS, device=x.device, dtype=torch.float32)
    if n == 0:
        return d, stats
    with launch_device(x):
        _jsd_fwd_kernel[(n,)](
            vx.tensor, vy.tensor, d, stats, d if entropy is None else entropy,
            *vx.strides(), *vy.strides(),
            vx.rows_per_a, V, 1.0 / temperature, *_beta_args(beta),
            HAS_ENTROPY=entropy is not None,
            BLOCK_V=block_v(V),
            num_warps=num_warps(),
        )
    return d, stats


def jsd_bwd(x: torch.Tensor, y: torch.Tensor, stats: torch.Tensor, grad_rows: torch.Tensor,
            beta: float, temperature: float, dx: torch.Tensor | None,
            dy: torch.Tensor | None) -> None:
    """Writes dJSD/dx and/or dJSD/dy scaled per row by ``grad_rows`` ((n_rows,) fp32) into
    ``dx``/``dy`` (x's shape; ``dx`` may be x itself: each element is read before the same
    program writes it). Rows with grad 0 get exact zeros."""
    views = pair_backward_views(x, y, dx, dy)
    if views is None:
        return
    vx, vy, vdx, vdy = views
    n, V = vx.n_rows, x.shape[-1]
    with launch_device(x):
        _jsd_bwd_kernel[(n,)](
            vx.tensor, vy.tensor, stats, grad_rows.reshape(-1).float().contiguous(),
            vdx.tensor, vdy.tensor,
            *vx.strides(), *vy.strides(), *vdx.strides(), *vdy.strides(),
            vx.rows_per_a, V, 1.0 / temperature, *_beta_args(beta),
            HAS_DX=dx is not None,
            HAS_DY=dy is not None,
            BLOCK_V=block_v(V),
            num_warps=num_warps(),
        )


# ---------------------------------------------------------------- torch custom ops (compile)
# Opaque leaves for torch.compile, as in kl.py: a compiled step does not break at the kernels.


# The launcher's signature, restated on purpose: torch.library reads the op's schema from
# these annotations.
@torch.library.custom_op("cord_kernels::jsd_fwd", mutates_args=())
def _jsd_fwd_op(x: torch.Tensor, y: torch.Tensor, beta: float, temperature: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    return jsd_fwd(x, y, beta, temperature)


@_jsd_fwd_op.register_fake
def _(x, y, beta, temperature):
    n = x.numel() // x.shape[-1]
    return x.new_empty(n, dtype=torch.float32), x.new_empty(n, N_STATS, dtype=torch.float32)


@torch.library.custom_op("cord_kernels::jsd_bwd", mutates_args=("dx", "dy"))
def _jsd_bwd_op(x: torch.Tensor, y: torch.Tensor, stats: torch.Tensor, grad_rows: torch.Tensor,
                beta: float, temperature: float, dx: torch.Tensor | None,
                dy: torch.Tensor | None) -> None:
    jsd_bwd(x, y, stats, grad_rows, beta, temperature, dx, dy)


@_jsd_bwd_op.register_fake
def _(x, y, stats, grad_rows, beta, temperature, dx, dy):
    return None


# ------------------------------------------------------------------------ autograd Function


class TritonJSDFunction(torch.autograd.Function):
    """Per-row JSD_beta(x, y), 0 < beta < 1, unreduced; gradients to whichever input needs
    them (x is the student)."""

    @staticmethod
    def forward(ctx, x, y, params: DivParams):
        d, stats = _jsd_fwd_op(x, y, params.jsd_beta, params.temperature)
        ctx.save_for_backward(x, y, stats)
        ctx.params = params
        return nonnegative(d.view(x.shape[:-1]))

    @staticmethod
    def backward(ctx, grad_d):
        x, y, stats = ctx.saved_tensors
        p: DivParams = ctx.params
        # Contiguous gradients (empty_like would keep a permuted input's strides).
        dx = x.new_empty(x.shape) if ctx.needs_input_grad[0] else None
        dy = y.new_empty(y.shape) if ctx.needs_input_grad[1] else None
        _jsd_bwd_op(x, y, stats, grad_d.contiguous(), p.jsd_beta, p.temperature, dx, dy)
        return dx, dy, None


def triton_jsd_rows(s, u, row_mask, params: DivParams):
    return masked_rows(TritonJSDFunction.apply(s, u, params), row_mask)


# ------------------------------------------------------------------------------ tiles


class TritonTileJSD:
    """The generalized JSD on a chunk's tiles through the streaming kernels."""

    def __init__(self, params: DivParams):
        self.temperature, self.jsd_beta = params.temperature, params.jsd_beta

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        ent = new_entropy(s, want_entropy)
        d, stats = jsd_fwd(s, u, self.jsd_beta, self.temperature, ent)
        return TileStats(d, (stats,), ent)

    def write_grad(self, s, u, state, g) -> None:
        jsd_bwd(s, u, state.extra[0], g, self.jsd_beta, self.temperature, s, None)
        return None
