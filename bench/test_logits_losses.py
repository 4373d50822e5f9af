"""Logits-in losses: reverse KL, the CORD token loss and token log-probs, every provider,
shape and mode (fwd, bwd, fwd+bwd). Memory and ratios are recorded with fwd+bwd."""

from __future__ import annotations

import pytest

from bench.harness import CONFIG, run_benchmark
from bench.providers import LOGITS_LOSSES, LOGITS_PROVIDERS

# Shape-major order: the inputs of one shape are built once and dropped before the next.
CASES = [
    pytest.param(loss, provider, shape, mode,
                 id=f"{loss}-{shape.id}-{provider.slug}-{mode}")
    for shape in CONFIG.logits_shapes
    for loss in LOGITS_LOSSES
    if loss != "jsd"  # bench/test_distill.py: fwd+bwd only in the default run
    for provider in LOGITS_PROVIDERS[loss]
    for mode in CONFIG.modes
    if provider.modes is None or mode in provider.modes
]


@pytest.mark.parametrize("loss,provider,shape,mode", CASES)
def test_logits_loss(benchmark, loss, provider, shape, mode):
    run_benchmark(benchmark, loss=loss, provider=provider, shape=shape, mode=mode)
