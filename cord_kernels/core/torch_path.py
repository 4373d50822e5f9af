"""The ``impl="torch"`` path: the kernels' algorithm in eager torch, for CPUs (and any device).

This is the one home of the library's pure-torch row math: the logits-in ops (``kl.py``,
``jsd.py``, ``token_logprobs.py``, ``cord_token_loss.py``, the sparse losses through
``support_logprobs.py``) and the fused-linear chunk drivers (``fused/distill.py``,
``fused/token_logprobs.py``, ``sparse/fused_teacher_loss.py``) all call it with ``impl="torch"``:

    autograd Functions on whole logits tensors   TorchKLDivFunction, TorchJSDFunction,
                                                 TorchLogprobFunction,
                                                 TorchSupportLogprobsFunction
    row math on one chunk's (n, V) logits tiles  TorchTileReverseKL, TorchTileForwardKL,
                                                 TorchTileJSD, TorchTileLogprobs,
                                                 torch_support_stats, torch_dense_grad (in
                                                 row blocks: row_block)

``reference.py`` is written for clarity and is the tests' oracle (nothing in the library
imports it); letting autograd trace it
costs about twice naive torch on a CPU (a division by tau, a ``where`` and their backward over
every (N, V) element). These autograd Functions compute the same values the way the Triton
kernels do: statistics in forward, the gradient formula written out in backward, no pass that
does not need to happen, and only what backward needs saved:

    reverse/forward KL   saves p and (log p - log q): two (N, V) fp32 tensors
    token log-probs      saves lse per row only; backward rebuilds softmax from the logits
    generalized JSD      saves p and (log p - log m) (and q, log q - log m for teacher_grad)

Masked rows (``row_mask`` False) get D = 0 and an exactly-zero gradient whatever they hold.

``CORD_TORCH_COMPILE=1`` (opt-in, read at each call) runs the same math through
``torch.compile`` instead, written the way the Triton kernels stream it: forward computes only
D and the per-row log-sum-exps, backward recomputes softmax from the logits and writes the
gradient in one fused loop. Nothing of size (N, V) is saved besides the inputs themselves, and
on a CPU it runs about 2x faster than ``torch.compile`` of naive torch (``pytest bench/`` has a
row for it). The first call compiles (tens of seconds on a CPU; the bench reports it), so it is
off by default; inside an outer ``torch.compile`` the eager functions are traced instead.
"""

from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass

import torch

from cord_kernels import settings
from cord_kernels.core.reduction import nonnegative

# Row blocks of the torch path's elementwise math hold about this many elements per tensor
# (~1.5 MB of fp32): the two tiles' blocks and their temporaries fit in a 4 MB L2.
_TORCH_BLOCK_ELEMENTS = 384 * 1024


