"""Masks, TRL-style labels, num_items_in_batch and options the chosen variant does not use,
in every token loss (issue 20, items 2-4; issue 22).

TRL-style labels (-100, token ids) passed as the mask used to count as valid positions and
silently change the loss (12.16 instead of 13.01); now any value but 0/1 is a ValueError. The
gradient-accumulation test splits a batch into micro-batches of whole sequences (CORD's weights
are per sequence) and checks that the sum of the micro-batch losses with the global token count
equals the full batch's "mean", values and gradients.
"""

from __future__ import annotations

import pytest
import torch

from cord_kernels import (
    CordTokenLoss,
    FusedLinearDistillLoss,
    cord_token_loss,
    cord_weights,
    fused_linear_cord_token_loss,
    fused_linear_distill_loss,
    grpo_loss,
    reverse_kl,
    token_logprobs,
)

B, T, V, H = 4, 6, 11, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, H, generator=g)
    ht = torch.randn(B, T, H, generator=g)
    w = torch.randn(V, H, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :2] = -100  # the prompt
    labels[1, -1] = -100  # right padding
    return hs, ht, w, labels


def _logits_loss(hs, ht, w, mask=None, **kw):
    return cord_token_loss(hs @ w.T, ht @ w.T, mask, impl="torch", **kw)


def _fused_cord(hs, ht, w, mask=None, **kw):
    return fused_linear_cord_token_loss(hs, ht, w, mask, impl="torch", **kw)


def _fused_distill(hs, ht, w, mask=None, **kw):
    return fused_linear_distill_loss(hs, ht, w, mask, divergence="jsd", jsd_beta=0.3,
                                     impl="torch", **kw)


LOSSES = [pytest.param(_logits_loss, id="cord_token_loss"),
          pytest.param(_fused_cord, id="fused_linear_cord_token_loss"),
          pytest.param(_fused_distill, id="fused_linear_distill_loss")]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bad", ["labels", "two"])
def test_labels_as_mask_is_a_value_error(loss, bad):
    hs, ht, w, labels = _inputs()
    mask = labels if bad == "labels" else (labels != -100).long() * 2
    shown = "-100" if bad == "labels" else "2"
    with pytest.raises(ValueError, match=rf"mask must be bool.*holds {shown}.*labels != -100"):
        loss(hs, ht, w, mask)


def test_mask_checks_in_the_other_mask_arguments():
    _, _, _, labels = _inputs()
    with pytest.raises(ValueError, match=r"mask must be bool.*-100"):
        cord_weights(torch.rand(B, T), labels)
    with pytest.raises(ValueError, match=r"mask must be bool.*-100"):
        grpo_loss(torch.randn(B, T), labels, torch.ones(B), group_size=2)
    with pytest.raises(ValueError, match=r"mask must be bool.*0\.5"):
        cord_weights(torch.rand(B, T), torch.full((B, T), 0.5))
    with pytest.raises(TypeError, match="mask must be a bool, integer or float"):
        cord_weights(torch.rand(B, T), torch.ones(B, T, dtype=torch.complex64))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float32],
                         ids=str)
def test_zero_one_masks_of_any_dtype_equal_the_bool_mask(loss, dtype):
    hs, ht, w, labels = _inputs()
    mask = labels != -100
    torch.testing.assert_close(loss(hs, ht, w, mask.to(dtype)), loss(hs, ht, w, mask))


@pytest.mark.parametrize("loss", LOSSES)
def test_labels_give_the_mask_labels_ne_ignore_index(loss):
    hs, ht, w, labels = _inputs()
    expect = loss(hs, ht, w, labels != -100)
    torch.testing.assert_close(loss(hs, ht, w, labels=labels), expect)
    shifted = torch.where(labels == -100, -1, labels)
    torch.testing.assert_close(loss(hs, ht, w, labels=shifted, ignore_index=-1), expect)
    # the mask really matters here: all-valid differs
    assert not torch.allclose(loss(hs, ht, w, torch.ones(B, T, dtype=torch.bool)), expect)


@pytest.mark.parametrize("loss", LOSSES)
def test_mask_and_labels_one_of_them(loss):
    hs, ht, w, labels = _inputs()
    with pytest.raises(ValueError, match="mask= or labels=, not both"):
        loss(hs, ht, w, labels != -100, labels=labels)
    with pytest.raises(ValueError, match="pass mask= .* or labels="):
        loss(hs, ht, w)
    with pytest.raises(ValueError, match="ignore_index=-1 is used with labels= only"):
        loss(hs, ht, w, labels != -100, ignore_index=-1)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        loss(hs, ht, w, labels=labels.float())


def _with_grads(fn, hs, w):
    """fn(hs, w), and the gradients of hs and w."""
    hs, w = hs.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(hs, w)
    out.backward()
    return out.detach(), hs.grad, w.grad


MICRO = [(0, 1), (1, 3), (3, 4)]  # uneven micro-batches: 1, 2 and 1 sequences


