"""What every divergence supplies to the drivers, and the pieces its implementations share.

A divergence Div(p, q) between p = softmax(s / tau) (student) and q = softmax(u / tau)
(teacher) supplies (``DivergenceParts``):

    rows: per-row Div of logits in, an autograd Function per implementation
        triton_rows(s, u, row_mask, params)             the streaming kernels
        torch_rows(s, u, row_mask, params)              eager torch (any device)
        parallel_rows(s, u, row_mask, params, group, impl)
                                                        s, u: this rank's vocabulary slices
    tiles: the fused-linear chunk driver's row math on (n, V) fp32 tiles (``TileDivergence``)
        tile(impl, params)
        parallel_tile(impl, params, group)              tiles of this rank's head rows

``row_mask`` (bool over the rows, or None): masked rows get Div = 0 and an exactly-zero
gradient whatever they hold.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from cord_kernels.core.dispatch import Impl
from cord_kernels.core.options import JSD_BETA, TEMPERATURE
from cord_kernels.core.torch_path import row_block


@dataclass(frozen=True)
class DivParams:
    """The non-tensor options of a divergence's row math (one frozen object per call)."""

    temperature: float = TEMPERATURE
    jsd_beta: float = JSD_BETA  # the JSD's beta; the other divergences ignore it
    # Triton path: write dDiv/ds into the student logits' own buffer (saves an (N, V) tensor).
    inplace_backward: bool = False


@dataclass
class TileStats:
    """What ``stats`` learnt about a tile's rows: Div per row, plus what the gradient needs."""

    d: torch.Tensor  # (n,) fp32
    extra: tuple = ()
    entropy: torch.Tensor | None = None  # (n,) the student's entropy, when asked for


class TileDivergence(Protocol):
    """One divergence's row math on a chunk's (n, V) tiles (``fused/distill.py``)::

        state = div.stats(s, u, want_grad)     state.d: (n,) fp32 divergence per row
        row_scale = div.write_grad(s, u, state, g, out)
            afterwards diag(row_scale) @ out = diag(g) dDiv/ds (row_scale None: out holds
            it); ``out`` None means s itself

    Torch versions may destroy the tiles in ``stats`` (they form tau dDiv/ds in s while each
    row block is in cache and return g / tau as the row scale); Triton versions only read them
    there and ``write_grad`` runs the streaming backward kernel with s as its output, or with
    ``out`` (an (n, V) tile of another dtype, e.g. the bf16 operand of the backward GEMMs),
    rounded on store. ``grad_into`` says whether ``out`` may be given."""

    grad_into: bool

    def stats(self, s: torch.Tensor, u: torch.Tensor, want_grad: bool = True,
              want_entropy: bool = False) -> TileStats:
        ...

    def write_grad(self, s: torch.Tensor, u: torch.Tensor, state: TileStats,
                   g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
        ...


@dataclass(frozen=True)
class DivergenceParts:
    """One divergence's implementations, as the registry hands them to the drivers."""

    triton_rows: Callable[..., torch.Tensor]
    torch_rows: Callable[..., torch.Tensor]
    parallel_rows: Callable[..., torch.Tensor]
    tile: Callable[..., TileDivergence]
    parallel_tile: Callable[..., TileDivergence]


def pick_tile(triton_tile, torch_tile) -> Callable[..., TileDivergence]:
    """A ``DivergenceParts.tile``: the Triton tile class on the Triton path, else the torch
    one, built from the call's ``DivParams``."""
    def tile(impl: Impl, params: DivParams) -> TileDivergence:
        return (triton_tile if impl is Impl.TRITON else torch_tile)(params)
    return tile


# ------------------------------------------------------------ shared pieces of the tiles


def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a_v b_v per row of two (r, V) blocks. (r, V) @ (V, r) then the diagonal: r is
    ~2 on a CPU, and MKL's GEMM beats a batched (1, V) @ (V, 1) bmm by ~8x there."""
    return torch.mm(a, b.T).diagonal()


def new_entropy(s: torch.Tensor, want: bool) -> torch.Tensor | None:
    """The (n,) fp32 output of the student's entropy per row that the Triton tiles' forward
    kernels fill in their own pass (a constexpr switch), only when asked for (TRL's logged
    entropy): no torch pass over the tile."""
    return torch.empty(s.shape[0], dtype=torch.float32, device=s.device) if want else None


class TorchTileDivergence(abc.ABC):
    """The row-block loop of the torch tile versions: ``_block`` turns one block of s into
    tau dDiv/ds (when ``want_grad``) and returns Div of its rows."""

    grad_into = False  # the gradient is formed in s by stats; write_grad only scales

    def __init__(self, params: DivParams):
        self.inv_t = 1.0 / params.temperature

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


def no_entropy(want_entropy: bool) -> None:
    """The student entropy (the TRL drop-in's second output) is not summed across a group:
    that drop-in takes no ``process_group``, so asking for both is a library error."""
    if want_entropy:
        raise NotImplementedError("the student entropy is not computed over a vocabulary-"
                                  "parallel group")


def masked_rows(d: torch.Tensor, row_mask: torch.Tensor | None) -> torch.Tensor:
    """Div = 0 at masked rows, for the row Functions that do not take a row mask themselves
    (their backward then gets a zero cotangent there and writes exact zeros)."""
    return d if row_mask is None else torch.where(row_mask, d, 0.0)
