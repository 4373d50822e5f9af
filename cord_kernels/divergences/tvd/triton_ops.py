"""Total variation distance through the Triton streaming kernels.

    TVD = 1/2 sum_v |p_v - q_v|,  p = softmax(s / tau) (student), q = softmax(u / tau)

Forward, one program per row, two streaming passes over both rows: the two log-sum-exps
(online max/sum), then, with both normalizers known, the sum of |p_v - q_v| and the row
constant c = sum_v sigma_v p_v (sigma = sign(p - q)) that the gradient needs. It saves per row
the two lse (as max and log-sum, exact for logits near 1e4) and c. Backward: one read of both
rows, writing

    dTVD/ds_j = (1/tau) p_j (sigma_j - c) / 2

(the softmax Jacobian applied to dTVD/dp_j = sigma_j / 2, whose p-weighted mean is c / 2).
bf16 traffic: 3 reads + 1 write = 14 B per vocab entry, as the JSD; nothing of size (N, V)
besides the gradient. The teacher gets no gradient.

The kernels work in base 2 as the JSD's (``divergences/streaming.py``): z = x log2(e) / tau,
p = 2^(z - lse2), one MUFU.EX2 per exponential.

Layout: kernel, launchers (``tvd_fwd``, ``tvd_bwd``), custom ops, autograd Function, tiles.
"""

from __future__ import annotations

import torch

from cord_kernels.core.dispatch import triton_available
from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.rows import launch_pair_backward, launch_pair_forward
from cord_kernels.divergences.common import DivParams, TileStats, masked_rows, new_entropy
from cord_kernels.divergences.streaming import LOG2E

# Per-row statistics saved by the forward: max and log2-sum of the base-2 logits z = x log2(e)
# / tau of each side (``divergences/streaming.py``), c.
N_STATS = 5

if triton_available():  # Triton is optional: without it only the torch path exists
    import triton
    import triton.language as tl

    from cord_kernels.divergences.streaming import pair_lse, row_start, scaled_blocks

    @triton.jit
    def _tvd_fwd_kernel(
        X, Y, D, Stats, Ent,
        stride_xa, stride_xb, stride_ya, stride_yb,
        R, V, scale,
        HAS_ENTROPY: tl.constexpr,  # H(p) per row into Ent (TRL's logged entropy)
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)

        # Pass 1: lse of both rows.
        m_x, log_sx, m_y, log_sy = pair_lse(p_x, p_y, V, scale, BLOCK_V)  # base 2

        # Pass 2: sum |p - q| and c = sum sign(p - q) p (entries past V: p = q = 0).
        acc = 0.0
        c = 0.0
        ent = 0.0
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            b_x, b_y = scaled_blocks(p_x, p_y, o_v, o_v < V, scale)
            log_p = (b_x - m_x) - log_sx
            b_p = tl.exp2(log_p)
            b_q = tl.exp2((b_y - m_y) - log_sy)
            diff = b_p - b_q
            acc += tl.sum(tl.abs(diff), axis=0)  # [BLOCK_V] -> scalar
            c += tl.sum(tl.where(diff > 0, b_p, tl.where(diff < 0, -b_p, 0.0)), axis=0)
            if HAS_ENTROPY:  # H(p) / ln 2 = -sum_v p_v log2 p_v
                ent -= tl.sum(tl.where(b_p > 0, b_p * log_p, 0.0), axis=0)
        tl.store(D + i_row, 0.5 * acc)
        if HAS_ENTROPY:
            tl.store(Ent + i_row, 0.6931471805599453 * ent)
        o_s = tl.arange(0, 8)
        b_stats = tl.where(o_s == 0, m_x, tl.where(o_s == 1, log_sx, tl.where(
            o_s == 2, m_y, tl.where(o_s == 3, log_sy, c))))
        tl.store(Stats + 5 * i_row + o_s, b_stats, mask=o_s < 5)

    @triton.jit
    def _tvd_bwd_kernel(
        X, Y, Stats, G, DX,
        stride_xa, stride_xb, stride_ya, stride_yb, stride_dxa, stride_dxb,
        R, V, scale,
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)
        p_dx = row_start(DX, i_row, R, stride_dxa, stride_dxb)
        # A row whose cotangent is 0 reads nothing and writes exact zeros (masked positions).
        g = tl.load(G + i_row)
        v_read = tl.where(g != 0.0, V, 0)
        g = g * scale * (0.5 * 0.6931471805599453)  # 1 / (2 tau)
        m_x = tl.load(Stats + 5 * i_row)
        log_sx = tl.load(Stats + 5 * i_row + 1)
        m_y = tl.load(Stats + 5 * i_row + 2)
        log_sy = tl.load(Stats + 5 * i_row + 3)
        c = tl.load(Stats + 5 * i_row + 4)
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            b_x, b_y = scaled_blocks(p_x, p_y, o_v, o_v < v_read, scale)
            b_p = tl.exp2((b_x - m_x) - log_sx)
            b_q = tl.exp2((b_y - m_y) - log_sy)
            sigma = tl.where(b_p > b_q, 1.0, tl.where(b_p < b_q, -1.0, 0.0))
            # dTVD/ds_j = (1/tau) p_j (sigma_j - c) / 2
            b_dx = g * b_p * (sigma - c)
            tl.store(p_dx + o_v, b_dx.to(DX.dtype.element_ty), mask=o_v < V)


