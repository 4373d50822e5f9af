"""Per-row divergence math on the (n, V) logits tiles of one chunk of the fused-linear losses.

:class:`TileDivergence` is the contract the chunk driver (``fused/distill.py``) relies on; each
divergence (reverse KL, forward KL, generalized JSD) has a torch implementation (in
``core/torch_path.py``, with the rest of the eager math) and a Triton one (here):

    state = div.stats(s, u, want_grad)     state.d: (n,) fp32 divergence per row
    row_scale = div.write_grad(s, u, state, g)
        afterwards diag(row_scale) @ s = diag(g) dDiv/ds (row_scale None: s holds it itself)

The torch versions destroy the tiles in ``stats``: while each row block is still in cache they
form the unweighted tau dDiv/ds in s, and leave g / tau to the small (n, H) GEMM operands. The
Triton versions only read the tiles in ``stats``; ``write_grad`` runs the streaming backward
kernel with s as its output, weighted per row.

Tiles come out of a GEMM, so every logit is finite: the torch versions skip the -inf guards of
the logits-in path (a probability that underflows to 0 still has a finite log).
"""

from __future__ import annotations

from typing import Protocol

import torch

from cord_kernels.core.dispatch import Impl
from cord_kernels.core.options import Divergence
from cord_kernels.core.torch_path import (
    TileStats,
    TorchTileForwardKL,
    TorchTileJSD,
    TorchTileReverseKL,
    torch_tile_entropy,
)
from cord_kernels.core.vocab_parallel import (
    VocabParallelTileDivergence,
    combine_kl_rows,
    no_entropy,
)
from cord_kernels.logits.jsd import jsd_bwd, jsd_fwd
from cord_kernels.logits.kl import kl_bwd, kl_fwd


class TileDivergence(Protocol):
    """One divergence's row math on a chunk's tiles (a strategy: torch or Triton)."""

    def stats(self, s: torch.Tensor, u: torch.Tensor, want_grad: bool = True,
              want_entropy: bool = False) -> TileStats:
        """Div per row of the (n, V) student and teacher logits tiles ``s``, ``u`` (and, with
        ``want_entropy``, the student's entropy per row in ``entropy``)."""
        ...

    def write_grad(self, s: torch.Tensor, u: torch.Tensor, state: TileStats,
                   g: torch.Tensor) -> torch.Tensor | None:
        """Turns s into dDiv/ds weighted by ``g`` (n,), up to the returned row scale."""
        ...


# ------------------------------------------------------------------------------ Triton


def _entropy(s: torch.Tensor, temperature: float, want: bool) -> torch.Tensor | None:
    """The student's entropy per row, only when asked for (TRL's logged entropy): one more
    read of the tile in torch row blocks before ``write_grad`` overwrites it; no GEMM."""
    return torch_tile_entropy(s, temperature).float() if want else None


class TritonTileReverseKL:
    """KL(p || q) through the streaming kernels of ``logits/kl.py``."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        d, lse_s, lse_u = kl_fwd(s, u, None, self.temperature)
        return TileStats(d, (lse_s, lse_u), _entropy(s, self.temperature, want_entropy))

    def write_grad(self, s, u, state, g) -> None:
        kl_bwd(s, u, *state.extra, state.d, g, self.temperature, s, None)
        return None


class TritonTileForwardKL(TritonTileReverseKL):
    """KL(q || p): the same kernels with the roles swapped, the gradient going to y = s."""

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        d, lse_u, lse_s = kl_fwd(u, s, None, self.temperature)
        return TileStats(d, (lse_u, lse_s), _entropy(s, self.temperature, want_entropy))

    def write_grad(self, s, u, state, g) -> None:
        kl_bwd(u, s, *state.extra, state.d, g, self.temperature, None, s)
        return None


class TritonTileJSD:
    """The generalized JSD through the streaming kernels of ``logits/jsd.py``."""

    def __init__(self, temperature: float, jsd_beta: float):
        self.temperature, self.jsd_beta = temperature, jsd_beta

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        d, stats = jsd_fwd(s, u, self.jsd_beta, self.temperature)
        return TileStats(d, (stats,), _entropy(s, self.temperature, want_entropy))

    def write_grad(self, s, u, state, g) -> None:
        jsd_bwd(s, u, state.extra[0], g, self.jsd_beta, self.temperature, s, None)
        return None


class VocabParallelTritonTileKL:
    """A KL's streaming kernels on a tile of this rank's vocabulary slice: the kernel's D and
    lse of the slice, combined over the group by 2 all-reduces
    (``vocab_parallel.combine_kl_rows``); the backward kernel then gets the global statistics
    and writes the slice's part of the full gradient."""

    def __init__(self, inner: TritonTileReverseKL, group):
        self.inner, self.group = inner, group

    def stats(self, s, u, want_grad: bool = True, want_entropy: bool = False) -> TileStats:
        no_entropy(want_entropy)
        state = self.inner.stats(s, u, want_grad)
        d, lse_1, lse_2 = combine_kl_rows(state.d, *state.extra, None, self.group)
        return TileStats(d, (lse_1, lse_2))

    def write_grad(self, s, u, state, g) -> None:
        return self.inner.write_grad(s, u, state, g)


def make_tile_divergence(divergence: Divergence, jsd_beta: float, temperature: float,
                    impl: Impl, process_group=None) -> TileDivergence:
    if process_group is not None:  # vocabulary parallel
        if impl is Impl.TRITON and divergence is not Divergence.JSD:
            inner = TritonTileForwardKL if divergence is Divergence.FORWARD_KL \
                else TritonTileReverseKL
            return VocabParallelTritonTileKL(inner(temperature), process_group)
        return VocabParallelTileDivergence(Divergence(divergence).value, jsd_beta,
                                           temperature, process_group)
    if divergence is Divergence.JSD:
        cls = TritonTileJSD if impl is Impl.TRITON else TorchTileJSD
        return cls(temperature, jsd_beta)
    if divergence is Divergence.FORWARD_KL:
        return (TritonTileForwardKL if impl is Impl.TRITON else TorchTileForwardKL)(temperature)
    return (TritonTileReverseKL if impl is Impl.TRITON else TorchTileReverseKL)(temperature)

