"""Which implementation runs: the Triton kernels or the pure-torch reference.

``impl=None`` picks Triton for CUDA tensors, or for any tensor when ``TRITON_INTERPRET=1`` (the
interpreter runs the kernels on CPU tensors), and the torch reference otherwise. Triton is
imported lazily so that ``import cord_kernels`` works where Triton is missing or broken.
"""

from __future__ import annotations

import os

import torch

from cord_kernels._validation import IMPLS


def _import_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


# Decided once at import (a plain constant keeps torch.compile from tracing an import).
_TRITON_OK = _import_triton()


def triton_available() -> bool:
    return _TRITON_OK


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_interpreted() -> bool:
    """Whether our kernels were decorated for the interpreter. Triton decides that when
    ``triton`` (and each ``@triton.jit``) is imported, so setting ``TRITON_INTERPRET=1`` later
    in a process cannot run them on CPU tensors."""
    from cord_kernels.kl import _kl_fwd_kernel

    return type(_kl_fwd_kernel).__name__ == "InterpretedFunction"


def resolve_impl(impl, *tensors: torch.Tensor) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    on_cuda = all(t.is_cuda for t in tensors)
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' was requested but triton cannot be imported")
        if not on_cuda and not interpret_mode():
            raise ValueError(
                "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run the kernels "
                "on the CPU through the interpreter"
            )
        if not on_cuda and not kernels_interpreted():
            raise ValueError(
                "impl='triton' on CPU tensors needs the interpreter, but TRITON_INTERPRET=1 was "
                "set after triton was imported: set it before the first import of triton"
            )
        return "triton"
    if triton_available() and (on_cuda or (interpret_mode() and kernels_interpreted())):
        return "triton"
    return "torch"
