"""The sparse-teacher losses inside torch.compile(fullgraph=True): the support kernels are torch
custom ops (opaque graph leaves), the torch path and the (B, T, k) math are traceable torch."""

from __future__ import annotations

import pytest
import torch

from cord_kernels import sparse_teacher_loss, student_topk_distill_loss


def _step(impl):
    def step(s, u, lp, ids, mask):
        loss = sparse_teacher_loss(s, lp, ids, mask, divergence="jsd", impl=impl)
        return loss + student_topk_distill_loss(s, u, mask, k=4, tail="renormalize", impl=impl)

    return step


@pytest.mark.parametrize("impl, backend", [
    pytest.param("torch", "inductor", id="torch-inductor"),
    # The interpreter runs the custom ops eagerly inside the compiled graph.
    pytest.param("triton", "aot_eager", id="triton-interpret-aot_eager"),
])
def test_fullgraph_matches_eager(impl, backend, interpret):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    s, u = torch.randn(2, 5, 40, generator=g), torch.randn(2, 5, 40, generator=g)
    lp, ids = torch.log_softmax(u, -1).topk(6)
    lp[0, 1, 3:] = float("-inf")
    mask = torch.rand(2, 5, generator=g) > 0.3
    x_eager = s.clone().requires_grad_()
    eager = _step(impl)(x_eager, u, lp, ids, mask)
    eager.backward()
    x = s.clone().requires_grad_()
    out = torch.compile(_step(impl), fullgraph=True, backend=backend)(x, u, lp, ids, mask)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-5, atol=1e-6)


def test_custom_op_passes_opcheck(interpret):
    from cord_kernels.sparse.support_logprobs import _support_fwd_op

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 50, generator=g)
    ids = torch.randint(0, 50, (2, 3, 4), generator=g)
    valid = torch.rand(2, 3, 4, generator=g) > 0.2
    torch.library.opcheck(_support_fwd_op, (x, ids, valid, 1.0),
                          test_utils=("test_schema", "test_faketensor"))
