"""LM head + the sparse-teacher loss, without (N, V) logits: 3 GEMMs, the floor.

    loss = reduce( sum_valid w_t Div_t ),  Div_t as ``sparse_teacher_loss`` on the logits
    t = transform(h W^T (+ b)):  t = logit_scale * z, then softcap * tanh(t / softcap)

The teacher is its top-k log-probs, so there is no teacher projection: for each chunk of valid
rows (those with at least one used slot)

    1. tile = transform(h @ W.T (+ b))                        1 GEMM into an fp32 tile
    2. lse per row, the k student log-probs a, Div on the support and dDiv/da: on the Triton
       path all in ``support_loss.py``'s forward kernel; in torch (and vocabulary parallel)
       ``support_logprobs`` / ``vocab_parallel`` stats, then (n, k) autograd
       (``support_divergence``)
    3. the tile becomes dL/dz: (1/tau)(scatter(w dDiv/da) - p G) times dt/dz of the
       transform (Triton: ``support_loss.py``'s backward kernel, in place)
    4. grad_h = tile @ W, grad_W += tile.T @ h, grad_b += column sums      2 GEMMs

all in forward for the scalar reductions (backward scales the stored gradients by the
cotangent, so the graph is backpropagated once). ``reduction="none"``: forward projects once
for Div, backward recomputes (1 + 2 GEMMs). Chunks hold at most ``chunk_bytes`` of fp32 tile.

Logit transforms: Gemma 2 / Gemma 3n (``final_logit_softcapping``) and Cohere (``logit_scale``)
apply them between the head and the softmax; passing ``softcap=`` / ``logit_scale=`` applies
them inside the stream, so the loss matches the model's own logits.

Layout: row math on a tile, the targets (where a chunk's support and teacher log-probs come
from: ``StoredTopK`` here, the student's own top-k in ``fused_student_topk.py``), the problem
and its chunk driver, the two autograd Functions, ``run_sparse_head`` (shared by both fused
sparse losses) and the public function.
"""

from __future__ import annotations

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import Impl, resolve_impl
from cord_kernels.core.options import (
    JSD_BETA,
    LOGIT_SCALE,
    REDUCTION,
    TAIL,
    TEMPERATURE,
    LossOptions,
)
from cord_kernels.core.torch_path import torch_dense_grad, torch_support_stats
from cord_kernels.core.validation import (
    check_float,
    check_mask,
    check_tensor,
    check_token_weights,
)
from cord_kernels.fused import chunked_head as ch
from cord_kernels.fused.distill import head_grads
from cord_kernels.sparse.inputs import check_topk_pair, raise_on_bad_ids, raise_pending
from cord_kernels.sparse.support_divergence import support_divergence
from cord_kernels.sparse.support_logprobs import add_sparse_terms, support_fwd
from cord_kernels.sparse.support_loss import SparseLossParams, sparse_bwd, sparse_fwd

# ------------------------------------------------------------------ row math on a tile


class StoredTopK:
    """The targets of ``fused_linear_sparse_teacher_loss``: the teacher's given top-k. Rows
    to project: valid positions with at least one used slot."""

    n_tiles = 1
    all_slots = False  # the support: the slots whose teacher log-prob is > -inf

    def __init__(self, lp, ids, valid):
        k = ids.shape[-1]
        self.lp, self.ids, self.valid = (t.reshape(-1, k) for t in (lp.detach(), ids, valid))
        # The Triton chunks' id error flag (their kernels check the ids): 1 if an id at a
        # used slot lies outside the vocabulary; read by the public function.
        self.id_flag = None

    def projected_rows(self) -> torch.Tensor:
        return self.valid.any(1)

    def select(self, problem: SparseHeadProblem) -> None:
        """Narrows the targets to the problem's projected rows (again for each problem)."""
        i = problem.index
        self.rows = (self.ids[i], self.valid[i], self.lp[i].to(problem.dtype))
        if self.id_flag is None:
            self.id_flag = torch.zeros(1, dtype=torch.int32, device=problem.device)

    def chunk(self, problem: SparseHeadProblem, lo: int, hi: int, tile: torch.Tensor):
        """(ids, valid, teacher log-probs) of projected rows [lo, hi), each (n, k)."""
        return tuple(t[lo:hi] for t in self.rows)


def support_stats(tile, ids, valid, tau, impl: Impl):
    """(a (n, k), lse (n,), lse pair (n, 2) or None) of a logits tile on the given ids."""
    if impl is Impl.TRITON:
        a, lse2 = support_fwd(tile, ids, valid, tau)
        return a, lse2.sum(1), lse2
    a, lse = torch_support_stats(tile, ids, valid, tau)
    return a, lse, None


