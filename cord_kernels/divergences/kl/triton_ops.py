"""Reverse and forward KL through the Triton streaming kernels.

One kernel pair computes KL(P_x || P_y) for P = softmax(logits / tau):
    reverse KL(s, u) = KL(p || q)  runs it with x = s (student), y = u (teacher)
    forward KL(s, u) = KL(q || p)  runs it with x = u, y = s

Forward: one read of both rows with an online max/sum; saved per row: D and the two
log-sum-exps, each kept as (max, log-sum) so that backward's x - lse is exact even for logits
near 1e4 (20 bytes per row, against 2 * V * 2 bytes of bf16 logits). Backward: a second read
of both rows writes the gradient; nothing of size (N, V) exists besides that gradient, which
can be written into the logits buffer itself.

Layout: kernels, launchers (``kl_fwd``, ``kl_bwd``), torch custom ops around them, the
autograd Function on logits, the tile classes of the fused-linear driver.
"""

from __future__ import annotations

import torch

from cord_kernels.core.dispatch import triton_available
from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.rows import (
    block_v,
    check_inplace_backward,
    launch_device,
    launch_pair_backward,
    num_warps,
    row_view,
)
from cord_kernels.divergences.common import DivParams, TileStats, new_entropy

if triton_available():
    import triton
    import triton.language as tl

    from cord_kernels.divergences.streaming import row_start

    @triton.jit
    def _kl_fwd_kernel(
        X, Y, RowMask, D, LseX, LseY, Ent,
        stride_xa, stride_xb, stride_ya, stride_yb,
        R, V, inv_temp,
        HAS_ROW_MASK: tl.constexpr,
        ENTROPY: tl.constexpr,  # 0: none; 1: H(P_x) into Ent; 2: H(P_y) (TRL's logged entropy)
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        if HAS_ROW_MASK:
            if tl.load(RowMask + i_row) == 0:
                # A padded position: nothing to read; its D is 0 by definition of the loss.
                tl.store(D + i_row, 0.0)
                tl.store(LseX + 2 * i_row + tl.arange(0, 2), tl.zeros((2,), tl.float32))
                tl.store(LseY + 2 * i_row + tl.arange(0, 2), tl.zeros((2,), tl.float32))
                if ENTROPY != 0:
                    tl.store(Ent + i_row, 0.0)
                return
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)

        # Online state. acc = sum_v e^{x_v - m_x} ((x_v - m_x) - (y_v - m_y)), so that
        # D = acc / s_x - log s_x + log s_y stays accurate for huge logits (no lse cancellation).
        m_x = float("-inf")
        m_y = float("-inf")
        s_x = 0.0
        s_y = 0.0
        acc = 0.0
        # With ENTROPY: acc_h = sum_v e^{z_v - m_z} (z_v - m_z) of the side z it is asked for,
        # rescaled like acc, so that H(P_z) = log s_z - acc_h / s_z (one FMA per entry).
        acc_h = 0.0
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            m_v = o_v < V
            b_x = tl.load(p_x + o_v, mask=m_v, other=float("-inf")).to(tl.float32) * inv_temp
            b_y = tl.load(p_y + o_v, mask=m_v, other=float("-inf")).to(tl.float32) * inv_temp
            mx_new = tl.maximum(m_x, tl.max(b_x, axis=0))  # [BLOCK_V] -> scalar
            my_new = tl.maximum(m_y, tl.max(b_y, axis=0))
            # While a row is all -inf so far its max stays -inf; shift by 0 then (sums are 0).
            mx_s = tl.where(mx_new == float("-inf"), 0.0, mx_new)
            my_s = tl.where(my_new == float("-inf"), 0.0, my_new)
            a_x = tl.exp(m_x - mx_s)
            a_y = tl.exp(m_y - my_s)
            # Moving the shifts changes every earlier bracket by -(dx - dy).
            dx = tl.where(m_x == float("-inf"), 0.0, mx_s - m_x)
            dy = tl.where(m_y == float("-inf"), 0.0, my_s - m_y)
            e_x = tl.exp(b_x - mx_s)
            e_y = tl.exp(b_y - my_s)
            # Entries with p_x = 0 (including -inf logits on both sides) contribute nothing.
            diff = tl.where(e_x > 0, (b_x - mx_s) - (b_y - my_s), 0.0)
            acc = a_x * (acc - (dx - dy) * s_x) + tl.sum(e_x * diff, axis=0)
            if ENTROPY == 1:
                z_x = tl.where(e_x > 0, b_x - mx_s, 0.0)
                acc_h = a_x * (acc_h - dx * s_x) + tl.sum(e_x * z_x, axis=0)
            if ENTROPY == 2:
                z_y = tl.where(e_y > 0, b_y - my_s, 0.0)
                acc_h = a_y * (acc_h - dy * s_y) + tl.sum(e_y * z_y, axis=0)
            s_x = s_x * a_x + tl.sum(e_x, axis=0)
            s_y = s_y * a_y + tl.sum(e_y, axis=0)
            m_x = mx_new
            m_y = my_new
        log_sx = tl.log(s_x)
        log_sy = tl.log(s_y)
        tl.store(D + i_row, acc / s_x - log_sx + log_sy)
        if ENTROPY == 1:
            tl.store(Ent + i_row, log_sx - acc_h / s_x)
        if ENTROPY == 2:
            tl.store(Ent + i_row, log_sy - acc_h / s_y)
        # lse = max + log(sum) is kept as its two parts: for logits near 1e4 an fp32 lse has an
        # ulp of 1e-3, while (x - max) - log(sum) in backward is exact to fp32 rounding.
        o_2 = tl.arange(0, 2)
        tl.store(LseX + 2 * i_row + o_2, tl.where(o_2 == 0, m_x, log_sx))
        tl.store(LseY + 2 * i_row + o_2, tl.where(o_2 == 0, m_y, log_sy))

    @triton.jit
    def _kl_bwd_kernel(
        X, Y, LseX, LseY, D, G, DX, DY,
        stride_xa, stride_xb, stride_ya, stride_yb,
        stride_dxa, stride_dxb, stride_dya, stride_dyb,
        R, V, inv_temp,
        HAS_DX: tl.constexpr,
        HAS_DY: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        # g already holds the cotangent times the row's weight; a zero row (masked position)
        # reads nothing and writes exact zeros, even if its logits are NaN.
        g = tl.load(G + i_row)
        v_read = tl.where(g != 0.0, V, 0)  # how much of the row to read: all of it, or none
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)
        p_dx = row_start(DX, i_row, R, stride_dxa, stride_dxb)
        p_dy = row_start(DY, i_row, R, stride_dya, stride_dyb)
        g = g * inv_temp
        m_x = tl.load(LseX + 2 * i_row)  # lse_x = m_x + log_sx, see the forward
        log_sx = tl.load(LseX + 2 * i_row + 1)
        m_y = tl.load(LseY + 2 * i_row)
        log_sy = tl.load(LseY + 2 * i_row + 1)
        d = tl.load(D + i_row)
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            m_v = o_v < V
            m_ld = o_v < v_read
            b_x = tl.load(p_x + o_v, mask=m_ld, other=float("-inf")).to(tl.float32) * inv_temp
            b_y = tl.load(p_y + o_v, mask=m_ld, other=float("-inf")).to(tl.float32) * inv_temp
            log_px = (b_x - m_x) - log_sx
            log_py = (b_y - m_y) - log_sy
            px = tl.exp(log_px)
            py = tl.exp(log_py)
            if HAS_DX:
                # dD/dx_v = (1/tau) p_v (log p_v - log q_v - D)
                b_dx = tl.where(px > 0, g * px * (log_px - log_py - d), 0.0)
                tl.store(p_dx + o_v, b_dx.to(DX.dtype.element_ty), mask=m_v)
            if HAS_DY:
                # dD/dy_v = (1/tau) (q_v - p_v)
                b_dy = g * (py - px)
                tl.store(p_dy + o_v, b_dy.to(DY.dtype.element_ty), mask=m_v)