# ----------------------------------------------------------------------------- launchers


def tvd_fwd(x: torch.Tensor, y: torch.Tensor, temperature: float,
            entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: TVD of P_x (student) and P_y (teacher) as (n_rows,) fp32, and the (n_rows, 5)
    fp32 statistics the backward needs. ``x``/``y``: (..., V), unit last stride.
    ``entropy`` ((n_rows,) fp32, optional) gets H(P_x) per row, formed in the same pass."""
    return launch_pair_forward(_tvd_fwd_kernel, x, y, N_STATS, entropy, (LOG2E / temperature,))


def tvd_bwd(x: torch.Tensor, y: torch.Tensor, stats: torch.Tensor, grad_rows: torch.Tensor,
            temperature: float, dx: torch.Tensor) -> None:
    """Writes dTVD/dx scaled per row by ``grad_rows`` ((n_rows,) fp32) into ``dx`` (x's
    shape; may be x itself: each element is read before the same program writes it). Rows
    with grad 0 get exact zeros."""
    launch_pair_backward(_tvd_bwd_kernel, x, y, (stats,), grad_rows, dx, None,
                         (LOG2E / temperature,), has_dy=False)


# ---------------------------------------------------------------- torch custom ops (compile)
# Opaque leaves for torch.compile, as the KL's: a compiled step does not break at the kernels.


@torch.library.custom_op("cord_kernels::tvd_fwd", mutates_args=())
def tvd_fwd_op(x: torch.Tensor, y: torch.Tensor, temperature: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    return tvd_fwd(x, y, temperature)


@tvd_fwd_op.register_fake
def _(x, y, temperature):
    n = x.numel() // x.shape[-1]
    return x.new_empty(n, dtype=torch.float32), x.new_empty(n, N_STATS, dtype=torch.float32)


# The launcher's signature, restated on purpose: torch.library reads the schema from it.
@torch.library.custom_op("cord_kernels::tvd_bwd", mutates_args=("dx",))
def tvd_bwd_op(x: torch.Tensor, y: torch.Tensor, stats: torch.Tensor, grad_rows: torch.Tensor,
               temperature: float, dx: torch.Tensor) -> None:
    tvd_bwd(x, y, stats, grad_rows, temperature, dx)


@tvd_bwd_op.register_fake
def _(x, y, stats, grad_rows, temperature, dx):
    return None


# ------------------------------------------------------------------------ autograd Function


class TritonTVDFunction(torch.autograd.Function):
    """Per-row TVD(P_x, P_y), unreduced; the gradient goes to x (the student) only."""

    @staticmethod
    def forward(ctx, x, y, params: DivParams):
        d, stats = tvd_fwd_op(x, y, params.temperature)
        ctx.save_for_backward(x, y, stats)
        ctx.temperature = params.temperature
        return nonnegative(d.view(x.shape[:-1]))

    @staticmethod
    def backward(ctx, grad_d):
        x, y, stats = ctx.saved_tensors
        dx = x.new_empty(x.shape)  # contiguous, whatever x's strides
        tvd_bwd_op(x, y, stats, grad_d.contiguous(), ctx.temperature, dx)
        return dx, None, None


def triton_tvd_rows(s, u, row_mask, params: DivParams):
    return masked_rows(TritonTVDFunction.apply(s, u.detach(), params), row_mask)


# ------------------------------------------------------------------------------ tiles


class TritonTileTVD:
    """The TVD on a chunk's tiles through the streaming kernels."""

    grad_into = True

    def __init__(self, params: DivParams):
        self.temperature = params.temperature

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        ent = new_entropy(s, want_entropy)
        d, stats = tvd_fwd(s, u, self.temperature, ent)
        return TileStats(d, (stats,), ent)

    def write_grad(self, s, u, state, g, out=None) -> None:
        tvd_bwd(s, u, state.extra[0], g, self.temperature, s if out is None else out)
        return None
