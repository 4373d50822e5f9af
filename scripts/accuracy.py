"""Interpreter-vs-float64 errors of every Triton kernel, as a markdown table.

    TRITON_INTERPRET=1 python scripts/accuracy.py

For each loss and dtype: the worst ||out - ref|| / ||ref|| over a set of shapes (values, and
gradients with a random cotangent) of the Triton path run by the interpreter on CPU tensors,
against the float64 torch reference (the absolute error where the reference is 0).
"""

from __future__ import annotations

import os

import torch

from cord_kernels import (
    cord_token_loss,
    forward_kl,
    fused_linear_cord_token_loss,
    fused_linear_distill_loss,
    jsd,
    reverse_kl,
    token_logprobs,
)
from cord_kernels import reference as ref

SHAPES = [(4, 5, 123), (1, 423, 37), (2, 3, 1), (2, 2, 5000), (3, 7, 257)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LOSSES = ["reverse_kl", "forward_kl", "jsd(beta=0.1)", "jsd(beta=0.5)", "jsd(beta=0.9)",
          "token_logprobs", "cord_token_loss"]
FUSED = ["fused_linear_cord_token_loss", "fused_linear_distill_loss(jsd)"]
HEADER = "| kernel path | dtype | value rel. error (max) | gradient rel. error (max) |"


def row_labels() -> list[tuple[str, str]]:
    """(kernel path, dtype) of every row of the table, in order."""
    return [(name, str(dtype)[6:]) for name in LOSSES + FUSED for dtype in DTYPES]


def rel(a, b):
    a, b = a.double(), b.double()
    den = b.norm().item()
    # A reference that is 0 up to fp64 rounding (V = 1: every divergence is exactly 0) gives
    # the absolute error instead.
    return (a - b).norm().item() / den if den > 1e-12 else (a - b).norm().item()


def run_case(name, dtype, B, T, V, g):
    s = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    u = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    s[0, 0, : min(4, V)] = 1e4 if dtype == torch.float32 else 1e3  # extreme logits
    mask = torch.rand(B, T, generator=g) > 0.3
    labels = torch.randint(0, V, (B, T), generator=g)
    x = s.clone().requires_grad_()
    x64 = s.double().requires_grad_()
    if name == "reverse_kl":
        out, exp = reverse_kl(x, u, temperature=0.8, impl="triton"), ref.reverse_kl(
            x64, u.double(), temperature=0.8)
    elif name == "forward_kl":
        out, exp = forward_kl(x, u, impl="triton"), ref.forward_kl(x64, u.double())
    elif name.startswith("jsd"):
        beta = float(name[len("jsd(beta="):-1])
        out = jsd(x, u, beta=beta, temperature=0.8, impl="triton")
        exp = ref.jsd(x64, u.double(), beta=beta, temperature=0.8)
    elif name == "token_logprobs":
        out, exp = token_logprobs(x, labels, impl="triton"), ref.token_logprobs(x64, labels)
    else:
        out = cord_token_loss(x, u, mask, top_k=3, reduction="none", impl="triton")
        exp = ref.cord_token_loss(x64, u.double(), mask, top_k=3, reduction="none")
    cot = torch.randn(out.shape, generator=g)
    (gx,) = torch.autograd.grad(out, x, cot)
    (g64,) = torch.autograd.grad(exp, x64, cot.double())
    return rel(out, exp), rel(gx, g64)


def fused_case(dtype, g, divergence=None):
    """The CORD loss (divergence None) or fused_linear_distill_loss with that divergence."""
    B, T, H, V = 3, 9, 24, 301
    hs = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_()
    ht = torch.randn(B, T, H, generator=g).to(dtype)
    w = (torch.randn(V, H, generator=g) / 3).to(dtype).requires_grad_()
    mask = torch.rand(B, T, generator=g) > 0.3
    hs64, w64 = hs.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    if divergence is None:
        out = fused_linear_cord_token_loss(hs, ht, w, mask, top_k=3, impl="triton")
        exp = ref.fused_linear_cord_token_loss(hs64, ht.double(), w64, mask, top_k=3)
    else:
        out = fused_linear_distill_loss(hs, ht, w, mask, divergence=divergence, impl="triton")
        s, u = ref._project(hs64, w64, None), ref._project(ht.double(), w64.detach(), None)
        exp = (torch.where(mask, ref.jsd(s, u), 0.0)).sum() / B
    gh, gw = torch.autograd.grad(out, [hs, w])
    gh64, gw64 = torch.autograd.grad(exp, [hs64, w64])
    return rel(out, exp), max(rel(gh, gh64), rel(gw, gw64))


def main():
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (the kernels run on the CPU through it)")
    g = torch.Generator().manual_seed(0)
    print(HEADER)
    print("|---|---|---|---|")
    for name in LOSSES:
        for dtype in DTYPES:
            errs = [run_case(name, dtype, *shape, g) for shape in SHAPES]
            print(f"| {name} | {str(dtype)[6:]} | {max(e[0] for e in errs):.1e} | "
                  f"{max(e[1] for e in errs):.1e} |")
    for name, divergence in zip(FUSED, [None, "jsd"]):
        for dtype in DTYPES:
            v, gr = fused_case(dtype, g, divergence)
            print(f"| {name} | {str(dtype)[6:]} | {v:.1e} | {gr:.1e} |")


if __name__ == "__main__":
    main()
