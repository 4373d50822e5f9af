"""The benchmark harness: config, inputs cache, timing, memory and recording.

Every benchmark test calls :func:`run_benchmark`, which times one provider in one mode with
pytest-benchmark (median over rounds, warm-up untimed), measures peak memory for fwd+bwd and
records a row in :data:`RECORDER`; ``bench/conftest.py`` writes the results at session end.
"""

from __future__ import annotations

import gc
import time

import pytest
import torch

from bench.config import BenchConfig, load_config
from bench.inputs import make_hidden_case, make_logits_case
from bench.measure import (
    CpuPeakRss,
    copy_gb_s,
    cuda_peak_bytes,
    gemm_flops,
    gemm_tflops,
    mode_callables,
    run_once,
)
from bench.providers import FUSED_LOSSES, Provider
from bench.recorder import Recorder

CONFIG: BenchConfig = load_config()
RECORDER = Recorder(CONFIG)


# ---------------------------------------------------------------------------------- inputs


class _CaseCache:
    """Keeps the inputs of the latest shape only: tests are ordered shape-major, and holding
    several (N, V) cases at once would distort the memory numbers and risk running out."""

    def __init__(self):
        self.key = None
        self.case = None

    def get(self, key, make):
        if key != self.key:
            self.case = None
            gc.collect()
            if CONFIG.on_cuda:
                torch.cuda.empty_cache()
            self.case = make()
            self.key = key
        return self.case


_CASES = _CaseCache()


def get_case(loss: str, shape):
    d = dict(dtype=CONFIG.dtype, device=CONFIG.device)
    if loss in FUSED_LOSSES:
        key = ("hidden", shape)
        return _CASES.get(key, lambda: make_hidden_case(shape.n_tokens, shape.vocab,
                                                        shape.hidden, **d))
    return _CASES.get(("logits", shape), lambda: make_logits_case(shape.n_tokens, shape.vocab,
                                                                  **d))


def _available_bytes() -> int:
    if CONFIG.on_cuda:
        free, _total = torch.cuda.mem_get_info(CONFIG.device)
        return free
    import psutil

    return psutil.virtual_memory().available


def memory_guard(loss: str, shape, provider: Provider) -> str | None:
    """A reason to skip a shape whose tensors cannot fit in the memory at hand.

    Materialising providers (naive torch, torch.compile, the floor GEMMs) hold about ten fp32
    (N, V) tensors (inputs, gradient, log-softmax temporaries); chunked ones hold the inputs
    and their gradient plus chunk tiles. On a GPU only the inputs are checked and an
    out-of-memory error is recorded as a skip instead; on a CPU exhausting memory would bring
    in the OOM killer, so the estimate decides.
    """
    elt = torch.empty((), dtype=CONFIG.dtype).element_size()
    entries = shape.n_tokens * shape.vocab
    inputs = 0 if loss in FUSED_LOSSES else 3 * entries * elt
    materialises = provider.role in ("naive", "floor") or provider.needs_warmup
    if CONFIG.on_cuda:
        need = inputs
    elif materialises:
        need = inputs + 8 * entries * 4
    else:
        need = inputs + 8 * min(shape.n_tokens, 4096) * shape.vocab * 4
    have = _available_bytes()
    if need > 0.8 * have:
        return (f"needs ~{need / 2**30:.1f} GiB at {shape.id}, "
                f"{have / 2**30:.1f} GiB available")
    return None


# ------------------------------------------------------------------------------------ rates


_RATES: dict = {}


def measured_rates(loss: str, shape) -> dict[str, float]:
    """The rates the floors are charged at, measured in this run: the copy bandwidth (once)
    and, for a fused-linear shape, ``torch.mm``'s rate on its (N, H) x (H, V) product (once
    per shape; three products on the CPU, a few seconds at the default shapes)."""
    if "copy_gb_s" not in _RATES:
        _RATES["copy_gb_s"] = copy_gb_s(CONFIG.device, 2**31 if CONFIG.on_cuda else 2**26)
    rates = {"copy_gb_s": _RATES["copy_gb_s"]}
    if loss in FUSED_LOSSES:
        key = (shape.n_tokens, shape.hidden, shape.vocab)
        if key not in _RATES:
            _RATES[key] = gemm_tflops(CONFIG.device, *key, CONFIG.dtype,
                                      reps=5 if CONFIG.on_cuda else 3)
        rates["gemm_tflops"] = _RATES[key]
    return rates


# ----------------------------------------------------------------------------------- timing


