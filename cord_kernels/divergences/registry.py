"""The registry: a divergence's name -> its parts (``common.DivergenceParts``), read by every
driver in place of if-chains over the names:

    the logits-in functions (``logits/``)     :func:`divergence_rows`, :func:`logits_rows`
    the fused-linear chunk driver             :func:`make_tile_divergence`
    the vocabulary-parallel path              both, with a process group

A new divergence adds one line to ``REGISTRY`` (and its name to ``core.options.Divergence``).
"""

from __future__ import annotations

import torch

from cord_kernels.core import vocab_parallel as vp
from cord_kernels.core.dispatch import Impl, resolve_impl
from cord_kernels.core.options import Divergence
from cord_kernels.divergences import jsd, kl, tvd
from cord_kernels.divergences.common import DivergenceParts, DivParams, TileDivergence

REGISTRY: dict[Divergence, DivergenceParts] = {
    Divergence.REVERSE_KL: kl.REVERSE_KL,
    Divergence.FORWARD_KL: kl.FORWARD_KL,
    Divergence.JSD: jsd.JSD,
    Divergence.TVD: tvd.TVD,
}


def parts(divergence: Divergence | str) -> DivergenceParts:
    return REGISTRY[Divergence(divergence)]


def divergence_rows(divergence: Divergence, s: torch.Tensor, u: torch.Tensor,
                    row_mask: torch.Tensor | None, params: DivParams, *, impl,
                    process_group=None) -> torch.Tensor:
    """(...) fp32 Div per row of the logits ``s`` (student) and ``u`` (teacher, already
    detached unless it gets a gradient); with ``process_group`` they are this rank's plain
    local vocabulary slices (see :func:`logits_rows` for DTensors). No argument checks."""
    p = parts(divergence)
    impl = resolve_impl(impl, s, u)
    if process_group is not None:
        return p.parallel_rows(s, u, row_mask, params, process_group, impl)
    if impl is Impl.TORCH:
        return p.torch_rows(s, u, row_mask, params)
    return p.triton_rows(s, u, row_mask, params)


def logits_rows(divergence: Divergence, s: torch.Tensor, u: torch.Tensor, params: DivParams, *,
                impl, process_group=None) -> torch.Tensor:
    """:func:`divergence_rows` of a public logits-in call: a vocabulary-parallel call (a
    group, or DTensor inputs) runs on the local slices."""
    if vp.is_parallel(process_group, s, u):
        local, shard = vp.logits_slices(process_group, None, False, {"s": s, "u": u})
        s, u, process_group = local["s"], local["u"], shard.group
    return divergence_rows(divergence, s, u, None, params, impl=impl,
                           process_group=process_group)


def make_tile_divergence(divergence: Divergence, impl: Impl, params: DivParams,
                         process_group=None) -> TileDivergence:
    """The row math of the fused-linear chunk driver for ``divergence``."""
    p = parts(divergence)
    if process_group is not None:  # vocabulary parallel: tiles of this rank's head rows
        return p.parallel_tile(impl, params, process_group)
    return p.tile(impl, params)
