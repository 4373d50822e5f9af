"""The online log-sum-exp of one row, shared by the kernels that need only a row's normaliser
(``token_logprobs.py``, ``support_logprobs.py``), and the dense softmax-gradient pass of the
sparse kernels' backward (``support_logprobs.py``, ``support_loss.py``)."""

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

    @triton.jit
    def dense_softmax_grad(p_x, p_dx, V, v_read, inv_temp, m, log_s, coef, logit_scale,
                           inv_softcap, BLOCK_V: tl.constexpr):
        """Writes coef p_v dt/dz_v over the row at ``p_dx``: p = softmax(t / tau) from the
        row's (m, log_s), t the logits at ``p_x``, dt/dz = scale (1 - (t/c)^2) the softcap
        transform's derivative (1 without a transform: scale 1, 1/c = 0). Only the first
        ``v_read`` entries are read (0: exact zeros, the row's NaN logits stay out)."""
        for i_v in range(0, V, BLOCK_V):
            o_v = i_v + tl.arange(0, BLOCK_V)
            b_t = tl.load(p_x + o_v, mask=o_v < v_read, other=float("-inf")).to(tl.float32)
            p = tl.exp((b_t * inv_temp - m) - log_s)
            b_tc = tl.where(p > 0, b_t * inv_softcap, 0.0)
            b_dx = coef * p * (logit_scale * (1.0 - b_tc * b_tc))
            tl.store(p_dx + o_v, b_dx.to(p_dx.dtype.element_ty), mask=o_v < V)
