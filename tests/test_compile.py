"""The losses inside torch.compile(fullgraph=True): the Triton launchers are torch custom ops
(opaque graph leaves), and the torch path is plain traceable torch."""

from __future__ import annotations

import pytest
import torch

from cord_kernels import cord_token_loss, forward_kl, token_logprobs


def _step(impl):
    def step(s, u, mask, labels):
        loss = cord_token_loss(s, u, mask, impl=impl)
        loss = loss + forward_kl(s, u, impl=impl).mean()
        return loss - token_logprobs(s, labels, impl=impl).mean()

    return step


def _data():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 6, 40, generator=g)
    u = torch.randn(2, 6, 40, generator=g)
    mask = torch.rand(2, 6, generator=g) > 0.3
    labels = torch.randint(0, 40, (2, 6), generator=g)
    return s, u, mask, labels


@pytest.mark.parametrize(
    "impl, backend",
    [
        pytest.param("torch", "inductor", id="torch-inductor"),
        # The interpreter runs the custom ops eagerly inside the compiled graph.
        pytest.param("triton", "aot_eager", id="triton-interpret-aot_eager"),
    ],
)
def test_fullgraph_matches_eager(impl, backend, interpret):
    torch._dynamo.reset()
    s, u, mask, labels = _data()
    x_eager = s.clone().requires_grad_()
    eager = _step(impl)(x_eager, u, mask, labels)
    eager.backward()

    compiled = torch.compile(_step(impl), fullgraph=True, backend=backend)
    x = s.clone().requires_grad_()
    out = compiled(x, u, mask, labels)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-5, atol=1e-6)


def test_custom_ops_pass_opcheck(interpret):
    """torch.library's own consistency checks (schema, fake tensors, autograd registration)."""
    from cord_kernels.divergences.kl.triton_ops import kl_fwd_op as _kl_fwd_op
    from cord_kernels.logits.token_logprobs import _logprob_fwd_op

    s, u, mask, labels = _data()
    torch.library.opcheck(_kl_fwd_op, (s, u, mask, 1.0),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(_logprob_fwd_op, (s, labels, 1.0, -100),
                          test_utils=("test_schema", "test_faketensor"))
