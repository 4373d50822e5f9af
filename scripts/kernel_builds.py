"""Ahead-of-time GPU builds of every Triton kernel, on a machine without a GPU (dev tooling:
tests/test_gpu_build.py and bench/test_static_gpu.py use it; the runtime package does not).

    python -m scripts.kernel_builds        # the table: kernel, arch, dtype, REG, spills, LDG.E.128

``triton.compile`` lowers a kernel to PTX and, with the ``ptxas`` that ships in
``triton/backends/nvidia/bin``, to a cubin for a chosen architecture. ``cuobjdump`` then reads
the registers and local memory (spills) of the cubin and its SASS shows the width of every
global load. This is how we prove, without a GPU, that the kernels build for sm_80 / sm_90 at
the block sizes the launchers pick, do not spill, and load 16 bytes at a time.

The signatures below mirror the real launches: pointers, strides and the vocabulary size
carry ``tt.divisibility=16`` exactly as Triton's JIT specialises them for the real shapes
(Qwen2's V = 151936 = 16 * 9496, contiguous row strides of V elements, 16-byte aligned
allocations).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from cord_kernels.core.rows import block_v
from cord_kernels.settings import Settings

QWEN2_VOCAB = 151936
NUM_WARPS = Settings.num_warps  # the default launch config, not an override in force
_TL_DTYPE = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class KernelBuild:
    """One kernel variant as a launcher would build it."""

    name: str
    kernel: object  # a triton JITFunction
    signature: dict[str, str]
    constexprs: dict[str, object]
    divisible: tuple[str, ...]  # argument names the JIT would mark 16-divisible


@dataclass(frozen=True)
class BuildReport:
    name: str
    arch: int
    dtype: str
    registers: int
    spill_bytes: int  # LOCAL memory per thread: > 0 means spills
    ldg128: int  # number of 16-byte global loads in the SASS
    sass: str


def _tools_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


GRAD_INTO_BF16 = ("kl_bwd_dx", "kl_bwd_dy", "jsd_bwd_dx", "tvd_bwd")
"""The backward kernels the fused-linear driver runs with a bf16 gradient tile."""


def kernel_builds(dtype: str = "bf16", vocab: int = QWEN2_VOCAB) -> list[KernelBuild]:
    """Every kernel variant the launchers use, with the block size they pick for ``vocab``."""
    from cord_kernels.divergences.jsd.triton_ops import _jsd_bwd_kernel, _jsd_fwd_kernel
    from cord_kernels.divergences.kl.triton_ops import _kl_bwd_kernel, _kl_fwd_kernel
    from cord_kernels.divergences.tvd.triton_ops import _tvd_bwd_kernel, _tvd_fwd_kernel
    from cord_kernels.logits.token_logprobs import _logprob_bwd_kernel, _logprob_fwd_kernel
    from cord_kernels.sparse.support_logprobs import _support_bwd_kernel, _support_fwd_kernel
    from cord_kernels.sparse.support_loss import (
        MAX_BLOCK_K,
        MAX_BLOCK_K_BWD,
        _sparse_bwd_kernel,
        _sparse_fwd_kernel,
    )

    t = _TL_DTYPE[dtype]
    bv = block_v(vocab)
    strides = ("stride_xa", "stride_xb", "stride_ya", "stride_yb")
    builds = []
    # (row mask, entropy): the logits-in calls, the CORD loss's masked rows, and the TRL
    # drop-in's tiles with the student entropy formed in the same pass (ENTROPY=1).
    for has_mask, entropy in ((False, 0), (True, 0), (False, 1)):
        builds.append(KernelBuild(
            f"kl_fwd{'_rowmask' if has_mask else ''}{'_entropy' if entropy else ''}",
            _kl_fwd_kernel,
            {"X": f"*{t}", "Y": f"*{t}", "RowMask": "*u8", "D": "*fp32", "LseX": "*fp32",
             "LseY": "*fp32", "Ent": "*fp32", **dict.fromkeys(strides, "i64"), "R": "i32",
             "V": "i32", "inv_temp": "fp32", "HAS_ROW_MASK": "constexpr",
             "ENTROPY": "constexpr", "BLOCK_V": "constexpr"},
            {"HAS_ROW_MASK": has_mask, "ENTROPY": entropy, "BLOCK_V": bv},
            ("X", "Y", "RowMask", "D", "LseX", "LseY", "Ent", *strides, "V"),
        ))
    dstrides = ("stride_dxa", "stride_dxb", "stride_dya", "stride_dyb")
    # (dx, dy): reverse KL student only, reverse KL with teacher grad, forward KL student only.
    for has_dx, has_dy in ((True, False), (True, True), (False, True)):
        builds.append(KernelBuild(
            f"kl_bwd{'_dx' if has_dx else ''}{'_dy' if has_dy else ''}",
            _kl_bwd_kernel,
            {"X": f"*{t}", "Y": f"*{t}", "LseX": "*fp32", "LseY": "*fp32", "D": "*fp32",
             "G": "*fp32", "DX": f"*{t}", "DY": f"*{t}", **dict.fromkeys(strides, "i64"),
             **dict.fromkeys(dstrides, "i64"), "R": "i32", "V": "i32", "inv_temp": "fp32",
             "HAS_DX": "constexpr", "HAS_DY": "constexpr", "BLOCK_V": "constexpr"},
            {"HAS_DX": has_dx, "HAS_DY": has_dy, "BLOCK_V": bv},
            ("X", "Y", "LseX", "LseY", "D", "G", "DX", "DY", *strides, *dstrides, "V"),
        ))
    jsd_scalars = {"R": "i32", "V": "i32", "scale": "fp32", "beta": "fp32"}
    for entropy in (False, True):
        builds.append(KernelBuild(
            f"jsd_fwd{'_entropy' if entropy else ''}",
            _jsd_fwd_kernel,
            {"X": f"*{t}", "Y": f"*{t}", "D": "*fp32", "Stats": "*fp32", "Ent": "*fp32",
             **dict.fromkeys(strides, "i64"), **jsd_scalars, "HAS_ENTROPY": "constexpr",
             "BLOCK_V": "constexpr"},
            {"HAS_ENTROPY": entropy, "BLOCK_V": bv},
            ("X", "Y", "D", "Stats", "Ent", *strides, "V"),
        ))
    # (dx, dy): student only (the default), and with teacher_grad=True.
    for has_dy in (False, True):
        builds.append(KernelBuild(
            f"jsd_bwd_dx{'_dy' if has_dy else ''}",
            _jsd_bwd_kernel,
            {"X": f"*{t}", "Y": f"*{t}", "Stats": "*fp32", "G": "*fp32", "DX": f"*{t}",
             "DY": f"*{t}", **dict.fromkeys(strides, "i64"), **dict.fromkeys(dstrides, "i64"),
             **jsd_scalars, "HAS_DX": "constexpr", "HAS_DY": "constexpr",
             "BLOCK_V": "constexpr"},
            {"HAS_DX": True, "HAS_DY": has_dy, "BLOCK_V": bv},
            ("X", "Y", "Stats", "G", "DX", "DY", *strides, *dstrides, "V"),
        ))
    tvd_scalars = {"R": "i32", "V": "i32", "scale": "fp32"}
    builds.append(KernelBuild(
        "tvd_fwd",
        _tvd_fwd_kernel,
        {"X": f"*{t}", "Y": f"*{t}", "D": "*fp32", "Stats": "*fp32", "Ent": "*fp32",
         **dict.fromkeys(strides, "i64"), **tvd_scalars, "HAS_ENTROPY": "constexpr",
         "BLOCK_V": "constexpr"},
        {"HAS_ENTROPY": False, "BLOCK_V": bv},
        ("X", "Y", "D", "Stats", "Ent", *strides, "V"),
    ))
    builds.append(KernelBuild(
        "tvd_bwd",
        _tvd_bwd_kernel,
        {"X": f"*{t}", "Y": f"*{t}", "Stats": "*fp32", "G": "*fp32", "DX": f"*{t}",
         **dict.fromkeys(strides, "i64"), "stride_dxa": "i64", "stride_dxb": "i64",
         **tvd_scalars, "BLOCK_V": "constexpr"},
        {"BLOCK_V": bv},
        ("X", "Y", "Stats", "G", "DX", *strides, "stride_dxa", "stride_dxb", "V"),
    ))
    builds.append(KernelBuild(
        "logprob_fwd",
        _logprob_fwd_kernel,
        {"X": f"*{t}", "Labels": "*i64", "Out": "*fp32", "Lse": "*fp32", "stride_xa": "i64",
         "stride_xb": "i64", "R": "i32", "V": "i32", "inv_temp": "fp32", "ignore_index": "i32",
         "BLOCK_V": "constexpr"},
        {"BLOCK_V": bv},
        ("X", "Labels", "Out", "Lse", "stride_xa", "stride_xb", "V"),
    ))
    builds.append(KernelBuild(
        "logprob_bwd",
        _logprob_bwd_kernel,
        {"X": f"*{t}", "Labels": "*i64", "Lse": "*fp32", "G": "*fp32", "DX": f"*{t}",
         "stride_xa": "i64", "stride_xb": "i64", "stride_dxa": "i64", "stride_dxb": "i64",
         "R": "i32", "V": "i32", "inv_temp": "fp32", "ignore_index": "i32",
         "BLOCK_V": "constexpr"},
        {"BLOCK_V": bv},
        ("X", "Labels", "Lse", "G", "DX", "stride_xa", "stride_xb", "stride_dxa",
         "stride_dxb", "V"),
    ))
    # The sparse-teacher losses: lse + a k-gather, then the dense gradient (k = 64, a typical
    # server top-k; the launcher pads k to a power of two).
    builds.append(KernelBuild(
        "support_fwd",
        _support_fwd_kernel,
        {"X": f"*{t}", "Ids": "*i64", "SlotValid": "*u8", "Out": "*fp32", "Lse": "*fp32",
         "stride_xa": "i64", "stride_xb": "i64", "R": "i32", "V": "i32", "K": "i32",
         "inv_temp": "fp32", "BLOCK_V": "constexpr", "BLOCK_K": "constexpr"},
        {"BLOCK_V": bv, "BLOCK_K": 64},
        ("X", "Ids", "SlotValid", "Out", "Lse", "stride_xa", "stride_xb", "V", "K"),
    ))
    builds.append(KernelBuild(
        "support_bwd",
        _support_bwd_kernel,
        {"X": f"*{t}", "Lse": "*fp32", "GSum": "*fp32", "DX": f"*{t}", "stride_xa": "i64",
         "stride_xb": "i64", "stride_dxa": "i64", "stride_dxb": "i64", "R": "i32", "V": "i32",
         "inv_temp": "fp32", "logit_scale": "fp32", "inv_softcap": "fp32",
         "BLOCK_V": "constexpr"},
        {"BLOCK_V": bv},
        ("X", "Lse", "GSum", "DX", "stride_xa", "stride_xb", "stride_dxa", "stride_dxb", "V"),
    ))
    # The sparse losses' own kernels (support_loss.py): the JSD-with-bucket forward (the
    # largest epilogue) and the backward, at the launchers' largest k blocks.
    builds.append(KernelBuild(
        "sparse_fwd",
        _sparse_fwd_kernel,
        {"X": f"*{t}", "LP": "*fp32", "Ids": "*i64", "RowMask": "*i1", "D": "*fp32",
         "WS": "*fp32", "Flag": "*i32", "stride_xa": "i64", "stride_xb": "i64", "R": "i32",
         "V": "i32", "K": "i32", "inv_temp": "fp32", "beta": "fp32", "DIV": "constexpr",
         "BUCKET": "constexpr", "ALL_SLOTS": "constexpr", "BLOCK_V": "constexpr",
         "BLOCK_K": "constexpr"},
        {"DIV": 2, "BUCKET": True, "ALL_SLOTS": False, "BLOCK_V": bv, "BLOCK_K": MAX_BLOCK_K},
        ("X", "LP", "Ids", "D", "WS", "stride_xa", "stride_xb", "V"),
    ))
    builds.append(KernelBuild(
        "sparse_bwd",
        _sparse_bwd_kernel,
        {"X": f"*{t}", "WS": "*fp32", "Ids": "*i64", "C": "*fp32", "DX": f"*{t}",
         "stride_xa": "i64", "stride_xb": "i64", "stride_dxa": "i64", "stride_dxb": "i64",
         "stride_ca": "i64", "stride_cb": "i64", "R": "i32", "V": "i32", "K": "i32",
         "inv_temp": "fp32", "logit_scale": "fp32", "inv_softcap": "fp32",
         "BLOCK_V": "constexpr", "BLOCK_K": "constexpr"},
        {"BLOCK_V": bv, "BLOCK_K": MAX_BLOCK_K_BWD},
        ("X", "WS", "Ids", "C", "DX", "stride_xa", "stride_xb", "stride_dxa", "stride_dxb",
         "V"),
    ))
    if dtype == "fp32":
        # The fused-linear drop-in's backward: fp32 logits tiles in, the gradient rounded on
        # store into a bf16 tile, the backward GEMMs' operand (``DistillProblem.logits_grad``).
        for b in [b for b in builds if b.name in GRAD_INTO_BF16]:
            out = {k: "*bf16" for k in ("DX", "DY") if k in b.signature}
            builds.append(replace(b, name=b.name + "_bf16out", signature={**b.signature, **out}))
    return builds


def compile_build(build: KernelBuild, arch: int, *, num_warps: int = NUM_WARPS) -> BuildReport:
    """Compiles one variant for ``sm_{arch}`` and reads its resource usage and SASS."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(build.kernel.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in build.divisible}
    src = ASTSource(build.kernel, build.signature, build.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})
    tools = _tools_dir()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    cubin = tmp / f"cord_{build.name}_sm{arch}_{os.getpid()}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    try:
        usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", str(cubin)],
                               check=True, capture_output=True, text=True).stdout
        sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)],
                              check=True, capture_output=True, text=True).stdout
    finally:
        cubin.unlink(missing_ok=True)
    reg = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    dtype = next((v[1:] for k, v in build.signature.items() if k == "X"), "?")
    return BuildReport(build.name, arch, dtype, reg, local, sass.count("LDG.E.128"), sass)


