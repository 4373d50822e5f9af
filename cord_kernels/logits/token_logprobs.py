"""Per-token log-probabilities log softmax(logits / tau)[label], streamed over the vocabulary.

Forward reads each row once (online logsumexp plus one gathered logit) and saves lse per row;
backward reads it again and writes dlogp/dx_v = (1/tau) (1[v = label] - p_v). The gradient is
the only (N, V) tensor. Used by the GRPO and SFT losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import resolve_impl, triton_available
from cord_kernels.core.options import IGNORE_INDEX, TEMPERATURE, LossOptions
from cord_kernels.core.rows import (
    block_v,
    check_inplace_backward,
    launch_device,
    num_warps,
    row_view,
)
from cord_kernels.core.torch_path import TorchLogprobFunction
from cord_kernels.core.validation import (
    check_labels,
    check_logits,
    check_same_device,
)

if triton_available():
    import triton
    import triton.language as tl

    from cord_kernels.core.row_lse import row_lse
    from cord_kernels.divergences.streaming import row_start

    @triton.jit
    def _logprob_fwd_kernel(
        X, Labels, Out, Lse,
        stride_xa, stride_xb,
        R, V, inv_temp, ignore_index,
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        label = tl.load(Labels + i_row).to(tl.int64)
        if label == ignore_index:
            tl.store(Out + i_row, 0.0)
            tl.store(Lse + 2 * i_row + tl.arange(0, 2), tl.zeros((2,), tl.float32))
            return
        m, log_s = row_lse(p_x, V, inv_temp, BLOCK_V)
        in_range = (label >= 0) & (label < V)
        # An out-of-range label cannot be checked on the host without a sync: it gives NaN.
        x_l = tl.load(p_x + label, mask=in_range, other=float("nan")).to(tl.float32) * inv_temp
        # (x - max) - log(sum) rather than x - lse: exact for huge logits (see kl.py).
        tl.store(Out + i_row, (x_l - m) - log_s)
        o_2 = tl.arange(0, 2)
        tl.store(Lse + 2 * i_row + o_2, tl.where(o_2 == 0, m, log_s))

    @triton.jit
    def _logprob_bwd_kernel(
        X, Labels, Lse, G, DX,
        stride_xa, stride_xb, stride_dxa, stride_dxb,
        R, V, inv_temp, ignore_index,
        BLOCK_V: tl.constexpr,
    ):
        i_row = tl.program_id(0).to(tl.int64)
        p_x = row_start(X, i_row, R, stride_xa, stride_xb)
        p_dx = row_start(DX, i_row, R, stride_dxa, stride_dxb)
        label = tl.load(Labels + i_row).to(tl.int64)
        g = tl.load(G + i_row)
        live = (g != 0.0) & (label != ignore_index)
        g = tl.where(live, g * inv_temp, 0.0)
        v_read = tl.where(live, V, 0)  # how much of the row to read: all of it, or none
        m = tl.load(Lse + 2 * i_row)
        log_s = tl.load(Lse + 2 * i_row + 1)
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            m_v = o_v < V
            b_x = tl.load(p_x + o_v, mask=o_v < v_read, other=float("-inf")).to(tl.float32)
            p = tl.exp((b_x * inv_temp - m) - log_s)
            # dlogp/dx_v = (1/tau) (1[v = label] - p_v)
            b_dx = g * (tl.where(o_v == label, 1.0, 0.0) - p)
            tl.store(p_dx + o_v, b_dx.to(DX.dtype.element_ty), mask=m_v)


def logprob_fwd(x, labels, temperature: float, ignore_index: int):
    """Per row: log p(label) as (n_rows,) fp32 and lse(x/tau) as an (n_rows, 2) fp32 pair
    (max, log sum exp(. - max)), as in ``kl.kl_fwd``."""
    vx = row_view(x)
    n, V = vx.n_rows, x.shape[-1]
    out = torch.empty(n, device=x.device, dtype=torch.float32)
    lse = torch.empty(n, 2, device=x.device, dtype=torch.float32)
    if n:
        with launch_device(x):
            _logprob_fwd_kernel[(n,)](
                vx.tensor, labels.reshape(-1).contiguous(), out, lse, *vx.strides(),
                vx.rows_per_a, V, 1.0 / temperature, ignore_index,
                BLOCK_V=block_v(V), num_warps=num_warps(),
            )
    return out, lse


def logprob_bwd(x, labels, lse, grad_rows, temperature: float, ignore_index: int, dx) -> None:
    """Writes dlogp/dx scaled per row by ``grad_rows`` into ``dx`` (may be x itself)."""
    # dx must be written where it lives (it may be x itself): row_view raises rather than copy.
    vx, vdx = row_view(x), row_view(dx, writable=True)
    n, V = vx.n_rows, x.shape[-1]
    if n:
        with launch_device(x):
            _logprob_bwd_kernel[(n,)](
                vx.tensor, labels.reshape(-1).contiguous(), lse,
                grad_rows.reshape(-1).float().contiguous(), vdx.tensor,
                *vx.strides(), *vdx.strides(),
                vx.rows_per_a, V, 1.0 / temperature, ignore_index,
                BLOCK_V=block_v(V), num_warps=num_warps(),
            )


@torch.library.custom_op("cord_kernels::logprob_fwd", mutates_args=())
def _logprob_fwd_op(
    x: torch.Tensor, labels: torch.Tensor, temperature: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return logprob_fwd(x, labels, temperature, ignore_index)


@_logprob_fwd_op.register_fake
def _(x, labels, temperature, ignore_index):
    n = x.numel() // x.shape[-1]
    return x.new_empty(n, dtype=torch.float32), x.new_empty(n, 2, dtype=torch.float32)


@torch.library.custom_op("cord_kernels::logprob_bwd", mutates_args=("dx",))
def _logprob_bwd_op(
    x: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad_rows: torch.Tensor,
    temperature: float,
    ignore_index: int,
    dx: torch.Tensor,
) -> None:
    logprob_bwd(x, labels, lse, grad_rows, temperature, ignore_index, dx)


@_logprob_bwd_op.register_fake
def _(x, labels, lse, grad_rows, temperature, ignore_index, dx):
    return None


@dataclass(frozen=True)
class LogprobParams:
    temperature: float = TEMPERATURE
    ignore_index: int = IGNORE_INDEX
    inplace_backward: bool = False


class TokenLogprobsFunction(torch.autograd.Function):
    """Per-row log p(label), unreduced."""

    @staticmethod
    def forward(ctx, x, labels, params: LogprobParams):
        out, lse = _logprob_fwd_op(x, labels, params.temperature, params.ignore_index)
        ctx.save_for_backward(x, labels, lse)
        ctx.params = params
        return out.view(x.shape[:-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, labels, lse = ctx.saved_tensors
        p: LogprobParams = ctx.params
        # A fresh gradient is contiguous (the kernel writes rows with a unit last stride).
        dx = x if p.inplace_backward else torch.empty_like(x, memory_format=torch.contiguous_format)
        _logprob_bwd_op(x, labels, lse, grad_out, p.temperature, p.ignore_index, dx)
        return dx, None, None


# Spelled out on purpose, as docs/api.md's "Logits in" table fixes it
# (tests/test_options.py reads it with inspect); LossOptions.check holds its rules and
# defaults. (`duplicates` pairs such signatures.)
def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    ignore_index: int = IGNORE_INDEX,
    inplace_backward: bool = False,
    impl: str | None = None,
    process_group=None,
    vocab_offset: int | None = None,
) -> torch.Tensor:
    """log softmax(logits / tau)[label] per position, for GRPO and SFT.

    Args:
        logits: (..., V) fp32/bf16/fp16.
        labels: (...) integer token ids in [0, V); ``ignore_index`` positions give 0 and no
            gradient. (An out-of-range label gives NaN on the Triton path, which cannot check
            values without a host sync, and an error on the torch path.)
        temperature: tau > 0.
        inplace_backward: Triton path only: write the gradient into ``logits``' storage
            (``logits`` is garbage after backward); an error with impl="torch".
        impl: "triton", "torch" or None.
        process_group, vocab_offset: vocabulary parallel: ``logits`` is this rank's slice
            (or a DTensor sharded on it), ``labels`` stay global ids; ``vocab_offset`` is the
            slice's first id (default: learnt with one all-gather of the slice sizes). Every
            rank gets the full value (2 all-reduces of (rows, 2) stats).

    Returns:
        (...) float32, differentiable wrt ``logits``.

    Example:
        >>> lp = token_logprobs(logits[:, :-1], input_ids[:, 1:])     # (B, T-1)
        >>> sft_loss = -(lp * mask).sum() / mask.sum()
    """
    check_logits("logits", logits)
    check_labels(labels, tuple(logits.shape[:-1]))
    check_same_device(("logits", logits), ("labels", labels))
    opts = LossOptions.check(temperature=temperature, ignore_index=ignore_index,
                             inplace_backward=inplace_backward, impl=impl,
                             process_group=process_group, vocab_offset=vocab_offset)
    temperature, ignore_index = opts.temperature, opts.ignore_index
    if vp.is_parallel(process_group, logits):
        local, shard = vp.logits_slices(process_group, vocab_offset, True, {"x": logits},
                                        {"labels": labels})
        return vp.vocab_parallel_logprobs(local["x"], local["labels"], temperature,
                                          ignore_index, shard.offset, shard.group)
    if resolve_impl(impl, logits) == "torch":
        return TorchLogprobFunction.apply(logits, labels, temperature, ignore_index).float()
    check_inplace_backward("logits", logits, inplace_backward)
    return TokenLogprobsFunction.apply(
        logits, labels, LogprobParams(temperature, ignore_index, inplace_backward)
    )
