"""The sparse-teacher divergence with its gradient in the kernels: no (N, k) torch glue.

Per row, x = s / tau over the whole vocabulary, and k slots (ids, teacher log-probs b):

    a_j = x_{id_j} - lse(x)                       the student's log-probs at the ids
    S   = the valid slots: b_j > -inf at a valid row (the teacher's top-k), or every slot of
          a valid row (``all_slots``: the student's own top-k, b read at its ids)
    tail="bucket":      log P_j = a_j, log Q_j = b_j on S, plus one bucket each side,
                        log P_t = log(-expm1(min(lse_S(a), -1e-7))) (TRL's _add_tail_bucket)
    tail="renormalize": log P_j = a_j - lse_S(a), log Q_j = b_j - lse_S(b)
    Div = sum over the support of the divergence's terms (forward KL, reverse KL, JSD)

The forward kernel streams lse(x) (one read of the row), then works on the k slots in its
epilogue: Div (clamped below at 0 in value only, as ``core.reduction.nonnegative``), and
per slot ga_j = dDiv/da_j, with

    dDiv/dlog P_j = g_j:  forward KL -Q_j; reverse KL P_j (log P_j - log Q_j + 1) (the + 1
                          cancels against the normalisation: left out, see the kernel);
                          JSD (1 - beta) P_j (log P_j - log M_j)      (M = (1-beta) P + beta Q)
    bucket:       ga_j = g_j - g_t p_j / P_t   (0 past the clamp: no gradient through it)
    renormalize:  ga_j = g_j - P_j sum_S g_i
    G = sum_S ga_j = sum_S g_i + (bucket: -g_t sum_S p_i / P_t; renormalize: -sum_S g_i = 0)

Backward, with c the row's cotangent: dL/dx_v = c (sum_{j: id_j = v} ga_j - p_v G), so
dL/ds_v = (c / tau)(...). The backward kernel streams the dense part -p_v G c / tau (not
reading the row when G c = 0: renormalize, masked rows), then, after a barrier, writes the
full value at each valid id: (c / tau)(sum_{i: id_i = id_j} ga_i - p_j G) (duplicate ids sum
their slots). A logit transform t = c' tanh(scale z / c') (fused-linear heads) multiplies by
dt/dz as in ``support_logprobs.py``.

An id outside [0, V) at a valid slot sets an error flag (the caller raises, without a host sync
on a GPU: ``inputs.raise_on_bad_ids``) and makes that row's Div and gradient NaN.

Layout: kernels, launchers, custom ops (torch.compile), the autograd Function, the entry point
``sparse_support_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cord_kernels.core.dispatch import triton_available
from cord_kernels.core.options import Tail
from cord_kernels.core.rows import block_v, launch_device, num_warps, row_view

# The divergence's code in the kernels.
DIV_CODE = {"forward_kl": 0, "reverse_kl": 1, "jsd": 2}
# Slots per iteration of the forward's epilogue (k = 64, a typical server top-k, in one).
MAX_BLOCK_K = 64
# The backward's duplicate-id sum is a BLOCK_K x BLOCK_K tile: 32 keeps the kernel at 32
# registers on sm_80 / sm_90 (64 took 48 and 64; tests/test_sparse_glue.py builds them).
MAX_BLOCK_K_BWD = 32
# Constants inside the kernels, as literals: -1e-7, TRL's _add_tail_bucket clamp of log sum_S p
# (support_divergence.TAIL_LOG_SUM_MAX); 1.1754943508222875e-38, the smallest normal fp32, the
# clamp of M before its log (TRL's server path).

if triton_available():
    import triton
    import triton.language as tl

    from cord_kernels.core.row_lse import dense_softmax_grad, row_lse
    from cord_kernels.divergences.streaming import row_start

    @triton.jit
    def _expm1(x):
        # exp(x) - 1 without cancellation near 0 (Kahan): u = e^x, (u - 1) x / log u.
        u = tl.exp(x)
        um1 = u - 1.0
        return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / tl.log(u)))

    @triton.jit
    def _terms(lp, lq, beta, DIV: tl.constexpr):
        """(term, dterm/dlog P) of one support entry with log-probs lp (P), lq (Q); for the
        reverse KL without its + P, which the normalisation cancels (see the kernel)."""
        P = tl.exp(lp)
        Q = tl.exp(lq)
        if DIV == 0:  # forward KL: Q (log Q - log P)
            t = tl.where(Q > 0, Q * (lq - lp), 0.0)
            g = -Q
        elif DIV == 1:  # reverse KL: P (log P - log Q)
            t = tl.where(P > 0, P * (lp - lq), 0.0)
            g = tl.where(P > 0, P * (lp - lq), 0.0)
        else:  # JSD: beta Q (log Q - log M) + (1 - beta) P (log P - log M)
            M = (1.0 - beta) * P + beta * Q
            lm = tl.log(tl.maximum(M, 1.1754943508222875e-38))
            t = (beta * tl.where(Q > 0, Q * (lq - lm), 0.0)
                 + (1.0 - beta) * tl.where(P > 0, P * (lp - lm), 0.0))
            # log M's own derivative cancels (sum of weights / M = 1) unless M was clamped.
            g = tl.where(P > 0, (1.0 - beta) * P * (lp - lm + tl.where(M < 1.1754943508222875e-38,
                                                                         1.0, 0.0)), 0.0)
        return t, g

    @triton.jit
    def _slots(p_x, p_lp, p_ids, o_k, k_row, V, m, log_s, inv_temp, ALL_SLOTS: tl.constexpr):
        """(a, b, valid) of the slots o_k: the student's log-probs at the ids and the
        teacher's, -inf off the support; a is NaN at a valid slot whose id is out of range."""
        b_b = tl.load(p_lp + o_k, mask=o_k < k_row, other=float("-inf")).to(tl.float32)
        if ALL_SLOTS:
            b_valid = o_k < k_row
        else:
            b_valid = b_b > float("-inf")  # NaN padding is not valid either
        b_ids = tl.load(p_ids + o_k, mask=b_valid, other=0).to(tl.int64)
        m_id = b_valid & (b_ids >= 0) & (b_ids < V)
        b_xid = tl.load(p_x + b_ids, mask=m_id, other=float("nan")).to(tl.float32) * inv_temp
        # a_j = (x_j - max) - log(sum), exact for huge logits (see kl.py).
        b_a = tl.where(b_valid, (b_xid - m) - log_s, float("-inf"))
        b_b = tl.where(b_valid, b_b, float("-inf"))
        return b_a, b_b, b_valid

    @triton.jit
    def _sparse_fwd_kernel(
        X, LP, Ids, RowMask, D, WS, Flag,
        stride_xa, stride_xb,
        R, V, K, inv_temp, beta,
        DIV: tl.constexpr,
        BUCKET: tl.constexpr,
        ALL_SLOTS: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        # This row's workspace: max, log-sum (lse = their sum), G, then a and ga (k each).
        p_ws = WS + i_row * (3 + 2 * K)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_lp = LP + i_row * K
        p_ids = Ids + i_row * K
        o_2 = tl.arange(0, 2)
        # The slots to read: all K at a valid row, none at a masked one.
        k_row = tl.where(tl.load(RowMask + i_row).to(tl.int32) != 0, K, 0)
        # Pass 1: the support's size, and ids out of range at valid slots (the error flag).
        n_valid = 0
        n_bad = 0
        for i_k in range(0, K, BLOCK_K):
            o_k = i_k + tl.arange(0, BLOCK_K)
            b_b = tl.load(p_lp + o_k, mask=o_k < k_row, other=float("-inf"))
            if ALL_SLOTS:
                b_valid = o_k < k_row
            else:
                b_valid = b_b > float("-inf")
            b_ids = tl.load(p_ids + o_k, mask=b_valid, other=0).to(tl.int64)
            n_valid += tl.sum(b_valid.to(tl.int32), axis=0)
            n_bad += tl.sum((b_valid & ((b_ids < 0) | (b_ids >= V))).to(tl.int32), axis=0)
        if n_bad > 0:
            tl.store(Flag, 1)
        if n_valid == 0:
            # Nothing on the support (a masked row): not read, Div 0, no gradient.
            for i_k in range(0, K, BLOCK_K):
                o_k = i_k + tl.arange(0, BLOCK_K)
                tl.store(p_ws + 3 + o_k, tl.full((BLOCK_K,), float("-inf"), tl.float32),
                         mask=o_k < K)
                tl.store(p_ws + 3 + K + o_k, tl.zeros((BLOCK_K,), tl.float32), mask=o_k < K)
            tl.store(p_ws + o_2, tl.zeros((2,), tl.float32))
            tl.store(p_ws + 2, 0.0)
            tl.store(D + i_row, 0.0)
            return
        m, log_s = row_lse(p_x, V, inv_temp, BLOCK_V)
        # Pass 2: a at the ids; lse_S(a), lse_S(b) online.
        m_a = float("-inf")
        s_a = 0.0
        m_b = float("-inf")
        s_b = 0.0
        for i_k in range(0, K, BLOCK_K):
            o_k = i_k + tl.arange(0, BLOCK_K)
            b_a, b_b, b_valid = _slots(p_x, p_lp, p_ids, o_k, k_row, V, m, log_s, inv_temp,
                                       ALL_SLOTS)
            tl.store(p_ws + 3 + o_k, b_a, mask=o_k < K)
            m_new = tl.maximum(m_a, tl.max(b_a, axis=0))  # [BLOCK_K] -> scalar
            m_s = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_a = s_a * tl.exp(m_a - m_s) + tl.sum(tl.exp(b_a - m_s), axis=0)
            m_a = m_new
            m_new = tl.maximum(m_b, tl.max(b_b, axis=0))
            m_s = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_b = s_b * tl.exp(m_b - m_s) + tl.sum(tl.exp(b_b - m_s), axis=0)
            m_b = m_new
        lse_a = m_a + tl.log(s_a)  # log sum_S p
        lse_b = m_b + tl.log(s_b)
        if BUCKET:
            shift_a = 0.0
            shift_b = 0.0
        else:
            shift_a = lse_a
            shift_b = lse_b
        # Pass 3: Div on the slots and sum_S g.
        d = 0.0
        g_sum = 0.0
        for i_k in range(0, K, BLOCK_K):
            o_k = i_k + tl.arange(0, BLOCK_K)
            b_a, b_b, b_valid = _slots(p_x, p_lp, p_ids, o_k, k_row, V, m, log_s, inv_temp,
                                       ALL_SLOTS)
            b_t, b_g = _terms(b_a - shift_a, b_b - shift_b, beta, DIV)
            d += tl.sum(tl.where(b_valid, b_t, 0.0), axis=0)
            g_sum += tl.sum(tl.where(b_valid, b_g, 0.0), axis=0)
        # ga_j = g_j + coef * exp(log P_j): the tail's (bucket) or the normaliser's share. The
        # reverse KL's g_j lacks its + P_j: the support's sum of P being 1, that term's share
        # cancels it exactly (P_j - P_j sum P), unless the bucket's clamp cut the tail's
        # gradient; then coef is 1 (0 for the other divergences, whose g_j are whole).
        if DIV == 1:
            coef_clamped = 1.0
        else:
            coef_clamped = 0.0
        if BUCKET:
            x_a = tl.minimum(lse_a, -1e-7)
            x_b = tl.minimum(lse_b, -1e-7)
            P_t = -_expm1(x_a)
            t_t, g_t = _terms(tl.log(P_t), tl.log(-_expm1(x_b)), beta, DIV)
            d += t_t
            coef = tl.where(lse_a > -1e-7, coef_clamped, -g_t / P_t)
            G = g_sum + coef * tl.exp(lse_a)
        else:
            coef = -g_sum
            G = 0.0  # sum_S ga_j = sum_S g_j (1 - sum_S P_j) = 0
        # Pass 4: ga_j per slot (0 off the support).
        for i_k in range(0, K, BLOCK_K):
            o_k = i_k + tl.arange(0, BLOCK_K)
            b_a, b_b, b_valid = _slots(p_x, p_lp, p_ids, o_k, k_row, V, m, log_s, inv_temp,
                                       ALL_SLOTS)
            b_t, b_g = _terms(b_a - shift_a, b_b - shift_b, beta, DIV)
            b_ga = tl.where(b_valid, b_g + coef * tl.exp(b_a - shift_a), 0.0)
            tl.store(p_ws + 3 + K + o_k, b_ga, mask=o_k < K)
        d = tl.where(n_bad > 0, float("nan"), d)
        G = tl.where(n_bad > 0, float("nan"), G)
        # Div >= 0 in exact arithmetic; rounding below 0 reads 0 (NaN and inf pass).
        tl.store(D + i_row, tl.where(d < 0.0, 0.0, d))
        tl.store(p_ws + 2, G)
        tl.store(p_ws + o_2, tl.where(o_2 == 0, m, log_s))

    @triton.jit
    def _sparse_bwd_kernel(
        X, WS, Ids, C, DX,
        stride_xa, stride_xb, stride_dxa, stride_dxb, stride_ca, stride_cb,
        R, V, K, inv_temp, logit_scale, inv_softcap,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_dx = row_start(DX, i_row, R, stride_dxa, stride_dxb)
        c = tl.load(row_start(C, i_row, R, stride_ca, stride_cb)).to(tl.float32)
        p_ws = WS + i_row * (3 + 2 * K)  # max, log-sum, G, a (k), ga (k): the forward's
        m = tl.load(p_ws)
        log_s = tl.load(p_ws + 1)
        G = tl.load(p_ws + 2)
        lse = m + log_s
        # Dense part: dL/dt_v = -(c/tau) p_v G. c G = 0: exact zeros, the row is not read (a
        # masked row's NaN logits stay out of the gradient).
        c_dense = -c * G * inv_temp
        v_read = tl.where(c_dense != 0.0, V, 0)
        dense_softmax_grad(p_x, p_dx, V, v_read, inv_temp, m, log_s, c_dense, logit_scale,
                           inv_softcap, BLOCK_V)
        # The rows' dense stores must land before the k stores below overwrite some of them.
        tl.debug_barrier()
        # Sparse part: the full value at each valid id, (c/tau)(sum_{i: id_i = id_j} ga_i -
        # p_j G) (every duplicate slot writes the same value).
        for i_j in range(0, K, BLOCK_K):
            o_j = i_j + tl.arange(0, BLOCK_K)
            b_aj = tl.load(p_ws + 3 + o_j, mask=o_j < K, other=float("-inf"))
            m_j = b_aj > float("-inf")
            b_idj = tl.load(Ids + i_row * K + o_j, mask=m_j, other=-1).to(tl.int64)
            m_j = m_j & (b_idj >= 0) & (b_idj < V)
            b_idj32 = tl.where(m_j, b_idj, -1).to(tl.int32)  # in range: compared as int32
            b_gd = tl.zeros((BLOCK_K,), tl.float32)
            for i_i in range(0, K, BLOCK_K):
                o_i = i_i + tl.arange(0, BLOCK_K)
                b_ai = tl.load(p_ws + 3 + o_i, mask=o_i < K, other=float("-inf"))
                b_idi = tl.load(Ids + i_row * K + o_i, mask=b_ai > float("-inf"),
                                other=-2).to(tl.int32)
                b_gi = tl.load(p_ws + 3 + K + o_i, mask=o_i < K, other=0.0)
                same = b_idj32[:, None] == b_idi[None, :]  # invalid i: -2 matches no j
                b_gd += tl.sum(tl.where(same, b_gi[None, :], 0.0), axis=1)  # [BK, BK] -> [BK]
            b_tj = tl.where(m_j, (b_aj + lse) / inv_temp, 0.0)  # the logit t at the id
            b_tc = b_tj * inv_softcap
            b_dx = (c * inv_temp) * (b_gd - tl.exp(b_aj) * G) * (logit_scale * (1.0 - b_tc * b_tc))
            tl.store(p_dx + b_idj, b_dx.to(DX.dtype.element_ty), mask=m_j)


# ----------------------------------------------------------------------------- launchers


def _block_k(K: int, most: int = MAX_BLOCK_K) -> int:
    return min(most, max(2, 1 << max(K - 1, 0).bit_length()))


def _rows(x: torch.Tensor, writable: bool = False) -> tuple[torch.Tensor, int, int, int]:
    """(tensor, stride_a, stride_b, R): row i of x's (..., V) rows at a * stride_a + b *
    stride_b, i = a R + b; 2- and 3-d tensors with a unit last stride as they are (no op)."""
    if x.stride(-1) == 1 or x.shape[-1] == 1:
        if x.dim() == 2:
            return x, 0, x.stride(0), max(x.shape[0], 1)
        if x.dim() == 3:
            return x, x.stride(0), x.stride(1), max(x.shape[1], 1)
    v = row_view(x, writable=writable)
    return v.tensor, *v.strides(), v.rows_per_a


def sparse_fwd(x: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor, row_mask: torch.Tensor,
               temperature: float, divergence: int, jsd_beta: float, bucket: bool,
               all_slots: bool, flag: torch.Tensor | None = None):
    """(Div per row (shape x.shape[:-1], fp32), workspace, flag): the (n, 3 + 2k) fp32
    workspace holds what backward needs (per row max and log-sum of x / tau, G, the student's
    log-probs at the ids (-inf off the support), ga); the 1-element int32 flag is 1 if a valid
    slot's id lies outside [0, V) (``flag``: one to set instead, shared by several calls).

    ``lp``, ``ids``: (..., k) in row order (contiguous); ``row_mask``: (...) bool."""
    V, K = x.shape[-1], ids.shape[-1]
    n = x.numel() // V if V else 0
    dev = x.device
    d = torch.empty(x.shape[:-1], device=dev, dtype=torch.float32)
    ws = torch.empty(n, 3 + 2 * K, device=dev, dtype=torch.float32)
    if flag is None:
        flag = torch.zeros(1, device=dev, dtype=torch.int32)
    if n:
        rx, sa, sb, R = _rows(x)
        with launch_device(x):
            _sparse_fwd_kernel[(n,)](
                rx, lp.contiguous(), ids.contiguous(), row_mask.contiguous(), d, ws, flag,
                sa, sb, R, V, K, 1.0 / temperature, float(jsd_beta), DIV=divergence,
                BUCKET=bucket, ALL_SLOTS=all_slots, BLOCK_V=block_v(V), BLOCK_K=_block_k(K),
                num_warps=num_warps(),
            )
    return d, ws, flag


def sparse_bwd(x: torch.Tensor, ids: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
               temperature: float, dx: torch.Tensor, logit_scale: float = 1.0,
               softcap: float = 0.0) -> None:
    """Writes dL/dx into ``dx`` (may be x itself) for the row cotangents ``c`` (shaped as the
    rows, any strides: an expanded scalar's gradient is read in place); ``ws`` from
    ``sparse_fwd``."""
    V, K = x.shape[-1], ids.shape[-1]
    n = x.numel() // V if V else 0
    if c.dim() == 2:
        stride_c = (c.stride(0), c.stride(1))
    else:
        stride_c = (0, c.stride(0) if c.dim() else 0)
    if n:
        rx, sa, sb, R = _rows(x)
        rdx, sda, sdb, _ = _rows(dx, writable=True)
        with launch_device(x):
            _sparse_bwd_kernel[(n,)](
                rx, ws, ids.contiguous(), c, rdx, sa, sb, sda, sdb, *stride_c, R, V, K,
                1.0 / temperature, float(logit_scale), 1.0 / softcap if softcap else 0.0,
                BLOCK_V=block_v(V), BLOCK_K=_block_k(K, MAX_BLOCK_K_BWD), num_warps=num_warps(),
            )


# ---------------------------------------------------------------- torch custom ops (compile)


# The launchers' signatures, restated on purpose: torch.library reads the ops' schemas from
# these annotations.
@torch.library.custom_op("cord_kernels::sparse_support_fwd", mutates_args=())
def _sparse_fwd_op(x: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor, row_mask: torch.Tensor,
                   temperature: float, divergence: int, jsd_beta: float, bucket: bool,
                   all_slots: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return sparse_fwd(x, lp, ids, row_mask, temperature, divergence, jsd_beta, bucket,
                      all_slots)


@_sparse_fwd_op.register_fake
def _(x, lp, ids, row_mask, temperature, divergence, jsd_beta, bucket, all_slots):
    n, K = x.numel() // x.shape[-1], ids.shape[-1]
    return (x.new_empty(x.shape[:-1], dtype=torch.float32),
            x.new_empty(n, 3 + 2 * K, dtype=torch.float32), x.new_empty(1, dtype=torch.int32))


@torch.library.custom_op("cord_kernels::sparse_support_bwd", mutates_args=("dx",))
def _sparse_bwd_op(x: torch.Tensor, ids: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
                   temperature: float, dx: torch.Tensor) -> None:
    sparse_bwd(x, ids, ws, c, temperature, dx)


@_sparse_bwd_op.register_fake
def _(x, ids, ws, c, temperature, dx):
    return None


# ------------------------------------------------------------------------ autograd Function


@dataclass(frozen=True)
class SparseLossParams:
    """The non-tensor options of one call of the kernels."""

    divergence: str = "forward_kl"
    jsd_beta: float = 0.5
    tail: Tail = Tail.BUCKET
    temperature: float = 1.0
    # The support is every slot of a valid row (the student's top-k), not b > -inf.
    all_slots: bool = False
    # Write the gradient into the logits' own buffer (they are garbage after backward).
    inplace_backward: bool = False

    def fwd_args(self) -> tuple:
        div = getattr(self.divergence, "value", self.divergence)  # an enum or its name
        return (self.temperature, DIV_CODE[div], float(self.jsd_beta),
                Tail(self.tail) is Tail.BUCKET, self.all_slots)


class SparseSupportLossFunction(torch.autograd.Function):
    """(Div per row, id error flag) through the Triton kernels; differentiable wrt ``x``."""

    @staticmethod
    def forward(ctx, x, lp, ids, row_mask, params: SparseLossParams):
        d, ws, flag = _sparse_fwd_op(x, lp, ids, row_mask, *params.fwd_args())
        ctx.save_for_backward(x, ids, ws)
        ctx.params = params
        ctx.mark_non_differentiable(flag)
        ctx.set_materialize_grads(False)  # no zeros for the flag's gradient
        return d, flag

    @staticmethod
    def backward(ctx, grad_d, _grad_flag):
        if grad_d is None:
            return None, None, None, None, None
        x, ids, ws = ctx.saved_tensors
        p: SparseLossParams = ctx.params
        dx = x if p.inplace_backward else torch.empty_like(
            x, memory_format=torch.contiguous_format)
        _sparse_bwd_op(x, ids, ws, grad_d, p.temperature, dx)
        return dx, None, None, None, None


def sparse_support_loss(x: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor,
                        row_mask: torch.Tensor, params: SparseLossParams):
    """(Div (...), flag (1,) int32) of logits ``x`` (..., V) against the teacher's log-probs
    ``lp`` at ``ids`` (..., k), rows where ``row_mask``; differentiable wrt ``x`` (internal:
    arguments are checked by the public losses; the flag by ``inputs.raise_on_bad_ids``)."""
    return SparseSupportLossFunction.apply(x, lp, ids, row_mask, params)
