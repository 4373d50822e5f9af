"""LM head + CORD token loss and LM head + token log-probs, without (N, V) logits.

At 7B scale the logits themselves are the memory problem: 16k rollout tokens times a 156k
vocabulary is 10 GB per fp32 logits tensor, and CORD has two branches. These functions take
hidden states and the LM head and walk the tokens in chunks, so that at most one (chunk, V)
fp32 tile per branch is alive at any time (its size is the caller's ``chunk_bytes``).

CORD token loss, 4 GEMMs in all (SPEC section 3). For each chunk of valid tokens that holds
WHOLE sequences:

    1. s = h_s @ W.T (+ b),  u = h_t @ W_t.T (+ b_t)             2 GEMMs into fp32 tiles
    2. D_t per row (streaming reverse KL)
    3. the CORD weights w of the chunk's sequences (top-K needs every D of a sequence)
    4. w_t dD_t/ds_t overwrites the student tile in place: ds
    5. grad_h = ds @ W,  grad_W += ds.T @ h_s,  grad_b += sum_rows ds      2 GEMMs

All of that happens in forward, as in Liger's fused linear cross entropy; backward only scales
the stored gradients by the scalar cotangent. (TRL's ChunkedDivergenceFunction recomputes both
projections in backward: 6 GEMMs.) Gradients of W and b accumulate in fp32 across chunks even
for bf16 inputs: rounding each chunk's product to bf16 before summing biases training.

A sequence with more valid tokens than a chunk holds is cut into pieces. Each piece is done in
one go with the positional weight alone (w^pos needs only the mask, so the weight is exact for
every row outside the top-K); once all the sequence's D are known, its top-K rows get the
missing ``(alpha - 1) w^pos dD/ds`` from a recompute of just those <= K rows (4 small GEMMs).

``reduction="none"`` returns (B, T) w_t D_t. Its per-token cotangent is unknown in forward, and
grad_W = sum_t g_t w_t (dD_t/ds_t)^T h_t cannot be formed without it, so forward computes D
only (2 GEMMs) and backward recomputes both projections (4 GEMMs): 6 GEMMs in all.

Token log-probs: the cotangent is per token as well, so forward projects each chunk once and
keeps lse per row (1 GEMM); backward recomputes the chunk's logits and turns them into the
gradient in place (3 GEMMs): 4 GEMMs in all.

Only valid rows are projected: positions with ``mask`` False (or ``labels == ignore_index``)
are dropped before the GEMMs, as cut-cross-entropy drops ignored tokens, so padding and
prompt tokens cost nothing and their hidden states may hold anything (even NaN). Finding them
and planning whole-sequence chunks costs one host sync per call, a small price next to the
GEMMs; it also means these functions do not capture into CUDA graphs.

Per-row math: with ``impl="triton"`` the streaming kernels of ``kl.py`` / ``token_logprobs.py``
run on each chunk's tiles, the weighted gradient written into the student tile itself. The
torch path runs the same algorithm on any device; its elementwise math goes through the tiles
in row blocks of ~1.5 MB, so its several passes hit cache instead of memory, forms the
unweighted dD/ds while a block is in cache (D of a row is known as soon as its block is done)
and applies the weights to the (n, H) operands of the gradient GEMMs instead of the (n, V)
tile. On a CPU that math runs on one thread (see ``_row_math_threads``).

Layout: GEMM helpers, per-row math (torch and Triton), chunk planning, the CORD driver and its
two autograd Functions, the log-prob Function, the public functions.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch

from cord_kernels._dispatch import resolve_impl
from cord_kernels._validation import (
    check_float,
    check_labels,
    check_mask,
    check_positive_int,
    check_same_device,
    check_temperature,
    check_tensor,
)
from cord_kernels.cord_token_loss import check_cord_options
from cord_kernels.weights import cord_weights

# Budget for the fp32 logits tiles of one chunk, in bytes (both branches together for the
# CORD loss). 1 GiB holds ~880 tokens at V=152k: enough rows for full-speed GEMMs on a CPU or
# a GPU, and far below the (N, V) logits it replaces (10 GB per branch at N=16k).
DEFAULT_CHUNK_BYTES = 1 << 30

# Row blocks of the torch path's elementwise math hold about this many elements per tensor
# (~1.5 MB of fp32): the two tiles' blocks and their temporaries fit in a 4 MB L2.
_TORCH_BLOCK_ELEMENTS = 384 * 1024

# torch.mm(..., out_dtype=torch.float32) from bf16/fp16 operands (CUDA only, torch >= 2.8).
_HAS_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


# ----------------------------------------------------------------------------- GEMMs


class _LMHead:
    """One linear head ``logits = h @ W.T + b`` evaluated chunk by chunk into fp32 tiles.

    ``weight``: (V, H), ``bias``: (V,) or None. On CUDA with bf16/fp16 operands the GEMMs run
    on the native type with fp32 output (``out_dtype``); elsewhere the operands are upcast to
    the compute dtype (the weight once per call), which matches the reference's
    ``hidden.float() @ weight.float().T`` exactly.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, hidden_dtype, dtype):
        self.dtype = dtype
        self.native = (
            _HAS_MM_OUT_DTYPE
            and weight.is_cuda
            and weight.dtype in (torch.bfloat16, torch.float16)
            and hidden_dtype == weight.dtype
        )
        self.weight = weight if self.native else weight.to(dtype)
        self.bias = None if bias is None else bias.to(dtype)

    def rows(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The hidden states of the given flat row ids, in the GEMM operand dtype."""
        h = hidden.index_select(0, index)
        return h.to(self.weight.dtype if self.native else self.dtype)

    def project(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (n, V) = h (n, H) @ W.T (+ b), in fp32 (fp64 for fp64 inputs)."""
        if self.native:
            torch.mm(h, self.weight.T, out_dtype=torch.float32, out=out)
            if self.bias is not None:
                out.add_(self.bias)
        elif self.bias is not None:
            torch.addmm(self.bias, h, self.weight.T, out=out)
        else:
            torch.mm(h, self.weight.T, out=out)
        return out

    def backprop(
        self,
        dlogits: torch.Tensor,
        h: torch.Tensor,
        row_scale: torch.Tensor | None,
        rows: slice | torch.Tensor,
        grads: _Grads,
    ) -> None:
        """Chain rule of ``diag(row_scale) @ dlogits`` (n, V) through the head (2 GEMMs):
        grads.hidden[rows] += that @ W, grads.weight += that.T @ h, grads.bias += its
        column sums. ``rows``: where the n rows sit in the valid-row list (a slice, or
        distinct positions). ``row_scale`` (n,) or None is applied to the (n, H) operands,
        not to the (n, V) tile, which saves a pass over the tile."""
        d = dlogits.to(self.weight.dtype) if self.native else dlogits
        scale = None if row_scale is None else row_scale.to(self.dtype)[:, None]
        if grads.hidden is not None:
            if self.native:
                gh = torch.mm(d, self.weight, out_dtype=torch.float32)  # (n, V) @ (V, H)
            else:
                gh = torch.mm(d, self.weight)
            if scale is not None:
                gh.mul_(scale)
            if isinstance(rows, slice):
                grads.hidden[rows].add_(gh)
            else:
                grads.hidden.index_add_(0, rows, gh)
        if grads.weight is not None:
            hs = h if scale is None else h * scale.to(h.dtype)
            # (V, n) @ (n, H). The first chunk writes the accumulator instead of adding to
            # zeros: no separate pass to clear (V, H) memory.
            if self.native:
                torch.addmm(grads.weight, d.T, hs, out_dtype=torch.float32,
                             beta=1.0 if grads.weight_started else 0.0, out=grads.weight)
            elif grads.weight_started:
                grads.weight.addmm_(d.T, hs)
            else:
                torch.mm(d.T, hs, out=grads.weight)
            grads.weight_started = True
        if grads.bias is not None:
            if scale is None:
                grads.bias.add_(dlogits.sum(0, dtype=grads.bias.dtype))
            else:  # (V, n) @ (n,)
                grads.bias.addmv_(dlogits.T.to(grads.bias.dtype), scale[:, 0])


@dataclass
class _Grads:
    """fp32 (fp64 for fp64 inputs) accumulators of the gradients the caller needs: hidden
    (valid rows, H) in valid-row order, weight (V, H), bias (V,); None where not needed."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    weight_started: bool = False

    @classmethod
    def allocate(cls, n_rows: int, head, need_hidden: bool, need_weight: bool,
                 need_bias: bool, device):
        V, H = head.weight.shape
        dt = head.dtype
        return cls(
            torch.zeros(n_rows, H, dtype=dt, device=device) if need_hidden else None,
            torch.empty(V, H, dtype=dt, device=device) if need_weight else None,
            torch.zeros(V, dtype=dt, device=device) if need_bias else None,
        )

    def hidden_for(self, index: torch.Tensor, shape, dtype=None) -> torch.Tensor | None:
        """The hidden gradient as a ``shape`` tensor (of ``dtype``, default the accumulator's):
        valid rows at their flat ids ``index``, exact zeros elsewhere."""
        if self.hidden is None:
            return None
        H = self.hidden.shape[1]
        out = self.hidden.new_zeros(math.prod(shape[:-1]), H, dtype=dtype or self.hidden.dtype)
        out[index] = self.hidden.to(out.dtype)
        return out.view(shape)

    def weight_or_zeros(self) -> torch.Tensor | None:
        """The weight gradient; zeros if no chunk ever wrote it (no valid row at all)."""
        if self.weight is not None and not self.weight_started:
            self.weight.zero_()
        return self.weight


# ------------------------------------------------------------------------- per-row math
# Two implementations of one contract, used on (n, V) tiles of one chunk:
#   stats(s, u, want_grad) -> state          state[0] is D (n,) fp32
#   write_grad(s, u, state, g) -> row_scale  afterwards diag(row_scale) @ s = g dD/ds
# (row_scale None: s holds g dD/ds itself). The torch version forms the unweighted gradient
# during ``stats`` while each row block is still in cache and leaves the weights to the small
# (n, H) GEMM operands; the Triton version weighs the gradient in the streaming kernel.


def _row_block(n_cols: int) -> int:
    return max(1, _TORCH_BLOCK_ELEMENTS // max(n_cols, 1))


@contextlib.contextmanager
def _row_math_threads(device: torch.device):
    """Runs the torch path's row-block math on ``CORD_CPU_ROW_THREADS`` CPU threads (1 by
    default). Each row block is a few hundred kB; an OpenMP team per op on such blocks waits
    at its barrier for the slowest thread, and on a shared (loaded) machine that made the
    row math several times slower than on one thread, which then costs ~10% of the GEMMs."""
    want = int(os.environ.get("CORD_CPU_ROW_THREADS", "1"))
    prev = torch.get_num_threads()
    if device.type != "cpu" or want < 1 or want == prev:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class _TorchKL:
    """Reverse KL per row in torch, destroying the tiles: ``stats`` turns s into
    p (log p - log q - D) = tau dD/ds (or p, without ``want_grad``) and u into log p - log q."""

    def __init__(self, temperature: float):
        self.inv_t = 1.0 / temperature

    def stats(self, s: torch.Tensor, u: torch.Tensor, want_grad: bool = True):
        n = s.shape[0]
        d = torch.empty(n, dtype=s.dtype, device=s.device)
        r = _row_block(s.shape[1])
        with _row_math_threads(s.device):
            for a in range(0, n, r):
                b_s, b_u = s[a:a + r], u[a:a + r]
                if self.inv_t != 1.0:
                    b_s.mul_(self.inv_t)
                    b_u.mul_(self.inv_t)
                log_p = torch.log_softmax(b_s, dim=-1)
                log_q = torch.log_softmax(b_u, dim=-1)
                torch.sub(log_p, log_q, out=b_u)
                torch.exp(log_p, out=b_s)
                # D = sum_v p_v (log p_v - log q_v): a batch of row dot products.
                # (r, V) @ (V, r) then the diagonal: r is ~2, and MKL's GEMM beats a
                # batched (1, V) @ (V, 1) bmm by ~8x there.
                b_d = torch.mm(b_s, b_u.T).diagonal()
                d[a:a + r] = b_d
                if want_grad:
                    # dD/ds_v = (1/tau) p_v (log p_v - log q_v - D); the 1/tau goes to row_scale
                    b_s.mul_(b_u.sub_(b_d[:, None]))
        return d, None

    def write_grad(self, s, u, state, g: torch.Tensor) -> torch.Tensor:
        return g * self.inv_t


class _TritonKL:
    """The same contract through the streaming kernels of ``kl.py``; the tiles are only read
    until ``write_grad`` overwrites s with g dD/ds."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def stats(self, s, u, want_grad: bool = True):
        from cord_kernels.kl import kl_fwd

        d, lse_s, lse_u = kl_fwd(s, u, None, self.temperature)
        return d, (lse_s, lse_u)

    def write_grad(self, s, u, state, g) -> None:
        from cord_kernels.kl import kl_bwd

        d, (lse_s, lse_u) = state
        kl_bwd(s, u, lse_s, lse_u, d, g, self.temperature, s, None)
        return None


class _TorchLogprob:
    """log p(label) per row and its gradient in torch. ``write_grad`` turns x into
    1[v = label] - p_v and returns the row scale g / tau."""

    def __init__(self, temperature: float):
        self.inv_t = 1.0 / temperature

    def forward(self, x, labels):
        n = x.shape[0]
        lse = torch.empty(n, dtype=x.dtype, device=x.device)
        r = _row_block(x.shape[1])
        with _row_math_threads(x.device):
            for a in range(0, n, r):
                b_x = x[a:a + r]
                if self.inv_t != 1.0:
                    b_x.mul_(self.inv_t)
                lse[a:a + r] = torch.logsumexp(b_x, dim=-1)
        picked = x.gather(1, labels.unsqueeze(1)).squeeze(1)
        return picked - lse, lse

    def write_grad(self, x, labels, lse, g) -> torch.Tensor:
        r = _row_block(x.shape[1])
        with _row_math_threads(x.device):
            for a in range(0, x.shape[0], r):
                # dlogp/dx_v = (1/tau) (1[v = label] - p_v): -p_v here, the label below.
                b_x = x[a:a + r]
                if self.inv_t != 1.0:
                    b_x.mul_(self.inv_t)
                b_x.sub_(lse[a:a + r, None]).exp_().neg_()
        x.scatter_add_(1, labels.unsqueeze(1), torch.ones_like(labels, dtype=x.dtype)[:, None])
        return g * self.inv_t


class _TritonLogprob:
    def __init__(self, temperature: float, ignore_index: int):
        self.temperature = temperature
        self.ignore_index = ignore_index

    def forward(self, x, labels):
        from cord_kernels.token_logprobs import logprob_fwd

        return logprob_fwd(x, labels, self.temperature, self.ignore_index)

    def write_grad(self, x, labels, lse, g) -> None:
        from cord_kernels.token_logprobs import logprob_bwd

        logprob_bwd(x, labels, lse, g, self.temperature, self.ignore_index, x)
        return None


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Chunk:
    """Rows ``[row_lo, row_hi)`` of the valid-row list, from sequences ``[seq_lo, seq_hi)``.
    ``whole``: the chunk holds every valid row of those sequences (else it is a piece of one
    long sequence)."""

    row_lo: int
    row_hi: int
    seq_lo: int
    seq_hi: int
    whole: bool


def plan_chunks(counts: list[int], max_rows: int) -> list[_Chunk]:
    """Groups consecutive sequences (``counts[b]`` valid rows each) into chunks of at most
    ``max_rows`` rows holding whole sequences; a sequence longer than ``max_rows`` becomes
    pieces of its own. Sequences without valid rows ride along in whichever chunk is open.

    Example: ``plan_chunks([3, 2, 7, 1], 4)`` -> rows [0,3) seq 0, [3,5) seq 1, then seq 2 in
    pieces [5,9) and [9,12), then [12,13) seq 3.
    """
    chunks: list[_Chunk] = []
    row = 0
    open_row, open_seq = 0, 0  # the chunk being filled starts here
    for b, c in enumerate(counts):
        if row + c - open_row <= max_rows:
            row += c
            continue
        if row > open_row:  # close the open chunk before sequence b
            chunks.append(_Chunk(open_row, row, open_seq, b, True))
        if c <= max_rows:
            open_row, open_seq = row, b
            row += c
            continue
        for lo in range(row, row + c, max_rows):
            chunks.append(_Chunk(lo, min(lo + max_rows, row + c), b, b + 1, False))
        row += c
        open_row, open_seq = row, b + 1
    if row > open_row:
        chunks.append(_Chunk(open_row, row, open_seq, len(counts), True))
    return chunks


def _rows_per_chunk(chunk_bytes: int, vocab: int, n_tiles: int, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, chunk_bytes // (n_tiles * vocab * itemsize))


# --------------------------------------------------------------------- CORD: the driver


@dataclass(frozen=True)
class FusedCordParams:
    top_k: int = 20
    alpha: float = 2.0
    beta: float = 2.0
    temperature: float = 1.0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    impl: str = "torch"  # "torch" | "triton": the per-row math


class _CordProblem:
    """Everything one call needs: flat hidden states, heads, the valid rows and the tiles.

    Rows are addressed two ways: ``pos`` indexes the list of valid rows (sequence-major, so
    each sequence's rows are contiguous), ``index[pos]`` is the flat row id b * T + t.
    """

    def __init__(self, student_hidden, teacher_hidden, weight, bias, teacher_weight,
                 teacher_bias, mask, params: FusedCordParams):
        B, T, _ = student_hidden.shape
        self.B, self.T, self.V = B, T, weight.shape[0]
        self.mask = mask
        self.params = params
        dtype = torch.float64 if torch.float64 in (student_hidden.dtype, weight.dtype) \
            else torch.float32
        self.dtype = dtype
        self.hs = student_hidden.detach().reshape(B * T, student_hidden.shape[-1])
        self.ht = teacher_hidden.detach().reshape(B * T, teacher_hidden.shape[-1])
        self.head = _LMHead(weight.detach(), None if bias is None else bias.detach(),
                            student_hidden.dtype, dtype)
        if teacher_weight is None:
            self.teacher_head = self.head
        else:
            self.teacher_head = _LMHead(
                teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach(),
                teacher_hidden.dtype, dtype)
        self.rows = _TritonKL(params.temperature) if params.impl == "triton" \
            else _TorchKL(params.temperature)
        # The one host sync: which rows are valid, and how many per sequence.
        self.counts = mask.sum(1).tolist()
        self.index = mask.reshape(-1).nonzero().squeeze(1)
        self.n_valid = int(sum(self.counts))
        self.max_rows = _rows_per_chunk(params.chunk_bytes, self.V, 2, dtype)
        self._tiles: torch.Tensor | None = None

    def tiles(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (n, V) tiles, views of one buffer allocated once per call."""
        if self._tiles is None or self._tiles.shape[1] < n:
            rows = min(self.max_rows, max(n, self.n_valid))
            self._tiles = torch.empty(2, rows, self.V, dtype=self.dtype, device=self.hs.device)
        return self._tiles[0, :n], self._tiles[1, :n]

    def release(self) -> None:
        self._tiles = None

    def logits(self, index: torch.Tensor):
        """Student and teacher logits tiles (n, V) of the given flat row ids, plus the student
        hidden rows (n, H) for the weight gradient."""
        s, u = self.tiles(index.numel())
        h_s = self.head.rows(self.hs, index)
        self.head.project(h_s, s)
        self.teacher_head.project(self.teacher_head.rows(self.ht, index), u)
        return s, u, h_s

    def dense(self, values: torch.Tensor, seq_lo: int, seq_hi: int, pos_lo: int, pos_hi: int):
        """Scatters per-row values of valid rows ``[pos_lo, pos_hi)`` into (seqs, T)."""
        out = torch.zeros((seq_hi - seq_lo) * self.T, dtype=torch.float32,
                          device=values.device)
        out[self.index[pos_lo:pos_hi] - seq_lo * self.T] = values.float()
        return out.view(seq_hi - seq_lo, self.T)

    def weights(self, d: torch.Tensor, seq_lo: int, seq_hi: int, pos_lo: int, pos_hi: int,
                *, positional_only: bool = False) -> torch.Tensor:
        """CORD weights of valid rows ``[pos_lo, pos_hi)`` holding the D of every valid row
        of sequences ``[seq_lo, seq_hi)`` (``positional_only``: w^pos alone, D unused)."""
        p = self.params
        dense = self.dense(d, seq_lo, seq_hi, pos_lo, pos_hi)
        top_k, alpha = (0, 1.0) if positional_only else (p.top_k, p.alpha)
        w = cord_weights(dense, self.mask[seq_lo:seq_hi], top_k=top_k, alpha=alpha,
                         beta=p.beta)
        return w.view(-1)[self.index[pos_lo:pos_hi] - seq_lo * self.T]

    def kl_rows(self, pos_lo: int, pos_hi: int) -> torch.Tensor:
        """D of valid rows ``[pos_lo, pos_hi)``, in chunks, without gradients (2 GEMMs)."""
        d = torch.empty(pos_hi - pos_lo, dtype=torch.float32, device=self.hs.device)
        for lo in range(pos_lo, pos_hi, self.max_rows):
            hi = min(lo + self.max_rows, pos_hi)
            s, u, _ = self.logits(self.index[lo:hi])
            d[lo - pos_lo:hi - pos_lo] = self.rows.stats(s, u, want_grad=False)[0]
        return d

    def backprop_rows(self, pos: torch.Tensor | None, g: torch.Tensor, grads: _Grads) -> None:
        """Adds the gradient of sum_rows g * D over the valid rows at positions ``pos``
        (distinct; None: all of them, g then covering every valid row) in 4 GEMMs."""
        n = self.n_valid if pos is None else pos.numel()
        for lo in range(0, n, self.max_rows):
            hi = min(lo + self.max_rows, n)
            rows = slice(lo, hi) if pos is None else pos[lo:hi]
            s, u, h_s = self.logits(self.index[rows])
            state = self.rows.stats(s, u)
            row_scale = self.rows.write_grad(s, u, state, g[lo:hi].float())
            self.head.backprop(s, h_s, row_scale, rows, grads)

    def grads(self, ctx) -> _Grads:
        """Accumulators for the gradients autograd asks for (student hidden, weight, bias)."""
        need_h, _, need_w, need_b = ctx.needs_input_grad[:4]
        return _Grads.allocate(self.n_valid, self.head, need_h, need_w,
                               need_b and self.head.bias is not None, self.hs.device)


def _cord_sum_with_grads(problem: _CordProblem, grads: _Grads | None):
    """sum_t w_t D_t over valid rows, and (if ``grads``) its gradients, in 4 GEMMs.

    Returns (total, d, w): the fp32 scalar and the per-valid-row D and final weights.
    """
    n = problem.n_valid
    d_all = torch.zeros(n, dtype=torch.float32, device=problem.hs.device)
    w_applied = torch.zeros_like(d_all)  # the weight each row's gradient was formed with
    in_piece = torch.zeros(n, dtype=torch.bool, device=d_all.device)
    plan = plan_chunks(problem.counts, problem.max_rows)
    for c in plan:
        s, u, h_s = problem.logits(problem.index[c.row_lo:c.row_hi])
        state = problem.rows.stats(s, u, want_grad=grads is not None)
        d = state[0].float()
        d_all[c.row_lo:c.row_hi] = d
        if c.whole:
            w = problem.weights(d, c.seq_lo, c.seq_hi, c.row_lo, c.row_hi)
        else:  # a piece of a long sequence: w^pos now, the top-K rows corrected below
            w = problem.weights(d, c.seq_lo, c.seq_hi, c.row_lo, c.row_hi,
                                positional_only=True)
            in_piece[c.row_lo:c.row_hi] = True
        w_applied[c.row_lo:c.row_hi] = w
        if grads is not None:
            row_scale = problem.rows.write_grad(s, u, state, w)  # s <- w dD/ds
            problem.head.backprop(s, h_s, row_scale, slice(c.row_lo, c.row_hi), grads)
    w_all = problem.weights(d_all, 0, problem.B, 0, n)
    if grads is not None and not all(c.whole for c in plan):
        # Long sequences: their top-K rows still miss (alpha - 1) w^pos dD/ds.
        delta = torch.where(in_piece, w_all - w_applied, 0.0)
        fix = delta.nonzero().squeeze(1)
        if fix.numel():
            problem.backprop_rows(fix, delta[fix], grads)
    problem.release()
    return (w_all * d_all).sum(), d_all, w_all


class FusedCordSumFunction(torch.autograd.Function):
    """sum_t w_t D_t (scalar) from hidden states; gradients formed in forward (4 GEMMs)."""

    @staticmethod
    def forward(ctx, student_hidden, teacher_hidden, weight, bias, teacher_weight,
                teacher_bias, mask, params: FusedCordParams):
        problem = _CordProblem(student_hidden, teacher_hidden, weight, bias, teacher_weight,
                               teacher_bias, mask, params)
        grads = problem.grads(ctx)
        total, _, _ = _cord_sum_with_grads(problem, grads)
        ctx.save_for_backward(grads.hidden_for(problem.index, student_hidden.shape),
                              grads.weight_or_zeros(), grads.bias)
        ctx.grad_meta = [None if t is None else (t.shape, t.dtype)
                         for t in (student_hidden, weight, bias)]
        ctx.used = False
        return total

    @staticmethod
    def backward(ctx, grad_total):
        if ctx.used:
            raise RuntimeError(
                "fused_linear_cord_token_loss scales its stored gradients in place, so its "
                "graph can be backpropagated once only (retain_graph is not supported)"
            )
        ctx.used = True
        # The stored gradients belong to this graph alone: scale them in place (no second
        # copy of the (V, H) weight gradient).
        out = [
            None if grad is None else grad.mul_(grad_total.to(grad.dtype)).view(meta[0])
            .to(meta[1])
            for grad, meta in zip(ctx.saved_tensors, ctx.grad_meta, strict=True)
        ]
        return out[0], None, out[1], out[2], None, None, None, None


class FusedCordPerTokenFunction(torch.autograd.Function):
    """(B, T) w_t D_t from hidden states: D in forward (2 GEMMs), gradients in backward by
    recomputing both projections (4 GEMMs), since the per-token cotangent weighs grad_W."""

    @staticmethod
    def forward(ctx, student_hidden, teacher_hidden, weight, bias, teacher_weight,
                teacher_bias, mask, params: FusedCordParams):
        problem = _CordProblem(student_hidden, teacher_hidden, weight, bias, teacher_weight,
                               teacher_bias, mask, params)
        d = problem.kl_rows(0, problem.n_valid)
        w = problem.weights(d, 0, problem.B, 0, problem.n_valid)
        out = problem.dense(w * d, 0, problem.B, 0, problem.n_valid)
        problem.release()
        ctx.save_for_backward(student_hidden, teacher_hidden, weight, bias, teacher_weight,
                              teacher_bias, mask, w)
        ctx.params = params
        return out

    @staticmethod
    def backward(ctx, grad_out):
        sh, th, weight, bias, tw, tb, mask, w = ctx.saved_tensors
        problem = _CordProblem(sh, th, weight, bias, tw, tb, mask, ctx.params)
        grads = problem.grads(ctx)
        g = grad_out.reshape(-1).float()[problem.index] * w
        problem.backprop_rows(None, g, grads)
        problem.release()
        gw = grads.weight_or_zeros()
        return (
            grads.hidden_for(problem.index, sh.shape, sh.dtype),
            None,
            None if gw is None else gw.to(weight.dtype),
            None if grads.bias is None else grads.bias.to(bias.dtype),
            None, None, None, None,
        )


# ------------------------------------------------------------------- token log-probs


@dataclass(frozen=True)
class FusedLogprobParams:
    temperature: float = 1.0
    ignore_index: int = -100
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    impl: str = "torch"


class _LogprobProblem:
    """One call of the log-prob loss: flat hidden states, the head, the rows whose label is
    not ``ignore_index`` (``index``, found with one host sync) and one (chunk, V) tile."""

    def __init__(self, hidden, weight, bias, labels, params: FusedLogprobParams):
        H = hidden.shape[-1]
        self.V = weight.shape[0]
        self.params = params
        self.dtype = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) \
            else torch.float32
        self.h = hidden.detach().reshape(math.prod(hidden.shape[:-1]), H)
        self.head = _LMHead(weight.detach(), None if bias is None else bias.detach(),
                            hidden.dtype, self.dtype)
        self.rows = _TritonLogprob(params.temperature, params.ignore_index) \
            if params.impl == "triton" else _TorchLogprob(params.temperature)
        flat = labels.reshape(-1)
        self.index = (flat != params.ignore_index).nonzero().squeeze(1)
        self.labels = flat[self.index].long()
        self.n_valid = self.index.numel()
        self.max_rows = _rows_per_chunk(params.chunk_bytes, self.V, 1, self.dtype)
        buf_rows = min(self.max_rows, self.n_valid)
        self.tile = torch.empty(buf_rows, self.V, dtype=self.dtype, device=self.h.device)

    def chunks(self):
        """Yields (lo, hi, flat ids, hidden rows, logits tile) per chunk of valid rows."""
        for lo in range(0, self.n_valid, self.max_rows):
            hi = min(lo + self.max_rows, self.n_valid)
            idx = self.index[lo:hi]
            h = self.head.rows(self.h, idx)
            x = self.head.project(h, self.tile[:hi - lo])
            yield lo, hi, idx, h, x


class FusedTokenLogprobsFunction(torch.autograd.Function):
    """Per-token log p(label) from hidden states: 1 GEMM per chunk in forward, 3 in backward
    (the logits are recomputed; only lse per row is kept)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, params: FusedLogprobParams):
        problem = _LogprobProblem(hidden, weight, bias, labels, params)
        out = torch.zeros(labels.numel(), dtype=torch.float32, device=hidden.device)
        lse_parts = []
        for lo, hi, idx, _, x in problem.chunks():
            logp, lse = problem.rows.forward(x, problem.labels[lo:hi])
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
        grads = _Grads.allocate(problem.n_valid, problem.head, need_h, need_w,
                                need_b and bias is not None, hidden.device)
        g_all = grad_out.reshape(-1).float()
        for lo, hi, idx, h, x in problem.chunks():
            row_scale = problem.rows.write_grad(x, problem.labels[lo:hi], lse[lo:hi], g_all[idx])
            problem.head.backprop(x, h, row_scale, slice(lo, hi), grads)
        gw = grads.weight_or_zeros()
        return (
            grads.hidden_for(problem.index, hidden.shape, hidden.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if grads.bias is None else grads.bias.to(bias.dtype),
            None,
            None,
        )


# ---------------------------------------------------------------------------- public API


def _check_head(weight, bias, hidden, *, names=("weight", "bias", "student_hidden")):
    w_name, b_name, h_name = names
    check_tensor(w_name, weight, ndim=2)
    check_float(w_name, weight)
    if weight.shape[0] < 1:
        raise ValueError(f"{w_name} must have a non-empty vocabulary (first) dimension, got "
                         f"shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{h_name} has hidden size {hidden.shape[-1]} but {w_name} has shape (V, H) = "
            f"{tuple(weight.shape)}; the LM head must be (vocab, hidden)"
        )
    check_same_device((h_name, hidden), (w_name, weight))
    if bias is not None:
        check_tensor(b_name, bias, ndim=1)
        check_float(b_name, bias)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{b_name} must have shape ({weight.shape[0]},) (the vocabulary "
                             f"of {w_name}), got {tuple(bias.shape)}")
        check_same_device((w_name, weight), (b_name, bias))


def _check_chunk_bytes(chunk_bytes) -> int:
    return DEFAULT_CHUNK_BYTES if chunk_bytes is None else check_positive_int(
        "chunk_bytes", chunk_bytes)


def fused_linear_cord_token_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    top_k: int = 20,
    alpha: float = 2.0,
    beta: float = 2.0,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    chunk_bytes: int | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """CORD token loss from hidden states and the LM head, never holding (B*T, V) logits.

    Equals ``cord_token_loss(student_hidden @ weight.T + bias, teacher_hidden @ W_t.T + b_t,
    mask, ...)`` with W_t, b_t = ``teacher_weight``, ``teacher_bias`` (default: the student's
    head, detached):

        D_t = KL(softmax(s_t/tau) || softmax(u_t/tau)),   w = cord_weights(D, mask)
        "batchmean": sum w D / B (the paper's), "sum": sum w D, "mean": sum w D / sum mask,
        "none": (B, T) w D

    Cost: 4 GEMMs of (valid tokens) x H x V for the scalar reductions, all run in forward
    (backward only scales the stored gradients, so the graph can be backpropagated once);
    3 when ``weight`` needs no gradient (a frozen head), 2 under ``torch.no_grad()``, 6 for
    ``reduction="none"``, whose backward recomputes both projections. Rows with ``mask``
    False are never projected. Memory: the fp32 gradient of ``weight`` and at most
    ``chunk_bytes`` of logits tiles. See the module docstring for the algorithm.

    Args:
        student_hidden: (B, T, H) audio-conditioned final hidden states (gets the gradient).
        teacher_hidden: (B, T, H_t) text-conditioned hidden states on the same tokens (never
            gets a gradient).
        weight: (V, H) LM head (gets a gradient, accumulated in fp32).
        mask: (B, T) bool (or 0/1 integer), True at generated positions.
        bias: optional (V,) LM-head bias (gets a gradient).
        teacher_weight, teacher_bias: optional separate teacher head, (V, H_t) and (V,).
        top_k, alpha, beta: CORD weights (``alpha = beta = 1`` is uniform on-policy
            distillation).
        temperature: tau > 0, applied to both branches.
        reduction: "batchmean" | "sum" | "mean" | "none".
        chunk_bytes: budget for the two fp32 logits tiles of a chunk (default 1 GiB): a chunk
            holds ``chunk_bytes // (8 V)`` tokens. Sequences longer than that still work.
        impl: "triton" (the streaming kernels on each chunk), "torch" or None (Triton on CUDA
            or under TRITON_INTERPRET=1).

    Returns:
        fp32 scalar, or (B, T) fp32 for ``reduction="none"``.

    Example:
        >>> h_a = model(audio_inputs).hidden_states[-1][:, P:-1]     # (B, T, H)
        >>> h_t = model(text_inputs).hidden_states[-1][:, P2:-1].detach()
        >>> loss = fused_linear_cord_token_loss(h_a, h_t, model.lm_head.weight, mask)
        >>> loss.backward()
    """
    check_tensor("student_hidden", student_hidden, ndim=3)
    check_float("student_hidden", student_hidden)
    check_tensor("teacher_hidden", teacher_hidden, ndim=3)
    check_float("teacher_hidden", teacher_hidden)
    if teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(
            f"teacher_hidden must have the (B, T) = {tuple(student_hidden.shape[:2])} of "
            f"student_hidden, got shape {tuple(teacher_hidden.shape)}"
        )
    _check_head(weight, bias, student_hidden)
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
        _check_head(teacher_weight, teacher_bias, teacher_hidden,
                    names=("teacher_weight", "teacher_bias", "teacher_hidden"))
        if teacher_weight.shape[0] != weight.shape[0]:
            raise ValueError(
                f"vocabulary mismatch: weight has V={weight.shape[0]} but teacher_weight has "
                f"V={teacher_weight.shape[0]}"
            )
        check_same_device(("weight", weight), ("teacher_weight", teacher_weight))
    mask = check_mask(mask, tuple(student_hidden.shape[:2]), like="student_hidden")
    check_same_device(("student_hidden", student_hidden), ("mask", mask))
    top_k, alpha, beta, temperature, reduction = check_cord_options(
        top_k, alpha, beta, temperature, reduction
    )
    chunk_bytes = _check_chunk_bytes(chunk_bytes)
    impl = resolve_impl(impl, student_hidden, weight)
    params = FusedCordParams(top_k, alpha, beta, temperature, chunk_bytes, impl)
    args = (student_hidden, teacher_hidden.detach(), weight, bias,
            None if teacher_weight is None else teacher_weight.detach(),
            None if teacher_bias is None else teacher_bias.detach(), mask, params)
    if reduction == "none":
        return FusedCordPerTokenFunction.apply(*args)
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_hidden, weight, bias))
    if differentiable:
        total = FusedCordSumFunction.apply(*args)
    else:  # evaluation: the 2 projection GEMMs only
        problem = _CordProblem(*args)
        total = _cord_sum_with_grads(problem, None)[0]
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(student_hidden.shape[0], 1)
    return total / mask.sum().clamp_min(1)  # "mean" over valid tokens


def fused_linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    chunk_bytes: int | None = None,
    impl: str | None = None,
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
        chunk_bytes: budget for the fp32 logits tile (default 1 GiB: ``chunk_bytes // (4 V)``
            tokens per chunk).
        impl: "triton", "torch" or None.

    Returns:
        (...) fp32 log-probabilities, differentiable wrt hidden, weight and bias.

    Example:
        >>> h = model(input_ids).hidden_states[-1][:, :-1]            # (B, T-1, H)
        >>> lp = fused_linear_token_logprobs(h, model.lm_head.weight, input_ids[:, 1:])
        >>> seq_logp = (lp * completion_mask).sum(-1)                  # log p(y | x)
    """
    check_tensor("hidden", hidden, min_ndim=2)
    check_float("hidden", hidden)
    _check_head(weight, bias, hidden, names=("weight", "bias", "hidden"))
    check_labels(labels, tuple(hidden.shape[:-1]))
    check_same_device(("hidden", hidden), ("labels", labels))
    temperature = check_temperature(temperature)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    chunk_bytes = _check_chunk_bytes(chunk_bytes)
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= weight.shape[0]))[valid].any()):
        raise ValueError(f"labels must lie in [0, {weight.shape[0]}) (the vocabulary of "
                         f"weight) or equal ignore_index={ignore_index}")
    impl = resolve_impl(impl, hidden, weight)
    params = FusedLogprobParams(temperature, ignore_index, chunk_bytes, impl)
    return FusedTokenLogprobsFunction.apply(hidden, weight, bias, labels, params)
