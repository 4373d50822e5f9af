"""LM head + a weighted distillation loss (reverse KL, forward KL, JSD, TVD), without (N, V) logits.

    loss = reduce( sum_valid w_t Div_t ),  Div_t between softmax(s_t/tau), s = h_s W^T (+ b)
                                           and softmax(u_t/tau), u = h_t W_t^T (+ b_t)

4 GEMMs in all (docs/api.md, "Hidden states in") for the scalar reductions: for each chunk of
valid tokens

    1. s = h_s @ W.T (+ b),  u = h_t @ W_t.T (+ b_t)               2 GEMMs into fp32 tiles
    2. Div_t per row (the divergence's tile, ``divergences/registry.py``)
    3. the weights w of the chunk's rows (``TokenWeighting``)
    4. w_t dDiv_t/ds_t overwrites the student tile in place: ds
    5. grad_h = ds @ W,  grad_W += ds.T @ h_s,  grad_b += sum_rows ds       2 GEMMs

all in forward, as in Liger's fused linear cross entropy; backward only scales the stored
gradients by the scalar cotangent. (TRL's ChunkedDivergenceFunction recomputes both projections
in backward: 6 GEMMs.) Gradients of W and b accumulate in fp32 across chunks even for bf16
inputs: rounding each chunk's product to bf16 before summing biases training.

The weights come from a :class:`TokenWeighting`. Fixed per-token weights (``token_weights``) are
known before any logit, so chunks may cut sequences anywhere. CORD's weights
(``fused/cord_token_loss.py``) need every D of a sequence for its top-K, so its chunks hold
WHOLE sequences; a sequence longer
than a chunk is cut into pieces done with a provisional weight, and once all its D are known
the rows whose final weight differs get the missing gradient from a recompute of just those
rows (4 small GEMMs).

Logit transforms (Gemma 2 / 3n's ``final_logit_softcapping``, Cohere's ``logit_scale``) are
applied to both tiles right after the GEMMs (``chunked_head.LogitTransform``); step 4's
gradient wrt the transformed logits is then multiplied by the transform's derivative, read
from the student tile before the row math overwrites it (a third tile, with a softcap only).

``reduction="none"`` returns (B, T) w_t Div_t. Its per-token cotangent is unknown in forward,
and grad_W = sum_t g_t w_t (dDiv_t/ds_t)^T h_t cannot be formed without it, so forward computes
Div only (2 GEMMs) and backward recomputes both projections (4 GEMMs): 6 GEMMs in all.
``return_per_token=True`` also returns the detached (B, T) Div at no extra GEMM.

Layout: the weighting protocol and fixed weights, the problem (one call's data), the driver,
the two autograd Functions, input checks, ``run_distill`` (shared with
``fused/cord_token_loss.py``) and the public ``fused_linear_distill_loss``.
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import resolve_impl
from cord_kernels.core.doc import shared_doc
from cord_kernels.core.options import (
    IGNORE_INDEX,
    JSD_BETA,
    LOGIT_SCALE,
    REDUCTION,
    TEMPERATURE,
    LossOptions,
)
from cord_kernels.core.reduction import nonnegative
from cord_kernels.core.validation import (
    check_float,
    check_mask_or_labels,
    check_same_device,
    check_tensor,
    check_token_weights,
)
from cord_kernels.divergences.common import DivParams
from cord_kernels.divergences.registry import make_tile_divergence
from cord_kernels.fused import chunked_head as ch

# ----------------------------------------------------------------------------- weighting


class TokenWeighting(Protocol):
    """Where each valid row's weight w_t comes from (rows in valid-row order, ``pos``)."""

    def plan(self, problem: DistillProblem) -> list[ch.Chunk]:
        """The chunks to walk; a chunk with ``whole=False`` gets provisional weights."""
        ...

    def chunk_weights(self, problem: DistillProblem, d: torch.Tensor, chunk: ch.Chunk
                      ) -> torch.Tensor:
        """(rows of chunk,) weights from the chunk's Div ``d``."""
        ...

    def final_weights(self, problem: DistillProblem, d_all: torch.Tensor) -> torch.Tensor:
        """(n_valid,) weights from every valid row's Div."""
        ...


