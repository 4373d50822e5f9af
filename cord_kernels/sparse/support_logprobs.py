"""Log-probabilities of k token ids per row, log softmax(logits / tau)[ids], streamed.

The sparse-teacher losses need the student's log-probs only on a support of k ids per row (the
teacher's top-k, or the student's own), yet the gradient is dense: through the normaliser,

    a_j = x_{id_j} - lse(x),  x = s / tau
    dL/ds_v = (1/tau) (sum_j g_j 1[v = id_j] - p_v G),   g_j = dL/da_j,  G = sum_j g_j

Forward reads each row once (online max/sum, as ``logits/kl.py``) and gathers the k logits; it saves
lse per row. Backward reads the row again and writes the dense part -p_v G / tau; the k sparse
terms are then added by one (N, k) ``scatter_add_``. The (N, V) log-softmax never exists; the
gradient is the only (N, V) tensor and may be written into the logits buffer itself
(``inplace_backward``).

Slots whose ``slot_valid`` is False (a teacher log-prob of -inf, or a masked row) are never
read: they give a_j = -inf and take no gradient. A row without a valid slot is not read at all
and gets an exactly-zero gradient, even if its logits are NaN.

The fused-linear losses call the same kernels on their logits tiles, whose logits may have
gone through a transform t = c tanh(scale z / c) (``softcap`` c) or t = scale z; backward
then also applies dt/dz = scale (1 - (t / c)^2) (``chain_factor``), so the tile ends up holding
the gradient with respect to the head's raw output z.

Users: the teacher's side of the student-top-k losses (forward only) and the
differentiable ``support_logprobs``. The sparse losses' student side goes through
``support_loss.py`` instead, whose kernels also form the divergence and its gradient terms
(no (N, k) torch work, no ``scatter_add_``).

Layout: kernels, launchers, custom ops, the Triton autograd Function (the torch one is in
``core/torch_path.py``), the internal entry point ``support_logprobs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cord_kernels.core.dispatch import Impl, triton_available
from cord_kernels.core.rows import block_v, launch_device, num_warps, row_view
from cord_kernels.core.torch_path import TorchSupportLogprobsFunction, chain_factor

# Slots gathered per iteration of the forward kernel (k = 64, a typical server top-k, in one).
MAX_BLOCK_K = 128

if triton_available():
    import triton
    import triton.language as tl

    from cord_kernels.core.row_lse import dense_softmax_grad, row_lse
    from cord_kernels.divergences.streaming import row_start

    @triton.jit
    def _support_fwd_kernel(
        X, Ids, SlotValid, Out, Lse,
        stride_xa, stride_xb,
        R, V, K, inv_temp,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_valid = SlotValid + i_row * K
        p_out = Out + i_row * K
        o_2 = tl.arange(0, 2)
        # The k slots go in BLOCK_K chunks (k can be large: a server's top-1000).
        n_valid = 0
        for i_k in range(0, K, BLOCK_K):
            o_k = i_k + tl.arange(0, BLOCK_K)
            n_valid += tl.sum(tl.load(p_valid + o_k, mask=o_k < K, other=0).to(tl.int32), axis=0)
        if n_valid == 0:
            # Nothing on the support (a masked row): not read, all slots -inf.
            for i_k in range(0, K, BLOCK_K):
                o_k = i_k + tl.arange(0, BLOCK_K)
                tl.store(p_out + o_k, tl.full((BLOCK_K,), float("-inf"), tl.float32),
                         mask=o_k < K)
            tl.store(Lse + 2 * i_row + o_2, tl.zeros((2,), tl.float32))
            return
        m, log_s = row_lse(p_x, V, inv_temp, BLOCK_V)
        for i_k in range(0, K, BLOCK_K):
            o_k = i_k + tl.arange(0, BLOCK_K)
            m_k = o_k < K
            b_valid = tl.load(p_valid + o_k, mask=m_k, other=0) != 0
            b_ids = tl.load(Ids + i_row * K + o_k, mask=b_valid, other=0).to(tl.int64)
            # Ids were range-checked on the host; an id outside [0, V) would read NaN here.
            m_id = b_valid & (b_ids >= 0) & (b_ids < V)
            b_xid = tl.load(p_x + b_ids, mask=m_id, other=float("nan")).to(tl.float32) * inv_temp
            # a_j = (x_j - max) - log(sum), exact for huge logits (see kl.py).
            b_a = tl.where(b_valid, (b_xid - m) - log_s, float("-inf"))  # [BLOCK_K]
            tl.store(p_out + o_k, b_a, mask=m_k)
        tl.store(Lse + 2 * i_row + o_2, tl.where(o_2 == 0, m, log_s))

    @triton.jit
    def _support_bwd_kernel(
        X, Lse, GSum, DX,
        stride_xa, stride_xb, stride_dxa, stride_dxb,
        R, V, inv_temp, logit_scale, inv_softcap,
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_dx = row_start(DX, i_row, R, stride_dxa, stride_dxb)
        # G = sum_j g_j. G = 0 makes the dense part exactly 0: the row is not read (a masked
        # row's NaN logits stay out of the gradient); its k sparse terms come afterwards.
        G = tl.load(GSum + i_row)
        v_read = tl.where(G != 0.0, V, 0)
        m = tl.load(Lse + 2 * i_row)
        log_s = tl.load(Lse + 2 * i_row + 1)
        # dL/dt_v = -(1/tau) p_v G (dense part)
        dense_softmax_grad(p_x, p_dx, V, v_read, inv_temp, m, log_s, -G * inv_temp,
                           logit_scale, inv_softcap, BLOCK_V)


# ----------------------------------------------------------------------------- launchers


def support_fwd(x: torch.Tensor, ids: torch.Tensor, slot_valid: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the (n_rows, k) fp32 log-probs at ``ids`` (-inf at invalid slots) and lse(x/tau)
    as an (n_rows, 2) fp32 pair (max, log sum exp(. - max)), as in ``kl.kl_fwd``."""
    vx = row_view(x)
    n, V, K = vx.n_rows, x.shape[-1], ids.shape[-1]
    out = torch.empty(n, K, device=x.device, dtype=torch.float32)
    lse = torch.empty(n, 2, device=x.device, dtype=torch.float32)
    if n and K:
        with launch_device(x):
            _support_fwd_kernel[(n,)](
                vx.tensor, ids.reshape(n, K).contiguous(),
                slot_valid.reshape(n, K).contiguous().view(torch.uint8), out, lse,
                *vx.strides(), vx.rows_per_a, V, K, 1.0 / temperature,
                BLOCK_V=block_v(V), BLOCK_K=min(MAX_BLOCK_K, max(2, triton.next_power_of_2(K))),
                num_warps=num_warps(),
            )
    elif n:
        out.fill_(float("-inf"))
        lse.zero_()
    return out, lse