def _scaled(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """x / tau in the compute dtype (fp64 stays fp64), without a pass when tau = 1."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dt)
    return x if temperature == 1.0 else x / temperature


def compile_enabled() -> bool:
    """Whether the opt-in compiled torch path is on (``CORD_TORCH_COMPILE=1``)."""
    return settings.get().torch_compile and not torch.compiler.is_compiling()


@functools.cache
def _compiled(fn):
    # Built on first use: compiling costs seconds, which the eager path never pays.
    return torch.compile(fn, fullgraph=True)


def _kl_stats(x, y, row_mask, temperature: float):
    """D = KL(P_x || P_y) and lse of both per row (compiled: one fused loop per row)."""
    xs, ys = _scaled(x, temperature), _scaled(y, temperature)
    lse_x = torch.logsumexp(xs, dim=-1, keepdim=True)
    lse_y = torch.logsumexp(ys, dim=-1, keepdim=True)
    log_px = xs - lse_x
    px = log_px.exp()
    # Entries with p_x = 0 (-inf logits) contribute nothing, even against -inf in y.
    d = torch.where(px > 0, px * (log_px - (ys - lse_y)), 0.0).sum(-1)
    if row_mask is not None:
        d = torch.where(row_mask, d, 0.0)
    return d, lse_x, lse_y


def _kl_grads(x, y, row_mask, lse_x, lse_y, d, grad_d, temperature: float, need_dx: bool,
              need_dy: bool):
    """dD/dx and dD/dy scaled by grad_d, recomputing softmax from the logits."""
    g = (grad_d / temperature).unsqueeze(-1)
    if row_mask is not None:
        g = torch.where(row_mask.unsqueeze(-1), g, 0.0)
    log_px = _scaled(x, temperature) - lse_x
    px = log_px.exp()
    dx = dy = None
    if need_dx:
        # dD/dx_v = (1/tau) p_v (log p_v - log q_v - D)
        log_py = _scaled(y, temperature) - lse_y
        dx = torch.where(px > 0, g * px * (log_px - log_py - d.unsqueeze(-1)), 0.0)
        dx = dx.to(x.dtype)
    if need_dy:
        # dD/dy_v = (1/tau) (q_v - p_v)
        dy = (g * ((_scaled(y, temperature) - lse_y).exp() - px)).to(y.dtype)
    if row_mask is not None:  # garbage (NaN) in masked rows must not leak through 0 * x
        keep = row_mask.unsqueeze(-1)
        dx = None if dx is None else torch.where(keep, dx, 0.0)
        dy = None if dy is None else torch.where(keep, dy, 0.0)
    return dx, dy


class TorchKLDivFunction(torch.autograd.Function):
    """Per-row KL(P_x || P_y), P = softmax(logits / tau), gradients to whichever input needs
    them. ``row_mask``: bool over the leading dims, or None."""

    @staticmethod
    def forward(ctx, x, y, row_mask, temperature: float):
        ctx.temperature = temperature
        ctx.compiled = compile_enabled()
        if ctx.compiled:
            with torch.no_grad():
                d, lse_x, lse_y = _compiled(_kl_stats)(x, y, row_mask, temperature)
            ctx.save_for_backward(x, y, row_mask, lse_x, lse_y, d)
            return nonnegative(d)
        with torch.no_grad():
            log_px = torch.log_softmax(_scaled(x, temperature), dim=-1)
            log_py = torch.log_softmax(_scaled(y, temperature), dim=-1)
            py = log_py.exp() if ctx.needs_input_grad[1] else None
            diff = log_py.neg_().add_(log_px)  # log p_x - log p_y, in log_py's buffer
            px = log_px.exp_()
            # Entries with p_x = 0 (-inf logits) contribute nothing, even against -inf in y.
            diff.masked_fill_(px == 0, 0.0)
            d = torch.linalg.vecdot(px, diff)  # (..., V) . (..., V) -> (...)
            if row_mask is not None:
                d = torch.where(row_mask, d, 0.0)
        ctx.save_for_backward(px, diff, d, py, row_mask)
        return nonnegative(d)

    @staticmethod
    def backward(ctx, grad_d):
        if ctx.compiled:
            x, y, row_mask, lse_x, lse_y, d = ctx.saved_tensors
            dx, dy = _compiled(_kl_grads)(x, y, row_mask, lse_x, lse_y, d, grad_d,
                                          ctx.temperature, ctx.needs_input_grad[0],
                                          ctx.needs_input_grad[1])
            return dx, dy, None, None
        px, diff, d, py, row_mask = ctx.saved_tensors
        g = (grad_d / ctx.temperature).unsqueeze(-1)
        if row_mask is not None:
            g = torch.where(row_mask.unsqueeze(-1), g, 0.0)
        dx = dy = None
        if ctx.needs_input_grad[0]:
            # dD/dx_v = (1/tau) p_v (log p_v - log q_v - D)
            dx = (diff - d.unsqueeze(-1)).mul_(px).mul_(g)
            if row_mask is not None:  # garbage (NaN) in masked rows must not leak through 0 * x
                dx.masked_fill_(~row_mask.unsqueeze(-1), 0.0)
        if ctx.needs_input_grad[1]:
            # dD/dy_v = (1/tau) (q_v - p_v)
            dy = (py - px).mul_(g)
            if row_mask is not None:
                dy.masked_fill_(~row_mask.unsqueeze(-1), 0.0)
        # fp32 gradients of bf16/fp16 inputs are cast to the input dtype by autograd.
        return dx, dy, None, None


def _logprob_fwd(x, labels, temperature: float, ignore_index: int):
    xs = _scaled(x, temperature)
    lse = torch.logsumexp(xs, dim=-1)
    ignored = labels == ignore_index
    safe = torch.where(ignored, 0, labels).long()
    out = xs.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - lse
    return torch.where(ignored, 0.0, out), safe, ignored, lse


def _logprob_grad(x, safe, ignored, lse, grad_out, temperature: float):
    """(1/tau) (1[v = label] - p_v) per row, as one fused elementwise loop when compiled."""
    g = torch.where(ignored, 0.0, grad_out / temperature).unsqueeze(-1)
    p = (_scaled(x, temperature) - lse.unsqueeze(-1)).exp()
    vocab = torch.arange(x.shape[-1], device=x.device)
    return (g * (torch.where(vocab == safe.unsqueeze(-1), 1.0, 0.0) - p)).to(x.dtype)


class TorchLogprobFunction(torch.autograd.Function):
    """log softmax(x / tau)[label] per row; 0 and no gradient where label == ignore_index."""

    @staticmethod
    def forward(ctx, x, labels, temperature: float, ignore_index: int):
        ctx.compiled = compile_enabled()
        fwd = _compiled(_logprob_fwd) if ctx.compiled else _logprob_fwd
        with torch.no_grad():
            out, safe, ignored, lse = fwd(x, labels, temperature, ignore_index)
        ctx.save_for_backward(x, safe, ignored, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, safe, ignored, lse = ctx.saved_tensors
        if ctx.compiled:
            return (_compiled(_logprob_grad)(x, safe, ignored, lse, grad_out, ctx.temperature),
                    None, None, None)
        g = torch.where(ignored, 0.0, grad_out / ctx.temperature).unsqueeze(-1)
        # dlogp/dx_v = (1/tau) (1[v = label] - p_v)
        p = (_scaled(x, ctx.temperature) - lse.unsqueeze(-1)).exp_()
        dx = p.mul_(g.neg())
        dx.scatter_add_(-1, safe.unsqueeze(-1), g)
        return dx, None, None, None


def log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log((1 - beta) p + beta q) for 0 < beta < 1; -inf where p = q = 0."""
    return torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))