# ----------------------------------------------------------------------------- launchers


def kl_fwd(
    x: torch.Tensor, y: torch.Tensor, row_mask: torch.Tensor | None, temperature: float,
    entropy: torch.Tensor | None = None, entropy_of: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: KL(P_x || P_y) as (n_rows,) fp32, and lse(x/tau), lse(y/tau) each as an
    (n_rows, 2) fp32 pair (max, log sum exp(. - max)) whose sum is the lse. ``entropy``
    ((n_rows,) fp32, optional) gets H(P_x) (``entropy_of=1``) or H(P_y) (2) per row, formed
    in the same pass.

    ``x``/``y``: (..., V) with unit last stride (other strides are free). ``row_mask``: bool
    over the rows (flattened leading dims) or None; masked rows get 0 and are not read.
    """
    vx, vy = row_view(x), row_view(y)
    n, V = vx.n_rows, x.shape[-1]
    d = torch.empty(n, device=x.device, dtype=torch.float32)
    lse_x = torch.empty(n, 2, device=x.device, dtype=torch.float32)
    lse_y = torch.empty_like(lse_x)
    if n == 0:
        return d, lse_x, lse_y
    rm = row_mask.reshape(-1) if row_mask is not None else None
    if rm is not None and rm.dtype == torch.bool:
        rm = rm.view(torch.uint8)
    with launch_device(x):
        _kl_fwd_kernel[(n,)](
            vx.tensor, vy.tensor, rm, d, lse_x, lse_y, d if entropy is None else entropy,
            *vx.strides(), *vy.strides(),
            vx.rows_per_a, V, 1.0 / temperature,
            HAS_ROW_MASK=rm is not None,
            ENTROPY=0 if entropy is None else entropy_of,
            BLOCK_V=block_v(V),
            num_warps=num_warps(),
        )
    return d, lse_x, lse_y


def kl_bwd(
    x: torch.Tensor,
    y: torch.Tensor,
    lse_x: torch.Tensor,
    lse_y: torch.Tensor,
    d: torch.Tensor,
    grad_rows: torch.Tensor,
    temperature: float,
    dx: torch.Tensor | None,
    dy: torch.Tensor | None,
) -> None:
    """Writes dKL/dx and/or dKL/dy, scaled per row by ``grad_rows`` (fp32, (n_rows,)), into
    ``dx``/``dy`` (same shape as x; may be x itself: every element is read before it is
    written, by the same program). Rows with grad 0 get exact zeros."""
    launch_pair_backward(_kl_bwd_kernel, x, y, (lse_x, lse_y, d), grad_rows, dx, dy,
                         (1.0 / temperature,))


# ---------------------------------------------------------------- torch custom ops (compile)
# Registering the launchers as custom ops makes them opaque leaves for torch.compile, so a
# compiled training step does not break its graph at the kernels.


@torch.library.custom_op("cord_kernels::kl_fwd", mutates_args=())
def kl_fwd_op(
    x: torch.Tensor, y: torch.Tensor, row_mask: torch.Tensor | None, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kl_fwd(x, y, row_mask, temperature)


@kl_fwd_op.register_fake
def _(x, y, row_mask, temperature):
    n = x.numel() // x.shape[-1]
    lse = x.new_empty(n, 2, dtype=torch.float32)
    return x.new_empty(n, dtype=torch.float32), lse, torch.empty_like(lse)


# The launcher's signature, restated on purpose: torch.library reads the op's schema from
# these annotations.
@torch.library.custom_op("cord_kernels::kl_bwd", mutates_args=("dx", "dy"))
def kl_bwd_op(
    x: torch.Tensor,
    y: torch.Tensor,
    lse_x: torch.Tensor,
    lse_y: torch.Tensor,
    d: torch.Tensor,
    grad_rows: torch.Tensor,
    temperature: float,
    dx: torch.Tensor | None,
    dy: torch.Tensor | None,
) -> None:
    kl_bwd(x, y, lse_x, lse_y, d, grad_rows, temperature, dx, dy)


@kl_bwd_op.register_fake
def _(x, y, lse_x, lse_y, d, grad_rows, temperature, dx, dy):
    return None


# ------------------------------------------------------------------------ autograd Function


class TritonKLFunction(torch.autograd.Function):
    """Per-row KL(P_x || P_y), unreduced. Gradients flow to whichever input requires them.
    ``row_mask``: bool over the rows or None (masked rows are not read; D = 0 there)."""

    @staticmethod
    def forward(ctx, x, y, row_mask, params: DivParams):
        d, lse_x, lse_y = kl_fwd_op(x, y, row_mask, params.temperature)
        ctx.save_for_backward(x, y, lse_x, lse_y, d)
        ctx.params = params
        return nonnegative(d.view(x.shape[:-1]))

    @staticmethod
    def backward(ctx, grad_d):
        x, y, lse_x, lse_y, d = ctx.saved_tensors
        params: DivParams = ctx.params
        need_dx, need_dy = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = dy = None
        # Fresh gradients are contiguous: empty_like would copy a transposed input's strides,
        # and the kernel writes rows with a unit last stride.
        if need_dx:
            dx = x if params.inplace_backward else torch.empty_like(
                x, memory_format=torch.contiguous_format)
        if need_dy:
            dy = torch.empty_like(y, memory_format=torch.contiguous_format)
        kl_bwd_op(x, y, lse_x, lse_y, d, grad_d, params.temperature, dx, dy)
        return dx, dy, None, None


def triton_reverse_kl_rows(s, u, row_mask, params: DivParams):
    """KL(p || q) per row through the kernels (no argument checks but the in-place one)."""
    check_inplace_backward("student_logits", s, params.inplace_backward)
    return TritonKLFunction.apply(s, u, row_mask, params)


def triton_forward_kl_rows(s, u, row_mask, params: DivParams):
    """KL(q || p) per row: the same Function with the roles swapped (never in place)."""
    return TritonKLFunction.apply(u, s, row_mask, DivParams(params.temperature))


# ------------------------------------------------------------------------------ tiles


class TritonTileReverseKL:
    """KL(p || q) on a chunk's tiles through the streaming kernels."""

    grad_into = True

    def __init__(self, params: DivParams):
        self.temperature = params.temperature

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        ent = new_entropy(s, want_entropy)
        d, lse_s, lse_u = kl_fwd(s, u, None, self.temperature, ent, entropy_of=1)
        return TileStats(d, (lse_s, lse_u), ent)

    def write_grad(self, s, u, state, g, out=None) -> None:
        kl_bwd(s, u, *state.extra, state.d, g, self.temperature, s if out is None else out, None)
        return None


class TritonTileForwardKL(TritonTileReverseKL):
    """KL(q || p): the same kernels with the roles swapped, the gradient going to y = s."""

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        ent = new_entropy(s, want_entropy)
        d, lse_u, lse_s = kl_fwd(u, s, None, self.temperature, ent, entropy_of=2)
        return TileStats(d, (lse_u, lse_s), ent)

    def write_grad(self, s, u, state, g, out=None) -> None:
        kl_bwd(u, s, *state.extra, state.d, g, self.temperature, None, s if out is None else out)
        return None
