"""Triton building blocks that the divergences' streaming kernels share (``@triton.jit``
helpers, inlined into each kernel): a row's start, its scaled blocks, an online log-sum-exp,
and the first streaming pass of a two-pass kernel (both rows' log-sum-exps)."""

from __future__ import annotations

from cord_kernels.core.dispatch import triton_available

if triton_available():  # Triton is optional: without it only the torch path exists
    import triton
    import triton.language as tl

    @triton.jit
    def row_start(P, i_row, R, stride_a, stride_b):
        """Pointer to row ``i_row`` = a * R + b of an (A, R, V) view (``i_row`` int64)."""
        return P + (i_row // R) * stride_a + (i_row % R) * stride_b

    @triton.jit
    def scaled_blocks(p_x, p_y, o_v, m_ld, inv_temp):
        """One [BLOCK_V] block of each row / tau in fp32, -inf outside ``m_ld``."""
        b_x = tl.load(p_x + o_v, mask=m_ld, other=float("-inf")).to(tl.float32) * inv_temp
        b_y = tl.load(p_y + o_v, mask=m_ld, other=float("-inf")).to(tl.float32) * inv_temp
        return b_x, b_y

    @triton.jit
    def online_lse(m, s, b):
        """An online log-sum-exp kept as (max m, sum s of exp(x - m)), updated with block b."""
        m_new = tl.maximum(m, tl.max(b, axis=0))  # [BLOCK_V] -> scalar
        # While a row is all -inf so far its max stays -inf; shift by 0 then (the sum is 0).
        m_s = tl.where(m_new == float("-inf"), 0.0, m_new)
        return m_new, s * tl.exp(m - m_s) + tl.sum(tl.exp(b - m_s), axis=0)

    @triton.jit
    def pair_lse(p_x, p_y, V, inv_temp, BLOCK_V: tl.constexpr):
        """One read of both rows: (max, log-sum) of x / tau and of y / tau, each pair summing
        to the row's lse (kept apart: exact for logits near 1e4)."""
        m_x = float("-inf")
        m_y = float("-inf")
        s_x = 0.0
        s_y = 0.0
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            b_x, b_y = scaled_blocks(p_x, p_y, o_v, o_v < V, inv_temp)
            m_x, s_x = online_lse(m_x, s_x, b_x)
            m_y, s_y = online_lse(m_y, s_y, b_y)
        return m_x, tl.log(s_x), m_y, tl.log(s_y)
