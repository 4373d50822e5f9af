"""The nn.Module wrappers call the functions with the options they hold."""

from __future__ import annotations

import torch

import cord_kernels as ck


def test_modules_match_functions():
    g = torch.Generator().manual_seed(0)
    s, u = torch.randn(2, 5, 30, generator=g), torch.randn(2, 5, 30, generator=g)
    mask = torch.rand(2, 5, generator=g) > 0.3
    labels = torch.randint(0, 30, (2, 5), generator=g)
    loss_fn = ck.CordTokenLoss(top_k=3, alpha=1.5, beta=3.0, temperature=0.7, reduction="sum")
    torch.testing.assert_close(
        loss_fn(s, u, mask),
        ck.cord_token_loss(s, u, mask, top_k=3, alpha=1.5, beta=3.0, temperature=0.7,
                           reduction="sum"),
    )
    assert "top_k=3" in repr(loss_fn)
    torch.testing.assert_close(ck.ReverseKL(temperature=2.0)(s, u),
                               ck.reverse_kl(s, u, temperature=2.0))
    torch.testing.assert_close(ck.ForwardKL()(s, u), ck.forward_kl(s, u))
    torch.testing.assert_close(ck.TokenLogprobs(temperature=0.5)(s, labels),
                               ck.token_logprobs(s, labels, temperature=0.5))


def test_public_names_of_the_spec():
    for name in ["reverse_kl", "forward_kl", "token_logprobs", "cord_weights",
                 "cord_token_loss", "grpo_loss", "fused_linear_cord_token_loss",
                 "fused_linear_token_logprobs"]:
        assert name in ck.__all__ and callable(getattr(ck, name))
    # the wrappers are importable from the package, outside __all__ (tests/test_package.py)
    for name in ["CordTokenLoss", "FusedLinearCordTokenLoss"]:
        assert callable(getattr(ck, name))


def test_fused_linear_modules_match_functions():
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    w, b = torch.randn(30, 8, generator=g), torch.randn(30, generator=g)
    mask = torch.rand(2, 4, generator=g) > 0.2
    labels = torch.randint(0, 30, (2, 4), generator=g)
    torch.testing.assert_close(
        ck.FusedLinearCordTokenLoss(top_k=2, reduction="mean")(hs, ht, w, mask, bias=b),
        ck.fused_linear_cord_token_loss(hs, ht, w, mask, bias=b, top_k=2, reduction="mean"),
    )
    torch.testing.assert_close(
        ck.FusedLinearTokenLogprobs(temperature=2.0)(hs, w, labels),
        ck.fused_linear_token_logprobs(hs, w, labels, temperature=2.0),
    )