def _rounds_for(seconds: float) -> int:
    # Cheap calls get more rounds for a stable median, slow ones at least two.
    floor = 3 if seconds < 1.0 else 2
    return max(floor, CONFIG.rounds(seconds))


# A CPU sustains roughly this many GEMM flop/s; it only decides whether a fused-linear call is
# too slow for an extra calibration call (its rounds then double as warm-up).
_CPU_GEMM_FLOPS_GUESS = 100e9


def _expensive(loss: str, shape, mode: str) -> bool:
    if CONFIG.on_cuda or loss not in FUSED_LOSSES:
        return False
    # over about one second of GEMMs
    return gemm_flops(loss, mode, shape.n_tokens, shape.vocab, shape.hidden) > (
        _CPU_GEMM_FLOPS_GUESS)


def run_benchmark(benchmark, *, loss: str, provider: Provider, shape, mode: str) -> None:
    """Times ``provider`` on ``loss`` at ``shape`` in ``mode`` and records the result."""
    started = time.perf_counter()
    try:
        _run_benchmark(benchmark, loss=loss, provider=provider, shape=shape, mode=mode)
    finally:  # skips included: a provider's cost is all the time it held the run
        RECORDER.add_time(loss, provider.name, time.perf_counter() - started)


def _run_benchmark(benchmark, *, loss: str, provider: Provider, shape, mode: str) -> None:
    base = dict(loss=loss, provider=provider, shape=shape, mode=mode)
    reason = provider.unavailable(CONFIG.device) or memory_guard(loss, shape, provider)
    if reason:
        RECORDER.skip(**base, reason=reason)
        pytest.skip(reason)

    case = get_case(loss, shape)
    closure = provider.build(case)
    leaves = case.leaves()
    benchmark.group = f"{loss} {shape.id} {mode}"
    benchmark.extra_info.update(provider=provider.name, role=provider.role)

    # Warm-up, untimed: compiles torch.compile graphs and Triton kernels, and tells how many
    # rounds fit the time budget. Fused-linear CPU calls of over ~1 s of GEMMs skip it and
    # take one timed round by default (their spread is a few %), two in the full sweep.
    calibration = first_call = None
    rounds = 2 if CONFIG.full else 1
    try:
        if provider.needs_warmup or CONFIG.on_cuda:  # on a GPU: Triton JIT, autotuning
            t0 = time.perf_counter()
            run_once(closure, leaves, "fwd+bwd", CONFIG.device)
            first_call = time.perf_counter() - t0  # torch.compile's cost, reported
        if not _expensive(loss, shape, mode):
            t0 = time.perf_counter()
            run_once(closure, leaves, mode, CONFIG.device)
            calibration = time.perf_counter() - t0
            rounds = _rounds_for(calibration)
        target, setup = mode_callables(closure, leaves, mode, CONFIG.device)
        rss = CpuPeakRss() if mode == "fwd+bwd" and not CONFIG.on_cuda else None
        if rss is not None:
            # The window opens before the last round only: a full gc.collect takes ~0.2 s
            # once dynamo is loaded. (--benchmark-disable, and xdist, run one round.)
            last = 1 if getattr(benchmark, "disabled", False) else rounds
            calls = [0]

            def setup(_setup=setup):
                args = _setup()
                calls[0] += 1
                if calls[0] == last:
                    rss.start()
                return args
        benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
        memory = None
        if rss is not None:
            memory = rss.stop()
        elif mode == "fwd+bwd" and CONFIG.on_cuda:
            memory = cuda_peak_bytes(closure, leaves, CONFIG.device)
        if memory is not None:
            benchmark.extra_info.update(memory)
    except torch.OutOfMemoryError:
        del closure
        for t in leaves:
            t.grad = None
        gc.collect()
        torch.cuda.empty_cache()
        reason = f"out of device memory at {shape.id}"
        RECORDER.skip(**base, reason=reason)
        pytest.skip(reason)
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err)[:200]}"
        RECORDER.error(**base, reason=reason)
        if provider.role == "ours":
            raise
        # A peer that breaks on this input (or in a new release) is a result, not our failure.
        pytest.skip(f"{provider.name} failed: {reason}")

    stats = benchmark.stats.stats if benchmark.stats is not None else None

    for t in leaves:
        t.grad = None
    RECORDER.ok(**base, stats=stats, calibration_s=calibration, memory=memory,
               valid_fraction=case.mask.float().mean().item(), first_call_s=first_call,
               rates=measured_rates(loss, shape) if mode == "fwd+bwd" else None)
