"""Static GPU table: every Triton kernel of cord_kernels compiled for sm_80 and sm_90 on this
machine (no GPU needed), with registers, spill bytes and 16-byte loads read by cuobjdump.

The builds come from ``scripts/kernel_builds.py`` (the same variants tests/test_gpu_build.py
checks); any ``@triton.jit`` kernel in cord_kernels that has no build there is listed as not
covered, so a new kernel cannot silently miss the table.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from bench.harness import RECORDER
from scripts import kernel_builds

ARCHS = (80, 90)
DTYPES = ("bf16", "fp32")


def _all_jit_kernels() -> set[str]:
    """Names of every triton JITFunction defined in a cord_kernels module."""
    from triton.runtime.jit import JITFunction

    import cord_kernels

    names = set()
    for info in pkgutil.walk_packages(cord_kernels.__path__, "cord_kernels."):
        try:
            mod = importlib.import_module(info.name)
        except Exception:  # a module being written by someone else right now
            continue
        names |= {f"{info.name.removeprefix('cord_kernels.')}.{k}" for k, v in vars(mod).items()
                  if isinstance(v, JITFunction) and v.__module__ == mod.__name__}
    return names


def test_static_gpu_table():
    try:
        import triton.backends.nvidia  # noqa: F401
    except Exception as err:  # pragma: no cover
        RECORDER.static_gpu_note = f"triton's NVIDIA backend is unavailable ({err})"
        pytest.skip(RECORDER.static_gpu_note)
    rows, covered = [], set()
    for dtype in DTYPES:
        for build in kernel_builds.kernel_builds(dtype):
            covered.add(f"{build.kernel.__module__.removeprefix('cord_kernels.')}."
                        f"{build.kernel.__name__}")
            for arch in ARCHS:
                r = kernel_builds.compile_build(build, arch)
                rows.append({"name": r.name, "arch": r.arch, "dtype": r.dtype,
                             "registers": r.registers, "spill_bytes": r.spill_bytes,
                             "ldg128": r.ldg128})
    RECORDER.static_gpu = rows
    missing = sorted(_all_jit_kernels() - covered)
    if missing:
        RECORDER.static_gpu_note = "Not covered by a build spec yet: " + ", ".join(missing)
    assert rows, "no kernel builds"
    assert all(r["registers"] > 0 for r in rows)
