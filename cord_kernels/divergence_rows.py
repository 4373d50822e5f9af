"""Per-row divergence math on the (n, V) logits tiles of one chunk of the fused-linear losses.

:class:`DivergenceRows` is the contract the chunk driver (``fused_distill.py``) relies on; each
divergence (reverse KL, forward KL, generalized JSD) has a torch implementation (in
``torch_path.py``, with the rest of the eager math) and a Triton one (here):

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

import enum
from typing import Protocol

import torch

from cord_kernels._dispatch import Impl
from cord_kernels.jsd import jsd_bwd, jsd_fwd
from cord_kernels.kl import kl_bwd, kl_fwd
from cord_kernels.torch_path import RowState, TorchForwardKL, TorchJSD, TorchReverseKL


class Divergence(str, enum.Enum):
    """The per-token divergence of a distillation loss (p: student, q: teacher)."""

    REVERSE_KL = "reverse_kl"  # KL(p || q)
    FORWARD_KL = "forward_kl"  # KL(q || p)
    JSD = "jsd"  # beta KL(q || m) + (1 - beta) KL(p || m), m = (1 - beta) p + beta q


DIVERGENCES = tuple(d.value for d in Divergence)


class DivergenceRows(Protocol):
    def stats(self, s: torch.Tensor, u: torch.Tensor, want_grad: bool = True) -> RowState:
        """Div per row of the (n, V) student and teacher logits tiles ``s``, ``u``."""
        ...

    def write_grad(self, s: torch.Tensor, u: torch.Tensor, state: RowState,
                   g: torch.Tensor) -> torch.Tensor | None:
        """Turns s into dDiv/ds weighted by ``g`` (n,), up to the returned row scale."""
        ...


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