class FixedWeights:
    """Weights known up front: ``token_weights`` at the valid rows (1 when None)."""

    def __init__(self, token_weights: torch.Tensor | None):
        self.token_weights = token_weights

    def _valid(self, problem: DistillProblem) -> torch.Tensor:
        if self.token_weights is None:
            return torch.ones(problem.n_valid, dtype=torch.float32, device=problem.device)
        return self.token_weights.reshape(-1)[problem.index].float()

    def plan(self, problem):
        n, step = problem.n_valid, problem.max_rows
        return [ch.Chunk(lo, min(lo + step, n), 0, problem.B, True) for lo in range(0, n, step)]

    def chunk_weights(self, problem, d, chunk):
        return self._valid(problem)[chunk.row_lo:chunk.row_hi]

    def final_weights(self, problem, d_all):
        return self._valid(problem)


# ------------------------------------------------------------------------------- problem


def gradient_tile_dtype(head: ch.LMHead, divergence, transform: ch.LogitTransform
                        ) -> torch.dtype | None:
    """The dtype of a separate logits-gradient tile, or None to form the gradient in the fp32
    student tile. The backward kernel rounds on store straight into the backward GEMMs'
    operand dtype (bf16/fp16) when the head multiplies natively in it and nothing is chained
    after the kernel (no logit transform): one fp32 write and a separate cast pass over the
    tile saved (issue 34 B)."""
    if head.native and divergence.grad_into and transform == ch.LogitTransform():
        return head.weight.dtype
    return None


