"""The impl="torch" path (eager autograd Functions) against the float64 reference."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from helpers import TOL, rel_err

import cord_kernels
from cord_kernels import reference as ref
from cord_kernels.core import torch_path
from cord_kernels.core.torch_path import TorchLogprobFunction
from cord_kernels.divergences.kl.torch_ops import TorchKLFunction


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_kl_both_gradients(dtype, temperature, device):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 90, generator=g) * 3).to(device, dtype).requires_grad_()
    y = (torch.randn(3, 4, 90, generator=g) * 3).to(device, dtype).requires_grad_()
    d = TorchKLFunction.apply(x, y, None, temperature)
    cot = torch.randn(d.shape, generator=g).to(device)
    gx, gy = torch.autograd.grad(d, [x, y], cot)
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    d64 = ref.reverse_kl(x64, y64, temperature=temperature, teacher_grad=True)
    gx64, gy64 = torch.autograd.grad(d64, [x64, y64], cot.double())
    assert gx.dtype == dtype and gy.dtype == dtype
    for a, b in [(d, d64), (gx, gx64), (gy, gy64)]:
        assert rel_err(a, b) < TOL[dtype]


def test_row_mask_zeroes_garbage_rows(device):
    x = torch.randn(2, 5, 30, device=device, requires_grad=True)
    y = torch.randn(2, 5, 30, device=device)
    mask = torch.ones(2, 5, dtype=torch.bool, device=device)
    mask[1, 3:] = False
    with torch.no_grad():
        x[1, 3:] = float("nan")
    d = TorchKLFunction.apply(x, y, mask, 1.0)
    d.sum().backward()
    assert (d[~mask] == 0).all() and torch.isfinite(d).all()
    assert (x.grad[~mask] == 0).all() and torch.isfinite(x.grad).all()


def test_logprob_saves_no_vocab_sized_tensor_beyond_the_input():
    x = torch.randn(6, 200, requires_grad=True)
    labels = torch.randint(0, 200, (6,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = TorchLogprobFunction.apply(x, labels, 1.0, -100)
    assert all(t.numel() <= x.numel() for t in saved)
    assert sum(t.numel() == x.numel() for t in saved) == 1  # the logits themselves
    (gx,) = torch.autograd.grad(out.sum(), x)
    x64 = x.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(ref.token_logprobs(x64, labels).sum(), x64)
    assert rel_err(gx, g64) < 1e-5


def test_opt_in_compiled_path_matches_the_reference(kernel_settings):
    """CORD_TORCH_COMPILE=1: the same values and gradients through torch.compile, masked rows
    with garbage included, and nothing of size (N, V) saved besides the inputs."""
    kernel_settings(torch_compile=True)
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 5, 70, generator=g) * 3).requires_grad_()
    y = (torch.randn(2, 5, 70, generator=g) * 3).requires_grad_()
    mask = torch.rand(2, 5, generator=g) > 0.3
    mask[0, 0] = False
    with torch.no_grad():
        x[0, 0] = float("nan")
        x[1, 1, :9] = float("-inf")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        d = TorchKLFunction.apply(x, y, mask, 0.7)
    assert sum(t.numel() >= x.numel() for t in saved) == 2  # x and y themselves
    cot = torch.randn(d.shape, generator=g)
    gx, gy = torch.autograd.grad(d, [x, y], cot)
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    d64 = torch.where(mask, ref.reverse_kl(x64, y64, temperature=0.7, teacher_grad=True), 0.0)
    gx64, gy64 = torch.autograd.grad(d64, [x64, y64], cot.double())
    gx64[~mask], gy64[~mask] = 0.0, 0.0
    for a, b in [(d, d64), (gx, gx64), (gy, gy64)]:
        assert rel_err(a, b) < 1e-5
    assert (gx[~mask] == 0).all() and torch.isfinite(gx).all()

    labels = torch.randint(0, 70, (2, 5), generator=g)
    labels[0, 1] = -100
    z = y.detach().requires_grad_()
    lp = TorchLogprobFunction.apply(z, labels, 1.3, -100)
    (gz,) = torch.autograd.grad(lp, z, cot)
    z64 = z.detach().double().requires_grad_()
    lp64 = ref.token_logprobs(z64, labels, temperature=1.3)
    (gz64,) = torch.autograd.grad(lp64, z64, cot.double())
    assert rel_err(lp, lp64) < 1e-5 and rel_err(gz, gz64) < 1e-5


# ---------------------------------------------------------------------------- layout

_PACKAGE = Path(cord_kernels.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports (function-local imports included), read with ``ast``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_nothing_in_the_library_imports_the_reference():
    """reference.py is the tests' fp64 oracle only; the CPU path is torch_path.py."""
    users = [p.name for p in sorted(_PACKAGE.rglob("*.py"))
             if p.name != "reference.py" and "cord_kernels.reference" in _imports(p)]
    assert users == []


def test_pure_torch_row_math_lives_in_torch_path_or_its_divergence():
    """Every ``Torch*`` class and ``torch_*`` function of the package is defined in
    torch_path.py (what is not a divergence), in its divergence's home
    (``divergences/<name>/torch_ops.py`` or ``parallel.py``) or in the divergences'
    shared ``common.py``: the eager path has one home per
    divergence, and every divergence folder has its three parts and a registry entry."""
    from cord_kernels.divergences.registry import REGISTRY

    homes = _PACKAGE / "divergences"
    elsewhere = []
    for p in sorted(_PACKAGE.rglob("*.py")):
        in_home = (p.parent.parent == homes and p.name in ("torch_ops.py", "parallel.py")
                   or p == homes / "common.py")  # the torch tiles' shared row-block loop
        if p.name in ("torch_path.py", "reference.py") or in_home:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and (
                    node.name.startswith("Torch") or node.name.startswith("torch_")):
                elsewhere.append(f"{p.name}:{node.name}")
    assert elsewhere == []
    assert {"TorchTileLogprobs", "TorchSupportLogprobsFunction", "torch_dense_grad"} \
        <= set(dir(torch_path))
    folders = sorted(d.name for d in homes.iterdir() if (d / "__init__.py").exists())
    for name in folders:
        assert {"triton_ops.py", "torch_ops.py", "parallel.py"} <= {
            f.name for f in (homes / name).iterdir()}, name
    registered = {p.triton_rows.__module__.split(".")[2] for p in REGISTRY.values()}
    assert registered == set(folders)
