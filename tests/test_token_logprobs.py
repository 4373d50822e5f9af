"""token_logprobs: Triton (interpreted) and torch against a float64 reference."""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, rel_err

from cord_kernels import reference as ref
from cord_kernels import token_logprobs

CASES = [
    pytest.param((3, 5), 123, torch.float32, 1.0, id="N15-V123-fp32"),
    pytest.param((423,), 29, torch.float32, 1.5, id="N423-V29-fp32-tau1.5"),
    pytest.param((2,), 1, torch.float32, 1.0, id="N2-V1-fp32"),  # log p = 0 exactly
    pytest.param((4,), 5000, torch.bfloat16, 1.0, id="N4-V5000-bf16"),  # V > BLOCK_V
    pytest.param((2, 3), 300, torch.float16, 0.5, id="N6-V300-fp16-tau0.5"),
]


@pytest.mark.parametrize("lead, V, dtype, temperature", CASES)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_matches_fp64_reference(lead, V, dtype, temperature, impl, device, interpret,
                                nan_poison):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*lead, V, generator=g) * 3).to(device, dtype).requires_grad_()
    labels = torch.randint(0, V, lead, generator=g).to(device)
    labels.view(-1)[0] = -100  # ignored position
    out = token_logprobs(x, labels, temperature=temperature, impl=impl)
    cot = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, cot)

    x64 = x.detach().double().requires_grad_()
    expect = ref.token_logprobs(x64, labels, temperature=temperature)
    (gx64,) = torch.autograd.grad(expect.double(), x64, cot.double())
    assert out.dtype == torch.float32 and out.shape == lead
    assert rel_err(out, expect) < TOL[dtype]
    assert rel_err(gx, gx64) < TOL[dtype]
    assert (out <= 1e-6).all()
    assert out.view(-1)[0] == 0 and (gx.view(-1, V)[0] == 0).all()


def test_extreme_logits(device, interpret, nan_poison):
    x = torch.randn(4, 64, device=device)
    x[0, :8] = 1e4
    x[1, 3] = -1e4
    x[2, 10:] = float("-inf")
    x = x.requires_grad_()
    labels = torch.tensor([2, 3, 5, 7], device=device)
    out = token_logprobs(x, labels, impl="triton")
    (gx,) = torch.autograd.grad(out.sum(), x)
    x64 = x.detach().double().requires_grad_()
    expect = ref.token_logprobs(x64, labels)
    (g64,) = torch.autograd.grad(expect.sum(), x64)
    assert rel_err(out, expect) < 1e-5 and rel_err(gx, g64) < 1e-5


def test_out_of_range_label_is_loud(device, interpret):
    x = torch.randn(2, 10, device=device)
    labels = torch.tensor([3, 10], device=device)
    out = token_logprobs(x, labels, impl="triton")
    assert torch.isfinite(out[0]) and torch.isnan(out[1])
    if device.type == "cpu":  # CUDA reports an out-of-range gather as a device-side assert
        with pytest.raises((RuntimeError, IndexError)):
            token_logprobs(x, labels, impl="torch")


def test_inplace_backward(device, interpret):
    x = torch.randn(3, 4, 50, device=device)
    labels = torch.randint(0, 50, (3, 4), device=device)
    x_ref = x.clone().requires_grad_()
    ref.token_logprobs(x_ref, labels).sum().backward()
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0
    token_logprobs(logits, labels, impl="triton", inplace_backward=True).sum().backward()
    assert rel_err(leaf.grad, x_ref.grad) < 1e-5
    assert rel_err(logits.detach(), x_ref.grad) < 1e-5


def test_sliced_logits_shifted_labels(device, interpret, nan_poison):
    """The usual causal-LM call: logits[:, :-1] against input_ids[:, 1:], no copy."""
    logits = torch.randn(2, 7, 40, device=device, requires_grad=True)
    ids = torch.randint(0, 40, (2, 7), device=device)
    out = token_logprobs(logits[:, :-1], ids[:, 1:], impl="triton")
    expect = ref.token_logprobs(logits.detach().double()[:, :-1], ids[:, 1:])
    assert rel_err(out, expect) < 1e-5


def _grad_vs_reference(x, labels, **kw):
    x = x.detach().requires_grad_()
    out = token_logprobs(x, labels, impl="triton", **kw)
    cot = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, cot)
    x64 = x.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(ref.token_logprobs(x64, labels, **kw), x64, cot.double())
    assert rel_err(gx, g64) < 1e-5


def test_non_unit_last_stride_and_interleaved_dims(device, interpret, nan_poison):
    """Inputs the kernel cannot address as rows are copied for reading; the gradient is a
    fresh contiguous buffer and comes back right (a strided empty_like used to lose it)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g).to(device)
    _grad_vs_reference(x.T, torch.randint(0, 40, (6,), generator=g).to(device))
    x4 = torch.randn(3, 4, 5, 33, generator=g).to(device).permute(1, 0, 2, 3)
    _grad_vs_reference(x4, torch.randint(0, 33, (4, 3, 5), generator=g).to(device),
                       temperature=0.8)


def test_inplace_backward_needs_rows_it_can_write(device, interpret):
    """inplace_backward into a tensor whose rows only a copy can hold used to return the
    gradient of the copy's garbage (max error 3.28): now it is refused at the call."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g).to(device)
    with pytest.raises(ValueError, match="inplace_backward"):
        token_logprobs(x.T.requires_grad_(), torch.zeros(6, dtype=torch.long, device=device),
                       impl="triton", inplace_backward=True)
    x4 = torch.randn(3, 4, 5, 33, generator=g).to(device).permute(1, 0, 2, 3)
    with pytest.raises(ValueError, match="inplace_backward"):
        token_logprobs(x4, torch.zeros(4, 3, 5, dtype=torch.long, device=device),
                       impl="triton", inplace_backward=True)


def test_launcher_refuses_an_output_it_could_only_copy(device, interpret):
    """logprob_bwd is also called directly (fused_logprobs): a dx without a row view raises."""
    from cord_kernels.logits.token_logprobs import logprob_bwd, logprob_fwd

    x = torch.randn(6, 40, device=device)
    labels = torch.randint(0, 40, (6,), device=device)
    _, lse = logprob_fwd(x, labels, 1.0, -100)
    dx_t = torch.empty(40, 6, device=device).T
    with pytest.raises(ValueError, match="copy"):
        logprob_bwd(x, labels, lse, torch.ones(6, device=device), 1.0, -100, dx_t)
