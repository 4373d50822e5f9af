"""The package as a new user meets it (issue 20, items 5 and 7): ``help(cord_kernels)`` is a
page that maps the API, the metadata keeps triton off the platforms it has no wheels for, and
the losses work where triton is absent."""

from __future__ import annotations

import os
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import pyproject
from packaging.requirements import Requirement

import cord_kernels

ROOT = Path(__file__).resolve().parents[1]
WRAPPERS = ["ReverseKL", "ForwardKL", "JSD", "TVD", "TokenLogprobs", "CordTokenLoss",
            "FusedLinearDistillLoss", "FusedLinearCordTokenLoss", "FusedLinearTokenLogprobs",
            "GRPOLoss", "SparseTeacherLoss", "FusedLinearSparseTeacherLoss"]


def test_help_is_a_page_that_maps_the_api():
    text = pydoc.plaintext.document(cord_kernels)
    # It was 10,256 lines, 9,939 of them nn.Module methods inherited by the wrappers; what is
    # left is the map and the functions' own docstrings (about 30 lines each, 17 functions).
    assert len(text.splitlines()) < 800
    assert "Methods inherited from torch.nn" not in text
    doc = cord_kernels.__doc__
    for name in cord_kernels.__all__ + WRAPPERS:
        assert name in doc, f"{name} is missing from the package docstring's map"
    for word in ("batchmean", "labels=", "num_items_in_batch", "impl="):
        assert word in doc


def test_all_holds_the_functions_and_the_wrappers_stay_importable():
    assert len(cord_kernels.__all__) == 17
    for name in cord_kernels.__all__:
        assert callable(getattr(cord_kernels, name)) and not isinstance(
            getattr(cord_kernels, name), type)
    for name in WRAPPERS:
        assert isinstance(getattr(cord_kernels, name), type)


def _dependencies() -> list[Requirement]:
    return [Requirement(r) for r in pyproject()["project"]["dependencies"]]


@pytest.mark.parametrize("platform, wanted", [("linux", True), ("darwin", False),
                                              ("win32", False)])
def test_triton_is_a_linux_dependency_only(platform, wanted):
    deps = {r.name: r for r in _dependencies()}
    assert set(deps) == {"torch", "triton"}  # the library needs nothing else
    assert deps["torch"].marker is None
    triton = deps["triton"]
    assert triton.marker is not None
    assert triton.marker.evaluate({"sys_platform": platform}) is wanted


_WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # import triton now raises ImportError, as on macOS
import torch
import cord_kernels as ck
from cord_kernels.core.dispatch import triton_available
assert not triton_available()
g = torch.Generator().manual_seed(0)
s, u = torch.randn(2, 5, 9, generator=g, requires_grad=True), torch.randn(2, 5, 9, generator=g)
h, w = torch.randn(2, 5, 4, generator=g, requires_grad=True), torch.randn(9, 4, generator=g)
labels = torch.randint(0, 9, (2, 5), generator=g)
mask = torch.ones(2, 5, dtype=torch.bool)
losses = [ck.cord_token_loss(s, u, mask), ck.jsd(s, u).sum(), ck.reverse_kl(s, u).sum(),
          ck.token_logprobs(s, labels).sum(), ck.fused_linear_distill_loss(h, h, w, mask),
          ck.fused_linear_cord_token_loss(h, h.detach(), w, mask)]
sum(losses).backward()
ref = ck.cord_token_loss(s, u, mask, impl="torch")
assert torch.equal(losses[0], ref), (losses[0], ref)
assert all(torch.isfinite(x) for x in losses) and torch.isfinite(s.grad).all()
print("ok", "triton" in sys.modules and sys.modules["triton"] is not None)
"""


def test_the_losses_work_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "False"]
