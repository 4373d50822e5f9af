"""The ``impl="torch"`` path's shared pieces: the kernels' algorithm in eager torch, for CPUs.

The divergences' torch math lives with each divergence (``divergences/<name>/torch_ops.py``);
this module holds what is not a divergence, and what they share:

    helpers                                      scaled, compile_enabled, compiled, row_block
    token log-probs (logits in, tiles)           TorchLogprobFunction, TorchTileLogprobs
    log-probs on a sparse support                TorchSupportLogprobsFunction,
                                                 torch_support_stats, torch_dense_grad,
                                                 torch_row_lse, chain_factor

``reference.py`` is written for clarity and is the tests' oracle (nothing in the library
imports it); letting autograd trace it costs about twice naive torch on a CPU. These autograd
Functions compute the same values the way the Triton kernels do: statistics in forward, the
gradient formula written out in backward, and only what backward needs saved (token
log-probs: lse per row; backward rebuilds softmax from the logits).

``CORD_TORCH_COMPILE=1`` (opt-in, read at each call) runs the same math through
``torch.compile`` instead (:func:`compiled`), written the way the Triton kernels stream it:
forward computes only the per-row statistics, backward recomputes softmax from the logits and
writes the gradient in one fused loop. The first call compiles (tens of seconds on a CPU), so
it is off by default; inside an outer ``torch.compile`` the eager functions are traced
instead.
"""

from __future__ import annotations

import functools

import torch

from cord_kernels import settings

# Row blocks of the torch path's elementwise math hold about this many elements per tensor
# (~1.5 MB of fp32): the two tiles' blocks and their temporaries fit in a 4 MB L2.
_TORCH_BLOCK_ELEMENTS = 384 * 1024


def scaled(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """x / tau in the compute dtype (fp64 stays fp64), without a pass when tau = 1."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dt)
    return x if temperature == 1.0 else x / temperature


def compile_enabled() -> bool:
    """Whether the opt-in compiled torch path is on (``CORD_TORCH_COMPILE=1``)."""
    return settings.get().torch_compile and not torch.compiler.is_compiling()


@functools.cache
def compiled(fn):
    # Built on first use: compiling costs seconds, which the eager path never pays.
    return torch.compile(fn, fullgraph=True)


def _logprob_fwd(x, labels, temperature: float, ignore_index: int):
    xs = scaled(x, temperature)
    lse = torch.logsumexp(xs, dim=-1)
    ignored = labels == ignore_index
    safe = torch.where(ignored, 0, labels).long()
    out = xs.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - lse
    return torch.where(ignored, 0.0, out), safe, ignored, lse


def _logprob_grad(x, safe, ignored, lse, grad_out, temperature: float):
    """(1/tau) (1[v = label] - p_v) per row, as one fused elementwise loop when compiled."""
    g = torch.where(ignored, 0.0, grad_out / temperature).unsqueeze(-1)
    p = (scaled(x, temperature) - lse.unsqueeze(-1)).exp()
    vocab = torch.arange(x.shape[-1], device=x.device)
    return (g * (torch.where(vocab == safe.unsqueeze(-1), 1.0, 0.0) - p)).to(x.dtype)


class TorchLogprobFunction(torch.autograd.Function):
    """log softmax(x / tau)[label] per row; 0 and no gradient where label == ignore_index."""

    @staticmethod
    def forward(ctx, x, labels, temperature: float, ignore_index: int):
        ctx.compiled = compile_enabled()
        fwd = compiled(_logprob_fwd) if ctx.compiled else _logprob_fwd
        with torch.no_grad():
            out, safe, ignored, lse = fwd(x, labels, temperature, ignore_index)
        ctx.save_for_backward(x, safe, ignored, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, safe, ignored, lse = ctx.saved_tensors
        if ctx.compiled:
            return (compiled(_logprob_grad)(x, safe, ignored, lse, grad_out, ctx.temperature),
                    None, None, None)
        g = torch.where(ignored, 0.0, grad_out / ctx.temperature).unsqueeze(-1)
        # dlogp/dx_v = (1/tau) (1[v = label] - p_v)
        p = (scaled(x, ctx.temperature) - lse.unsqueeze(-1)).exp_()
        dx = p.mul_(g.neg())
        dx.scatter_add_(-1, safe.unsqueeze(-1), g)
        return dx, None, None, None


# ------------------------------------------------------------- row blocks of a logits tile


def row_block(n_cols: int) -> int:
    return max(1, _TORCH_BLOCK_ELEMENTS // max(n_cols, 1))


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
