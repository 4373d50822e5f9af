"""Timing modes, peak memory, and the byte / flop counts behind the GB/s and TFLOP/s columns.

Modes time the same closure three ways: ``fwd`` (the loss with autograd recording, as in a
training step), ``bwd`` (``backward()`` of a loss computed untimed in setup) and ``fwd+bwd``.

Memory:
    CUDA: ``torch.cuda.max_memory_allocated`` over one fwd+bwd, minus what was allocated before.
    CPU: the peak resident set over one fwd+bwd (the last timed round), in the bench process
    itself: before the round, freed memory goes back to the OS (``malloc_trim``) and the
    kernel's high-water mark is reset (``/proc/self/clear_refs``), so neither imports, the
    inputs, torch.compile's compiler nor an earlier provider appear in it; reported absolute
    and minus the resident size just before the round. (The kernel's mark is per process
    and the round runs alone, so a fresh process per provider would measure the same peak,
    at the cost of re-importing torch, TRL and Liger for each.)
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.floors import gemm_count

MODES = ("fwd", "bwd", "fwd+bwd")


# ----------------------------------------------------------------------------------- modes


def _clear_grads(leaves) -> None:
    for t in leaves:
        t.grad = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mode_callables(closure: Callable[[], torch.Tensor], leaves, mode: str, device: torch.device):
    """(target, setup) for ``benchmark.pedantic``: setup's work is not timed; target's is,
    including a device sync so asynchronous CUDA work is counted."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    if mode == "fwd":
        def setup():
            _clear_grads(leaves)
            return (), {}

        def target():
            with torch.enable_grad():
                out = closure()
            _sync(device)
            return out
    elif mode == "bwd":
        def setup():
            _clear_grads(leaves)
            with torch.enable_grad():
                loss = closure()
            _sync(device)
            return (loss,), {}

        def target(loss):
            loss.backward()
            _sync(device)
    else:
        def setup():
            _clear_grads(leaves)
            return (), {}

        def target():
            with torch.enable_grad():
                closure().backward()
            _sync(device)

    return target, setup


def run_once(closure, leaves, mode: str, device: torch.device) -> None:
    target, setup = mode_callables(closure, leaves, mode, device)
    args, kwargs = setup()
    target(*args, **kwargs)


# ---------------------------------------------------------------------------------- memory


def cuda_peak_bytes(closure, leaves, device: torch.device) -> dict[str, int]:
    """Peak bytes allocated over one fwd+bwd, absolute and above what was live before."""
    _clear_grads(leaves)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run_once(closure, leaves, "fwd+bwd", device)
    peak = torch.cuda.max_memory_allocated(device)
    _clear_grads(leaves)
    return {"peak_bytes": peak, "delta_bytes": peak - base, "method": "cuda_max_allocated"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim_heap() -> None:
    """Hands freed heap pages back to the OS so a round's peak starts from a clean resident
    set (glibc only; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CpuPeakRss:
    """The peak resident set of what runs between :meth:`start` and :meth:`stop`.

    ``start`` frees what it can and resets the kernel's high-water mark; ``stop`` reads it.
    Where the reset is not allowed (no ``/proc/self/clear_refs``), ``stop`` returns an
    ``error`` instead of a number that would include every earlier peak of the process.
    """

    def __init__(self):
        self.baseline_kib: int | None = None
        self.reset_ok = False

    def start(self) -> None:
        gc.collect()
        _trim_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: peak RSS := current RSS
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.baseline_kib = _status_kib("VmRSS")

    def stop(self) -> dict:
        if self.baseline_kib is None:
            raise RuntimeError("CpuPeakRss.stop() before start()")
        if not self.reset_ok:
            return {"error": "cannot reset the peak RSS here (/proc/self/clear_refs)"}
        peak = _status_kib("VmHWM")
        return {"peak_bytes": peak * 1024, "baseline_bytes": self.baseline_kib * 1024,
                "delta_bytes": (peak - self.baseline_kib) * 1024, "method": "cpu_peak_rss"}


# ------------------------------------------------------------------ bytes, flops, device peaks


def floor_entry_passes(loss: str, mode: str) -> int:
    """Minimal (N, V) passes over HBM for the logits-in losses: reads of s (and u) and the
    write of ds. Reverse KL fwd+bwd: read s, u, write ds = 3 (SPEC section 3: 6 B/entry in
    bf16); token log-probs: read x, write dx = 2."""
    two_inputs = loss in ("reverse_kl", "cord_token_loss", "jsd")
    reads = 2 if two_inputs else 1
    return {"fwd": reads, "bwd": reads + 1, "fwd+bwd": reads + 1}[mode]


def floor_bytes(loss: str, mode: str, n_tokens: int, vocab: int, dtype: torch.dtype) -> int:
    elt = torch.empty((), dtype=dtype).element_size()
    return floor_entry_passes(loss, mode) * n_tokens * vocab * elt


def gemm_flops(loss: str, mode: str, n_tokens: int, vocab: int, hidden: int) -> int:
    return gemm_count(loss, mode) * 2 * n_tokens * hidden * vocab


def median_seconds(fn, device: torch.device, reps: int) -> float:
    """The median wall time of ``reps`` calls of ``fn``, each between two device syncs."""
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_gb_s(device: torch.device, nbytes: int) -> float:
    """Copy bandwidth (read + write bytes per second) of one large bf16 copy on ``device``:
    the rate the logits-in floors are charged at."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src), device, 10) / 1e9


def gemm_tflops(device: torch.device, n: int, h: int, v: int, dtype: torch.dtype,
                reps: int = 5) -> float:
    """``torch.mm``'s rate on an (n, h) x (h, v) product: the rate of the fused floors."""
    a = torch.randn(n, h, device=device, dtype=dtype)
    b = torch.randn(h, v, device=device, dtype=dtype)
    torch.mm(a, b)
    return 2 * n * h * v / median_seconds(lambda: torch.mm(a, b), device, reps) / 1e12


# name substring -> (HBM bytes/s, dense bf16 tensor-core flop/s), from the vendors' datasheets
_GPU_PEAKS = (
    ("H200", 4.8e12, 989e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),
    ("A100-SXM4-80GB", 2.039e12, 312e12),
    ("A100 80GB PCIe", 1.935e12, 312e12),
    ("A100", 1.555e12, 312e12),
    ("L40S", 0.864e12, 362e12),
)


def device_peaks(device: torch.device, dtype: torch.dtype) -> dict[str, float] | None:
    """{"bytes_per_s", "flops_per_s"} of a known GPU, else None. fp32 GEMMs get the TF32 rate
    (half the bf16 rate)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, bw, flops in _GPU_PEAKS:
        if key in name:
            scale = 0.5 if dtype == torch.float32 else 1.0
            return {"name": name, "bytes_per_s": bw, "flops_per_s": flops * scale}
    return None


def machine_line(device: torch.device) -> str:
    """One line naming the machine the numbers come from."""
    import platform

    torch_v = torch.__version__
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch_v}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = ""
    return f"CPU {cpu}, {os.cpu_count()} cores ({threads} torch threads){mem}, torch {torch_v}"
