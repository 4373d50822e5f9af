"""Bad input raises ValueError/TypeError that names the argument."""

from __future__ import annotations

import pytest
import torch

from cord_kernels import (
    CordTokenLoss,
    cord_token_loss,
    cord_weights,
    forward_kl,
    reverse_kl,
    token_logprobs,
)

S = torch.randn(2, 3, 10)
U = torch.randn(2, 3, 10)
M = torch.ones(2, 3, dtype=torch.bool)


@pytest.mark.parametrize("fn", [reverse_kl, forward_kl])
@pytest.mark.parametrize(
    "student, teacher, kw, exc, match",
    [
        (S, torch.randn(2, 3, 11), {}, ValueError, "vocabulary mismatch"),
        (S, torch.randn(2, 4, 10), {}, ValueError, "same shape"),
        (S, U.double(), {}, TypeError, "same dtype"),
        (S.long(), U.long(), {}, TypeError, "student_logits must be float32"),
        ([1.0], U, {}, TypeError, "student_logits must be a torch.Tensor"),
        (S, U, {"temperature": 0.0}, ValueError, "temperature"),
        (S, U, {"temperature": -1}, ValueError, "temperature"),
        (S, U, {"temperature": float("inf")}, ValueError, "temperature"),
        (S, U, {"temperature": "1"}, TypeError, "temperature"),
        (S, U, {"teacher_grad": 1}, TypeError, "teacher_grad"),
        (S, U, {"impl": "cuda"}, ValueError, "impl"),
        (torch.randn(2, 0), torch.randn(2, 0), {}, ValueError, "non-empty vocabulary"),
        (torch.tensor(1.0), torch.tensor(1.0), {}, ValueError, "at least 1 dimension"),
    ],
)
def test_kl_bad_input(fn, student, teacher, kw, exc, match):
    with pytest.raises(exc, match=match):
        fn(student, teacher, **kw)


def test_device_mismatch_is_reported():
    meta = torch.empty(2, 3, 10, device="meta")
    with pytest.raises(ValueError, match="teacher_logits is on meta"):
        reverse_kl(S, meta)


def test_triton_without_cuda_or_interpreter(kernel_settings):
    kernel_settings(interpret=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        reverse_kl(S, U, impl="triton")


@pytest.mark.parametrize(
    "args, kw, exc, match",
    [
        ((S, U, M[:, :2]), {}, ValueError, "mask must have shape"),
        ((S, U, M.float() / 2), {}, ValueError, r"mask must be bool, or hold only 0 and 1"),
        ((S, U, M), {"reduction": "avg"}, ValueError, "reduction must be one of"),
        ((S, U, M), {"top_k": -1}, ValueError, "top_k must be >= 0"),
        ((S, U, M), {"top_k": 2.5}, TypeError, "top_k must be an int"),
        ((S, U, M), {"alpha": -1.0}, ValueError, "alpha"),
        ((S, U, M), {"beta": float("nan")}, ValueError, "beta"),
        ((S, U, M), {"temperature": 0}, ValueError, "temperature"),
        ((S[0], U[0], M[0]), {}, ValueError, r"shape \(B, T, V\)"),
        ((S, torch.randn(2, 3, 12), M), {}, ValueError, "vocabulary mismatch"),
    ],
)
def test_cord_token_loss_bad_input(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        cord_token_loss(*args, **kw)


def test_module_checks_options_at_construction():
    with pytest.raises(ValueError, match="reduction"):
        CordTokenLoss(reduction="elementwise")
    with pytest.raises(ValueError, match="top_k"):
        CordTokenLoss(top_k=-3)


def test_cord_weights_bad_input():
    with pytest.raises(ValueError, match="kl must have 2 dimensions"):
        cord_weights(torch.rand(2, 3, 4), M)
    with pytest.raises(ValueError, match="mask must have shape"):
        cord_weights(torch.rand(2, 4), M)
    with pytest.raises(TypeError, match="kl must be float"):
        cord_weights(torch.ones(2, 3, dtype=torch.long), M)


def test_token_logprobs_bad_input():
    with pytest.raises(ValueError, match="labels must have shape"):
        token_logprobs(S, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be an integer"):
        token_logprobs(S, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="ignore_index"):
        token_logprobs(S, torch.zeros(2, 3, dtype=torch.long), ignore_index=None)
