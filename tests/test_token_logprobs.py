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
def test_matches_fp64_reference(lead, V, dtype, temperature, impl, interpret, nan_poison):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*lead, V, generator=g) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, V, lead, generator=g)
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


def test_extreme_logits(interpret, nan_poison):
    x = torch.randn(4, 64)
    x[0, :8] = 1e4
    x[1, 3] = -1e4
    x[2, 10:] = float("-inf")
    x = x.requires_grad_()
    labels = torch.tensor([2, 3, 5, 7])
    out = token_logprobs(x, labels, impl="triton")
    (gx,) = torch.autograd.grad(out.sum(), x)
    x64 = x.detach().double().requires_grad_()
    expect = ref.token_logprobs(x64, labels)
    (g64,) = torch.autograd.grad(expect.sum(), x64)
    assert rel_err(out, expect) < 1e-5 and rel_err(gx, g64) < 1e-5


def test_out_of_range_label_is_loud(interpret):
    x = torch.randn(2, 10)
    out = token_logprobs(x, torch.tensor([3, 10]), impl="triton")
    assert torch.isfinite(out[0]) and torch.isnan(out[1])
    with pytest.raises((RuntimeError, IndexError)):
        token_logprobs(x, torch.tensor([3, 10]), impl="torch")


def test_inplace_backward(interpret):
    x = torch.randn(3, 4, 50)
    labels = torch.randint(0, 50, (3, 4))
    x_ref = x.clone().requires_grad_()
    ref.token_logprobs(x_ref, labels).sum().backward()
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0
    token_logprobs(logits, labels, impl="triton", inplace_backward=True).sum().backward()
    assert rel_err(leaf.grad, x_ref.grad) < 1e-5
    assert rel_err(logits.detach(), x_ref.grad) < 1e-5


def test_sliced_logits_shifted_labels(interpret, nan_poison):
    """The usual causal-LM call: logits[:, :-1] against input_ids[:, 1:], no copy."""
    logits = torch.randn(2, 7, 40, requires_grad=True)
    ids = torch.randint(0, 40, (2, 7))
    out = token_logprobs(logits[:, :-1], ids[:, 1:], impl="triton")
    expect = ref.token_logprobs(logits.detach().double()[:, :-1], ids[:, 1:])
    assert rel_err(out, expect) < 1e-5
