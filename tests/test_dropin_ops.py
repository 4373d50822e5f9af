"""The TRL drop-in at the floor, counted on the CPU (issue 34 B): the aten ops of one chunk of
``chunked_divergence_loss`` on the Triton path (kernels under the interpreter, which run
outside aten), forward + backward. The 4 GEMMs are the floor (two projections, the hidden
and the weight gradient); the student entropy TRL logs is formed inside the forward kernels,
so no softmax, log-softmax or (r, V) @ (V, r) diagonal runs in torch. Also: balanced chunks,
the default chunk budget grown from free GPU memory, and the host sync of the
per-sequence counts paid only by a weighting that needs them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cord_kernels.core.options import DEFAULT_CHUNK_BYTES
from cord_kernels.fused.chunked_head import AUTO_CHUNK_CAP, balanced_rows, chunk_budget
from cord_kernels.integrations.trl import chunked_divergence_loss

GEMMS = {"mm", "addmm", "matmul", "bmm"}
FORBIDDEN = {"_softmax", "softmax", "_log_softmax", "log_softmax", "diagonal", "logsumexp"}


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0], ids=["rkl", "jsd", "fkl"])
def test_one_chunk_is_four_gemms_and_no_softmax_in_torch(beta, interpret, one_torch_thread):
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 2, 5, 16, 96
    h_s = torch.randn(B, T, H, generator=g).requires_grad_()
    h_t = torch.randn(B, T, H, generator=g)
    w_s = (torch.randn(V, H, generator=g) * 0.3).requires_grad_()
    w_t = torch.randn(V, H, generator=g) * 0.3
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    with _Ops() as m:
        loss, entropy, n = chunked_divergence_loss(h_s, h_t, w_s, w_t, mask, beta)
        loss.backward()
    gemms = sum(m.ops[k] for k in GEMMS)
    assert gemms <= 4, dict(m.ops)
    assert not FORBIDDEN & set(m.ops), dict(m.ops)
    assert torch.isfinite(entropy) and entropy > 0 and int(n) == 8
    assert h_s.grad is not None and w_s.grad is not None


def test_chunks_are_balanced():
    assert balanced_rows(4096, 883) == 820  # 5 chunks of 820 (the last 816), no runt of 564
    assert balanced_rows(100, 1000) == 100
    assert balanced_rows(0, 64) == 64
    assert balanced_rows(9, 4) == 3


def test_chunks_sized_from_free_memory_where_there_is_room():
    gpu, cpu, gib = torch.device("cuda"), torch.device("cpu"), 1 << 30
    assert chunk_budget(DEFAULT_CHUNK_BYTES, gpu, free=64 * gib) == AUTO_CHUNK_CAP
    assert chunk_budget(DEFAULT_CHUNK_BYTES, gpu, free=12 * gib) == 3 * gib
    assert chunk_budget(DEFAULT_CHUNK_BYTES, gpu, free=2 * gib) == DEFAULT_CHUNK_BYTES
    assert chunk_budget(DEFAULT_CHUNK_BYTES, cpu) == DEFAULT_CHUNK_BYTES  # no device query
    assert chunk_budget(123, gpu, free=64 * gib) == 123  # the caller's budget is kept


def test_fixed_weights_do_not_sync_for_the_counts(monkeypatch):
    """``mask.sum(1).tolist()`` (the per-sequence counts) runs only for CORD's weighting."""
    from cord_kernels import fused_linear_cord_token_loss, fused_linear_distill_loss
    from cord_kernels.fused import distill

    calls = []
    counts = distill.DistillProblem.counts.func
    monkeypatch.setattr(distill.DistillProblem, "counts",
                        property(lambda self: calls.append(1) or counts(self)))
    h = torch.randn(2, 4, 8).requires_grad_()
    w = torch.randn(32, 8).requires_grad_()
    mask = torch.ones(2, 4, dtype=torch.bool)
    fused_linear_distill_loss(h, h.detach(), w, mask, impl="torch").backward()
    assert calls == []
    fused_linear_cord_token_loss(h, h.detach(), w, mask, impl="torch").backward()
    assert calls