_SASS_LINE = re.compile(r"^\s*/\*(?P<addr>[0-9a-f]+)\*/\s+(?P<op>[^;]*);")
_BRANCH = re.compile(r"\bBRA\s+(?P<target>0x[0-9a-f]+)")


def loop_bodies(sass: str) -> list[int]:
    """Instructions (NOPs excluded) of each loop body in a kernel's SASS, in program order: a
    loop is a branch to an address below its own, its body the instructions from that address
    to the branch."""
    ops = []  # (address, instruction)
    for line in sass.splitlines():
        m = _SASS_LINE.match(line)
        if m:
            ops.append((int(m.group("addr"), 16), m.group("op").strip()))
    bodies = []
    for addr, op in ops:
        b = _BRANCH.search(op)
        if b and int(b.group("target"), 16) < addr:
            lo = int(b.group("target"), 16)
            bodies.append(sum(1 for a, o in ops if lo <= a <= addr and "NOP" not in o.split()))
    return bodies


def sass_per_entry(report: BuildReport, *, num_warps: int = NUM_WARPS,
                   vocab: int = QWEN2_VOCAB) -> list[float]:
    """SASS instructions per vocabulary entry of each streaming loop: a loop body issues once
    per thread for BLOCK_V / (32 num_warps) entries of the row (16 at BLOCK_V 4096, 8 warps)."""
    entries = block_v(vocab) / (32 * num_warps)
    return [n / entries for n in loop_bodies(report.sass)]


def build_table(archs=(80, 90), dtypes=("bf16", "fp32")) -> list[BuildReport]:
    return [compile_build(b, arch) for dtype in dtypes for b in kernel_builds(dtype)
            for arch in archs]


def main() -> None:
    print(f"{'kernel':<20} arch dtype  REG spill LDG.E.128  SASS/entry per loop   "
          f"(BLOCK_V={block_v(QWEN2_VOCAB)}, {NUM_WARPS} warps, V={QWEN2_VOCAB})")
    for r in build_table():
        loops = " ".join(f"{x:.1f}" for x in sass_per_entry(r))
        print(f"{r.name:<20} sm{r.arch} {r.dtype:<5} {r.registers:>4} {r.spill_bytes:>5} "
              f"{r.ldg128:>9}  {loops}")


if __name__ == "__main__":
    main()