class TorchJSDFunction(torch.autograd.Function):
    """Per-row generalized JSD, m = (1 - beta) P_x + beta P_y, 0 < beta < 1 (x: the student):
    beta KL(P_y || m) + (1 - beta) KL(P_x || m). Saves P and (log P - log m) of each input that
    needs a gradient: two (N, V) fp32 tensors for the student alone."""

    @staticmethod
    def forward(ctx, x, y, beta: float, temperature: float):
        with torch.no_grad():
            log_p = torch.log_softmax(_scaled(x, temperature), dim=-1)
            log_q = torch.log_softmax(_scaled(y, temperature), dim=-1)
            log_m = log_mixture(log_p, log_q, beta)
            p, q = log_p.exp(), log_q.exp()
            # log P - log m, in log P's buffer; entries with P = 0 contribute nothing
            # (0 log 0 = 0, and -inf - -inf where both sides are 0).
            diff_p = log_p.sub_(log_m).masked_fill_(p == 0, 0.0)
            diff_q = log_q.sub_(log_m).masked_fill_(q == 0, 0.0)
            k_p = torch.linalg.vecdot(p, diff_p)  # KL(P_x || m): (..., V) . (..., V) -> (...)
            k_q = torch.linalg.vecdot(q, diff_q)  # KL(P_y || m)
            d = beta * k_q + (1.0 - beta) * k_p
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(p if need_x else None, diff_p if need_x else None, k_p,
                              q if need_y else None, diff_q if need_y else None, k_q)
        ctx.beta, ctx.temperature = beta, temperature
        return nonnegative(d)

    @staticmethod
    def backward(ctx, grad_d):
        p, diff_p, k_p, q, diff_q, k_q = ctx.saved_tensors
        g = (grad_d / ctx.temperature).unsqueeze(-1)
        dx = dy = None
        if ctx.needs_input_grad[0]:
            # dJSD/dx_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
            dx = (diff_p - k_p.unsqueeze(-1)).mul_(p).mul_(g * (1.0 - ctx.beta))
        if ctx.needs_input_grad[1]:
            # dJSD/dy_v = (1/tau) beta q_v (log q_v - log m_v - K_q)
            dy = (diff_q - k_q.unsqueeze(-1)).mul_(q).mul_(g * ctx.beta)
        return dx, dy, None, None

