"""Per-row divergence math on the (n, V) logits tiles of one chunk of the fused-linear losses.

:class:`DivergenceRows` is the contract the chunk driver (``fused_distill.py``) relies on; each
divergence (reverse KL, forward KL, generalized JSD) has a torch and a Triton implementation:

    state = rows.stats(s, u, want_grad)    state.d: (n,) fp32 divergence per row
    row_scale = rows.write_grad(s, u, state, g)
        afterwards diag(row_scale) @ s = diag(g) dDiv/ds (row_scale None: s holds it itself)

The torch versions destroy the tiles in ``stats``: while each row block is still in cache they
form the unweighted tau dDiv/ds in s, and leave g / tau to the small (n, H) GEMM operands. The
Triton versions only read the tiles in ``stats``; ``write_grad`` runs the streaming backward
kernel with s as its output, weighted per row.

Tiles come out of a GEMM, so every logit is finite: the torch versions skip the -inf guards of
the logits-in path (a probability that underflows to 0 still has a finite log).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Protocol

import torch

from cord_kernels._dispatch import Impl
from cord_kernels.fused_linear import row_block
from cord_kernels.jsd import jsd_bwd, jsd_fwd
from cord_kernels.kl import kl_bwd, kl_fwd
from cord_kernels.torch_path import log_mixture


class Divergence(str, enum.Enum):
    """The per-token divergence of a distillation loss (p: student, q: teacher)."""

    REVERSE_KL = "reverse_kl"  # KL(p || q)
    FORWARD_KL = "forward_kl"  # KL(q || p)
    JSD = "jsd"  # beta KL(q || m) + (1 - beta) KL(p || m), m = (1 - beta) p + beta q


DIVERGENCES = tuple(d.value for d in Divergence)


@dataclass
class RowState:
    """What ``stats`` learnt about the rows: D per row, plus whatever the gradient needs."""

    d: torch.Tensor  # (n,) fp32
    extra: tuple = ()


class DivergenceRows(Protocol):
    def stats(self, s: torch.Tensor, u: torch.Tensor, want_grad: bool = True) -> RowState:
        """Div per row of the (n, V) student and teacher logits tiles ``s``, ``u``."""
        ...

    def write_grad(self, s: torch.Tensor, u: torch.Tensor, state: RowState,
                   g: torch.Tensor) -> torch.Tensor | None:
        """Turns s into dDiv/ds weighted by ``g`` (n,), up to the returned row scale."""
        ...


# ------------------------------------------------------------------------------- torch


class _TorchRows(abc.ABC):
    """Shared row-block loop of the torch versions: ``_block`` turns one block of s into
    tau dDiv/ds (when ``want_grad``) and returns Div of its rows."""

    def __init__(self, temperature: float):
        self.inv_t = 1.0 / temperature

    @abc.abstractmethod
    def _block(self, b_s: torch.Tensor, b_u: torch.Tensor, want_grad: bool) -> torch.Tensor:
        """Div of the (r, V) block's rows; ``b_s`` becomes tau dDiv/ds when ``want_grad``."""

    def stats(self, s, u, want_grad: bool = True) -> RowState:
        n = s.shape[0]
        d = torch.empty(n, dtype=s.dtype, device=s.device)
        r = row_block(s.shape[1])
        for a in range(0, n, r):
            b_s, b_u = s[a:a + r], u[a:a + r]
            if self.inv_t != 1.0:
                b_s.mul_(self.inv_t)
                b_u.mul_(self.inv_t)
            d[a:a + r] = self._block(b_s, b_u, want_grad)
        return RowState(d)

    def write_grad(self, s, u, state, g) -> torch.Tensor:
        return g * self.inv_t


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a_v b_v per row of two (r, V) blocks. (r, V) @ (V, r) then the diagonal: r is
    ~2, and MKL's GEMM beats a batched (1, V) @ (V, 1) bmm by ~8x there."""
    return torch.mm(a, b.T).diagonal()


class TorchReverseKL(_TorchRows):
    """KL(p || q); s becomes p (log p - log q - D) = tau dD/ds, u becomes log p - log q."""

    def _block(self, b_s, b_u, want_grad):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        torch.sub(log_p, log_q, out=b_u)
        torch.exp(log_p, out=b_s)
        b_d = _row_dots(b_s, b_u)
        if want_grad:
            # dD/ds_v = (1/tau) p_v (log p_v - log q_v - D); the 1/tau goes to row_scale
            b_s.mul_(b_u.sub_(b_d[:, None]))
        return b_d


