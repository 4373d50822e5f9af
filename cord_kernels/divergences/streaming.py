"""Triton building blocks that the divergences' streaming kernels share (``@triton.jit``
helpers, inlined into each kernel): a row's start, its loaded blocks, an online log-sum-exp
and the first streaming pass of a two-pass kernel (both rows' log-sum-exps).

Base 2: the kernels that use these read each logit as z = x log2(e) / tau (one multiply, the
``scale``), so that every exponential is one ``exp2`` and every logarithm one ``log2`` (the
hardware's MUFU.EX2 / MUFU.LG2 (``fast_log2``); ``exp``/``log`` add a multiply or a software
polynomial); a
log-sum-exp is kept as (max, log2 of the sum) and a natural-log result is ln 2 times the
base-2 one. Loops read full blocks unmasked and one masked tail.
"""

from __future__ import annotations

import math

from cord_kernels.core.dispatch import kernels_interpreted, triton_available

LOG2E = 1.0 / math.log(2.0)  # z = x * LOG2E / tau: logits in base 2
LN2 = math.log(2.0)

if triton_available():  # Triton is optional: without it only the torch path exists
    import triton
    import triton.language as tl

    if kernels_interpreted():  # the interpreter has no libdevice: numpy's exact log2
        @triton.jit
        def fast_log2(x):
            return tl.log2(x)
    else:
        from triton.language.extra import libdevice

        @triton.jit
        def fast_log2(x):
            """log2 as one MUFU.LG2 (lg2.approx.f32, absolute error ~2^-21): ``tl.log2`` is
            libdevice's accurate software polynomial, 15 FFMAs per entry."""
            return libdevice.fast_log2f(x)

    @triton.jit
    def row_start(P, i_row, R, stride_a, stride_b):
        """Pointer to row ``i_row`` = a * R + b of an (A, R, V) view (``i_row`` int64)."""
        return P + (i_row // R) * stride_a + (i_row % R) * stride_b

    @triton.jit
    def load_scaled(p, o_v, V, scale, MASKED: tl.constexpr):
        """One [BLOCK_V] block of a row times ``scale`` in fp32; a MASKED (tail) block reads
        -inf past V, a full block reads without a mask."""
        if MASKED:
            b = tl.load(p + o_v, mask=o_v < V, other=float("-inf"))
        else:
            b = tl.load(p + o_v)
        return b.to(tl.float32) * scale

    @triton.jit
    def store_block(p, o_v, V, b, MASKED: tl.constexpr):
        """Stores a [BLOCK_V] block in the pointer's dtype; a MASKED (tail) block stops at V."""
        if MASKED:
            tl.store(p + o_v, b.to(p.dtype.element_ty), mask=o_v < V)
        else:
            tl.store(p + o_v, b.to(p.dtype.element_ty))

    @triton.jit
    def scaled_blocks(p_x, p_y, o_v, m_ld, scale):
        """One [BLOCK_V] block of each row times ``scale`` in fp32, -inf outside ``m_ld``."""
        b_x = tl.load(p_x + o_v, mask=m_ld, other=float("-inf")).to(tl.float32) * scale
        b_y = tl.load(p_y + o_v, mask=m_ld, other=float("-inf")).to(tl.float32) * scale
        return b_x, b_y

    @triton.jit
    def online_lse2(m, s, b):
        """An online base-2 log-sum-exp kept as (max m, sum s of 2^(z - m)), updated with
        block b."""
        m_new = tl.maximum(m, tl.max(b, axis=0))  # [BLOCK_V] -> scalar
        # While a row is all -inf so far its max stays -inf; shift by 0 then (the sum is 0).
        m_s = tl.where(m_new == float("-inf"), 0.0, m_new)
        return m_new, s * tl.exp2(m - m_s) + tl.sum(tl.exp2(b - m_s), axis=0)

    @triton.jit
    def pair_lse(p_x, p_y, V, scale, BLOCK_V: tl.constexpr):
        """One read of both rows: (max, log2-sum) of z_x and of z_y (base-2 logits, ``scale``
        = log2(e) / tau), each pair summing to the row's base-2 lse (kept apart: exact for
        logits near 1e4). Full blocks unmasked, then one masked tail."""
        m_x = float("-inf")
        m_y = float("-inf")
        s_x = 0.0
        s_y = 0.0
        v_full = V - V % BLOCK_V
        for i_v in range(0, v_full, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            m_x, s_x = online_lse2(m_x, s_x, load_scaled(p_x, o_v, V, scale, False))
            m_y, s_y = online_lse2(m_y, s_y, load_scaled(p_y, o_v, V, scale, False))
        if v_full < V:
            o_v = v_full + tl.arange(0, BLOCK_V)
            m_x, s_x = online_lse2(m_x, s_x, load_scaled(p_x, o_v, V, scale, True))
            m_y, s_y = online_lse2(m_y, s_y, load_scaled(p_y, o_v, V, scale, True))
        return m_x, tl.log2(s_x), m_y, tl.log2(s_y)
