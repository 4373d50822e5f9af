"""impl selection, and that the package works where Triton cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cord_kernels.core.dispatch import resolve_impl

NO_TRITON = r"""
import sys
sys.modules["triton"] = None  # makes `import triton` raise ImportError
sys.modules["triton.language"] = None
import torch, cord_kernels
s, u = torch.randn(2, 3, 17, requires_grad=True), torch.randn(2, 3, 17)
loss = cord_kernels.cord_token_loss(s, u, torch.ones(2, 3, dtype=torch.bool))
loss.backward()
assert torch.isfinite(loss) and s.grad is not None
try:
    cord_kernels.reverse_kl(s, u, impl="triton")
except RuntimeError as e:
    assert "triton" in str(e)
else:
    raise AssertionError("impl='triton' without triton must fail")
print("ok")
"""


def test_import_and_torch_path_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", NO_TRITON], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_resolve_impl(kernel_settings):
    x = torch.zeros(1)
    kernel_settings(interpret=False)
    assert resolve_impl(None, x) == "torch"
    assert resolve_impl("torch", x) == "torch"
    kernel_settings(interpret=True)
    assert resolve_impl(None, x) == "triton"
    assert resolve_impl("torch", x) == "torch"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("cuda", x)


LATE_INTERPRET = r"""
import os, torch, cord_kernels
os.environ["TRITON_INTERPRET"] = "1"  # too late: cord_kernels and triton have read it
s, u = torch.randn(2, 9), torch.randn(2, 9)
assert torch.isfinite(cord_kernels.reverse_kl(s, u)).all()  # impl=None: the torch path
try:
    cord_kernels.reverse_kl(s, u, impl="triton")
except ValueError as e:
    assert "before the first import of triton" in str(e), e
else:
    raise AssertionError("expected a clear error")
print("ok")
"""


def test_interpreter_requested_after_import_gives_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", LATE_INTERPRET], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_cuda_without_triton_raises_instead_of_falling_back():
    """A broken Triton on CUDA must not quietly take the torch path (several (N, V) fp32
    tensors): impl=None raises and names the fix; impl="torch" is the explicit opt-in."""
    from cord_kernels.core.dispatch import Impl, decide_impl

    with pytest.raises(RuntimeError, match="impl='torch'"):
        decide_impl(None, on_cuda=True, triton_ok=False)
    with pytest.raises(RuntimeError, match="triton cannot be imported"):
        decide_impl("triton", on_cuda=True, triton_ok=False)
    assert decide_impl("torch", on_cuda=True, triton_ok=False) is Impl.TORCH
    assert decide_impl(None, on_cuda=True, triton_ok=True) is Impl.TRITON
    assert decide_impl(None, on_cuda=False, triton_ok=False) is Impl.TORCH


def test_dispatch_knows_no_kernel():
    """core/dispatch.py imports no kernel module (kl.py imports it, not the other way)."""
    import ast
    from pathlib import Path

    import cord_kernels.core.dispatch as d

    tree = ast.parse(Path(d.__file__).read_text())
    imported = {f"{n.module}.{a.name}" if n.module == "cord_kernels" else n.module
                for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    allowed = {"__future__", "cord_kernels.core.validation", "cord_kernels.core.options",
               "cord_kernels.settings"}
    assert imported <= allowed, imported