@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_accumulation_equals_the_full_batch(loss):
    hs, ht, w, labels = _inputs()
    n = int((labels != -100).sum())
    full = _with_grads(lambda h, w: loss(h, ht, w, labels=labels, reduction="mean"), hs, w)
    micro = _with_grads(lambda h, w: sum(
        loss(h[lo:hi], ht[lo:hi], w, labels=labels[lo:hi], num_items_in_batch=n)
        for lo, hi in MICRO), hs, w)
    for a, b in zip(full, micro):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the mean of per-micro-batch "mean"s (accumulation without the global count) differs
    naive = sum(loss(hs[lo:hi], ht[lo:hi], w, labels=labels[lo:hi], reduction="mean")
                for lo, hi in MICRO) / len(MICRO)
    assert not torch.allclose(naive, full[0])


@pytest.mark.parametrize("loss", LOSSES)
def test_num_items_in_batch_values(loss):
    hs, ht, w, labels = _inputs()
    total = loss(hs, ht, w, labels=labels, reduction="sum")
    torch.testing.assert_close(loss(hs, ht, w, labels=labels, num_items_in_batch=7), total / 7)
    torch.testing.assert_close(
        loss(hs, ht, w, labels=labels, num_items_in_batch=torch.tensor([7])), total / 7)
    # One rule for every loss (issue 26): n replaces the scalar reduction's divisor, sum / n
    # (TRL's and transformers' convention); "none" has no sum to divide.
    for reduction in ("sum", "mean"):
        torch.testing.assert_close(
            loss(hs, ht, w, labels=labels, num_items_in_batch=7, reduction=reduction), total / 7)
    with pytest.raises(ValueError, match="needs a scalar reduction, got reduction='none'"):
        loss(hs, ht, w, labels=labels, num_items_in_batch=7, reduction="none")
    with pytest.raises(ValueError, match="num_items_in_batch must be >= 1"):
        loss(hs, ht, w, labels=labels, num_items_in_batch=0)
    with pytest.raises(TypeError, match="num_items_in_batch must be an int or a tensor"):
        loss(hs, ht, w, labels=labels, num_items_in_batch=7.0)


def test_modules_take_labels_and_num_items():
    hs, ht, w, labels = _inputs()
    s, u = hs @ w.T, ht @ w.T
    expect = cord_token_loss(s, u, labels != -100, reduction="sum", impl="torch") / 9
    got = CordTokenLoss(impl="torch")(s, u, labels=labels, num_items_in_batch=9)
    torch.testing.assert_close(got, expect)
    fused = FusedLinearDistillLoss(impl="torch")(hs, ht, w, labels=labels)
    torch.testing.assert_close(
        fused, fused_linear_distill_loss(hs, ht, w, labels != -100, impl="torch"))


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
def test_jsd_beta_with_another_divergence_is_an_error(divergence):
    hs, ht, w, labels = _inputs()
    with pytest.raises(ValueError, match=f"jsd_beta=0.2 is used by divergence='jsd' only, got "
                                         f"divergence='{divergence}'"):
        fused_linear_distill_loss(hs, ht, w, labels != -100, divergence=divergence,
                                  jsd_beta=0.2)
    with pytest.raises(ValueError, match="jsd_beta=0.2 is used by divergence='jsd' only"):
        FusedLinearDistillLoss(divergence=divergence, jsd_beta=0.2)
    # the default beta alongside another divergence is not "set", so it stays accepted
    fused_linear_distill_loss(hs, ht, w, labels != -100, divergence=divergence, jsd_beta=0.5,
                              impl="torch")


@pytest.mark.parametrize("fn", [cord_token_loss, fused_linear_cord_token_loss,
                                fused_linear_distill_loss], ids=lambda f: f.__name__)
def test_docstrings_say_batchmean_is_per_sequence_and_trl_is_our_mean(fn):
    doc = " ".join(fn.__doc__.split())
    assert "batchmean = mean * mask.sum() / B" in doc
    assert "TRL" in doc and "valid tokens" in doc


@pytest.mark.parametrize("loss", LOSSES)
def test_batchmean_is_mean_times_valid_tokens_over_sequences(loss):
    hs, ht, w, labels = _inputs()
    mean = loss(hs, ht, w, labels=labels, reduction="mean")
    n_valid = int((labels != -100).sum())
    torch.testing.assert_close(loss(hs, ht, w, labels=labels), mean * n_valid / B)


@pytest.mark.parametrize("call", [
    lambda s, u, m: reverse_kl(s, u, impl="torch", inplace_backward=True),
    lambda s, u, m: token_logprobs(s, m.long(), impl="torch", inplace_backward=True),
    lambda s, u, m: cord_token_loss(s, u, m, impl="torch", inplace_backward=True),
], ids=["reverse_kl", "token_logprobs", "cord_token_loss"])
def test_inplace_backward_with_the_torch_path_asked_for_is_an_error(call):
    hs, ht, w, labels = _inputs()
    with pytest.raises(ValueError, match="inplace_backward=True is a Triton-path option, but "
                                         "impl='torch' was asked for"):
        call(hs @ w.T, ht @ w.T, labels != -100)
