"""The general distillation losses: ``jsd`` (logits in, beta 0.5) against naive torch,
torch.compile, TRL's ``generalized_jsd_loss`` and Liger's ``LigerJSD``; and
``fused_linear_distill_loss`` for each divergence against the 4-GEMM floor, TRL's
``ChunkedDivergenceFunction`` and Liger's ``LigerFusedLinearJSDLoss`` at the matching beta
(reverse KL 1, forward KL 0, JSD 0.5), all in the same run.

The default run keeps this cheap: jsd at the smallest logits shape, fwd+bwd, and the fused JSD
at N=64 without the naive row (SPEC's N=1024 comparison per divergence, side by side: ``python -m
bench.distill_compare``). ``CORD_BENCH_FULL=1`` runs jsd at every shape and mode and the three
fused divergences at the fused-linear shapes.
"""

from __future__ import annotations

import pytest

from bench.config import QWEN2_0_5B_HIDDEN, QWEN2_VOCAB, HiddenShape
from bench.harness import CONFIG, run_benchmark
from bench.providers import DISTILL_LOSSES, FUSED_PROVIDERS, LOGITS_PROVIDERS

if CONFIG.full or CONFIG.on_cuda:
    JSD_SHAPES, JSD_MODES = CONFIG.logits_shapes, CONFIG.modes
    FUSED = [(loss, shape) for loss in DISTILL_LOSSES for shape in CONFIG.fused_shapes]
else:
    JSD_SHAPES, JSD_MODES = CONFIG.logits_shapes[:1], ("fwd+bwd",)
    small = min(CONFIG.fused_logprob_shapes, key=lambda s: s.n_tokens)
    if small.vocab == QWEN2_VOCAB:  # not the CORD_BENCH_QUICK shapes
        small = HiddenShape(64, QWEN2_VOCAB, QWEN2_0_5B_HIDDEN)
    FUSED = [("fused_linear_distill_loss[jsd]", small)]
# The default run leaves out the naive (materialised logits) fused row: its peers are the point.
FUSED_ROLES = ("ours", "floor", "naive", "peer") if CONFIG.full or CONFIG.on_cuda else (
    "ours", "floor", "peer")

CASES = [
    pytest.param("jsd", provider, shape, mode, id=f"jsd-{shape.id}-{provider.slug}-{mode}")
    for shape in JSD_SHAPES
    for provider in LOGITS_PROVIDERS["jsd"]
    for mode in JSD_MODES
] + [
    pytest.param(loss, provider, shape, mode, id=f"{loss}-{shape.id}-{provider.slug}-{mode}")
    for loss, shape in FUSED
    for provider in FUSED_PROVIDERS[loss]
    if provider.role in FUSED_ROLES
    for mode in CONFIG.fused_modes
]


@pytest.mark.parametrize("loss,provider,shape,mode", CASES)
def test_distill(benchmark, loss, provider, shape, mode):
    run_benchmark(benchmark, loss=loss, provider=provider, shape=shape, mode=mode)
