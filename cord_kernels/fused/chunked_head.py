"""The machinery every fused-linear loss shares: the LM head evaluated chunk by chunk into
fp32 tiles, its backward through the head, the gradient accumulators, chunk planning, and the
chunk driver's base: :class:`HeadProblem` (one call's rows, head and chunk size; each loss
specialises it with its per-chunk math, as Liger's ``LigerFusedLinearDistillationBase`` is
specialised), :class:`HeadParams` (the options its autograd Functions get, one object) and the
gradients-formed-in-forward protocol (``stash_grads`` / ``scaled_grads``).

At 7B scale the logits themselves are the memory problem: 16k rollout tokens times a 156k
vocabulary is 10 GB per fp32 logits tensor, and distillation has two branches. The losses
(``fused/distill.py``: reverse/forward KL, JSD and the CORD weighting; ``fused/token_logprobs.py``:
token log-probs) take hidden states and the LM head and walk the valid tokens in chunks, so
that at most one (chunk, V) fp32 tile per branch is alive (its size is ``chunk_bytes``).

Only valid rows are projected: positions with ``mask`` False (or an ignored label) are dropped
before the GEMMs, as cut-cross-entropy drops ignored tokens. Finding them costs one host sync
per call; it also means these functions do not capture into CUDA graphs.

GEMM operands: one dtype per head, chosen once per call (``operand_dtype``). Under autocast it
is the autocast dtype, else the inputs' own when hidden and weight agree. On CUDA, bf16/fp16
operands run natively with fp32 output (``out_dtype``) when the installed torch accepts it
(probed once per device and dtype); otherwise, and on the CPU, the operands are rounded to that
dtype and the GEMM runs in fp32. Every GEMM of a call, the ``out=`` ones included, sees the same
operands, because the losses run their GEMMs with autocast off.

The torch path's elementwise row math (``core/torch_path.py``) goes through the tiles in row blocks
of ~1.5 MB, so its several passes hit cache instead of memory. It runs on the caller's thread
count: on a shared (loaded) CPU, ``torch.set_num_threads(1)`` around the call can make it several
times faster, as an OpenMP team on such small blocks waits at its barrier for the slowest
thread; no function here changes the thread count itself.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch

from cord_kernels.core.dispatch import Impl
from cord_kernels.core.options import DEFAULT_CHUNK_BYTES, LossOptions
from cord_kernels.core.validation import (
    check_float,
    check_same_device,
    check_tensor,
)

_LOW_PRECISION = (torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------ operand dtypes


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 when any input is fp64 (the tests' oracle), else fp32: the tiles' dtype."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def operand_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The one GEMM operand dtype of a head: autocast's when it is on for the device (read in
    the caller's context, before the losses turn autocast off), else the inputs' own when
    hidden and weight agree, else the compute dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and compute_dtype(hidden, weight) != torch.float64:
        return torch.get_autocast_dtype(device_type)
    if hidden.dtype == weight.dtype:
        return hidden.dtype
    return compute_dtype(hidden, weight)


@functools.cache
def native_gemms_work(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch accepts the bf16/fp16 GEMMs with fp32 output the head needs on
    ``device``: ``mm(..., out_dtype=fp32)`` with and without ``out=``, and ``addmm`` into an
    fp32 accumulator. Older builds reject them, and ``PYTORCH_TUNABLEOP_ENABLED=1`` fails in
    them; then the head rounds operands to ``dtype`` and multiplies in fp32 instead (slower,
    same values up to accumulation order). Probed once per device and dtype."""
    try:
        a = torch.ones(16, 16, device=device, dtype=dtype)
        out = torch.empty(16, 16, device=device, dtype=torch.float32)
        torch.mm(a, a.T, out_dtype=torch.float32, out=out)
        extra = torch.mm(a, a, out_dtype=torch.float32)
        torch.addmm(out, a.T, a, out_dtype=torch.float32, beta=1.0, out=out)
        ok = bool((out == 32).all()) and extra.dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError) as err:
        warnings.warn(f"{dtype} GEMMs with fp32 output fail on {device} ({err}); the fused-linear "
                      "losses multiply in fp32 instead", RuntimeWarning, stacklevel=2)
        return False
    return ok


