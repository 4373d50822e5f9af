"""torch.compile(fullgraph=True) with inductor on CUDA over the Triton custom ops (``gpu``).

The launchers are ``torch.library`` custom ops, opaque leaves of the graph; on CUDA inductor
also generates Triton for the torch around them, so this is the configuration of a compiled
training step. Run with ``CORD_TEST_COMPILED=1 python -m pytest tests/gpu``.
"""

from __future__ import annotations

import pytest
import torch
from helpers import cuda_skip_reason

from cord_kernels import cord_token_loss, forward_kl, token_logprobs

_REASON = cuda_skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _step(s, u, mask, labels):
    loss = cord_token_loss(s, u, mask, impl="triton")
    loss = loss + forward_kl(s, u, impl="triton").mean()
    return loss - token_logprobs(s, labels, impl="triton").mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fullgraph_inductor_matches_eager(dtype):
    torch._dynamo.reset()
    g = torch.Generator(device="cuda").manual_seed(0)
    B, T, V = 4, 64, 32_000
    s = torch.randn(B, T, V, device="cuda", generator=g).to(dtype)
    u = torch.randn(B, T, V, device="cuda", generator=g).to(dtype)
    mask = torch.rand(B, T, device="cuda", generator=g) > 0.3
    labels = torch.randint(0, V, (B, T), device="cuda", generator=g)

    x_eager = s.clone().requires_grad_()
    eager = _step(x_eager, u, mask, labels)
    eager.backward()
    compiled = torch.compile(_step, fullgraph=True, backend="inductor")
    x = s.clone().requires_grad_()
    out = compiled(x, u, mask, labels)
    out.backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(out, eager, **tol)
    torch.testing.assert_close(x.grad, x_eager.grad, **tol)