class SparseHeadProblem(ch.HeadProblem):
    """One call's data: flat hidden rows, the head, the targets (where the support and the
    teacher's log-probs on it come from), the projected rows and the tile buffer."""

    def __init__(self, hidden, weight, bias, targets, params: ch.HeadParams):
        self.params = params
        self.targets = targets
        # The one host sync: which rows are projected.
        super().__init__(hidden, weight, bias, params.operands[0],
                         targets.projected_rows().nonzero().squeeze(1), targets.n_tiles,
                         params.opts.chunk_bytes)
        if params.opts.process_group is not None:
            self.max_rows = vp.same_chunks(self.max_rows, params.opts.process_group,
                                           self.device)
        targets.select(self)
        self._tile = None
        self._rows_on = None  # all True: every projected row is valid (the Triton chunks)

    def tile(self, n: int) -> torch.Tensor:
        if self._tile is None:
            rows = min(self.max_rows, max(n, self.n_valid))
            self._tile = torch.empty(rows, self.V, dtype=self.dtype, device=self.device)
        return self._tile[:n]

    def transform(self, tile: torch.Tensor) -> torch.Tensor:
        """The model's logit transform, in place: scale, then softcap."""
        return self.params.transform.apply_(tile)

    def logits(self, lo: int, hi: int):
        """The transformed logits tile of projected rows [lo, hi) and their hidden rows."""
        tile = self.tile(hi - lo)
        h = self.head.rows(self.hs, self.index[lo:hi])
        self.head.project(h, tile)
        return self.transform(tile), h

    def chunk(self, lo: int, hi: int, row_weights: torch.Tensor | None, grads: ch.Grads | None):
        """Div of projected rows [lo, hi); with ``grads``, adds the gradient of
        sum_rows row_weights * Div through the head (2 GEMMs)."""
        p, opts = self.params, self.params.opts
        tau = opts.temperature
        tile, h = self.logits(lo, hi)
        ids, valid, b = self.targets.chunk(self, lo, hi, tile)
        if opts.process_group is None and p.impl is Impl.TRITON:
            return self._triton_chunk(tile, h, ids, b, lo, hi, row_weights, grads)
        if opts.process_group is not None:  # vocabulary parallel: this rank's ids are local
            a, lse, valid_here, ids_here = vp.support_stats(
                tile, ids, valid, opts.vocab_offset, tau, opts.process_group)
        else:
            a, lse = torch_support_stats(tile, ids, valid, tau)
            valid_here, ids_here = valid, ids
        with torch.enable_grad():
            a = a.detach().requires_grad_(grads is not None)
            d = support_divergence(a, b, valid, divergence=opts.divergence, jsd_beta=opts.jsd_beta,
                                   tail=opts.tail)
            if grads is None:
                return d.detach()
            (g,) = torch.autograd.grad((row_weights.to(d.dtype) * d).sum(), a)
        g = torch.where(valid, g, 0.0)
        torch_dense_grad(tile, lse, g.sum(1), tau, tile, opts.logit_scale, opts.softcap)
        add_sparse_terms(tile, ids_here, valid_here, g, a.detach(), lse, tau, opts.logit_scale,
                         opts.softcap)
        self.head.backprop(tile, h, None, slice(lo, hi), grads)
        return d.detach()

    def _triton_chunk(self, tile, h, ids, b, lo: int, hi: int, row_weights, grads):
        """``chunk`` through ``support_loss.py``'s kernels: Div and its gradient terms in the
        forward's epilogue, the tile turned into dL/dz (dense and sparse parts, times dt/dz)
        by the backward kernel in place; no (n, k) torch work. The kernel sets the targets'
        ``id_flag`` (the teacher's ids; the student's own top-k has none) at a bad id."""
        opts = self.params.opts
        if self._rows_on is None:
            self._rows_on = torch.ones(self.max_rows, dtype=torch.bool, device=self.device)
        d, ws, _ = sparse_fwd(tile, b, ids, self._rows_on[:hi - lo],
                              *SparseLossParams(opts.divergence, opts.jsd_beta, opts.tail,
                                                opts.temperature,
                                                all_slots=self.targets.all_slots).fwd_args(),
                              flag=getattr(self.targets, "id_flag", None))
        if grads is None:
            return d
        sparse_bwd(tile, ids, ws, row_weights.float(), opts.temperature, tile,
                   opts.logit_scale, opts.softcap)
        self.head.backprop(tile, h, None, slice(lo, hi), grads)
        return d

    def run(self, row_weights: torch.Tensor | None, grads: ch.Grads | None) -> torch.Tensor:
        """Div of every projected row (n_valid,), and the gradients when ``grads``."""
        d = torch.zeros(self.n_valid, dtype=torch.float32, device=self.device)
        for lo, hi in self.spans():
            w = None if row_weights is None else row_weights[lo:hi]
            d[lo:hi] = self.chunk(lo, hi, w, grads).float()
        self._tile = None
        return d