def support_bwd_dense(x: torch.Tensor, lse: torch.Tensor, g_sum: torch.Tensor,
                      temperature: float, dx: torch.Tensor, logit_scale: float = 1.0,
                      softcap: float = 0.0) -> None:
    """Writes the dense part -(1/tau) p_v G (times dt/dz for a transform) into ``dx`` (may be
    x itself: each element is read before it is written, by the same program)."""
    vx, vdx = row_view(x), row_view(dx, writable=True)
    n, V = vx.n_rows, x.shape[-1]
    if n:
        with launch_device(x):
            _support_bwd_kernel[(n,)](
                vx.tensor, lse, g_sum.reshape(-1).float().contiguous(), vdx.tensor,
                *vx.strides(), *vdx.strides(), vx.rows_per_a, V, 1.0 / temperature,
                float(logit_scale), 1.0 / softcap if softcap else 0.0,
                BLOCK_V=block_v(V), num_warps=num_warps(),
            )


def add_sparse_terms(dx: torch.Tensor, ids: torch.Tensor, slot_valid: torch.Tensor,
                     g: torch.Tensor, a: torch.Tensor, lse_total: torch.Tensor,
                     temperature: float, logit_scale: float = 1.0, softcap: float = 0.0):
    """dx[row, id_j] += (1/tau) g_j (times dt/dz there): the k sparse terms of the gradient.
    Invalid slots add 0 at id 0 (their ids are never trusted). ``lse_total``: (n,) lse(x/tau),
    to recover t at the ids for the transform's factor."""
    n, K = g.shape
    vals = torch.where(slot_valid, g, 0.0) / temperature
    if logit_scale != 1.0 or softcap:
        t_ids = torch.where(slot_valid, (a + lse_total[:, None]) * temperature, 0.0)
        vals = vals * chain_factor(t_ids, logit_scale, softcap)
    index = torch.where(slot_valid, ids, 0).long()
    rows = row_view(dx, writable=True)
    flat = rows.tensor.view(-1, dx.shape[-1]) if rows.tensor.is_contiguous() else None
    if flat is not None:
        flat.scatter_add_(1, index, vals.to(dx.dtype))
    else:  # a strided view (inplace_backward on logits[:, :-1]): per leading block
        t = rows.tensor
        t.scatter_add_(2, index.view(t.shape[0], t.shape[1], K),
                       vals.to(dx.dtype).view(t.shape[0], t.shape[1], K))


