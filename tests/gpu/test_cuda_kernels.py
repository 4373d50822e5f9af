"""GPU-only checks of the compiled Triton kernels (``gpu`` marker), at the sizes of a real run.

They run in a fresh process where the kernels are compiled, not interpreted:
``CORD_TEST_COMPILED=1 python -m pytest tests/gpu`` (``scripts/gpu_check.sh`` does this).
Anywhere else every test skips and says why. Nothing here is mocked: no CUDA, no test.

Shapes: N = 4096 rows of Qwen2's V = 151,936 in bf16, the row count and vocabulary of a
training step. The fp64 reference needs 8 bytes per entry, so it is taken on a slice of rows
(rows are independent for the KL and log-prob losses).
"""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, cuda_skip_reason, rel_err

from cord_kernels import (
    cord_token_loss,
    fused_linear_cord_token_loss,
    fused_linear_token_logprobs,
    reverse_kl,
    token_logprobs,
)
from cord_kernels import reference as ref

_REASON = cuda_skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

N, V = 4096, 151_936
REF_ROWS = 256  # rows checked against the fp64 reference
BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def logits():
    g = torch.Generator(device="cuda").manual_seed(0)
    s = (torch.randn(N, V, device="cuda", generator=g) * 3).to(BF16)
    u = (torch.randn(N, V, device="cuda", generator=g) * 3).to(BF16)
    labels = torch.randint(0, V, (N,), device="cuda", generator=g)
    labels[::7] = -100
    return s, u, labels


def _value_and_grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args, **kw)
    cot = torch.randn(out.shape, device=out.device, generator=torch.Generator(
        device=out.device).manual_seed(1))
    (g,) = torch.autograd.grad(out, x, cot)
    return out, g, cot


def test_reverse_kl_triton_vs_torch_vs_fp64(logits):
    s, u, _ = logits
    out_t, g_t, cot = _value_and_grad(reverse_kl, s, u, impl="triton")
    out_p, g_p, _ = _value_and_grad(reverse_kl, s, u, impl="torch")
    assert g_t.dtype == BF16 and torch.isfinite(g_t).all()
    assert rel_err(out_t, out_p) < TOL[BF16] and rel_err(g_t, g_p) < TOL[BF16]
    s64 = s[:REF_ROWS].double().requires_grad_()
    d64 = ref.reverse_kl(s64, u[:REF_ROWS].double())
    (g64,) = torch.autograd.grad(d64, s64, cot[:REF_ROWS].double())
    assert rel_err(out_t[:REF_ROWS], d64) < TOL[BF16]
    assert rel_err(g_t[:REF_ROWS], g64) < TOL[BF16]


def test_token_logprobs_triton_vs_torch_vs_fp64(logits):
    s, _, labels = logits
    out_t, g_t, cot = _value_and_grad(token_logprobs, s, labels, impl="triton")
    out_p, g_p, _ = _value_and_grad(token_logprobs, s, labels, impl="torch")
    assert rel_err(out_t, out_p) < TOL[BF16] and rel_err(g_t, g_p) < TOL[BF16]
    x64 = s[:REF_ROWS].double().requires_grad_()
    lp64 = ref.token_logprobs(x64, labels[:REF_ROWS])
    (g64,) = torch.autograd.grad(lp64, x64, cot[:REF_ROWS].double())
    assert rel_err(out_t[:REF_ROWS], lp64) < TOL[BF16]
    assert rel_err(g_t[:REF_ROWS], g64) < TOL[BF16]
    assert (out_t[labels == -100] == 0).all()


def test_cord_token_loss_triton_vs_torch_vs_fp64(logits):
    s, u, _ = logits
    B = 8  # 8 rollouts of 512 tokens
    s3, u3 = s.view(B, N // B, V), u.view(B, N // B, V)
    mask = torch.rand(B, N // B, device="cuda", generator=torch.Generator(
        device="cuda").manual_seed(2)) > 0.2
    out_t, g_t, cot = _value_and_grad(cord_token_loss, s3, u3, mask, impl="triton",
                                      reduction="none")
    out_p, g_p, _ = _value_and_grad(cord_token_loss, s3, u3, mask, impl="torch",
                                    reduction="none")
    assert rel_err(out_t, out_p) < TOL[BF16] and rel_err(g_t, g_p) < TOL[BF16]
    assert (g_t[~mask] == 0).all()
    # The weights couple the rows of a sequence: the reference takes one whole sequence.
    s64 = s3[:1].double().requires_grad_()
    l64 = ref.cord_token_loss(s64, u3[:1].double(), mask[:1], reduction="none")
    (g64,) = torch.autograd.grad(l64, s64, cot[:1].double())
    assert rel_err(out_t[:1], l64) < TOL[BF16] and rel_err(g_t[:1], g64) < TOL[BF16]