class DistillProblem(ch.HeadProblem):
    """Everything one call needs: flat hidden states, heads, the valid rows and the tiles.

    Rows are addressed two ways: ``pos`` indexes the list of valid rows (sequence-major, so
    each sequence's rows are contiguous), ``index[pos]`` is the flat row id b * T + t.
    """

    def __init__(self, student_hidden, teacher_hidden, weight, bias, teacher_weight,
                 teacher_bias, mask, params: ch.HeadParams):
        B, T, _ = student_hidden.shape
        self.B, self.T = B, T
        self.mask = mask
        self.transform = params.transform
        self.teacher_transform = params.teacher_transform
        # A softcap's dt/dz needs a third tile (see ``grad_factor``).
        super().__init__(student_hidden, weight, bias, params.operands[0],
                         mask.reshape(-1).nonzero().squeeze(1),
                         3 if self.transform.needs_factor_tile else 2,
                         ch.chunk_budget(params.opts.chunk_bytes, student_hidden.device))
        self.ht = teacher_hidden.detach().reshape(B * T, teacher_hidden.shape[-1])
        if teacher_weight is None:
            self.teacher_head = self.head
        else:
            self.teacher_head = ch.LMHead(
                teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach(),
                params.operands[1], self.dtype)
        self.divergence = make_tile_divergence(
            params.opts.divergence, params.impl,
            DivParams(params.opts.temperature, params.opts.jsd_beta), params.opts.process_group)
        self.grad_dtype = gradient_tile_dtype(self.head, self.divergence, self.transform)
        if self.grad_dtype is not None:  # the budget holds the gradient tile too
            self.max_rows = ch.rows_per_chunk(self.chunk_bytes, self.V, self.n_tiles,
                                              self.dtype, self.grad_dtype)
        self.max_rows = ch.balanced_rows(self.n_valid, self.max_rows)
        if params.opts.process_group is not None:
            self.max_rows = vp.same_chunks(self.max_rows, params.opts.process_group,
                                           self.device)
        self._tiles: torch.Tensor | None = None
        self._grad_tile: torch.Tensor | None = None
        # (n_valid,) the student's entropy per valid row, filled by ``weighted_sum``.
        self.entropy = torch.zeros(self.n_valid, dtype=torch.float32, device=self.device) \
            if params.want_entropy else None

    @functools.cached_property
    def counts(self) -> list[int]:
        """Valid rows per sequence: a host sync, paid only by a weighting that plans by
        sequence (CORD's whole-sequence chunks); the valid rows themselves (``index``) are the
        call's one other sync."""
        return self.mask.sum(1).tolist()

    def tiles(self, n: int) -> tuple[torch.Tensor, ...]:
        """``n_tiles`` (n, V) tiles, views of one buffer allocated once per call."""
        if self._tiles is None or self._tiles.shape[1] < n:
            rows = min(self.max_rows, max(n, self.n_valid))
            self._tiles = torch.empty(self.n_tiles, rows, self.V, dtype=self.dtype,
                                      device=self.device)
        return tuple(t[:n] for t in self._tiles)

    def grad_tile(self, n: int) -> torch.Tensor:
        """The (n, V) tile in ``grad_dtype`` the backward kernel writes, allocated once."""
        if self._grad_tile is None or self._grad_tile.shape[0] < n:
            rows = min(self.max_rows, max(n, self.n_valid))
            self._grad_tile = torch.empty(rows, self.V, dtype=self.grad_dtype,
                                          device=self.device)
        return self._grad_tile[:n]

    def logits_grad(self, s, u, state, g: torch.Tensor, factor: torch.Tensor | None):
        """(dlogits, row_scale) with diag(row_scale) @ dlogits = diag(g) dDiv/dz on the chunk
        (row_scale None: dlogits holds it): in the gradient tile when there is one, else in
        s, chained through the transform's derivative."""
        if self.grad_dtype is not None:
            out = self.grad_tile(s.shape[0])
            return out, self.divergence.write_grad(s, u, state, g, out)
        row_scale = self.divergence.write_grad(s, u, state, g)  # s <- g dDiv/dt
        self.transform.chain_(s, factor)  # dDiv/dt -> dDiv/dz
        return s, row_scale

    def release(self) -> None:
        self._tiles = self._grad_tile = None

    def entropy_sum(self) -> torch.Tensor:
        """The student's entropy summed over the valid rows (0 unless asked for)."""
        if self.entropy is None:
            return torch.zeros((), dtype=torch.float32, device=self.device)
        return self.entropy.sum()

    def logits(self, index: torch.Tensor):
        """Student and teacher logits tiles (n, V) of the given flat row ids, plus the student
        hidden rows (n, H) for the weight gradient."""
        s, u = self.tiles(index.numel())[:2]
        h_s = self.head.rows(self.hs, index)
        self.head.project(h_s, s)
        self.teacher_head.project(self.teacher_head.rows(self.ht, index), u)
        return self.transform.apply_(s), self.teacher_transform.apply_(u), h_s

    def grad_factor(self, s: torch.Tensor) -> torch.Tensor | None:
        """dt/dz of the transform at the student tile ``s`` (in the third tile), or None when
        it is one number; taken before the divergence's row math overwrites ``s``."""
        return self.transform.grad_factor(s, self.tiles(s.shape[0])[2]) \
            if self.transform.needs_factor_tile else None

    def dense(self, values: torch.Tensor, seq_lo: int = 0, seq_hi: int | None = None,
              pos_lo: int = 0, pos_hi: int | None = None) -> torch.Tensor:
        """Scatters per-row values of valid rows ``[pos_lo, pos_hi)`` into (seqs, T) fp32."""
        seq_hi = self.B if seq_hi is None else seq_hi
        pos_hi = self.n_valid if pos_hi is None else pos_hi
        out = torch.zeros((seq_hi - seq_lo) * self.T, dtype=torch.float32, device=self.device)
        out[self.index[pos_lo:pos_hi] - seq_lo * self.T] = values.float()
        return out.view(seq_hi - seq_lo, self.T)

    def div_rows(self) -> torch.Tensor:
        """Div of every valid row, in chunks, without gradients (2 GEMMs)."""
        d = torch.empty(self.n_valid, dtype=torch.float32, device=self.device)
        for lo, hi in self.spans():
            s, u, _ = self.logits(self.index[lo:hi])
            d[lo:hi] = nonnegative(self.divergence.stats(s, u, want_grad=False).d)
        return d

    def backprop_rows(self, pos: torch.Tensor | None, g: torch.Tensor, grads: ch.Grads) -> None:
        """Adds the gradient of sum_rows g * Div over the valid rows at positions ``pos``
        (distinct; None: all of them, g then covering every valid row) in 4 GEMMs."""
        for lo, hi in self.spans(None if pos is None else pos.numel()):
            rows = slice(lo, hi) if pos is None else pos[lo:hi]
            s, u, h_s = self.logits(self.index[rows])
            factor = self.grad_factor(s)
            state = self.divergence.stats(s, u)
            dlogits, row_scale = self.logits_grad(s, u, state, g[lo:hi].float(), factor)
            self.head.backprop(dlogits, h_s, row_scale, rows, grads)


