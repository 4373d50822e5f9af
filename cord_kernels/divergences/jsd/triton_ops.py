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

The kernels work in base 2 (``divergences/streaming.py``): z = x log2(e) / tau, p = 2^(z - lse2),
log2 m formed from the p and q already in registers (one FMA and one MUFU.LG2 per entry, no
log-of-a-mixture in the log domain), K_p and K_q kept divided by ln 2; full blocks are read
unmasked and one tail masked. That takes the loop bodies from 160 SASS instructions per
vocabulary entry (forward and backward, sm_90, bf16) to 70; ``tests/test_gpu_build.py``
budgets 80.

Layout: kernels, launchers (``jsd_fwd``, ``jsd_bwd``), custom ops, autograd Function, tiles.
"""

from __future__ import annotations

import torch

from cord_kernels.core.dispatch import triton_available
from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.rows import launch_pair_backward, launch_pair_forward
from cord_kernels.divergences.common import DivParams, TileStats, masked_rows, new_entropy
from cord_kernels.divergences.streaming import LOG2E

# Per-row statistics saved by the forward, base 2: max and log2-sum of z_s and of z_u (z = x
# log2(e) / tau), K_p / ln 2, K_q / ln 2.
N_STATS = 6

if triton_available():  # Triton is optional: without it only the torch path exists
    import triton
    import triton.language as tl

    from cord_kernels.divergences.streaming import (
        fast_log2,
        load_scaled,
        pair_lse,
        row_start,
        store_block,
    )

    @triton.jit
    def _jsd_terms(b_x, b_y, m_x, l2s_x, m_y, l2s_y, beta):
        """log2 p, log2 q, p, q and log2 m of a block of base-2 logits (m = (1 - beta) p +
        beta q, formed from p and q in registers: an FMA and one MUFU.LG2 per entry)."""
        l_p = (b_x - m_x) - l2s_x
        l_q = (b_y - m_y) - l2s_y
        b_p = tl.exp2(l_p)
        b_q = tl.exp2(l_q)
        # m at least the smallest normal: fast_log2 flushes a denormal m to -inf, which a
        # denormal p > 0 would turn into an inf term (p = q = 0 entries are dropped below)
        l_m = fast_log2(tl.maximum(b_p + beta * (b_q - b_p), 1.1754943508222875e-38))
        return l_p, l_q, b_p, b_q, l_m

    @triton.jit
    def _jsd_fwd_block(k_p, k_q, ent, b_x, b_y, m_x, l2s_x, m_y, l2s_y, beta,
                       HAS_ENTROPY: tl.constexpr):
        l_p, l_q, b_p, b_q, l_m = _jsd_terms(b_x, b_y, m_x, l2s_x, m_y, l2s_y, beta)
        # 0 log 0 = 0: entries with p = 0 (q = 0) add nothing to K_p (K_q)
        k_p += tl.sum(tl.where(b_p > 0, b_p * (l_p - l_m), 0.0), axis=0)  # -> scalar
        k_q += tl.sum(tl.where(b_q > 0, b_q * (l_q - l_m), 0.0), axis=0)
        if HAS_ENTROPY:  # H(p) / ln 2 = -sum_v p_v log2 p_v
            ent -= tl.sum(tl.where(b_p > 0, b_p * l_p, 0.0), axis=0)
        return k_p, k_q, ent

    @triton.jit
    def _jsd_fwd_kernel(
        X, Y, D, Stats, Ent,
        stride_xa, stride_xb, stride_ya, stride_yb,
        R, V, scale, beta,
        HAS_ENTROPY: tl.constexpr,  # H(p) per row into Ent (TRL's logged entropy)
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)

        # Read 1: base-2 lse of both rows (z = x log2(e) / tau).
        m_x, l2s_x, m_y, l2s_y = pair_lse(p_x, p_y, V, scale, BLOCK_V)

        # Read 2: K_p / ln 2 = sum p (log2 p - log2 m), K_q / ln 2 likewise. Full blocks
        # unmasked, one masked tail.
        k_p = 0.0
        k_q = 0.0
        ent = 0.0
        v_full = V - V % BLOCK_V
        for i_v in range(0, v_full, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            k_p, k_q, ent = _jsd_fwd_block(
                k_p, k_q, ent, load_scaled(p_x, o_v, V, scale, False),
                load_scaled(p_y, o_v, V, scale, False), m_x, l2s_x, m_y, l2s_y, beta,
                HAS_ENTROPY)
        if v_full < V:
            o_v = v_full + tl.arange(0, BLOCK_V)
            k_p, k_q, ent = _jsd_fwd_block(
                k_p, k_q, ent, load_scaled(p_x, o_v, V, scale, True),
                load_scaled(p_y, o_v, V, scale, True), m_x, l2s_x, m_y, l2s_y, beta,
                HAS_ENTROPY)
        tl.store(D + i_row, 0.6931471805599453 * (beta * k_q + (1.0 - beta) * k_p))
        if HAS_ENTROPY:
            tl.store(Ent + i_row, 0.6931471805599453 * ent)
        o_s = tl.arange(0, 8)
        b_stats = tl.where(o_s == 0, m_x, tl.where(o_s == 1, l2s_x, tl.where(
            o_s == 2, m_y, tl.where(o_s == 3, l2s_y, tl.where(o_s == 4, k_p, k_q)))))
        tl.store(Stats + 6 * i_row + o_s, b_stats, mask=o_s < 6)

    @triton.jit
    def _jsd_bwd_block(p_x, p_y, p_dx, p_dy, o_v, V, scale, m_x, l2s_x, m_y, l2s_y, k_p, k_q,
                       g_x, g_y, beta, HAS_DX: tl.constexpr, HAS_DY: tl.constexpr,
                       MASKED: tl.constexpr):
        l_p, l_q, b_p, b_q, l_m = _jsd_terms(
            load_scaled(p_x, o_v, V, scale, MASKED), load_scaled(p_y, o_v, V, scale, MASKED),
            m_x, l2s_x, m_y, l2s_y, beta)
        if HAS_DX:
            # dJSD/ds_v = (1/tau) (1 - beta) p_v (ln p_v - ln m_v - K_p)
            #           = g_x p_v (log2 p_v - log2 m_v - K_p / ln 2),  g_x = g (1 - beta) ln 2 / tau
            store_block(p_dx, o_v, V, tl.where(b_p > 0, g_x * b_p * (l_p - l_m - k_p), 0.0),
                        MASKED)
        if HAS_DY:
            # dJSD/du_v = (1/tau) beta q_v (ln q_v - ln m_v - K_q), likewise in base 2
            store_block(p_dy, o_v, V, tl.where(b_q > 0, g_y * b_q * (l_q - l_m - k_q), 0.0),
                        MASKED)

    @triton.jit
    def _jsd_bwd_kernel(
        X, Y, Stats, G, DX, DY,
        stride_xa, stride_xb, stride_ya, stride_yb,
        stride_dxa, stride_dxb, stride_dya, stride_dyb,
        R, V, scale, beta,
        HAS_DX: tl.constexpr,
        HAS_DY: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_y = row_start(Y, i_row, R, stride_ya, stride_yb)
        p_dx = row_start(DX, i_row, R, stride_dxa, stride_dxb)
        p_dy = row_start(DY, i_row, R, stride_dya, stride_dyb)
        g = tl.load(G + i_row)
        if g == 0.0:
            # A row whose cotangent is 0 (a masked position) reads nothing and writes exact
            # zeros, even if its logits are NaN.
            for i_v in range(0, V, BLOCK_V):
                o_v = i_v + tl.arange(0, BLOCK_V)
                if HAS_DX:
                    tl.store(p_dx + o_v, tl.zeros((BLOCK_V,), DX.dtype.element_ty), mask=o_v < V)
                if HAS_DY:
                    tl.store(p_dy + o_v, tl.zeros((BLOCK_V,), DY.dtype.element_ty), mask=o_v < V)
        else:
            m_x = tl.load(Stats + 6 * i_row)
            l2s_x = tl.load(Stats + 6 * i_row + 1)
            m_y = tl.load(Stats + 6 * i_row + 2)
            l2s_y = tl.load(Stats + 6 * i_row + 3)
            k_p = tl.load(Stats + 6 * i_row + 4)
            k_q = tl.load(Stats + 6 * i_row + 5)
            # 1 / tau = scale ln 2, and one more ln 2 turns the base-2 logs back to natural ones
            g = g * (0.4804530139182014 * scale)  # ln(2)^2
            g_x = g * (1.0 - beta)
            g_y = g * beta
            v_full = V - V % BLOCK_V
            for i_v in range(0, v_full, BLOCK_V):
                _jsd_bwd_block(p_x, p_y, p_dx, p_dy, i_v + tl.arange(0, BLOCK_V), V, scale,
                               m_x, l2s_x, m_y, l2s_y, k_p, k_q, g_x, g_y, beta,
                               HAS_DX, HAS_DY, False)
            if v_full < V:
                _jsd_bwd_block(p_x, p_y, p_dx, p_dy, v_full + tl.arange(0, BLOCK_V), V, scale,
                               m_x, l2s_x, m_y, l2s_y, k_p, k_q, g_x, g_y, beta,
                               HAS_DX, HAS_DY, True)


# ----------------------------------------------------------------------------- launchers


def _scalars(beta: float, temperature: float) -> tuple[float, float]:
    """(scale, beta) of the kernels: base-2 logits z = x log2(e) / tau."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"the JSD kernels need 0 < beta < 1 (0 and 1 are the KLs), got {beta}")
    return LOG2E / temperature, beta


