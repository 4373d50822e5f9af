"""The logits gradient rounded on store into the backward GEMMs' operand dtype (issue 34 B).

On a GPU whose head multiplies natively in bf16/fp16, the fused-linear distillation driver
hands the streaming backward kernel a separate (n, V) tile in that dtype: the kernel's fp32
gradient is rounded once as it is stored, with no fp32 write and no cast pass over the tile.
Native low-precision GEMMs with fp32 output do not exist on the CPU, so the driver's choice is
tested here as a function, and the kernels' stores under the interpreter: the bf16 tile holds
the fp32 gradient rounded once to bf16, for every divergence with a streaming backward.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cord_kernels.core.dispatch import Impl
from cord_kernels.divergences.common import DivParams
from cord_kernels.divergences.registry import make_tile_divergence
from cord_kernels.fused.chunked_head import LogitTransform, rows_per_chunk
from cord_kernels.fused.distill import gradient_tile_dtype

DIVERGENCES = [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.3), ("tvd", 0.5)]


@pytest.mark.parametrize("name,beta", DIVERGENCES)
def test_kernel_rounds_the_gradient_into_a_bf16_tile(name, beta, interpret):
    g = torch.Generator().manual_seed(3)
    n, V = 5, 300  # V not a multiple of the block: the masked tail is stored too
    s = torch.randn(n, V, generator=g) * 3
    u = torch.randn(n, V, generator=g) * 3
    w = torch.rand(n, generator=g) + 0.5
    w[2] = 0.0  # a row with weight 0 gets exact zeros
    div = make_tile_divergence(name, Impl.TRITON, DivParams(1.3, beta))
    assert div.grad_into

    s_before = s.clone()
    state = div.stats(s, u)
    out = torch.full((n, V), float("nan"), dtype=torch.bfloat16)
    scale = div.write_grad(s, u, state, w, out)
    fp32 = s_before.clone()
    scale_fp32 = div.write_grad(fp32, u, div.stats(s_before, u), w)

    assert scale is None and scale_fp32 is None
    assert torch.equal(s, s_before)  # the student tile is only read
    # Rounded once, on store: the compiled kernel rounds to nearest even (cvt.rn.bf16.f32);
    # the interpreter truncates. Either way one of the two bf16 neighbours of the fp32 value.
    nearest = fp32.to(torch.bfloat16)
    truncated = (fp32.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    assert ((out == nearest) | (out == truncated)).all()
    assert torch.equal(out[2], torch.zeros(V, dtype=torch.bfloat16))


def test_torch_tiles_form_the_gradient_in_the_student_tile():
    for name, beta in DIVERGENCES:
        assert not make_tile_divergence(name, Impl.TORCH, DivParams(1.0, beta)).grad_into


@pytest.mark.parametrize("native,grad_into,transform,expected", [
    (True, True, LogitTransform(), torch.bfloat16),
    (False, True, LogitTransform(), None),  # fp32 GEMMs read the fp32 tile as it is
    (True, False, LogitTransform(), None),  # torch row math forms it in the student tile
    (True, True, LogitTransform(softcap=30.0), None),  # dt/dz is chained after the kernel
    (True, True, LogitTransform(logit_scale=0.5), None),
])
def test_the_driver_uses_a_gradient_tile_only_where_nothing_follows_the_kernel(
        native, grad_into, transform, expected):
    head = SimpleNamespace(native=native, weight=torch.empty(0, dtype=torch.bfloat16))
    divergence = SimpleNamespace(grad_into=grad_into)
    assert gradient_tile_dtype(head, divergence, transform) == expected


def test_the_chunk_budget_holds_the_gradient_tile():
    V, gib = 151_936, 1 << 30
    two_fp32 = rows_per_chunk(gib, V, 2, torch.float32)
    with_grad = rows_per_chunk(gib, V, 2, torch.float32, torch.bfloat16)
    assert two_fp32 == gib // (8 * V)
    assert with_grad == gib // (10 * V) and with_grad * 10 * V <= gib