def _head_needs(needs_input_grad) -> tuple[bool, bool, bool]:
    """(hidden, weight, bias) of the Functions' inputs (student_hidden, teacher_hidden, weight,
    bias, ...)."""
    return needs_input_grad[0], needs_input_grad[2], needs_input_grad[3]


# -------------------------------------------------------------------------------- driver


def weighted_sum(problem: DistillProblem, weighting: TokenWeighting, grads: ch.Grads | None):
    """sum_t w_t Div_t over valid rows, and (if ``grads``) its gradients, in 4 GEMMs.

    Returns (total, d, w): the fp32 scalar and the per-valid-row Div and final weights.
    """
    n = problem.n_valid
    d_all = torch.zeros(n, dtype=torch.float32, device=problem.device)
    w_applied = torch.zeros_like(d_all)  # the weight each row's gradient was formed with
    provisional = torch.zeros(n, dtype=torch.bool, device=problem.device)
    plan = weighting.plan(problem)
    for c in plan:
        s, u, h_s = problem.logits(problem.index[c.row_lo:c.row_hi])
        factor = None if grads is None else problem.grad_factor(s)
        state = problem.divergence.stats(s, u, want_grad=grads is not None,
                                         want_entropy=problem.entropy is not None)
        d = nonnegative(state.d.float())  # the gradient was formed from state, unclamped
        d_all[c.row_lo:c.row_hi] = d
        if problem.entropy is not None:
            problem.entropy[c.row_lo:c.row_hi] = state.entropy
        w = weighting.chunk_weights(problem, d, c)
        if not c.whole:
            provisional[c.row_lo:c.row_hi] = True
        w_applied[c.row_lo:c.row_hi] = w
        if grads is not None:
            dlogits, row_scale = problem.logits_grad(s, u, state, w, factor)
            problem.head.backprop(dlogits, h_s, row_scale, slice(c.row_lo, c.row_hi), grads)
    w_all = weighting.final_weights(problem, d_all)
    if grads is not None and not all(c.whole for c in plan):
        # Rows whose gradient was formed with a provisional weight get the difference.
        delta = torch.where(provisional, w_all - w_applied, 0.0)
        fix = delta.nonzero().squeeze(1)
        if fix.numel():
            problem.backprop_rows(fix, delta[fix], grads)
    problem.release()
    return (w_all * d_all).sum(), d_all, w_all