def test_inplace_backward_on_cuda(logits):
    """The gradient lands in the logits' own storage and the peak drops by one (N, V)."""
    s, u, _ = logits
    peaks, grads = {}, {}
    for inplace in (False, True):
        leaf = s.detach().clone().requires_grad_()
        x = leaf * 1  # a non-leaf the caller gives up, as a model's output is
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        reverse_kl(x, u, impl="triton", inplace_backward=inplace).sum().backward()
        torch.cuda.synchronize()
        peaks[inplace] = torch.cuda.max_memory_allocated() - base
        grads[inplace] = leaf.grad
        if inplace:
            assert torch.equal(x.detach(), leaf.grad) or rel_err(x.detach(), leaf.grad) < 1e-6
        del leaf, x
    assert rel_err(grads[True], grads[False]) < 1e-6
    entry = N * V * s.element_size()
    assert peaks[True] <= peaks[False] - entry + 2**20, peaks


def test_no_host_sync_in_the_logits_in_forward(logits):
    """A host sync in forward stalls the training step's pipeline; CUDA's sync debug mode
    turns any into an error."""
    s, u, labels = logits
    B = 8
    s3, u3 = s.view(B, N // B, V), u.view(B, N // B, V)
    mask = torch.ones(B, N // B, dtype=torch.bool, device="cuda")
    x = s3.detach().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        reverse_kl(x, u3, impl="triton")
        token_logprobs(x, labels.view(B, N // B), impl="triton")
        cord_token_loss(x, u3, mask, impl="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cord_token_loss_peak_memory_is_inputs_plus_one_gradient(logits):
    """fwd+bwd allocates one (N, V) gradient and O(N) per-row state, nothing else of size V."""
    s, u, _ = logits
    B = 8
    leaf = s.view(B, N // B, V).detach().clone().requires_grad_()
    u3 = u.view(B, N // B, V)
    mask = torch.ones(B, N // B, dtype=torch.bool, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    cord_token_loss(leaf, u3, mask, impl="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    gradient = N * V * leaf.element_size()
    per_row = 256  # D, two (max, log-sum) pairs, weights, ranks: tens of bytes per row
    assert extra <= gradient + per_row * N + 2**20, (extra, gradient)


def test_launch_follows_the_tensors_device():
    """Kernels launch on their tensors' GPU even when another GPU is current."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs (the launch device only matters with more than one)")
    g = torch.Generator().manual_seed(3)
    s = torch.randn(64, 1000, generator=g)
    u = torch.randn(64, 1000, generator=g)
    expect = reverse_kl(s.cuda(1), u.cuda(1), impl="torch").cpu()
    with torch.cuda.device(0):
        got = reverse_kl(s.cuda(1), u.cuda(1), impl="triton")
    assert got.device == torch.device("cuda", 1)
    assert rel_err(got.cpu(), expect) < 1e-5


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fused_linear_bf16_against_fp64(impl):
    """bf16 hidden states and head, fp32 accumulation inside, against the fp64 reference."""
    g = torch.Generator(device="cuda").manual_seed(4)
    B, T, H, Vf = 4, 256, 1024, 32_000
    hs = torch.randn(B, T, H, device="cuda", generator=g)
    ht = (hs + 0.5 * torch.randn(B, T, H, device="cuda", generator=g)).to(BF16)
    hs = hs.to(BF16)
    W = (torch.randn(Vf, H, device="cuda", generator=g) / H**0.5 * 3).to(BF16)
    mask = torch.rand(B, T, device="cuda", generator=g) > 0.2
    labels = torch.randint(0, Vf, (B, T), device="cuda", generator=g)

    x, w = hs.clone().requires_grad_(), W.clone().requires_grad_()
    loss = fused_linear_cord_token_loss(x, ht, w, mask, impl=impl)
    loss.backward()
    x64, w64 = hs.double().requires_grad_(), W.double().requires_grad_()
    l64 = ref.fused_linear_cord_token_loss(x64, ht.double(), w64, mask)
    l64.backward()
    assert x.grad.dtype == BF16 and w.grad.dtype == BF16
    for got, want in ((loss, l64), (x.grad, x64.grad), (w.grad, w64.grad)):
        assert rel_err(got, want) < TOL[BF16]

    x, w = hs.clone().requires_grad_(), W.clone().requires_grad_()
    lp = fused_linear_token_logprobs(x, w, labels, impl=impl)
    cot = torch.randn(lp.shape, device="cuda", generator=g)
    lp.backward(cot)
    x64, w64 = hs.double().requires_grad_(), W.double().requires_grad_()
    lp64 = ref.fused_linear_token_logprobs(x64, w64, labels)
    lp64.backward(cot.double())
    for got, want in ((lp, lp64), (x.grad, x64.grad), (w.grad, w64.grad)):
        assert rel_err(got, want) < TOL[BF16]
