"""Hidden states in: the fused linear + loss path against the plain-GEMM floor, naive torch
(materialised logits), TRL's chunked functions and Liger's chunked JSD loss.

The default is SPEC section 3's comparison (N=1024, H=896, V=151936, fwd+bwd, ragged sequences
of ~200 tokens with a random per-token mask); ``CORD_BENCH_FULL=1`` adds N=4096 and larger.
cord_kernels' fused-linear losses are skipped, with the reason, while they do not import.
"""

from __future__ import annotations

import pytest

from bench.harness import CONFIG, run_benchmark
from bench.providers import FUSED_PROVIDERS

CASES = [
    pytest.param(loss, provider, shape, mode,
                 id=f"{loss}-{shape.id}-{provider.slug}-{mode}")
    for loss, shapes in (("fused_linear_cord_token_loss", CONFIG.fused_shapes),
                         ("fused_linear_token_logprobs", CONFIG.fused_logprob_shapes))
    for shape in shapes
    for provider in FUSED_PROVIDERS[loss]
    for mode in CONFIG.fused_modes
]


@pytest.mark.parametrize("loss,provider,shape,mode", CASES)
def test_fused_linear(benchmark, loss, provider, shape, mode):
    run_benchmark(benchmark, loss=loss, provider=provider, shape=shape, mode=mode)
