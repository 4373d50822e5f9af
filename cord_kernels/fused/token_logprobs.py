"""LM head + token log-probs, log softmax((h @ W.T + b) / tau)[label], without (N, V) logits.

For GRPO (log p(y | x) of each rollout) and SFT. The cotangent is per token, so forward
projects each chunk once and keeps lse per row (1 GEMM); backward recomputes the chunk's
logits and turns them into the gradient in place (3 GEMMs): 4 GEMMs in all. Rows whose label
is ``ignore_index`` are never projected.

The per-row math follows :class:`TileLogprobs`, in torch (row blocks, in
``core/torch_path.py``) or through the streaming kernels of ``logits/token_logprobs.py``.

Layout: the row-math protocol and its Triton version (the torch one is in ``core/torch_path.py``),
the problem, the autograd Function, the public function.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import Impl, resolve_impl
from cord_kernels.core.options import (
    IGNORE_INDEX,
    LOGIT_SCALE,
    TEMPERATURE,
    LossOptions,
)
from cord_kernels.core.torch_path import TorchTileLogprobs
from cord_kernels.core.validation import (
    check_float,
    check_labels,
    check_same_device,
    check_tensor,
)
from cord_kernels.fused import chunked_head as ch
from cord_kernels.logits.token_logprobs import logprob_bwd, logprob_fwd


class TileLogprobs(Protocol):
    """Per-row math of the log-prob loss on an (n, V) logits tile ``x`` of one chunk."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(label), lse) per row; x may be scaled in place."""
        ...

    def write_grad(self, x: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor,
                   g: torch.Tensor) -> torch.Tensor | None:
        """Turns x into g dlogp/dx up to the returned row scale (None: x holds it)."""
        ...


class TritonTileLogprobs:
    """The same contract through the streaming kernels of ``logits/token_logprobs.py``."""

    def __init__(self, temperature: float, ignore_index: int):
        self.temperature = temperature
        self.ignore_index = ignore_index

    def forward(self, x, labels):
        return logprob_fwd(x, labels, self.temperature, self.ignore_index)

    def write_grad(self, x, labels, lse, g) -> None:
        logprob_bwd(x, labels, lse, g, self.temperature, self.ignore_index, x)
        return None


# ------------------------------------------------------------------------------- problem


class _LogprobProblem(ch.HeadProblem):
    """One call of the log-prob loss: flat hidden states, the head, the rows whose label is
    not ``ignore_index`` (``index``, found with one host sync) and one (chunk, V) tile."""

    def __init__(self, hidden, weight, bias, labels, params: ch.HeadParams):
        self.params = params
        opts = params.opts
        self.logprobs: TileLogprobs = TritonTileLogprobs(opts.temperature, opts.ignore_index) \
            if params.impl is Impl.TRITON else TorchTileLogprobs(opts.temperature)
        if opts.process_group is not None:  # vocabulary parallel: the torch math on slices
            self.logprobs = vp.VocabParallelTileLogprobs(opts.temperature, opts.vocab_offset,
                                                         opts.process_group)
        self.transform = params.transform
        flat = labels.reshape(-1)
        index = (flat != opts.ignore_index).nonzero().squeeze(1)
        self.labels = flat[index].long()
        # A softcap's dt/dz takes a second tile in backward (see ``grad_factor``).
        super().__init__(hidden, weight, bias, params.operands[0], index,
                         2 if self.transform.needs_factor_tile else 1, opts.chunk_bytes)
        if opts.process_group is not None:
            self.max_rows = vp.same_chunks(self.max_rows, opts.process_group, self.device)
        buf_rows = min(self.max_rows, self.n_valid)
        self.tile = torch.empty(buf_rows, self.V, dtype=self.dtype, device=self.device)
        self._factor: torch.Tensor | None = None

    def chunks(self):
        """Yields (lo, hi, flat ids, hidden rows, logits tile) per chunk of valid rows."""
        for lo, hi in self.spans():
            idx = self.index[lo:hi]
            h = self.head.rows(self.hs, idx)
            x = self.transform.apply_(self.head.project(h, self.tile[:hi - lo]))
            yield lo, hi, idx, h, x

    def grad_factor(self, x: torch.Tensor) -> torch.Tensor | None:
        """dt/dz of the transform at the tile ``x`` (in a second tile, allocated by backward
        only), or None when it is one number; taken before the gradient overwrites ``x``."""
        if not self.transform.needs_factor_tile:
            return None
        if self._factor is None:
            self._factor = torch.empty_like(self.tile)
        return self.transform.grad_factor(x, self._factor[:x.shape[0]])


