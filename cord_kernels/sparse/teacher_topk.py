"""A teacher's top-k log-probs, computed in row chunks so that a local teacher's sparse targets
can be stored offline (or fed to ``sparse_teacher_loss`` without its (B, T, V) logits).

    teacher_topk(logits, k)           the top-k of log_softmax(logits / tau)
    teacher_topk((hidden, weight), k) the same on logits = hidden @ weight.T (+ bias), projected
                                      a chunk of rows at a time (the logits never exist whole)

The top-k of the log-probs is the top-k of the logits: each chunk takes ``torch.topk`` of its
logits and subtracts its rows' log-sum-exp; nothing of size (chunk, V) is kept.
"""

from __future__ import annotations

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.options import LOGIT_SCALE, TEMPERATURE, LossOptions, check_k
from cord_kernels.core.validation import check_float, check_logits, check_tensor
from cord_kernels.fused import chunked_head as ch


def _topk_rows(x: torch.Tensor, k: int, temperature: float):
    """(n, k) log-probs and ids of an (n, V) chunk of logits."""
    x = x.to(ch.compute_dtype(x)) / temperature
    vals, ids = torch.topk(x, k, dim=-1)
    return vals - torch.logsumexp(x, dim=-1, keepdim=True), ids


@torch.no_grad()
def teacher_topk(
    logits_or_hidden_weight,
    k: int,
    *,
    temperature: float = TEMPERATURE,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    logit_scale: float = LOGIT_SCALE,
    chunk_bytes: int | None = None,
    process_group=None,
    vocab_offset: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-k ``(topk_logprobs, topk_ids)`` per row, sorted by decreasing log-prob.

    Args:
        logits_or_hidden_weight: (..., V) logits, or a pair ``(hidden (..., H), weight (V, H))``
            of final hidden states and LM head.
        k: 1 <= k <= V.
        temperature: tau > 0: log-probs of logits / tau (vLLM's logprobs at that temperature).
        bias, softcap, logit_scale: the head's bias and logit transform (hidden-state input
            only; as ``fused_linear_sparse_teacher_loss``).
        chunk_bytes: budget of one chunk's fp32 logits (default 1 GiB).
        process_group, vocab_offset: vocabulary parallel: the logits (or ``weight`` and
            ``bias``) are this rank's contiguous vocabulary slice (or DTensors sharded on it);
            every rank gets the global top-k with global ids: 2 all-reduces of (rows,) and one
            all-gather of each rank's (rows, 2k) candidates (+1 all-gather of the slice sizes
            without ``vocab_offset``).

    Returns:
        (..., k) float32 log-probs (fp64 for fp64 input) and (..., k) int64 ids, no gradient.

    Example:
        >>> lp, ids = teacher_topk((teacher_hidden, teacher.lm_head.weight), 64)
        >>> torch.save({"topk_logprobs": lp.bfloat16(), "topk_token_ids": ids}, "targets.pt")
    """
    opts = LossOptions.check(temperature=temperature, chunk_bytes=chunk_bytes,
                             process_group=process_group, vocab_offset=vocab_offset)
    temperature, chunk_bytes = opts.temperature, opts.chunk_bytes
    shard = None
    if isinstance(logits_or_hidden_weight, (tuple, list)):
        if len(logits_or_hidden_weight) != 2:
            raise ValueError("teacher_topk takes logits or a (hidden, weight) pair, got a "
                             f"sequence of {len(logits_or_hidden_weight)}")
        hidden, weight = logits_or_hidden_weight
        if vp.is_parallel(process_group, weight):
            local, shard = vp.head_slices(process_group, vocab_offset, True,
                                          {"weight": weight, "bias": bias}, {"hidden": hidden})
            hidden, weight, bias = local["hidden"], local["weight"], local.get("bias")
        check_tensor("hidden", hidden, min_ndim=1)
        check_float("hidden", hidden)
        ch.check_head(weight, bias, hidden, names=("weight", "bias", "hidden"))
        head_opts = LossOptions.check(softcap=softcap, logit_scale=logit_scale)
        transform = ch.LogitTransform(head_opts.logit_scale, head_opts.softcap)
        lead, V = tuple(hidden.shape[:-1]), weight.shape[0]
        rows = hidden.reshape(-1, hidden.shape[-1])
        head = ch.LMHead(weight, bias, ch.operand_dtype(hidden, weight),
                         ch.compute_dtype(hidden, weight))

        def chunk_logits(lo, hi):
            out = torch.empty(hi - lo, V, dtype=head.dtype, device=hidden.device)
            head.project(head.rows(rows, torch.arange(lo, hi, device=hidden.device)), out)
            return transform.apply_(out)
    else:
        logits = logits_or_hidden_weight
        check_logits("logits", logits)
        if bias is not None or softcap is not None or logit_scale != LOGIT_SCALE:
            raise ValueError("bias, softcap and logit_scale apply to a (hidden, weight) input; "
                             "apply them to the logits before passing them")
        if vp.is_parallel(process_group, logits):
            local, shard = vp.logits_slices(process_group, vocab_offset, True, {"x": logits})
            logits = local["x"]
        lead, V = tuple(logits.shape[:-1]), logits.shape[-1]
        rows = logits.reshape(-1, V)
        hidden = logits

        def chunk_logits(lo, hi):
            return rows[lo:hi]
    if shard is not None:
        return _vocab_parallel_topk(chunk_logits, rows.shape[0], lead, V, k, temperature,
                                    chunk_bytes, shard, hidden)
    check_k(k, V)
    n = rows.shape[0]
    dt = ch.compute_dtype(hidden)
    lp = torch.empty(n, k, dtype=dt, device=hidden.device)
    ids = torch.empty(n, k, dtype=torch.int64, device=hidden.device)
    step = max(1, chunk_bytes // (2 * 4 * V))  # the fp32 chunk and topk's temporaries
    with ch.no_autocast(hidden.device):
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            lp[lo:hi], ids[lo:hi] = _topk_rows(chunk_logits(lo, hi), k, temperature)
    return lp.view(*lead, k), ids.view(*lead, k)


def _vocab_parallel_topk(chunk_logits, n, lead, V, k, temperature, chunk_bytes, shard, hidden):
    """``teacher_topk`` over a vocabulary slice: each chunk's local top-k and (max, sum-exp),
    then the group's lse and top-k once for all rows."""
    check_k(k, shard.vocab or k)
    dt = ch.compute_dtype(hidden)
    vals = torch.empty(n, k, dtype=dt, device=hidden.device)
    ids = torch.empty(n, k, dtype=torch.int64, device=hidden.device)
    m = torch.full((n,), float("-inf"), dtype=dt, device=hidden.device)
    s = torch.zeros(n, dtype=dt, device=hidden.device)
    step = max(1, chunk_bytes // (2 * 4 * max(V, 1)))
    with ch.no_autocast(hidden.device):
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            x = chunk_logits(lo, hi).to(dt) / temperature
            vals[lo:hi], ids[lo:hi] = vp.local_topk(x, k, shard.offset)
            if V:
                m[lo:hi] = x.amax(-1)
                s[lo:hi] = (x - torch.where(torch.isfinite(m[lo:hi]), m[lo:hi], 0.0)[:, None]
                            ).exp().sum(-1)
    m_safe = torch.where(torch.isfinite(m), m, 0.0)
    lse = vp.combine_lse(m_safe, s, shard.group)
    top_v, top_i = vp.merge_topk(vals, ids, shard.group)
    return (top_v - lse[:, None]).view(*lead, k), top_i.view(*lead, k)