class TorchForwardKL(_TorchRows):
    """KL(q || p); s becomes p - q = tau dD/ds."""

    def _block(self, b_s, b_u, want_grad):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        q = log_q.exp()
        diff = log_q.sub_(log_p)  # log q - log p
        b_d = _row_dots(q, diff)
        if want_grad:
            # dD/ds_v = (1/tau) (p_v - q_v)
            torch.exp(log_p, out=b_s).sub_(q)
        return b_d


class TorchJSD(_TorchRows):
    """beta KL(q || m) + (1 - beta) KL(p || m), 0 < beta < 1; s becomes
    (1 - beta) p (log p - log m - K_p) = tau dJSD/ds, K_p = KL(p || m)."""

    def __init__(self, temperature: float, beta: float):
        super().__init__(temperature)
        if not 0.0 < beta < 1.0:
            raise ValueError(f"TorchJSD needs 0 < beta < 1, got {beta}")
        self.beta = beta

    def _block(self, b_s, b_u, want_grad):
        log_p = torch.log_softmax(b_s, dim=-1)
        log_q = torch.log_softmax(b_u, dim=-1)
        log_m = log_mixture(log_p, log_q, self.beta)
        p = torch.exp(log_p, out=b_s)
        q = torch.exp(log_q, out=b_u)
        diff_p = log_p.sub_(log_m)
        diff_q = log_q.sub_(log_m)
        k_p = _row_dots(p, diff_p)
        b_d = self.beta * _row_dots(q, diff_q) + (1.0 - self.beta) * k_p
        if want_grad:
            # dJSD/ds_v = (1/tau) (1 - beta) p_v (log p_v - log m_v - K_p)
            p.mul_(diff_p.sub_(k_p[:, None])).mul_(1.0 - self.beta)
        return b_d


# ------------------------------------------------------------------------------ Triton


class TritonReverseKL:
    """KL(p || q) through the streaming kernels of ``kl.py``."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def stats(self, s, u, want_grad: bool = True) -> RowState:
        d, lse_s, lse_u = kl_fwd(s, u, None, self.temperature)
        return RowState(d, (lse_s, lse_u))

    def write_grad(self, s, u, state, g) -> None:
        kl_bwd(s, u, *state.extra, state.d, g, self.temperature, s, None)
        return None


class TritonForwardKL(TritonReverseKL):
    """KL(q || p): the same kernels with the roles swapped, the gradient going to y = s."""

    def stats(self, s, u, want_grad: bool = True) -> RowState:
        d, lse_u, lse_s = kl_fwd(u, s, None, self.temperature)
        return RowState(d, (lse_u, lse_s))

    def write_grad(self, s, u, state, g) -> None:
        kl_bwd(u, s, *state.extra, state.d, g, self.temperature, None, s)
        return None


class TritonJSD:
    """The generalized JSD through the streaming kernels of ``jsd.py``."""

    def __init__(self, temperature: float, beta: float):
        self.temperature, self.beta = temperature, beta

    def stats(self, s, u, want_grad: bool = True) -> RowState:
        d, stats = jsd_fwd(s, u, self.beta, self.temperature)
        return RowState(d, (stats,))

    def write_grad(self, s, u, state, g) -> None:
        jsd_bwd(s, u, state.extra[0], g, self.beta, self.temperature, s, None)
        return None


def resolve_divergence(divergence: str, beta: float) -> Divergence:
    """The divergence actually computed: the JSD at beta = 0 / 1 is forward / reverse KL."""
    div = Divergence(divergence)
    if div is Divergence.JSD and beta in (0.0, 1.0):
        return Divergence.FORWARD_KL if beta == 0.0 else Divergence.REVERSE_KL
    return div


def divergence_rows(divergence: Divergence, beta: float, temperature: float,
                    impl: Impl) -> DivergenceRows:
    if divergence is Divergence.JSD:
        cls = TritonJSD if impl is Impl.TRITON else TorchJSD
        return cls(temperature, beta)
    if divergence is Divergence.FORWARD_KL:
        return (TritonForwardKL if impl is Impl.TRITON else TorchForwardKL)(temperature)
    return (TritonReverseKL if impl is Impl.TRITON else TorchReverseKL)(temperature)