def _row_weights(problem: SparseHeadProblem, token_weights) -> torch.Tensor:
    if token_weights is None:
        return torch.ones(problem.n_valid, dtype=torch.float32, device=problem.device)
    return token_weights.reshape(-1)[problem.index].float()


class FusedSparseSumFunction(torch.autograd.Function):
    """(sum_t w_t Div_t, detached (B, T) Div); gradients formed in forward (3 GEMMs, 4 when
    the targets project a teacher)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, token_weights, targets, params):
        with ch.no_autocast(hidden.device):
            problem = SparseHeadProblem(hidden, weight, bias, targets, params)
            grads = problem.grads(*ctx.needs_input_grad[:3])
            w = _row_weights(problem, token_weights)
            d = problem.run(w, grads)
            vp.reduce_hidden_grad_(grads.hidden, params.opts)
        ch.stash_grads(ctx, grads, problem.index, hidden, weight, bias)
        per_token = problem.dense(d)
        ctx.mark_non_differentiable(per_token)
        return (w * d).sum(), per_token

    @staticmethod
    def backward(ctx, grad_total, _grad_per_token):
        gh, gw, gb = ch.scaled_grads(ctx, grad_total)
        return gh, gw, gb, None, None, None


class FusedSparsePerTokenFunction(torch.autograd.Function):
    """((B, T) w_t Div_t, detached (B, T) Div): Div in forward (1 GEMM), gradients in backward
    by projecting again (3 GEMMs), since the per-token cotangent weighs grad_W."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, token_weights, targets, params):
        with ch.no_autocast(hidden.device):
            problem = SparseHeadProblem(hidden, weight, bias, targets, params)
            d = problem.run(None, None)
            w = _row_weights(problem, token_weights)
        ctx.save_for_backward(hidden, weight, bias, w)
        ctx.targets, ctx.params = targets, params
        per_token = problem.dense(d)
        ctx.mark_non_differentiable(per_token)
        return problem.dense(w * d), per_token

    @staticmethod
    def backward(ctx, grad_out, _grad_per_token):
        hidden, weight, bias, w = ctx.saved_tensors
        with ch.no_autocast(hidden.device):
            problem = SparseHeadProblem(hidden, weight, bias, ctx.targets, ctx.params)
            grads = problem.grads(*ctx.needs_input_grad[:3])
            problem.run(grad_out.reshape(-1).float()[problem.index] * w, grads)
            vp.reduce_hidden_grad_(grads.hidden, ctx.params.opts)
        gh, gw, gb = head_grads(grads, problem, hidden, weight, bias)
        return gh, gw, gb, None, None, None


