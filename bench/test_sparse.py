"""Sparse-teacher losses (issue 22): TRL's server loss (forward KL on the teacher's top-k plus
the tail bucket, mean over valid tokens) as cord_kernels, naive torch and TRL's own functions
compute it, logits in and hidden states in, with the 3-GEMM floor (torch.mm) and the dense-teacher
fused reverse KL for memory, all in one run (fwd+bwd: time and peak memory).

Default on the CPU: k = 8 at N = 256 (V = 151,936, H = 896), well under a minute. Issue 22's
sizes (N = 4096, k in {1, 8, 64}) run on CUDA, with ``CORD_BENCH_FULL=1``, or alone with
``CORD_BENCH_SPARSE_FULL=1 pytest bench/test_sparse.py``.
"""

from __future__ import annotations

import pytest

from bench.harness import CONFIG, run_benchmark
from bench.providers import FUSED_PROVIDERS, LOGITS_PROVIDERS

CASES = [
    pytest.param(loss, provider, shape, "fwd+bwd", id=f"{loss}-{shape.id}-{provider.slug}")
    for shape in CONFIG.sparse_logits_shapes
    for k in CONFIG.sparse_ks
    for loss in (f"sparse_teacher_loss[k{k}]",)
    for provider in LOGITS_PROVIDERS[loss]
] + [
    pytest.param(loss, provider, shape, "fwd+bwd", id=f"{loss}-{shape.id}-{provider.slug}")
    for shape in CONFIG.sparse_fused_shapes
    for k in CONFIG.sparse_ks
    for loss in (f"fused_linear_sparse_teacher_loss[k{k}]",)
    for provider in FUSED_PROVIDERS[loss]
]


@pytest.mark.parametrize("loss,provider,shape,mode", CASES)
def test_sparse(benchmark, loss, provider, shape, mode):
    run_benchmark(benchmark, loss=loss, provider=provider, shape=shape, mode=mode)