def no_autocast(device: torch.device):
    """The losses' GEMMs run with autocast off: their operands are cast explicitly."""
    return torch.autocast(device.type, enabled=False)


# ------------------------------------------------------------------------ logit transforms


@dataclass(frozen=True)
class LogitTransform:
    """A model's transform between its head and the softmax, applied inside the stream:
    t = logit_scale * z (Cohere's ``logit_scale``), then t = softcap * tanh(t / softcap)
    (Gemma 2 / 3n's ``final_logit_softcapping``), z = h @ W.T (+ b). The loss's gradient wrt t
    times dt/dz = logit_scale (1 - (t / softcap)^2) is its gradient wrt z."""

    logit_scale: float = 1.0
    softcap: float = 0.0  # 0: none

    @property
    def needs_factor_tile(self) -> bool:
        """Whether dt/dz differs per logit (a cap), so it needs a tile of its own."""
        return bool(self.softcap)

    def apply_(self, tile: torch.Tensor) -> torch.Tensor:
        """z -> t in place."""
        if self.logit_scale != 1.0:
            tile.mul_(self.logit_scale)
        if self.softcap:
            tile.div_(self.softcap).tanh_().mul_(self.softcap)
        return tile

    def grad_factor(self, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """dt/dz per logit from the transformed tile ``t``, written into ``out``; None when it
        is one number (no cap). Must run before the gradient overwrites ``t``."""
        if not self.softcap:
            return None
        return torch.div(t, self.softcap, out=out).square_().neg_().add_(1.0).mul_(
            self.logit_scale)

    def chain_(self, grad: torch.Tensor, factor: torch.Tensor | None) -> None:
        """The gradient wrt t (in place, up to a row scale) becomes the gradient wrt z."""
        if factor is not None:
            grad.mul_(factor)
        elif self.logit_scale != 1.0:
            grad.mul_(self.logit_scale)


# ----------------------------------------------------------------------------- GEMMs


class LMHead:
    """One linear head ``logits = h @ W.T + b`` evaluated chunk by chunk into fp32 tiles.

    ``weight``: (V, H), ``bias``: (V,) or None; ``operand``: the GEMM operand dtype (see
    ``operand_dtype``), ``dtype``: the tiles' and accumulators' dtype. Native low-precision
    GEMMs with fp32 output on CUDA when the probe allows; elsewhere the operands are rounded to
    ``operand`` and upcast (the weight once per call), which for fp32 inputs matches the
    reference's ``hidden.float() @ weight.float().T`` exactly.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, operand: torch.dtype,
                 dtype: torch.dtype):
        self.dtype = dtype
        self.operand = operand
        self.native = (weight.is_cuda and operand in _LOW_PRECISION
                       and native_gemms_work(weight.device, operand))
        self.weight = weight.to(operand) if self.native else weight.to(operand).to(dtype)
        self.bias = None if bias is None else bias.to(dtype)

    def rows(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The hidden states of the given flat row ids, in the GEMM operand dtype."""
        h = hidden.index_select(0, index).to(self.operand)
        return h if self.native else h.to(self.dtype)

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
        grads: Grads,
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
class Grads:
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


# ------------------------------------------------------------------ the chunk driver


@dataclass(frozen=True)
class HeadParams:
    """What a fused-linear loss's autograd Function gets besides tensors, as one object (CCE's
    ``CCEParams``): the call's checked options and what it resolved from its tensors."""

    opts: LossOptions
    impl: Impl = Impl.TORCH
    operands: tuple[torch.dtype, ...] = (torch.float32,)  # the student's head (, the teacher's)
    # A teacher head with a transform of its own (TRL's per-model scale and softcap); None:
    # the teacher's logits get ``transform`` too.
    teacher_logits: LogitTransform | None = None
    # The distillation driver also forms the student's entropy per row (TRL logs it).
    want_entropy: bool = False

    @property
    def transform(self) -> LogitTransform:
        """The model's logit transform (on every head's logits)."""
        return LogitTransform(self.opts.logit_scale, self.opts.softcap)

    @property
    def teacher_transform(self) -> LogitTransform:
        """The teacher head's logit transform."""
        return self.transform if self.teacher_logits is None else self.teacher_logits



class HeadProblem:
    """The state of one fused-linear loss call that every such loss shares; each loss
    specialises it with its tiles and its per-chunk math (the part Liger's
    ``LigerFusedLinearDistillationBase`` plays for its losses).

    It holds the flat hidden rows ``hs`` (N, H), the head in the call's compute dtype, the rows
    it projects (``index``: their flat row ids, found with the call's one host sync;
    ``n_valid`` of them) and ``max_rows``, the rows of a chunk whose ``n_tiles`` fp32 (chunk, V)
    tiles fit in ``chunk_bytes``. :meth:`spans` walks the chunks, :meth:`grads` allocates the
    accumulators autograd asks for, :meth:`dense` scatters per-row values back.
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 operand: torch.dtype, index: torch.Tensor, n_tiles: int, chunk_bytes: int):
        self.device = hidden.device
        self.lead_shape = tuple(hidden.shape[:-1])
        self.V = weight.shape[0]
        self.dtype = compute_dtype(hidden, weight)
        self.hs = hidden.detach().reshape(math.prod(self.lead_shape), hidden.shape[-1])
        self.head = LMHead(weight.detach(), None if bias is None else bias.detach(), operand,
                           self.dtype)
        self.index = index
        self.n_valid = index.numel()
        self.n_tiles = n_tiles
        self.chunk_bytes = chunk_bytes
        self.max_rows = rows_per_chunk(chunk_bytes, self.V, n_tiles, self.dtype)

    def spans(self, n: int | None = None):
        """(lo, hi) of each chunk of the first ``n`` (default all) projected rows."""
        n = self.n_valid if n is None else n
        for lo in range(0, n, self.max_rows):
            yield lo, min(lo + self.max_rows, n)

    def grads(self, need_hidden: bool, need_weight: bool, need_bias: bool) -> Grads:
        return Grads.allocate(self.n_valid, self.head, need_hidden, need_weight,
                              need_bias and self.head.bias is not None, self.device)

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row values of the projected rows scattered into the lead shape, 0 elsewhere."""
        out = torch.zeros(math.prod(self.lead_shape), dtype=torch.float32, device=self.device)
        out[self.index] = values.float()
        return out.view(self.lead_shape)


# ------------------------------------------------------ gradients formed in forward
# The scalar reductions of every fused-linear loss form their gradients in forward, while the
# logits tiles are live (Liger's fused linear cross entropy does the same), and backward only
# scales them by the scalar cotangent. These two functions are that protocol's autograd half.


def stash_grads(ctx, grads: Grads, index: torch.Tensor, hidden: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Saves the gradients formed in forward on ``ctx``, in fp32 until backward scales them."""
    ctx.save_for_backward(grads.hidden_for(index, hidden.shape), grads.weight_or_zeros(),
                          grads.bias)
    ctx.dtypes = [None if t is None else t.dtype for t in (hidden, weight, bias)]
    ctx.used = False


def scaled_grads(ctx, grad_total: torch.Tensor) -> tuple:
    """(grad hidden, grad weight, grad bias) of the stashed gradients times ``grad_total``, in
    the inputs' dtypes. The stored gradients belong to this graph alone, so they are scaled in
    place (no second copy of the (V, H) weight gradient): a second backward is an error."""
    if ctx.used:
        raise RuntimeError("the fused-linear losses scale their stored gradients in place, so "
                           "their graph can be backpropagated once only (retain_graph is not "
                           "supported)")
    ctx.used = True
    return tuple(None if t is None else _scale_cast(t, grad_total.to(t.dtype), dtype)
                 for t, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True))


def _scale_cast(t: torch.Tensor, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t * g in ``dtype``, one pass over t: in place when the dtype stays, else written
    straight into the new dtype (the product is formed in t's precision, then rounded once)."""
    if dtype == t.dtype:
        return t.mul_(g)
    return torch.mul(t, g, out=torch.empty(t.shape, dtype=dtype, device=t.device))


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Chunk:
    """Rows ``[row_lo, row_hi)`` of the valid-row list, from sequences ``[seq_lo, seq_hi)``.
    ``whole``: the chunk holds every valid row of those sequences (else it is a piece of one
    long sequence)."""

    row_lo: int
    row_hi: int
    seq_lo: int
    seq_hi: int
    whole: bool


def plan_chunks(counts: list[int], max_rows: int) -> list[Chunk]:
    """Groups consecutive sequences (``counts[b]`` valid rows each) into chunks of at most
    ``max_rows`` rows holding whole sequences; a sequence longer than ``max_rows`` becomes
    pieces of its own. Sequences without valid rows ride along in whichever chunk is open.

    Example: ``plan_chunks([3, 2, 7, 1], 4)`` -> rows [0,3) seq 0, [3,5) seq 1, then seq 2 in
    pieces [5,9) and [9,12), then [12,13) seq 3.
    """
    chunks: list[Chunk] = []
    row = 0
    open_row, open_seq = 0, 0  # the chunk being filled starts here
    for b, c in enumerate(counts):
        if row + c - open_row <= max_rows:
            row += c
            continue
        if row > open_row:  # close the open chunk before sequence b
            chunks.append(Chunk(open_row, row, open_seq, b, True))
        if c <= max_rows:
            open_row, open_seq = row, b
            row += c
            continue
        for lo in range(row, row + c, max_rows):
            chunks.append(Chunk(lo, min(lo + max_rows, row + c), b, b + 1, False))
        row += c
        open_row, open_seq = row, b + 1
    if row > open_row:
        chunks.append(Chunk(open_row, row, open_seq, len(counts), True))
    return chunks


def rows_per_chunk(chunk_bytes: int, vocab: int, n_tiles: int, dtype: torch.dtype,
                   grad_dtype: torch.dtype | None = None) -> int:
    """Rows whose ``n_tiles`` (rows, V) tiles in ``dtype``, and a gradient tile in
    ``grad_dtype`` if one is given, fit in ``chunk_bytes``."""
    row_bytes = n_tiles * vocab * dtype.itemsize
    if grad_dtype is not None:
        row_bytes += vocab * grad_dtype.itemsize
    return max(1, chunk_bytes // row_bytes)


# A GPU with room lets the default budget grow to a quarter of its free memory, up to this.
AUTO_CHUNK_CAP = 8 << 30


def chunk_budget(chunk_bytes: int, device: torch.device, free: int | None = None) -> int:
    """The tiles' budget of one call: ``chunk_bytes`` as the caller gave it; the default
    (``DEFAULT_CHUNK_BYTES``, 1 GiB) on a GPU with room grows to a quarter of its free memory
    (``free``: bytes, read from the device when None), at most ``AUTO_CHUNK_CAP``. Fewer
    chunks: the fp32 weight-gradient accumulator is read and written once per chunk, and the
    hidden-gradient GEMM is less K-heavy."""
    if chunk_bytes != DEFAULT_CHUNK_BYTES or (device.type != "cuda" and free is None):
        return chunk_bytes
    if free is None:
        free, _ = torch.cuda.mem_get_info(device)
    return max(chunk_bytes, min(free // 4, AUTO_CHUNK_CAP))


def balanced_rows(n_rows: int, max_rows: int) -> int:
    """Rows per chunk when ``n_rows`` rows are cut into as few chunks of at most ``max_rows``
    as possible, all of one size but the last (no runt: 4096 rows at most 883 a chunk are 5
    chunks of 820, not 4 of 883 and one of 564)."""
    if n_rows <= max_rows:
        return max(1, max_rows if n_rows == 0 else n_rows)
    chunks = -(-n_rows // max_rows)
    return -(-n_rows // chunks)


# ----------------------------------------------------------------------------- checks


def check_head(weight, bias, hidden, *, names=("weight", "bias", "student_hidden")):
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