# ------------------------------------------------------------- row blocks of a logits tile


def row_block(n_cols: int) -> int:
    return max(1, _TORCH_BLOCK_ELEMENTS // max(n_cols, 1))


# ----------------------------------------------- divergences on a chunk's tiles (fused_distill)


@dataclass
class TileStats:
    """What ``stats`` learnt about the rows: D per row, plus whatever the gradient needs."""

    d: torch.Tensor  # (n,) fp32
    extra: tuple = ()
    entropy: torch.Tensor | None = None  # (n,) the student's entropy, when asked for


class _TorchTileDivergence(abc.ABC):
    """Shared row-block loop of the torch versions: ``_block`` turns one block of s into
    tau dDiv/ds (when ``want_grad``) and returns Div of its rows."""

    def __init__(self, temperature: float):
        self.inv_t = 1.0 / temperature

    @abc.abstractmethod
    def _block(self, b_s: torch.Tensor, b_u: torch.Tensor, want_grad: bool,
               ent: torch.Tensor | None = None) -> torch.Tensor:
        """Div of the (r, V) block's rows; ``b_s`` becomes tau dDiv/ds when ``want_grad``;
        ``ent`` (r,), when given, gets the student's entropy -sum_v p_v log p_v."""

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        n = s.shape[0]
        d = torch.empty(n, dtype=s.dtype, device=s.device)
        ent = torch.empty(n, dtype=s.dtype, device=s.device) if want_entropy else None
        r = row_block(s.shape[1])
        for a in range(0, n, r):
            b_s, b_u = s[a:a + r], u[a:a + r]
            if self.inv_t != 1.0:
                b_s.mul_(self.inv_t)
                b_u.mul_(self.inv_t)
            d[a:a + r] = self._block(b_s, b_u, want_grad, None if ent is None else ent[a:a + r])
        return TileStats(d, entropy=ent)

    def write_grad(self, s, u, state, g) -> torch.Tensor:
        return g * self.inv_t


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a_v b_v per row of two (r, V) blocks. (r, V) @ (V, r) then the diagonal: r is
    ~2, and MKL's GEMM beats a batched (1, V) @ (V, 1) bmm by ~8x there."""
    return torch.mm(a, b.T).diagonal()


class TorchTileReverseKL(_TorchTileDivergence):
    """KL(p || q); s becomes p (log p - log q - D) = tau dD/ds, u becomes log p - log q."""

    def _block(self, b_s, b_u, want_grad, ent=None):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        torch.sub(log_p, log_q, out=b_u)
        torch.exp(log_p, out=b_s)
        if ent is not None:  # H(p) = -sum_v p_v log p_v
            ent.copy_(_row_dots(b_s, log_p).neg_())
        b_d = _row_dots(b_s, b_u)
        if want_grad:
            # dD/ds_v = (1/tau) p_v (log p_v - log q_v - D); the 1/tau goes to row_scale
            b_s.mul_(b_u.sub_(b_d[:, None]))
        return b_d


class TorchTileForwardKL(_TorchTileDivergence):
    """KL(q || p); s becomes p - q = tau dD/ds."""

    def _block(self, b_s, b_u, want_grad, ent=None):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        q = log_q.exp()
        diff = log_q.sub_(log_p)  # log q - log p
        b_d = _row_dots(q, diff)
        if want_grad or ent is not None:
            torch.exp(log_p, out=b_s)
            if ent is not None:  # H(p) = -sum_v p_v log p_v
                ent.copy_(_row_dots(b_s, log_p).neg_())
            if want_grad:
                # dD/ds_v = (1/tau) (p_v - q_v)
                b_s.sub_(q)
        return b_d


class TorchTileJSD(_TorchTileDivergence):
    """beta KL(q || m) + (1 - beta) KL(p || m), 0 < beta < 1; s becomes
    (1 - beta) p (log p - log m - K_p) = tau dJSD/ds, K_p = KL(p || m)."""

    def __init__(self, temperature: float, jsd_beta: float):
        super().__init__(temperature)
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"TorchTileJSD needs 0 < jsd_beta < 1, got {jsd_beta}")
        self.jsd_beta = jsd_beta

    def _block(self, b_s, b_u, want_grad, ent=None):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        log_m = log_mixture(log_p, log_q, self.jsd_beta)
        p = torch.exp(log_p, out=b_s)
        if ent is not None:  # H(p) = -sum_v p_v log p_v
            ent.copy_(_row_dots(p, log_p).neg_())
        q = torch.exp(log_q, out=b_u)
        diff_p = log_p.sub_(log_m)
        diff_q = log_q.sub_(log_m)
        k_p = _row_dots(p, diff_p)
        b_d = self.jsd_beta * _row_dots(q, diff_q) + (1.0 - self.jsd_beta) * k_p
        if want_grad:
            # dJSD/ds_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
            p.mul_(diff_p.sub_(k_p[:, None])).mul_(1.0 - self.jsd_beta)
        return b_d


