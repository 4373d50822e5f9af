"""Which implementation runs: the Triton kernels or the pure-torch path.

``impl=None`` picks Triton for CUDA tensors, or for any tensor when ``TRITON_INTERPRET=1`` (the
interpreter runs the kernels on CPU tensors), and the torch path otherwise. Each public
function resolves its ``impl`` argument once, into an :class:`Impl`, and passes that on.

Triton is imported here only to learn whether it works, so that ``import cord_kernels`` works
where Triton is missing or broken. This module knows no particular kernel: whether kernels
were decorated for the interpreter is read from a probe function decorated here, at the same
moment as every kernel of the package.
"""

from __future__ import annotations

import enum

import torch

from cord_kernels import settings
from cord_kernels.core.options import check_impl


class Impl(str, enum.Enum):
    """The resolved implementation. A ``str`` enum, so ``Impl.TORCH == "torch"`` holds."""

    TRITON = "triton"
    TORCH = "torch"


def _import_triton() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as err:  # a broken install raises more than ImportError
        return False, f"{type(err).__name__}: {err}"
    return True, ""


# Decided once at import (a plain constant keeps torch.compile from tracing an import).
_TRITON_OK, _TRITON_ERROR = _import_triton()

if _TRITON_OK:
    import triton

    @triton.jit
    def _interpreter_probe():  # never launched: its type says how kernels were decorated
        pass

    _KERNELS_INTERPRETED = type(_interpreter_probe).__name__ == "InterpretedFunction"
else:
    _KERNELS_INTERPRETED = False


def triton_available() -> bool:
    return _TRITON_OK


def interpret_mode() -> bool:
    """Whether ``impl=None`` runs the kernels on CPU tensors (setting ``interpret``,
    ``TRITON_INTERPRET=1``)."""
    return settings.get().interpret


def kernels_interpreted() -> bool:
    """Whether our kernels were decorated for the interpreter. Triton decides that when
    ``triton`` (and each ``@triton.jit``) is imported, so setting ``TRITON_INTERPRET=1`` later
    in a process cannot run them on CPU tensors."""
    return _KERNELS_INTERPRETED


def resolve_impl(impl, *tensors: torch.Tensor) -> Impl:
    """``impl`` ("triton" | "torch" | None) for these tensors, as an :class:`Impl`.

    A CUDA run with ``impl=None`` and a Triton that cannot be imported raises instead of
    quietly taking the torch path: that path holds several (N, V) fp32 tensors (tens of GB
    at N = 16k), so a silent fallback turns a broken install into an out-of-memory error far
    from its cause. ``impl="torch"`` asks for it explicitly.
    """
    # len(), not bool(): dynamo cannot trace bool(tuple) (torch 2.11, the H200 image)
    on_cuda = len(tensors) > 0 and all(t.is_cuda for t in tensors)
    return decide_impl(impl, on_cuda=on_cuda, triton_ok=_TRITON_OK)


def decide_impl(impl, *, on_cuda: bool, triton_ok: bool) -> Impl:
    """The decision table of :func:`resolve_impl`, for tensors on CUDA or not and a Triton
    that imports or not."""
    check_impl(impl)
    if impl == "torch":
        return Impl.TORCH
    if impl == "triton":
        if not triton_ok:
            raise RuntimeError(
                f"impl='triton' was requested but triton cannot be imported ({_TRITON_ERROR})")
        if not on_cuda and not interpret_mode():
            raise ValueError(
                "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before the first "
                "import of triton and cord_kernels (both read it once) to run the kernels on the "
                "CPU through the interpreter"
            )
        if not on_cuda and not kernels_interpreted():
            raise ValueError(
                "impl='triton' on CPU tensors needs the interpreter, but TRITON_INTERPRET=1 was "
                "set after triton was imported: set it before the first import of triton"
            )
        return Impl.TRITON
    if on_cuda and not triton_ok:
        raise RuntimeError(
            f"CUDA tensors, but triton cannot be imported ({_TRITON_ERROR}). Fix the triton "
            "install, or pass impl='torch' to run the torch path (it holds several (N, V) "
            "fp32 tensors)"
        )
    if triton_ok and (on_cuda or (interpret_mode() and kernels_interpreted())):
        return Impl.TRITON
    return Impl.TORCH