# ---------------------------------------------------------------- torch custom ops (compile)


# The launcher's signature, restated on purpose: torch.library reads the op's schema from
# these annotations.
@torch.library.custom_op("cord_kernels::support_fwd", mutates_args=())
def _support_fwd_op(x: torch.Tensor, ids: torch.Tensor, slot_valid: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    return support_fwd(x, ids, slot_valid, temperature)


@_support_fwd_op.register_fake
def _(x, ids, slot_valid, temperature):
    n = x.numel() // x.shape[-1]
    return (x.new_empty(n, ids.shape[-1], dtype=torch.float32),
            x.new_empty(n, 2, dtype=torch.float32))


@torch.library.custom_op("cord_kernels::support_bwd", mutates_args=("dx",))
def _support_bwd_op(x: torch.Tensor, ids: torch.Tensor, slot_valid: torch.Tensor,
                    a: torch.Tensor, lse: torch.Tensor, g: torch.Tensor, temperature: float,
                    dx: torch.Tensor) -> None:
    n, K = a.shape
    g = g.reshape(n, K).float()
    g = torch.where(slot_valid.reshape(n, K), g, 0.0)
    support_bwd_dense(x, lse, g.sum(1), temperature, dx)
    add_sparse_terms(dx, ids.reshape(n, K), slot_valid.reshape(n, K), g, a, lse.sum(1),
                     temperature)


@_support_bwd_op.register_fake
def _(x, ids, slot_valid, a, lse, g, temperature, dx):
    return None


# ------------------------------------------------------------------------ autograd Functions


@dataclass(frozen=True)
class SupportParams:
    temperature: float = 1.0
    # Write the gradient into the logits' own buffer (they are garbage after backward).
    inplace_backward: bool = False


class SupportLogprobsFunction(torch.autograd.Function):
    """(..., k) log softmax(x / tau)[ids] through the Triton kernels."""

    @staticmethod
    def forward(ctx, x, ids, slot_valid, params: SupportParams):
        a, lse = _support_fwd_op(x, ids, slot_valid, params.temperature)
        ctx.save_for_backward(x, ids, slot_valid, a, lse)
        ctx.params = params
        return a.view(ids.shape)

    @staticmethod
    def backward(ctx, grad_a):
        p: SupportParams = ctx.params
        x, ids, slot_valid, a, lse = ctx.saved_tensors
        dx = x if p.inplace_backward else torch.empty_like(
            x, memory_format=torch.contiguous_format)
        _support_bwd_op(x, ids, slot_valid, a, lse, grad_a.contiguous(), p.temperature, dx)
        return dx, None, None, None


def support_logprobs(x: torch.Tensor, ids: torch.Tensor, slot_valid: torch.Tensor, *,
                     temperature: float, impl: Impl, inplace_backward: bool = False):
    """(..., k) log softmax(x / tau)[ids], -inf where ``slot_valid`` is False, fp32 (fp64 on
    the torch path for fp64 logits); differentiable wrt ``x`` (internal: arguments are checked
    by the public losses)."""
    if impl is Impl.TORCH:
        return TorchSupportLogprobsFunction.apply(x, ids, slot_valid, temperature)
    return SupportLogprobsFunction.apply(x, ids, slot_valid,
                                         SupportParams(temperature, inplace_backward))
