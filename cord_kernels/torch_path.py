"""The ``impl="torch"`` path: the kernels' algorithm in eager torch, for CPUs (and any device).

``reference.py`` is written for clarity and is the tests' oracle; letting autograd trace it
costs about twice naive torch on a CPU (a division by tau, a ``where`` and their backward over
every (N, V) element). These autograd Functions compute the same values the way the Triton
kernels do: statistics in forward, the gradient formula written out in backward, no pass that
does not need to happen, and only what backward needs saved:

    reverse/forward KL   saves p and (log p - log q): two (N, V) fp32 tensors
    token log-probs      saves lse per row only; backward rebuilds softmax from the logits
    generalized JSD      saves p and (log p - log m) (and q, log q - log m for teacher_grad)

Masked rows (``row_mask`` False) get D = 0 and an exactly-zero gradient whatever they hold.

``CORD_TORCH_COMPILE=1`` (opt-in: the ``torch_compile`` setting of :mod:`cord_kernels.settings`,
read at each call) runs the same math through
``torch.compile`` instead, written the way the Triton kernels stream it: forward computes only
D and the per-row log-sum-exps, backward recomputes softmax from the logits and writes the
gradient in one fused loop. Nothing of size (N, V) is saved besides the inputs themselves, and
on a CPU it runs about 2x faster than ``torch.compile`` of naive torch (``pytest bench/`` has a
row for it). The first call compiles (tens of seconds on a CPU; the bench reports it), so it is
off by default; inside an outer ``torch.compile`` the eager functions are traced instead.
"""

from __future__ import annotations

import functools
import math

import torch

from cord_kernels import settings


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
            return d
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
        return d

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
        return d

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