def jsd_fwd(x: torch.Tensor, y: torch.Tensor, beta: float, temperature: float,
            entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: JSD_beta of P_x (student) and P_y (teacher) as (n_rows,) fp32, and the
    (n_rows, 6) fp32 statistics the backward needs. ``x``/``y``: (..., V), unit last stride.
    ``entropy`` ((n_rows,) fp32, optional) gets H(P_x) per row, formed in the same pass."""
    return launch_pair_forward(_jsd_fwd_kernel, x, y, N_STATS, entropy,
                               _scalars(beta, temperature))


def jsd_bwd(x: torch.Tensor, y: torch.Tensor, stats: torch.Tensor, grad_rows: torch.Tensor,
            beta: float, temperature: float, dx: torch.Tensor | None,
            dy: torch.Tensor | None) -> None:
    """Writes dJSD/dx and/or dJSD/dy scaled per row by ``grad_rows`` ((n_rows,) fp32) into
    ``dx``/``dy`` (x's shape; ``dx`` may be x itself: each element is read before the same
    program writes it). Rows with grad 0 get exact zeros."""
    launch_pair_backward(_jsd_bwd_kernel, x, y, (stats,), grad_rows, dx, dy,
                         _scalars(beta, temperature))


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

    grad_into = True

    def __init__(self, params: DivParams):
        self.temperature, self.jsd_beta = params.temperature, params.jsd_beta

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        ent = new_entropy(s, want_entropy)
        d, stats = jsd_fwd(s, u, self.jsd_beta, self.temperature, ent)
        return TileStats(d, (stats,), ent)

    def write_grad(self, s, u, state, g, out=None) -> None:
        jsd_bwd(s, u, state.extra[0], g, self.jsd_beta, self.temperature,
                s if out is None else out, None)
        return None