class FusedTokenLogprobsFunction(torch.autograd.Function):
    """Per-token log p(label) from hidden states: 1 GEMM per chunk in forward, 3 in backward
    (the logits are recomputed; only lse per row is kept)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, params: ch.HeadParams):
        problem = _LogprobProblem(hidden, weight, bias, labels, params)
        out = torch.zeros(labels.numel(), dtype=torch.float32, device=hidden.device)
        lse_parts = []
        with ch.no_autocast(hidden.device):
            for lo, hi, idx, _, x in problem.chunks():
                logp, lse = problem.logprobs.forward(x, problem.labels[lo:hi])
                out[idx] = logp.float()
                lse_parts.append(lse)
        lse = torch.cat(lse_parts) if lse_parts else None
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.params = params
        return out.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        problem = _LogprobProblem(hidden, weight, bias, labels, ctx.params)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grads = problem.grads(need_h, need_w, need_b)
        g_all = grad_out.reshape(-1).float()
        with ch.no_autocast(hidden.device):
            for lo, hi, idx, h, x in problem.chunks():
                factor = problem.grad_factor(x)
                row_scale = problem.logprobs.write_grad(x, problem.labels[lo:hi], lse[lo:hi],
                                                        g_all[idx])
                problem.transform.chain_(x, factor)  # dlogp/dt -> dlogp/dz
                problem.head.backprop(x, h, row_scale, slice(lo, hi), grads)
        vp.reduce_hidden_grad_(grads.hidden, ctx.params.opts)
        gw = grads.weight_or_zeros()
        return (
            grads.hidden_for(problem.index, hidden.shape, hidden.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if grads.bias is None else grads.bias.to(bias.dtype),
            None,
            None,
        )


# ---------------------------------------------------------------------------- public API


# Spelled out on purpose, as docs/api.md's "Hidden states in" table fixes it
# (tests/test_options.py reads it with inspect); LossOptions.check holds its rules and
# defaults. (`duplicates` pairs such signatures.)
def fused_linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = TEMPERATURE,
    softcap: float | None = None,
    logit_scale: float = LOGIT_SCALE,
    ignore_index: int = IGNORE_INDEX,
    chunk_bytes: int | None = None,
    impl: str | None = None,
    process_group=None,
    vocab_offset: int | None = None,
    reduce_hidden_grad: bool = True,
) -> torch.Tensor:
    """log softmax((hidden @ weight.T + bias) / tau)[label] per position, without (N, V) logits.

    For GRPO (log p(y | x) of each rollout) and SFT. The cotangent is per token, so forward
    projects each chunk once and keeps only lse per row (1 GEMM); backward recomputes each
    chunk's logits, writes the gradient (1/tau)(1[v = label] - p_v) into them in place and
    backpropagates it through the head (3 GEMMs): 4 GEMMs of (valid tokens) x H x V in all.
    ``ignore_index`` positions are never projected.

    Args:
        hidden: (..., H) final hidden states (gets the gradient).
        weight: (V, H) LM head (gets a gradient, accumulated in fp32); bias: optional (V,).
        labels: (...) integer token ids in [0, V), or ``ignore_index`` (gives 0, no gradient).
        temperature: tau > 0.
        softcap, logit_scale: the model's logit transform (Gemma 2 / 3n's
            ``final_logit_softcapping``, Cohere's ``logit_scale``), applied inside the stream:
            t = logit_scale * z, then softcap * tanh(t / softcap). Without them such a model's
            log-probs are wrong.
        chunk_bytes: budget for the fp32 logits tile (default 1 GiB: ``chunk_bytes // (4 V)``
            tokens per chunk).
        impl: "triton", "torch" or None.
        process_group, vocab_offset, reduce_hidden_grad: vocabulary parallel, as
            :func:`fused_linear_distill_loss`; ``labels`` stay global ids and
            ``vocab_offset`` is the slice's first id (default: one all-gather of the slice
            sizes). 1 all-reduce to agree on the chunks, 2 per chunk (in forward and again
            in backward), 1 of the hidden-state gradient.

    Returns:
        (...) fp32 log-probabilities, differentiable wrt hidden, weight and bias.

    Example:
        >>> h = model(input_ids).hidden_states[-1][:, :-1]            # (B, T-1, H)
        >>> lp = fused_linear_token_logprobs(h, model.lm_head.weight, input_ids[:, 1:])
        >>> seq_logp = (lp * completion_mask).sum(-1)                  # log p(y | x)
    """
    check_tensor("hidden", hidden, min_ndim=2)
    check_float("hidden", hidden)
    ch.check_head(weight, bias, hidden, names=("weight", "bias", "hidden"))
    check_labels(labels, tuple(hidden.shape[:-1]))
    check_same_device(("hidden", hidden), ("labels", labels))
    opts = LossOptions.check(temperature=temperature, ignore_index=ignore_index,
                             chunk_bytes=chunk_bytes, softcap=softcap, logit_scale=logit_scale,
                             impl=impl, process_group=process_group,
                             vocab_offset=vocab_offset, reduce_hidden_grad=reduce_hidden_grad)
    ignore_index = opts.ignore_index
    hidden, weight, bias, opts, vocab = vp.id_head_call(opts, hidden, weight, bias)
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= vocab))[valid].any()):
        raise ValueError(f"labels must lie in [0, {vocab}) (the vocabulary of "
                         f"weight) or equal ignore_index={ignore_index}")
    params = ch.HeadParams(opts, resolve_impl(impl, hidden, weight),
                           (ch.operand_dtype(hidden, weight),))
    return FusedTokenLogprobsFunction.apply(hidden, weight, bias, labels, params)