def torch_tile_entropy(s: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n,) entropy of softmax(s / tau) per row of an (n, V) tile, in row blocks, reading s
    only (for the Triton tile divergences, whose kernels do not form it)."""
    n = s.shape[0]
    ent = torch.empty(n, dtype=s.dtype, device=s.device)
    # CPU: cache-sized row blocks; elsewhere blocks of 16M elements (few launches).
    r = row_block(s.shape[1]) if s.device.type == "cpu" else max(1, (1 << 24) // s.shape[1])
    for a in range(0, n, r):
        log_p = torch.log_softmax(_scaled(s[a:a + r], temperature), dim=-1)
        ent[a:a + r] = _row_dots(log_p.exp(), log_p).neg_()
    return ent


# ------------------------------------------------- token log-probs on a tile (fused_logprobs)


class TorchTileLogprobs:
    """log p(label) per row and its gradient in torch. ``write_grad`` turns x into
    1[v = label] - p_v and returns the row scale g / tau."""

    def __init__(self, temperature: float):
        self.inv_t = 1.0 / temperature

    def forward(self, x, labels):
        n = x.shape[0]
        lse = torch.empty(n, dtype=x.dtype, device=x.device)
        r = row_block(x.shape[1])
        for a in range(0, n, r):
            b_x = x[a:a + r]
            if self.inv_t != 1.0:
                b_x.mul_(self.inv_t)
            lse[a:a + r] = torch.logsumexp(b_x, dim=-1)
        picked = x.gather(1, labels.unsqueeze(1)).squeeze(1)
        return picked - lse, lse

    def write_grad(self, x, labels, lse, g) -> torch.Tensor:
        r = row_block(x.shape[1])
        for a in range(0, x.shape[0], r):
            # dlogp/dx_v = (1/tau) (1[v = label] - p_v): -p_v here, the label below.
            b_x = x[a:a + r]
            if self.inv_t != 1.0:
                b_x.mul_(self.inv_t)
            b_x.sub_(lse[a:a + r, None]).exp_().neg_()
        x.scatter_add_(1, labels.unsqueeze(1), torch.ones_like(labels, dtype=x.dtype)[:, None])
        return g * self.inv_t


# ---------------------------------- log-probs on a sparse support (support_logprobs, fused)


def chain_factor(t: torch.Tensor, logit_scale: float, softcap: float) -> torch.Tensor:
    """dt/dz of t = c tanh(scale z / c) (or t = scale z when c = 0), from t itself."""
    if not softcap:
        return torch.full_like(t, logit_scale)
    return (1.0 - (t / softcap).square()).mul_(logit_scale)


def torch_row_lse(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n,) lse(x / tau) of the (n, V) rows, in cache-sized row blocks (fp64 for fp64)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    if torch.compiler.is_compiling():  # one op for inductor to fuse (no thread switching)
        return torch.logsumexp(x.to(dt) / temperature, -1)
    lse = torch.empty(x.shape[0], dtype=dt, device=x.device)
    r = row_block(x.shape[1])
    for lo in range(0, x.shape[0], r):
        blk = x[lo:lo + r].to(dt)
        lse[lo:lo + r] = torch.logsumexp(blk if temperature == 1.0 else blk / temperature, -1)
    return lse


def torch_dense_grad(x: torch.Tensor, lse: torch.Tensor, g_sum: torch.Tensor,
                     temperature: float, out: torch.Tensor, logit_scale: float = 1.0,
                     softcap: float = 0.0) -> None:
    """out (n, V) = -(1/tau) p_v G (times dt/dz for a transform), in row blocks; ``out`` may be
    ``x`` itself. Rows with G = 0 get exact zeros (whatever x holds there, NaN included)."""
    dt = lse.dtype
    if torch.compiler.is_compiling():  # whole-tensor ops for inductor to fuse
        f = chain_factor(x.to(dt), logit_scale, softcap) if logit_scale != 1.0 or softcap else 1.0
        grad = ((x.to(dt) / temperature - lse[:, None]).exp() * (-g_sum.to(dt) / temperature)
                [:, None] * f)
        out.copy_(torch.where((g_sum != 0)[:, None], grad, 0.0))
        return
    in_place = out.data_ptr() == x.data_ptr() and x.dtype == dt
    transform = logit_scale != 1.0 or bool(softcap)
    scale = (-g_sum.to(dt) / temperature)[:, None]
    r = row_block(x.shape[1])
    for lo in range(0, x.shape[0], r):
        blk = x[lo:lo + r] if in_place else x[lo:lo + r].to(dt, copy=True)
        f = chain_factor(blk, logit_scale, softcap) if transform else None
        if temperature != 1.0:
            blk.mul_(1.0 / temperature)
        blk.sub_(lse[lo:lo + r, None]).exp_().mul_(scale[lo:lo + r])
        if f is not None:
            blk.mul_(f)
        blk.masked_fill_(scale[lo:lo + r] == 0, 0.0)
        if not in_place:
            out[lo:lo + r] = blk


class TorchSupportLogprobsFunction(torch.autograd.Function):
    """The same in eager torch (``impl="torch"``): lse of the rows in cache-sized blocks and a
    gather; backward rebuilds softmax from the logits block by block. Saves lse per row."""

    @staticmethod
    def forward(ctx, x, ids, slot_valid, temperature: float):
        V, K = x.shape[-1], ids.shape[-1]
        x2 = x.reshape(-1, V)
        valid = slot_valid.reshape(-1, K)
        # Rows without a valid slot may hold NaN padding: their lse is never used.
        lse = torch.where(valid.any(1), torch_row_lse(x2, temperature), 0.0)
        safe = torch.where(valid, ids.reshape(-1, K), 0).long()
        a = x2.gather(1, safe).to(lse.dtype) / temperature - lse[:, None]
        a = torch.where(valid, a, float("-inf"))
        ctx.save_for_backward(x, safe, valid, lse)
        ctx.temperature = temperature
        return a.view(ids.shape)

    @staticmethod
    def backward(ctx, grad_a):
        x, safe, valid, lse = ctx.saved_tensors
        tau = ctx.temperature
        V = x.shape[-1]
        g = torch.where(valid, grad_a.reshape(valid.shape).to(lse.dtype), 0.0)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dx2 = dx.view(-1, V)
        # dL/dx_v = (1/tau) (sum_j g_j 1[v = id_j] - p_v G)
        torch_dense_grad(x.reshape(-1, V), lse, g.sum(1), tau, dx2)
        dx2.scatter_add_(1, safe, (g / tau).to(dx.dtype))
        return dx, None, None, None


def torch_support_stats(tile, ids, valid, tau):
    """(a (n, k), lse (n,)) of the (n, V) tile of logits t."""
    lse = torch_row_lse(tile, tau)
    gathered = tile.gather(1, torch.where(valid, ids, 0).long()) / tau
    return torch.where(valid, gathered - lse[:, None], float("-inf")), lse