# Spelled out on purpose, as docs/api.md "Sparse teachers" lists it (tests/test_options.py reads
# it with inspect); LossOptions.check holds its rules and defaults (`duplicates` pairs these).
def fused_linear_sparse_teacher_loss(
    student_hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    jsd_beta: float = JSD_BETA,
    tail: str = TAIL,
    token_weights: torch.Tensor | None = None,
    temperature: float = TEMPERATURE,
    softcap: float | None = None,
    logit_scale: float = LOGIT_SCALE,
    reduction: str = REDUCTION,
    return_per_token: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_bytes: int | None = None,
    impl: str | None = None,
    process_group=None,
    vocab_offset: int | None = None,
    reduce_hidden_grad: bool = True,
):
    """:func:`sparse_teacher_loss` from hidden states and the LM head, never holding the logits.

    Equals ``sparse_teacher_loss(t, ...)`` with t = logit_scale * (student_hidden @ weight.T
    (+ bias)), then t = softcap * tanh(t / softcap) when ``softcap`` is set (Gemma 2's
    ``final_logit_softcapping``; Cohere's ``logit_scale``). A model with such a transform gives
    wrong losses without these arguments: pass its config's values.

    Cost: 3 GEMMs of (projected rows) x H x V for the scalar reductions (student logits, grad
    wrt hidden, grad wrt weight), all in forward; 1 under ``torch.no_grad()``; 4 for
    ``reduction="none"``. Only valid positions with a used slot are projected. Memory: the fp32
    weight gradient and at most ``chunk_bytes`` (default 1 GiB) of fp32 logits tile.

    Args:
        student_hidden: (B, T, H) final hidden states (gets the gradient).
        weight: (V, H) the LM head (gets a gradient, accumulated in fp32); bias: (V,) or None.
        teacher_topk_logprobs, teacher_topk_ids, mask, divergence, jsd_beta, tail,
        token_weights, temperature, reduction, return_per_token, num_items_in_batch:
            as :func:`sparse_teacher_loss`.
        softcap: None or c > 0: logits c * tanh(t / c), applied after logit_scale.
        logit_scale: > 0, multiplies the head's output.
        chunk_bytes: budget of the fp32 logits tile.
        impl: "triton" (the streaming kernels on each tile), "torch" or None.
        process_group, vocab_offset, reduce_hidden_grad: vocabulary parallel, as
            :func:`fused_linear_distill_loss`; the ids stay global and ``vocab_offset`` is
            the slice's first id (default: one all-gather of the slice sizes). 1 all-reduce
            to agree on the chunks, 2 per chunk, 1 of the hidden-state gradient.

    Example:
        >>> h = student(ids, output_hidden_states=True).hidden_states[-1][:, :-1]
        >>> loss = fused_linear_sparse_teacher_loss(h, student.lm_head.weight,
        ...     batch["topk_logprobs"], batch["topk_token_ids"], completion_mask)
        >>> loss.backward()
    """
    check_tensor("student_hidden", student_hidden, ndim=3)
    check_float("student_hidden", student_hidden)
    ch.check_head(weight, bias, student_hidden)
    B, T, _ = student_hidden.shape
    mask = check_mask(mask, (B, T), like="student_hidden")
    opts = LossOptions.check(divergence=divergence, jsd_beta=jsd_beta, tail=tail,
                             temperature=temperature, softcap=softcap, logit_scale=logit_scale,
                             reduction=reduction, return_per_token=return_per_token,
                             num_items_in_batch=num_items_in_batch, chunk_bytes=chunk_bytes,
                             impl=impl, process_group=process_group,
                             vocab_offset=vocab_offset, reduce_hidden_grad=reduce_hidden_grad)
    student_hidden, weight, bias, opts, vocab = vp.id_head_call(opts, student_hidden, weight,
                                                                bias)
    params = ch.HeadParams(opts, resolve_impl(impl, student_hidden, weight),
                           (ch.operand_dtype(student_hidden, weight),))
    # The Triton chunks check the ids in their kernels (no host sync for it).
    in_kernel = params.impl is Impl.TRITON and opts.process_group is None
    if in_kernel:
        raise_pending()
    valid = check_topk_pair(teacher_topk_logprobs, teacher_topk_ids, (B, T), vocab,
                            mask.to(student_hidden.device), check_ids=not in_kernel)
    token_weights = check_token_weights(token_weights, mask)
    targets = StoredTopK(teacher_topk_logprobs, teacher_topk_ids, valid)
    out = run_sparse_head(student_hidden, weight, bias, token_weights, targets, mask, params)
    if in_kernel and targets.id_flag is not None:
        raise_on_bad_ids(targets.id_flag, "teacher_topk_ids", vocab)
    return out


def run_sparse_head(hidden, weight, bias, token_weights, targets, mask, params):
    """The checked call shared by the fused-linear sparse losses: the autograd Function the
    reduction needs (or no graph under ``torch.no_grad()``), then the reduction."""
    opts = params.opts
    args = (hidden, weight, bias, token_weights, targets, params)
    if opts.reduction == "none":
        weighted, d = FusedSparsePerTokenFunction.apply(*args)
        return (weighted, d) if opts.return_per_token else weighted
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if differentiable:
        total, d = FusedSparseSumFunction.apply(*args)
    else:  # evaluation: the projection GEMM(s) only
        with ch.no_autocast(hidden.device):
            problem = SparseHeadProblem(hidden, weight, bias, targets, params)
            d_rows = problem.run(None, None)
            total = (_row_weights(problem, token_weights) * d_rows).sum()
        d = problem.dense(d_rows)
    return _finish(total, d, mask, opts)


def _finish(total, d, mask, opts: LossOptions):
    """The reduction of sum_t w_t Div_t, as ``reduce_sparse`` does for the logits-in loss."""
    loss = opts.reduce_total(total, mask)
    return (loss, d) if opts.return_per_token else loss