def head_grads(grads: ch.Grads, problem: DistillProblem, hidden, weight, bias):
    """The (hidden, weight, bias) gradients in their inputs' shapes and dtypes."""
    gw = grads.weight_or_zeros()
    return (grads.hidden_for(problem.index, hidden.shape, hidden.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if grads.bias is None else grads.bias.to(bias.dtype))


class FusedDistillSumFunction(torch.autograd.Function):
    """(sum_t w_t Div_t, detached (B, T) Div, detached sum over valid rows of the student's
    entropy: 0 unless ``params.want_entropy``, TRL's logged entropy) from hidden states;
    gradients formed in forward (4 GEMMs), scaled by the cotangent in backward."""

    @staticmethod
    def forward(ctx, student_hidden, teacher_hidden, weight, bias, teacher_weight, teacher_bias,
                mask, weighting: TokenWeighting, params: ch.HeadParams):
        with ch.no_autocast(student_hidden.device):
            problem = DistillProblem(student_hidden, teacher_hidden, weight, bias,
                                     teacher_weight, teacher_bias, mask, params)
            grads = problem.grads(*_head_needs(ctx.needs_input_grad))
            total, d, _ = weighted_sum(problem, weighting, grads)
            vp.reduce_hidden_grad_(grads.hidden, params.opts)
        ch.stash_grads(ctx, grads, problem.index, student_hidden, weight, bias)
        per_token, entropy = problem.dense(d), problem.entropy_sum()
        ctx.mark_non_differentiable(per_token, entropy)
        return total, per_token, entropy

    @staticmethod
    def backward(ctx, grad_total, _grad_per_token, _grad_entropy):
        gh, gw, gb = ch.scaled_grads(ctx, grad_total)
        return gh, None, gw, gb, None, None, None, None, None


class FusedDistillPerTokenFunction(torch.autograd.Function):
    """((B, T) w_t Div_t, detached (B, T) Div) from hidden states: Div in forward (2 GEMMs),
    gradients in backward by recomputing both projections (4 GEMMs), since the per-token
    cotangent weighs grad_W."""

    @staticmethod
    def forward(ctx, student_hidden, teacher_hidden, weight, bias, teacher_weight, teacher_bias,
                mask, weighting: TokenWeighting, params: ch.HeadParams):
        tensors = (student_hidden, teacher_hidden, weight, bias, teacher_weight, teacher_bias,
                   mask)
        with ch.no_autocast(student_hidden.device):
            problem = DistillProblem(*tensors, params)
            d = problem.div_rows()
            w = weighting.final_weights(problem, d)
            problem.release()
        ctx.save_for_backward(*tensors, w)
        ctx.params = params
        per_token = problem.dense(d)
        ctx.mark_non_differentiable(per_token)
        return problem.dense(w * d), per_token

    @staticmethod
    def backward(ctx, grad_out, _grad_per_token):
        sh, th, weight, bias, tw, tb, mask, w = ctx.saved_tensors
        with ch.no_autocast(sh.device):
            problem = DistillProblem(sh, th, weight, bias, tw, tb, mask, ctx.params)
            grads = problem.grads(*_head_needs(ctx.needs_input_grad))
            g = grad_out.reshape(-1).float()[problem.index] * w
            problem.backprop_rows(None, g, grads)
            problem.release()
            vp.reduce_hidden_grad_(grads.hidden, ctx.params.opts)
        gh, gw, gb = head_grads(grads, problem, sh, weight, bias)
        return gh, None, gw, gb, None, None, None, None, None


# -------------------------------------------------------------------------------- checks


def check_distill_inputs(student_hidden, teacher_hidden, weight, bias, teacher_weight,
                         teacher_bias, mask, labels=None,
                         ignore_index=IGNORE_INDEX) -> torch.Tensor:
    """Checks the tensors of a fused-linear distillation loss; returns the mask as bool (from
    ``mask`` or from ``labels != ignore_index``)."""
    check_tensor("student_hidden", student_hidden, ndim=3)
    check_float("student_hidden", student_hidden)
    check_tensor("teacher_hidden", teacher_hidden, ndim=3)
    check_float("teacher_hidden", teacher_hidden)
    if teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(
            f"teacher_hidden must have the (B, T) = {tuple(student_hidden.shape[:2])} of "
            f"student_hidden, got shape {tuple(teacher_hidden.shape)}"
        )
    ch.check_head(weight, bias, student_hidden)
    if teacher_weight is None:
        if teacher_bias is not None:
            raise ValueError("teacher_bias needs teacher_weight (without a teacher head the "
                             "teacher uses weight and bias)")
        if teacher_hidden.shape[-1] != student_hidden.shape[-1]:
            raise ValueError(
                f"teacher_hidden has hidden size {teacher_hidden.shape[-1]} but weight has "
                f"shape (V, H) = {tuple(weight.shape)}; pass teacher_weight for a teacher "
                "with its own head"
            )
        check_same_device(("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden))
    else:
        ch.check_head(teacher_weight, teacher_bias, teacher_hidden,
                   names=("teacher_weight", "teacher_bias", "teacher_hidden"))
        if teacher_weight.shape[0] != weight.shape[0]:
            raise ValueError(
                f"vocabulary mismatch: weight has V={weight.shape[0]} but teacher_weight has "
                f"V={teacher_weight.shape[0]}"
            )
        check_same_device(("weight", weight), ("teacher_weight", teacher_weight))
    mask = check_mask_or_labels(mask, labels, ignore_index, tuple(student_hidden.shape[:2]),
                                like="student_hidden")
    check_same_device(("student_hidden", student_hidden), ("mask", mask))
    return mask


# ---------------------------------------------------------------------------- public API


def distill_sums(tensors: tuple, weighting: TokenWeighting, params: ch.HeadParams):
    """(sum_t w_t Div_t, detached (B, T) Div, detached entropy sum) of the checked ``tensors``
    (student_hidden, teacher_hidden, weight, bias, teacher_weight, teacher_bias, mask; the
    teacher's detached): :class:`FusedDistillSumFunction` when a student tensor needs a
    gradient (4 GEMMs), else the 2 projection GEMMs. Shared by ``run_distill`` and the TRL
    drop-in (``integrations/trl.py``)."""
    student_hidden, _, weight, bias = tensors[:4]
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (student_hidden, weight, bias)):
        return FusedDistillSumFunction.apply(*tensors, weighting, params)
    with ch.no_autocast(student_hidden.device):  # evaluation
        problem = DistillProblem(*tensors, params)
        total, d, _ = weighted_sum(problem, weighting, None)
    return total, problem.dense(d), problem.entropy_sum()


def run_distill(student_hidden, teacher_hidden, weight, mask, bias, teacher_weight,
                teacher_bias, weighting: TokenWeighting, opts: LossOptions):
    """The checked call shared by ``fused_linear_distill_loss`` and the CORD loss."""
    if vp.is_parallel(opts.process_group, weight, teacher_weight):
        local, opts = vp.unwrap_head_call(
            opts, {"weight": weight, "bias": bias, "teacher_weight": teacher_weight,
                   "teacher_bias": teacher_bias},
            {"student_hidden": student_hidden, "teacher_hidden": teacher_hidden})
        student_hidden, teacher_hidden = local["student_hidden"], local["teacher_hidden"]
        weight, bias = local["weight"], local.get("bias")
        teacher_weight, teacher_bias = local.get("teacher_weight"), local.get("teacher_bias")
    impl = resolve_impl(opts.impl, student_hidden, weight)
    t_hidden = teacher_hidden.detach()
    t_weight = None if teacher_weight is None else teacher_weight.detach()
    operands = (ch.operand_dtype(student_hidden, weight),
                ch.operand_dtype(t_hidden, weight if t_weight is None else t_weight))
    params = ch.HeadParams(opts, impl, operands)
    tensors = (student_hidden, t_hidden, weight, bias, t_weight,
               None if teacher_bias is None else teacher_bias.detach(), mask)
    if opts.reduction == "none":
        loss, per_token = FusedDistillPerTokenFunction.apply(*tensors, weighting, params)
    else:
        total, per_token, _ = distill_sums(tensors, weighting, params)
        loss = opts.reduce_total(total, mask)
    return (loss, per_token) if opts.return_per_token else loss


# Spelled out on purpose, as docs/api.md's "Hidden states in" table fixes it
# (tests/test_options.py reads it with inspect); LossOptions.check holds its rules and
# defaults. (`duplicates` pairs such signatures.)
@shared_doc
def fused_linear_distill_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    divergence: str = "reverse_kl",
    jsd_beta: float = JSD_BETA,
    token_weights: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    temperature: float = TEMPERATURE,
    softcap: float | None = None,
    logit_scale: float = LOGIT_SCALE,
    reduction: str = REDUCTION,
    num_items_in_batch: int | torch.Tensor | None = None,
    return_per_token: bool = False,
    chunk_bytes: int | None = None,
    impl: str | None = None,
    process_group=None,
    reduce_hidden_grad: bool = True,
):
    """A per-token distillation loss from hidden states and LM heads, never holding the logits.

    Equals, on s = student_hidden @ weight.T (+ bias) and u = teacher_hidden @ W_t.T (+ b_t):

        Div_t = reverse_kl(s_t, u_t) | forward_kl(s_t, u_t) | jsd(s_t, u_t, beta=jsd_beta)
                | tvd(s_t, u_t)
        "batchmean": sum_valid w_t Div_t / B,  "sum": sum_valid w_t Div_t,
        "mean": sum_valid w_t Div_t / sum mask,  "none": (B, T) w_t Div_t (0 where masked)

    Cost: 4 GEMMs of (valid tokens) x H x V for the scalar reductions, all run in forward
    (backward only scales the stored gradients, so the graph is backpropagated once); 3 with a
    frozen head, 2 under ``torch.no_grad()``, 6 for ``reduction="none"``. Masked rows are
    never projected. Memory: the fp32 gradient of ``weight`` and at most ``chunk_bytes`` of
    logits tiles.

    Args:
        student_hidden: (B, T, H_s) final hidden states of the student (gets the gradient).
        teacher_hidden: (B, T, H_t) of the teacher on the same tokens (never gets a gradient).
        weight: (V, H_s) the student's LM head (gets a gradient, accumulated in fp32).
        mask: (B, T) bool (or 0/1 int/float), True at the positions that count.
        {labels}
        divergence: "reverse_kl" (KL(p || q), p the student) | "forward_kl" | "jsd" | "tvd".
        jsd_beta: beta in [0, 1] of the JSD (TRL's convention: 0 is forward KL, 1 reverse KL);
            with another divergence it must stay at its default.
        token_weights: None (1 on valid tokens) or a (B, T) float tensor >= 0 without grad.
        bias: optional (V,) student head bias (gets a gradient).
        teacher_weight, teacher_bias: the teacher's own head (V, H_t) and (V,); default: the
            student's head, detached (then H_t must equal H_s).
        temperature: tau > 0, applied to both sides.
        {logit_transform}
            Both sides get it: a teacher with its own head must have the same transform.
        {reduction}
        {num_items_in_batch}
        return_per_token: also return the detached (B, T) fp32 Div_t, 0 where masked (what a
            trainer logs, without projecting again).
        chunk_bytes: budget for the two fp32 logits tiles of a chunk (default 1 GiB; on a GPU
            with room, a quarter of its free memory up to 8 GiB).
        impl: "triton" (the streaming kernels on each chunk), "torch" or None.
        {process_group_head}

    Returns:
        the loss (fp32 scalar, or (B, T) for "none"); ``(loss, per_token)`` with
        ``return_per_token=True``.

    Example:
        >>> h_s = student(ids, output_hidden_states=True).hidden_states[-1][:, :-1]
        >>> h_t = teacher(ids, output_hidden_states=True).hidden_states[-1][:, :-1]
        >>> loss, div = fused_linear_distill_loss(h_s, h_t, student.lm_head.weight, mask,
        ...     divergence="jsd", teacher_weight=teacher.lm_head.weight, return_per_token=True)
        >>> loss.backward()
    """
    opts = LossOptions.check(ignore_index=ignore_index, divergence=divergence,
                             jsd_beta=jsd_beta, temperature=temperature, softcap=softcap,
                             logit_scale=logit_scale, reduction=reduction,
                             num_items_in_batch=num_items_in_batch,
                             return_per_token=return_per_token, chunk_bytes=chunk_bytes,
                             impl=impl, process_group=process_group,
                             reduce_hidden_grad=reduce_hidden_grad)
    mask = check_distill_inputs(student_hidden, teacher_hidden, weight, bias, teacher_weight,
                                teacher_bias, mask, labels, opts.ignore_index)
    token_weights = check_token_weights(token_weights, mask)
    return run_distill(student_hidden, teacher_hidden, weight, mask, bias, teacher_weight,
                       teacher_bias, FixedWeights(token_weights), opts)
