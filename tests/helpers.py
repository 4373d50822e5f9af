"""Helpers the tests import (``from helpers import ...``); fixtures stay in conftest.py."""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (absolute when the reference is exactly 0)."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(ref).all():
        same_nonfinite = torch.equal(torch.isfinite(out), torch.isfinite(ref)) and torch.equal(
            out[~torch.isfinite(ref)], ref[~torch.isfinite(ref)]
        )
        if not same_nonfinite:
            return float("inf")
        keep = torch.isfinite(ref)
        out, ref = out[keep], ref[keep]
    num = (out - ref).norm().item()
    den = ref.norm().item()
    return num / den if den > 0 else num


# (dtype, relative tolerance) of SPEC section 4.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
