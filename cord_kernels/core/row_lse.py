"""The online log-sum-exp of one row, shared by the kernels that need only a row's normaliser
(``token_logprobs.py``, ``support_logprobs.py``)."""

from __future__ import annotations

from cord_kernels.core.dispatch import triton_available

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def row_lse(p_x, V, inv_temp, BLOCK_V: tl.constexpr):
        """(max, log sum exp(x - max)) of the row x = logits / tau at ``p_x``, streamed in
        BLOCK_V chunks; lse = max + log-sum, kept apart (see kl.py)."""
        m = float("-inf")
        s = 0.0
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            b_x = tl.load(p_x + o_v, mask=o_v < V, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(b_x, axis=0))  # [BLOCK_V] -> scalar
            # While the row is all -inf so far its max stays -inf; shift by 0 then.
            m_s = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - m_s) + tl.sum(tl.exp(b_x - m_s), axis=0)
            m = m_new
        return m, tl.log(s)
